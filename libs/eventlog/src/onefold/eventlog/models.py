"""The values that cross the event log's API: events to append, recorded events, chain digests."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from google.protobuf.message import Message

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ZERO_HASH = bytes(32)
_EMPTY: Mapping[str, str] = MappingProxyType({})


def to_micros(moment: datetime) -> int:
    """Exact integer microseconds since the Unix epoch, UTC (how timestamps are stored)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class NewEvent:
    """An event to append.

    `expected_version`: None = no check, 0 = the stream must be new, n = the stream must be at n.
    When several NewEvents of one batch share a stream, only the first needs to carry it.
    `subject` is the data subject whose key encrypts the personal fields ("" = none).
    `metadata` carries correlation_id, causation_id, actor, source, traceparent, ... as strings.
    """

    stream_id: str
    message: Message
    expected_version: int | None = None
    subject: str = ""
    workspace: str = ""
    occurred_at: datetime | None = None
    event_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One row of the log, exactly as stored (payload still encrypted; see EventStore.decode)."""

    position: int
    event_id: str
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    payload: bytes
    metadata: dict[str, str]
    workspace: str
    subject: str
    occurred_at: datetime
    recorded_at: datetime
    prev_hash: bytes
    hash: bytes


def _fast_constructor(cls: type) -> Any:
    """A positional constructor for a frozen slots dataclass that skips the generated __init__.

    Frozen dataclasses set each field through `object.__setattr__` by name; storing straight
    into the slots is half the cost, which matters for the ~100k RecordedEvents a second made by
    append and replay. The result is an ordinary instance (same fields, equality, immutability).
    """
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for index, name in enumerate(names):
        namespace[f"_set{index}"] = getattr(cls, name).__set__
    body = "".join(f"    _set{index}(obj, {name})\n" for index, name in enumerate(names))
    source = f"def make({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n"
    exec(source, namespace)  # noqa: S102 - generated from the dataclass's own field names
    return namespace["make"]


# Same arguments, in the same order, as RecordedEvent(...); for the store's hot paths only.
make_recorded_event: Callable[..., RecordedEvent] = _fast_constructor(RecordedEvent)


@dataclass(frozen=True)
class ChainDigest:
    """The chain's hash at one position: a copy elsewhere confirms the log up to there."""

    position: int
    hash: bytes
    # Who vouches for this hash (e.g. "the witness stream"); named when the log disagrees.
    witness: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, str | int]:
        return {"position": self.position, "hash": base64.b64encode(self.hash).decode()}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ChainDigest:
        return cls(position=int(str(data["position"])), hash=base64.b64decode(str(data["hash"])))


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of walking the chain; `first_bad_position` names where it first broke."""

    ok: bool
    events_checked: int
    head: ChainDigest
    first_bad_position: int | None = None
    problem: str = ""
    witness: str = ""  # the witness of the expected digest the log disagrees with, if that is the problem

    def __bool__(self) -> bool:
        return self.ok
