"""Segment HTTP tracking API JSON -> canonical events, and back.

Two levels of failure, on purpose:

- the *request* is unusable (not UTF-8 / JSON, not an object, too large, too many events, a bad
  batch envelope): `InvalidArgument` / `PayloadTooLarge` -> HTTP 400, nothing is kept;
- one *event* is wrong (missing ids, wrong types, bad timestamps, oversize event inside a batch): it
  gets a quarantine verdict and is kept with its reasons. Rejecting a whole batch for one bad event
  would make SDKs (which drop on 400) lose the good ones too. `strict=True` turns event errors into
  one `InvalidArgument` with every field path instead, for callers that want the 400.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from onefold.ingest.domain.model import (
    DEFAULT_LIMITS,
    MAX_NESTING_DEPTH,
    UNDELIVERABLE_RULES,
    CallType,
    CanonicalEvent,
    Consent,
    FailureKind,
    Intake,
    JsonObject,
    Limits,
    ParsedRequest,
    PayloadTooLarge,
    Verdict,
    Violation,
    field_path,
    pointer,
)
from onefold.ingest.domain.timestamps import (
    TimestampError,
    correct_skew,
    format_timestamp,
    parse_timestamp,
    sanity_problem,
)
from onefold.ingest.domain.traits import identify_traits
from onefold.platform.errors import InvalidArgument

BATCH = "batch"
CALLS = frozenset(c.value for c in CallType)
# Top-level keys the spec defines; anything else is kept in `extra`. `writeKey` is a credential:
# read by the caller for authentication, never stored with the event.
KNOWN_KEYS = frozenset(
    {
        "type", "messageId", "anonymousId", "userId", "previousId", "groupId", "event", "name",
        "category", "properties", "traits", "context", "integrations", "timestamp", "sentAt",
        "receivedAt", "originalTimestamp", "writeKey",
    }
)  # fmt: skip
# Generated message ids live in their own UUID namespace, so they never collide with client UUIDs
# by accident yet are recognisable as derived.
MESSAGE_ID_NAMESPACE = uuid.UUID("6f1e0f01-1d9e-5c3a-9a57-0e4f1d0c7a11")
# JSON numbers are IEEE doubles once stored (google.protobuf.Struct, and every JavaScript reader);
# an integer beyond 2^53 would silently change, so it is refused with a hint instead.
MAX_SAFE_INTEGER = 2**53
# Cheap pre-scan: only a payload with a run of 16+ ASCII digits can hold an unsafe integer. Digits
# become "0" and everything else " ", then one substring search (several times faster than a regex).
_DIGIT_MASK = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_SIXTEEN_DIGITS = b"0" * 16


def _has_long_digit_run(raw: bytes) -> bool:
    return _SIXTEEN_DIGITS in raw.translate(_DIGIT_MASK)


@dataclass(frozen=True, slots=True)
class BatchDefaults:
    """Batch-level fields that apply to every event of a batch (an event's own keys win)."""

    context: JsonObject | None = None
    integrations: JsonObject | None = None
    sent_at: object = None  # raw; parsed per event so a bad value is that event's timestamp error


_NO_DEFAULTS = BatchDefaults()


def parse_request(
    body: bytes,
    call: str,
    *,
    received_at: datetime,
    source_id: str = "",
    limits: Limits = DEFAULT_LIMITS,
    strict: bool = False,
) -> ParsedRequest:
    """Parse an HTTP tracking API body. `call` is the path's last segment: track, identify, page,
    screen, group, alias, batch (or `b`). Raises InvalidArgument / PayloadTooLarge for an unusable
    request; every event gets an Intake (see the module docstring)."""
    loaded = load_request(body, call, limits=limits)
    return parse_loaded(loaded, received_at=received_at, source_id=source_id, limits=limits, strict=strict)


@dataclass(frozen=True, slots=True)
class LoadedRequest:
    """A body whose JSON is loaded but whose events are not parsed yet: the HTTP entrypoint reads
    the body's writeKey from it to find the source (which the events need) without a second parse."""

    call: str  # normalised: one of CALLS or BATCH
    document: JsonObject
    size: int  # bytes of the body
    write_key: str | None


def load_request(body: bytes, call: str, *, limits: Limits = DEFAULT_LIMITS) -> LoadedRequest:
    """The first half of parse_request: check the call and size, load the JSON object."""
    name = call.strip().lower()
    name = BATCH if name == "b" else name
    if name != BATCH and name not in CALLS:
        raise InvalidArgument(f"unknown call '{call[:40]}'", violations=[("type", "unknown call type")])
    _check_size(name, len(body), limits)
    document = _load_json(body)
    if not isinstance(document, dict):
        raise InvalidArgument(
            "the body must be a JSON object", violations=[("body", "must be a JSON object")]
        )
    write_key = document.get("writeKey")
    if write_key is not None and not isinstance(write_key, str):
        raise InvalidArgument("writeKey must be a string", violations=[("writeKey", "must be a string")])
    return LoadedRequest(name, document, len(body), write_key or None)


def _check_size(name: str, size: int, limits: Limits) -> None:
    limit = limits.max_batch_bytes if name == BATCH else limits.max_event_bytes
    if size > limit:
        raise PayloadTooLarge(
            f"request body is {size} bytes; the limit for {name} is {limit} bytes",
            violations=[("body", f"must be at most {limit} bytes")],
        )


def parse_loaded(
    loaded: LoadedRequest,
    *,
    received_at: datetime,
    source_id: str = "",
    limits: Limits = DEFAULT_LIMITS,
    strict: bool = False,
) -> ParsedRequest:
    """The second half of parse_request: every event of a loaded body as an Intake."""
    name, document, write_key = loaded.call, loaded.document, loaded.write_key
    is_batch = name == BATCH
    # Again, as `limits` may be the source's, known only after load_request (by the writeKey).
    _check_size(name, loaded.size, limits)
    if not is_batch:
        intake = parse_event(
            document, call=CallType(name), received_at=received_at, source_id=source_id, limits=limits
        )
        intakes: tuple[Intake, ...] = (intake,)
    else:
        items, defaults = _batch_envelope(document, limits)
        intakes = tuple(
            parse_event(
                item,
                index=i,
                defaults=defaults,
                received_at=received_at,
                source_id=source_id,
                limits=limits,
            )
            for i, item in enumerate(items)
        )
    raise_if_undeliverable(intakes, prefix_batch=is_batch)
    if strict:
        raise_if_rejected(intakes, prefix_batch=is_batch)
    return ParsedRequest(write_key=write_key, intakes=intakes)


def raise_if_undeliverable(intakes: Iterable[Intake], *, prefix_batch: bool, prefix: str = "") -> None:
    """An event no consumer could decode (UNDELIVERABLE_RULES) refuses the whole request, as an
    unusable body does: acknowledging it would lose it downstream, and a replay could never fix it.
    Field paths start `batch[i]` for a batch's events, else `prefix` (gRPC: "event")."""
    problems = [
        (field_path(v.path, f"batch[{intake.index}]" if prefix_batch else prefix) or "event", v.message)
        for intake in intakes
        if intake.event is None
        for v in intake.verdict.violations
        if v.rule in UNDELIVERABLE_RULES
    ]
    if problems:
        field, message = problems[0]
        more = f" ({len(problems) - 1} more events too)" if len(problems) > 1 else ""
        raise InvalidArgument(f"{field} {message}{more}", violations=problems)


def raise_if_rejected(intakes: Iterable[Intake], *, prefix_batch: bool) -> None:
    """Strict mode: every parse failure of the request as one InvalidArgument with field paths."""
    problems: list[tuple[str, str]] = []
    for intake in intakes:
        if intake.event is None:
            prefix = f"batch[{intake.index}]" if prefix_batch else ""
            problems += [
                (field_path(v.path, prefix) or prefix or "event", v.message)
                for v in intake.verdict.violations
            ]
    if problems:
        raise InvalidArgument(f"{len(problems)} problem(s) with the events sent", violations=problems)


def _load_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidArgument(
                f"the body is not valid UTF-8 (byte {bad.start})", violations=[("body", "must be UTF-8")]
            ) from None
        raise InvalidArgument(
            f"the body is not valid JSON: {error.msg} at position {error.pos}",
            violations=[("body", "must be valid JSON")],
        ) from None


def _batch_envelope(document: JsonObject, limits: Limits) -> tuple[list[Any], BatchDefaults]:
    items = document.get("batch")
    if not isinstance(items, list):
        raise InvalidArgument("batch must be an array of events", violations=[("batch", "must be an array")])
    if len(items) > limits.max_batch_events:
        raise PayloadTooLarge(
            f"the batch has {len(items)} events; the limit is {limits.max_batch_events}",
            violations=[("batch", f"must hold at most {limits.max_batch_events} events")],
        )
    problems = [
        (key, "must be an object")
        for key in ("context", "integrations")
        if document.get(key) is not None and not isinstance(document[key], dict)
    ]
    if problems:
        raise InvalidArgument("the batch envelope is malformed", violations=problems)
    check_envelope_depth(document.get("context"), document.get("integrations"))
    return items, BatchDefaults(document.get("context"), document.get("integrations"), document.get("sentAt"))


def parse_event(
    item: object,
    *,
    call: CallType | None = None,
    index: int = 0,
    defaults: BatchDefaults = _NO_DEFAULTS,
    received_at: datetime,
    source_id: str = "",
    limits: Limits = DEFAULT_LIMITS,
) -> Intake:
    """Validate and normalise one Segment call. `call` (single-call endpoints) overrides the body's
    `type`; a batch item must name its own. Never raises for bad data: the Intake says what is wrong."""
    try:
        raw = orjson.dumps(item)
    except (orjson.JSONEncodeError, TypeError):
        # orjson refuses 255 levels and more; say so when that is why.
        too_deep = _too_deep(item, "", 1) if isinstance(item, dict) else None
        if too_deep is not None:
            return _undeliverable(index, item, too_deep)
        return _rejected(index, item, call, defaults, [Violation("", "cannot be encoded as JSON", "json")])
    if isinstance(item, dict) and raw.count(b"{") + raw.count(b"[") > MAX_NESTING_DEPTH:
        # Only then can it nest too deep (brackets inside strings count too: a cheap upper bound).
        too_deep = _too_deep(item, "", 1)
        if too_deep is not None:
            return _undeliverable(index, item, too_deep)
    if not isinstance(item, dict):
        return _rejected(index, item, call, defaults, [Violation("", "must be a JSON object", "type")])
    if len(raw) > limits.max_event_bytes:
        message = f"is {len(raw)} bytes; the limit per event is {limits.max_event_bytes} bytes"
        return _rejected(
            index, item, call, defaults, [Violation("", message, "maxBytes")], FailureKind.SIZE_VIOLATION
        )
    problems: list[Violation] = []
    if _has_long_digit_run(raw):
        _find_unsafe_integers(item, "", problems)
    fields = _Fields(item, problems, limits)
    type_name = call.value if call is not None else fields.string("type", lower=True)
    if type_name not in CALLS:
        message = "is required" if not type_name else "must be one of " + ", ".join(sorted(CALLS))
        problems.append(Violation("/type", message, "required" if not type_name else "enum"))
        return _rejected(index, item, call, defaults, problems)
    kind = CallType(type_name)

    message_id = fields.string("messageId", max_length=limits.max_message_id_length)
    if "\x00" in message_id:
        # The dedupe key is kept as text, and PostgreSQL text cannot hold NUL: refused alike everywhere.
        problems.append(Violation("/messageId", "must not contain the NUL character (U+0000)", "pattern"))
    anonymous_id = fields.identifier("anonymousId")
    user_id = fields.identifier("userId")
    previous_id = fields.identifier("previousId")
    group_id = fields.identifier("groupId")
    event_name = fields.string("event")
    name = fields.string("name")
    category = fields.string("category")
    properties = fields.object("properties")
    traits = fields.object("traits")
    context = fields.object("context")
    integrations = fields.object("integrations")
    if defaults.context:
        context = {**defaults.context, **context}
    if defaults.integrations:
        integrations = {**defaults.integrations, **integrations}
    _require_ids(kind, fields.present, problems, event_name=event_name)
    if kind is CallType.IDENTIFY:
        # What the profile gets, so what the limit and the tracking plan judge (domain/traits.py).
        traits = identify_traits(traits, context)
        if len(traits) > limits.max_identify_traits:
            problems.append(
                Violation(
                    "/traits",
                    f"has {len(traits)} traits (with those of context.traits); identify allows at "
                    f"most {limits.max_identify_traits}",
                    "maxProperties",
                )
            )
    consent = _consent(context, problems)

    # Timestamps last: they only matter if the rest is sound, and their failures have their own kind.
    times: list[Violation] = []
    # The device's clock: originalTimestamp, else timestamp. Both are checked when both are sent, so
    # a malformed one is never silently ignored.
    original_raw, stated_raw = item.get("originalTimestamp"), item.get("timestamp")
    device_time = _timestamp(original_raw, "originalTimestamp", times)
    given_key = "originalTimestamp"
    if stated_raw != original_raw:  # SDKs often send the same text twice: read it once
        stated = _timestamp(stated_raw, "timestamp", times)
        if device_time is None:
            device_time, given_key = stated, "timestamp"
    sent_raw = item.get("sentAt")
    sent_at = _timestamp(defaults.sent_at if sent_raw is None else sent_raw, "sentAt", times)
    if problems:
        return _rejected(index, item, call, defaults, problems + times)
    if times:
        return _rejected(index, item, call, defaults, times, FailureKind.TIMESTAMP_VIOLATION)
    client_timed = device_time is not None
    original = device_time or sent_at or received_at
    try:
        timestamp = correct_skew(original, sent_at, received_at)
    except TimestampError as error:
        times.append(Violation("/timestamp", str(error), "format"))
        return _rejected(index, item, call, defaults, times, FailureKind.TIMESTAMP_VIOLATION)
    insane = sanity_problem(timestamp, received_at, limits)
    if insane is not None:
        times.append(Violation(pointer(given_key), f"corrected for clock skew, {insane}", "range"))
        return _rejected(index, item, call, defaults, times, FailureKind.TIMESTAMP_VIOLATION)

    extra = {k: v for k, v in item.items() if k not in KNOWN_KEYS}
    event = CanonicalEvent(
        type=kind,
        message_id=message_id,
        timestamp=timestamp,
        original_timestamp=original,
        received_at=received_at,
        sent_at=sent_at,
        anonymous_id=anonymous_id,
        user_id=user_id,
        previous_id=previous_id,
        group_id=group_id,
        event=event_name,
        name=name,
        category=category,
        properties=properties,
        traits=traits,
        context=context,
        integrations=integrations,
        extra=extra,
        consent=consent,
        source_id=source_id,
    )
    if not message_id:
        event = _with_derived_message_id(event, client_timed)
    return Intake(index=index, event=event, verdict=Verdict.accepted(), message_id=event.message_id)


DEPTH_MESSAGE = (
    f"nests objects and arrays more than {MAX_NESTING_DEPTH} levels deep (the event itself is level 1); "
    "the limit keeps every event readable by every consumer"
)


def _too_deep(value: object, at: str, level: int) -> str | None:
    """The JSON pointer of the first object or array nested past MAX_NESTING_DEPTH, if any."""
    if level > MAX_NESTING_DEPTH:
        return at
    if isinstance(value, dict):
        members: Iterable[tuple[object, object]] = value.items()
    elif isinstance(value, list):
        members = enumerate(value)
    else:
        return None
    for key, inner in members:
        if isinstance(inner, dict | list):
            found = _too_deep(inner, f"{at}/{pointer(str(key)[:64])[1:]}", level + 1)
            if found is not None:
                return found
    return None


def check_envelope_depth(context: object, integrations: object) -> None:
    """A batch's own context / integrations become each event's (level 2): the same limit."""
    for key, value in (("context", context), ("integrations", integrations)):
        if isinstance(value, dict):
            found = _too_deep(value, f"/{key}", 2)
            if found is not None:
                raise InvalidArgument(
                    f"{field_path(found)} {DEPTH_MESSAGE}", violations=[(field_path(found), DEPTH_MESSAGE)]
                )


def _undeliverable(index: int, item: object, at: str) -> Intake:
    return Intake(
        index=index,
        event=None,
        verdict=Verdict.quarantined(FailureKind.SIZE_VIOLATION, [Violation(at, DEPTH_MESSAGE, "maxDepth")]),
        message_id=_client_message_id(item),
    )


class _Fields:
    """Reads known fields of one event, recording a violation per wrong type."""

    def __init__(self, item: JsonObject, problems: list[Violation], limits: Limits) -> None:
        self.item, self.problems, self.limits = item, problems, limits
        self.present: set[str] = set()

    def string(self, key: str, *, lower: bool = False, max_length: int | None = None) -> str:
        value = self.item.get(key)
        if value is None:  # most optional fields are absent
            return ""
        return self._text(key, value, lower=lower, max_length=max_length)

    def identifier(self, key: str) -> str:
        value = self.item.get(key)
        if value is None:
            return ""
        # Several server SDKs send numeric ids; Segment stores them as strings, so do we.
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif value is not None and not isinstance(value, str):
            self.problems.append(Violation(pointer(key), "must be a string (or an integer)", "type"))
            return ""
        return self._text(key, value, max_length=self.limits.max_id_length)

    def _text(self, key: str, value: object, *, lower: bool = False, max_length: int | None = None) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            self.problems.append(Violation(pointer(key), "must be a string", "type"))
            return ""
        value = value.strip()
        if max_length is not None and len(value) > max_length:
            self.problems.append(
                Violation(pointer(key), f"must be at most {max_length} characters", "maxLength")
            )
        if value:
            self.present.add(key)
        return value.lower() if lower else value

    def object(self, key: str) -> JsonObject:
        value = self.item.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(Violation(pointer(key), "must be an object", "type"))
            return {}
        return value


def _require_ids(kind: CallType, present: set[str], problems: list[Violation], *, event_name: str) -> None:
    if kind is CallType.ALIAS:
        # alias folds previousId into userId; both are needed, anonymousId is no substitute.
        for key in ("userId", "previousId"):
            if key not in present:
                problems.append(Violation(pointer(key), "is required for alias", "required"))
        return
    if "userId" not in present and "anonymousId" not in present:
        problems.append(Violation("/userId", "userId or anonymousId is required", "required"))
    if kind is CallType.GROUP and "groupId" not in present:
        problems.append(Violation("/groupId", "is required for group", "required"))
    if kind is CallType.TRACK and not event_name:
        problems.append(Violation("/event", "is required for track", "required"))


def _consent(context: JsonObject, problems: list[Violation]) -> Consent | None:
    """`context.consent` as Segment's consent management sends it (categoryPreferences), plus the
    proof fields Onefold adds (source, noticeId, noticeVersion). Malformed consent is an error, not
    something to ignore: a wrong reading could let a message through that the person refused."""
    raw = context.get("consent")
    if raw is None:
        return None
    base = "/context/consent"
    if not isinstance(raw, dict):
        problems.append(Violation(base, "must be an object", "type"))
        return None
    preferences = raw.get("categoryPreferences", {})
    if not isinstance(preferences, dict) or not all(isinstance(v, bool) for v in preferences.values()):
        problems.append(
            Violation(base + "/categoryPreferences", "must map each purpose to true or false", "type")
        )
        return None
    proof: dict[str, str] = {}
    for key in ("source", "noticeId", "noticeVersion"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            problems.append(Violation(f"{base}/{key}", "must be a string", "type"))
            return None
        proof[key] = (value or "").strip()
    return Consent(
        granted=tuple(sorted(k for k, v in preferences.items() if v)),
        denied=tuple(sorted(k for k, v in preferences.items() if not v)),
        source=proof["source"],
        notice_id=proof["noticeId"],
        notice_version=proof["noticeVersion"],
    )


def _timestamp(value: object, key: str, problems: list[Violation]) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value)
    except TimestampError as error:
        problems.append(Violation(pointer(key), str(error), "format"))
        return None


def _find_unsafe_integers(value: object, at: str, problems: list[Violation]) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_SAFE_INTEGER:
            problems.append(
                Violation(
                    at,
                    "is an integer beyond ±2^53 that cannot be stored exactly; send it as a string",
                    "range",
                )
            )
    elif isinstance(value, dict):
        for key, inner in value.items():
            _find_unsafe_integers(inner, f"{at}/{pointer(key)[1:]}", problems)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _find_unsafe_integers(inner, f"{at}/{i}", problems)


def _rejected(
    index: int,
    item: object,
    call: CallType | None,
    defaults: BatchDefaults,
    violations: list[Violation],
    kind: FailureKind = FailureKind.PROTOCOL_VIOLATION,
) -> Intake:
    return Intake(
        index=index,
        event=None,
        verdict=Verdict.quarantined(kind, violations),
        raw_json=replayable_json(item, call, defaults),
        message_id=_client_message_id(item),
    )


def _client_message_id(item: object) -> str:
    value = item.get("messageId") if isinstance(item, dict) else None
    value = value.strip() if isinstance(value, str) else ""
    return value if len(value) <= DEFAULT_LIMITS.max_message_id_length else ""


def replayable_json(item: object, call: CallType | None, defaults: BatchDefaults) -> bytes:
    """The event as it must be re-parsed on replay: the request's call type and batch-level fields
    folded in, since a quarantined batch item no longer has its batch around it."""
    if isinstance(item, dict):
        merged = dict(item)
        if call is not None:
            merged["type"] = call.value
        if defaults.context is not None:
            ctx = merged.get("context")
            merged["context"] = {**defaults.context, **ctx} if isinstance(ctx, dict) else defaults.context
        if defaults.integrations is not None:
            integ = merged.get("integrations")
            merged["integrations"] = (
                {**defaults.integrations, **integ} if isinstance(integ, dict) else defaults.integrations
            )
        if defaults.sent_at is not None and merged.get("sentAt") is None:
            merged["sentAt"] = defaults.sent_at
        merged.pop("writeKey", None)
        item = merged
    try:
        return orjson.dumps(item)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(repr(item)[: DEFAULT_LIMITS.max_event_bytes])


def _with_derived_message_id(event: CanonicalEvent, client_timed: bool) -> CanonicalEvent:
    """A messageId from the content, so a retried request dedupes to the same id. sentAt and
    receivedAt change between retries and stay out; the device's timestamp goes in. Without any
    client timestamp a retry cannot be told from a genuine repeat, and losing a real event is worse
    than keeping a duplicate, so receivedAt goes in then."""
    content = to_json(event, message_id=False)
    content.pop("sentAt", None)
    content.pop("timestamp", None)
    content.pop("receivedAt", None)
    if not client_timed:
        content.pop("originalTimestamp", None)
        content["receivedAt"] = format_timestamp(event.received_at)
    content["sourceId"] = event.source_id
    digest = orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    return replace(event, message_id=str(uuid.uuid5(MESSAGE_ID_NAMESPACE, digest)))


_PRIMARY_OBJECT: dict[CallType, str] = {
    CallType.TRACK: "properties",
    CallType.PAGE: "properties",
    CallType.SCREEN: "properties",
    CallType.IDENTIFY: "traits",
    CallType.GROUP: "traits",
}


def to_json(event: CanonicalEvent, *, message_id: bool = True) -> JsonObject:
    """The canonical event in the Segment spec's JSON shape (what a destination would receive).
    parse_event(to_json(e), received_at=e.received_at) == e."""
    out: JsonObject = {"type": event.type.value}
    if message_id:
        out["messageId"] = event.message_id
    strings: tuple[tuple[str, str], ...] = (
        ("anonymousId", event.anonymous_id),
        ("userId", event.user_id),
        ("previousId", event.previous_id),
        ("groupId", event.group_id),
        ("event", event.event),
        ("name", event.name),
        ("category", event.category),
    )
    out.update((key, value) for key, value in strings if value)
    primary = _PRIMARY_OBJECT.get(event.type)
    objects = (
        ("properties", event.properties),
        ("traits", event.traits),
        ("context", event.context),
        ("integrations", event.integrations),
    )
    out.update((key, value) for key, value in objects if value or key == primary)
    out["timestamp"] = format_timestamp(event.timestamp)
    out["originalTimestamp"] = format_timestamp(event.original_timestamp)
    if event.sent_at is not None:
        out["sentAt"] = format_timestamp(event.sent_at)
    out["receivedAt"] = format_timestamp(event.received_at)
    for key, value in event.extra.items():
        out.setdefault(key, value)
    return out
