"""The shapes the ingest domain decides on: a canonical event, per-event verdicts, limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from onefold.contracts.common.v1 import errors_pb2
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.platform.errors import InvalidArgument

JsonObject = dict[str, Any]


class CallType(StrEnum):
    TRACK = "track"
    IDENTIFY = "identify"
    PAGE = "page"
    SCREEN = "screen"
    GROUP = "group"
    ALIAS = "alias"


class FailureKind(StrEnum):
    """Why an event was quarantined (Snowplow's typed failed events are the model)."""

    SCHEMA_VIOLATION = "schema_violation"
    SIZE_VIOLATION = "size_violation"
    PROTOCOL_VIOLATION = "protocol_violation"
    TIMESTAMP_VIOLATION = "timestamp_violation"
    UNPLANNED_EVENT = "unplanned_event"


class Disposition(StrEnum):
    """What happens to an event: collected as it is, collected with violations, or quarantined."""

    ACCEPTED = "accepted"
    FLAGGED = "flagged"  # accepted, with tracking-plan violations attached
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem with one event. `path` is a JSON pointer into the event ("" = the whole event);
    `message` never quotes the offending value, because it may be personal data."""

    path: str
    message: str
    rule: str


@dataclass(frozen=True, slots=True)
class Verdict:
    disposition: Disposition
    violations: tuple[Violation, ...] = ()
    kind: FailureKind | None = None  # set exactly when quarantined

    @staticmethod
    def accepted() -> Verdict:
        return _ACCEPTED

    @staticmethod
    def flagged(violations: Sequence[Violation]) -> Verdict:
        return Verdict(Disposition.FLAGGED, tuple(violations)) if violations else _ACCEPTED

    @staticmethod
    def quarantined(kind: FailureKind, violations: Sequence[Violation]) -> Verdict:
        return Verdict(Disposition.QUARANTINED, tuple(violations), kind)

    @property
    def is_quarantined(self) -> bool:
        return self.disposition is Disposition.QUARANTINED


_ACCEPTED = Verdict(Disposition.ACCEPTED)


@dataclass(frozen=True, slots=True)
class Consent:
    """Consent stated inside a tracked event (`context.consent`)."""

    granted: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    source: str = ""
    notice_id: str = ""
    notice_version: str = ""


@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    """A validated, normalised Segment call. Free-form objects hold plain JSON values.

    `timestamp` is corrected for clock skew; `original_timestamp` is the device's own clock (when the
    client sent none: its sentAt, else receivedAt, so the correction leaves `timestamp` = receivedAt).
    """

    type: CallType
    message_id: str
    timestamp: datetime
    original_timestamp: datetime
    received_at: datetime
    sent_at: datetime | None = None
    anonymous_id: str = ""
    user_id: str = ""
    previous_id: str = ""
    group_id: str = ""
    event: str = ""
    name: str = ""
    category: str = ""
    properties: JsonObject = field(default_factory=dict)
    traits: JsonObject = field(default_factory=dict)
    context: JsonObject = field(default_factory=dict)
    integrations: JsonObject = field(default_factory=dict)
    extra: JsonObject = field(default_factory=dict)  # top-level fields the spec does not define
    consent: Consent | None = None  # derived from context.consent
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class Intake:
    """One event of a request after parsing: either a canonical event with a verdict so far, or
    (when it could not be parsed into one) the event's JSON exactly as it would be replayed."""

    index: int
    event: CanonicalEvent | None
    verdict: Verdict
    raw_json: bytes = b""  # set when `event` is None
    # A gRPC TrackingEvent that failed parsing, kept as sent: JSON could not carry all of it (NaN).
    wire_event: pb.TrackingEvent | None = None
    # The event's id; for an unparsed event the client's messageId when it sent a usable one, so
    # the client can still match the answer to what it sent.
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    write_key: str | None  # from the body (`writeKey`), for SDKs that send it there
    intakes: tuple[Intake, ...]


@dataclass(frozen=True, slots=True)
class Limits:
    """Segment's published limits by default; the service may tighten or relax them per deployment."""

    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_events: int = 2500
    max_message_id_length: int = 100
    max_identify_traits: int = 299  # Segment rejects identify calls with 300+ traits
    max_id_length: int = 1024  # user/anonymous/group/previous ids: bounded, they become stream keys
    max_future: timedelta = timedelta(days=1)  # after skew correction
    max_age: timedelta = timedelta(days=5 * 365)  # bulk imports of older history raise this


DEFAULT_LIMITS = Limits()

# How deeply an event may nest objects and arrays, the event object itself being level 1 (so
# `properties` holds 15 more). Not a per-deployment limit: it keeps every event decodable by every
# consumer. Protobuf readers stop at 100 nested messages (Python's upb, C++, Java), and a JSON object
# costs 3 of them inside a google.protobuf.Struct (map entry, Value, Struct), an array 2; the deepest
# message that carries an event (identity's SubjectExport > TimelineEntry > TrackingEvent)
# adds 4. At 16 the worst case is about 4 + 3 * 16 = 52 levels: a margin of about half. Ingest
# refuses a deeper event with 400 / INVALID_ARGUMENT; accepting it would lose it downstream (the
# consumer's parse fails and dead-letters it), and quarantine could never replay it.
MAX_NESTING_DEPTH = 16
# Violation rules no consumer could decode past: the whole request is refused, never acknowledged.
UNDELIVERABLE_RULES = frozenset({"maxDepth"})


class PayloadTooLarge(InvalidArgument):
    """400 in HTTP, INVALID_ARGUMENT in gRPC, with its own machine-readable reason."""

    reason = errors_pb2.PAYLOAD_TOO_LARGE


def field_path(pointer: str, prefix: str = "") -> str:
    """A JSON pointer ("/properties/a~1b/0") as an AIP field path ("batch[3].properties.a/b[0]"),
    the form google.rpc.BadRequest field violations use."""
    out = prefix
    for token in pointer.split("/")[1:] if pointer else ():
        token = token.replace("~1", "/").replace("~0", "~")
        out += f"[{token}]" if token.isdigit() else (f".{token}" if out else token)
    return out


def pointer(*tokens: str | int) -> str:
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)
