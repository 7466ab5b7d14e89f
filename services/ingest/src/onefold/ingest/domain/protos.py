"""Between the domain and the onefold.ingest.v1 messages: TrackingEvent <-> CanonicalEvent, gRPC
requests -> Intakes (through the same checks as HTTP JSON), and the log records the service appends."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import struct_pb2, timestamp_pb2

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.ingest.domain.model import (
    DEFAULT_LIMITS,
    CallType,
    CanonicalEvent,
    Consent,
    Disposition,
    FailureKind,
    Intake,
    JsonObject,
    Limits,
    ParsedRequest,
    PayloadTooLarge,
    Verdict,
    Violation,
)
from onefold.ingest.domain.segment import (
    KNOWN_KEYS,
    MAX_SAFE_INTEGER,
    BatchDefaults,
    check_envelope_depth,
    parse_event,
    raise_if_rejected,
    raise_if_undeliverable,
    replayable_json,
)
from onefold.ingest.domain.timestamps import format_timestamp
from onefold.ingest.domain.tracking_plan import PlanMode, TrackingPlan
from onefold.platform.errors import InvalidArgument

CALL_TO_PROTO: dict[CallType, pb.EventType.ValueType] = {
    CallType.TRACK: pb.EVENT_TYPE_TRACK,
    CallType.IDENTIFY: pb.EVENT_TYPE_IDENTIFY,
    CallType.PAGE: pb.EVENT_TYPE_PAGE,
    CallType.SCREEN: pb.EVENT_TYPE_SCREEN,
    CallType.GROUP: pb.EVENT_TYPE_GROUP,
    CallType.ALIAS: pb.EVENT_TYPE_ALIAS,
}
PROTO_TO_CALL = {v: k for k, v in CALL_TO_PROTO.items()}
KIND_TO_PROTO: dict[FailureKind, pb.FailureKind.ValueType] = {
    FailureKind.SCHEMA_VIOLATION: pb.FAILURE_KIND_SCHEMA_VIOLATION,
    FailureKind.SIZE_VIOLATION: pb.FAILURE_KIND_SIZE_VIOLATION,
    FailureKind.PROTOCOL_VIOLATION: pb.FAILURE_KIND_PROTOCOL_VIOLATION,
    FailureKind.TIMESTAMP_VIOLATION: pb.FAILURE_KIND_TIMESTAMP_VIOLATION,
    FailureKind.UNPLANNED_EVENT: pb.FAILURE_KIND_UNPLANNED_EVENT,
}


# --- canonical event <-> TrackingEvent ---------------------------------------------------------


def to_proto(event: CanonicalEvent) -> pb.TrackingEvent:
    msg = pb.TrackingEvent()
    _fill_proto(msg, event)
    return msg


def _fill_proto(msg: pb.TrackingEvent, event: CanonicalEvent) -> None:
    """Write `event` into the empty `msg` in place (a record's `event` field: no copy). proto3
    strings are only set when non-empty, which is what the constructor would store anyway."""
    msg.type = CALL_TO_PROTO[event.type]
    for name, text in (
        ("message_id", event.message_id),
        ("anonymous_id", event.anonymous_id),
        ("user_id", event.user_id),
        ("previous_id", event.previous_id),
        ("group_id", event.group_id),
        ("event", event.event),
        ("name", event.name),
        ("category", event.category),
        ("source_id", event.source_id),
    ):
        if text:
            setattr(msg, name, text)
    _set_timestamp(msg.timestamp, event.timestamp)
    _set_timestamp(msg.original_timestamp, event.original_timestamp)
    _set_timestamp(msg.received_at, event.received_at)
    if event.sent_at is not None:
        _set_timestamp(msg.sent_at, event.sent_at)
    for field, value in (
        ("properties", event.properties),
        ("traits", event.traits),
        ("context", event.context),
        ("integrations", event.integrations),
        ("extra", event.extra),
    ):
        if value:
            _fill_struct(getattr(msg, field), value)
    if event.consent is not None:
        consent = event.consent
        msg.consent.CopyFrom(
            pb.ConsentContext(
                purposes_granted=consent.granted,
                purposes_denied=consent.denied,
                source=consent.source,
                notice_id=consent.notice_id,
                notice_version=consent.notice_version,
            )
        )


def _fill_struct(struct: struct_pb2.Struct, values: JsonObject) -> None:
    """struct.update(values) for an empty `struct`, with the common JSON types set directly
    (Struct.update checks each value against every type in turn); lists and anything unusual go
    through protobuf's own conversion, which also raises for what a Struct cannot hold."""
    fields = struct.fields
    for key, value in values.items():
        kind = type(value)
        if kind is str:
            fields[key].string_value = value
        elif kind is float or kind is int:
            fields[key].number_value = value
        elif kind is bool:
            fields[key].bool_value = value
        elif value is None:
            fields[key].null_value = struct_pb2.NULL_VALUE
        elif kind is dict:
            inner = fields[key].struct_value
            if value:
                _fill_struct(inner, value)
            else:
                inner.SetInParent()
        else:
            struct[key] = value


def event_from_proto(msg: pb.TrackingEvent) -> CanonicalEvent:
    """A TrackingEvent this service wrote (from its log) back into the domain; no re-validation."""
    return CanonicalEvent(
        type=PROTO_TO_CALL[msg.type],
        message_id=msg.message_id,
        timestamp=_datetime(msg.timestamp),
        original_timestamp=_datetime(msg.original_timestamp),
        received_at=_datetime(msg.received_at),
        sent_at=_datetime(msg.sent_at) if msg.HasField("sent_at") else None,
        anonymous_id=msg.anonymous_id,
        user_id=msg.user_id,
        previous_id=msg.previous_id,
        group_id=msg.group_id,
        event=msg.event,
        name=msg.name,
        category=msg.category,
        properties=struct_to_dict(msg.properties),
        traits=struct_to_dict(msg.traits),
        context=struct_to_dict(msg.context),
        integrations=struct_to_dict(msg.integrations),
        extra=struct_to_dict(msg.extra),
        consent=_consent(msg.consent) if msg.HasField("consent") else None,
        source_id=msg.source_id,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _set_timestamp(stamp: timestamp_pb2.Timestamp, value: datetime) -> None:
    # Direct arithmetic: Timestamp.FromDatetime goes through timetuple() and is ~4x slower per call.
    delta = value - _EPOCH
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _consent(msg: pb.ConsentContext) -> Consent:
    return Consent(
        granted=tuple(sorted(msg.purposes_granted)),
        denied=tuple(sorted(msg.purposes_denied)),
        source=msg.source,
        notice_id=msg.notice_id,
        notice_version=msg.notice_version,
    )


class NonFiniteNumber(ValueError):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def struct_to_dict(struct: struct_pb2.Struct, at: str = "") -> JsonObject:
    """Plain JSON values. Struct numbers are doubles; integral ones within ±2^53 come back as int so
    JSON -> Struct -> JSON is stable. Raises NonFiniteNumber (JSON cannot carry NaN or infinity)."""
    try:
        return _fast_dict(struct)
    except NonFiniteNumber:
        pass  # again, the slow way, which knows the path
    return {key: _plain(value, f"{at}/{_escape(key)}") for key, value in struct.fields.items()}


def _fast_dict(struct: struct_pb2.Struct) -> JsonObject:
    fields = struct.fields
    return {key: _fast_plain(fields[key]) for key in fields}


def _fast_plain(value: struct_pb2.Value) -> Any:
    """_plain without building a JSON pointer per value; raises NonFiniteNumber("") instead."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer():
            return int(number) if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER else number
        if number != number or number in _INFINITIES:
            raise NonFiniteNumber("")
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _fast_dict(value.struct_value)
    if kind == "list_value":
        return [_fast_plain(v) for v in value.list_value.values]
    return None


_INFINITIES = (math.inf, -math.inf)


def _plain(value: struct_pb2.Value, at: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise NonFiniteNumber(at)
        return int(number) if number.is_integer() and abs(number) <= MAX_SAFE_INTEGER else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, at)
    if kind == "list_value":
        return [_plain(v, f"{at}/{i}") for i, v in enumerate(value.list_value.values)]
    return None  # null_value, or a Value with no kind set


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


# --- gRPC requests -> intakes ------------------------------------------------------------------

_JSON_OBJECTS = ("properties", "traits", "context", "integrations")


def tracking_event_json(msg: pb.TrackingEvent) -> tuple[JsonObject, list[Violation]]:
    """A client-sent TrackingEvent as the Segment JSON it stands for, so gRPC and HTTP share one set
    of checks. received_at and source_id are the server's to set and are ignored."""
    problems: list[Violation] = []
    out: JsonObject = {}
    extra = _struct_field(msg.extra, "/extra", problems) if msg.HasField("extra") else {}
    for key, value in extra.items():
        if key in KNOWN_KEYS:
            problems.append(
                Violation(f"/extra/{_escape(key)}", "must not repeat a field the spec defines", "extra")
            )
        else:
            out[key] = value
    if msg.type != pb.EVENT_TYPE_UNSPECIFIED:
        call = PROTO_TO_CALL.get(msg.type)
        out["type"] = call.value if call is not None else f"unknown({msg.type})"
    for key, text in (
        ("messageId", msg.message_id),
        ("anonymousId", msg.anonymous_id),
        ("userId", msg.user_id),
        ("previousId", msg.previous_id),
        ("groupId", msg.group_id),
        ("event", msg.event),
        ("name", msg.name),
        ("category", msg.category),
    ):
        if text:
            out[key] = text
    for key in _JSON_OBJECTS:
        if msg.HasField(key):  # type: ignore[arg-type]
            out[key] = _struct_field(getattr(msg, key), f"/{key}", problems)
    for key, field in (
        ("timestamp", "timestamp"),
        ("originalTimestamp", "original_timestamp"),
        ("sentAt", "sent_at"),
    ):
        if msg.HasField(field):  # type: ignore[arg-type]
            stamp = _timestamp_text(getattr(msg, field))
            if stamp is None:
                problems.append(Violation(f"/{key}", "is outside the years 1-9999", "range"))
            else:
                out[key] = stamp
    if msg.HasField("consent") and "consent" not in out.get("context", {}):
        out.setdefault("context", {})
        out["context"] = {**out["context"], "consent": _consent_json(msg.consent)}
    return out, problems


def _struct_field(struct: struct_pb2.Struct, at: str, problems: list[Violation]) -> JsonObject:
    try:
        return struct_to_dict(struct, at)
    except NonFiniteNumber as bad:
        problems.append(Violation(bad.path, "must be a finite number (JSON has no NaN or infinity)", "type"))
        return {}


def _timestamp_text(ts: timestamp_pb2.Timestamp) -> str | None:
    try:
        return format_timestamp(ts.ToDatetime(tzinfo=UTC))
    except (ValueError, OverflowError, OSError):
        return None


def _consent_json(msg: pb.ConsentContext) -> JsonObject:
    out: JsonObject = {
        "categoryPreferences": {
            **dict.fromkeys(msg.purposes_denied, False),
            **dict.fromkeys(msg.purposes_granted, True),
        }
    }
    for key, value in (
        ("source", msg.source),
        ("noticeId", msg.notice_id),
        ("noticeVersion", msg.notice_version),
    ):
        if value:
            out[key] = value
    return out


def parse_tracking_event(
    msg: pb.TrackingEvent,
    *,
    call: CallType | None = None,
    index: int = 0,
    defaults: BatchDefaults = BatchDefaults(),  # noqa: B008 - frozen
    received_at: datetime,
    source_id: str = "",
    limits: Limits = DEFAULT_LIMITS,
) -> Intake:
    """A gRPC TrackingEvent through the same checks as an HTTP call. `call` is the RPC (Track, ...),
    which wins over msg.type as the URL does over the body's type in HTTP."""
    document, problems = tracking_event_json(msg)
    intake = parse_event(
        document,
        call=call,
        index=index,
        defaults=defaults,
        received_at=received_at,
        source_id=source_id,
        limits=limits,
    )
    if intake.event is not None and msg.HasField("consent") and intake.event.consent != _consent(msg.consent):
        problems.append(Violation("/consent", "disagrees with context.consent; send one of them", "consent"))
    if not problems:
        return intake
    reasons = [*problems, *intake.verdict.violations]
    kept = pb.TrackingEvent()
    kept.CopyFrom(msg)
    if call is not None:
        kept.type = CALL_TO_PROTO[call]
    return Intake(
        index=index,
        event=None,
        verdict=Verdict.quarantined(FailureKind.PROTOCOL_VIOLATION, reasons),
        raw_json=replayable_json(document, call, defaults),
        message_id=intake.message_id,
        wire_event=kept,
    )


def parse_batch_request(
    request: pb.BatchRequest,
    *,
    received_at: datetime,
    source_id: str = "",
    limits: Limits = DEFAULT_LIMITS,
    strict: bool = False,
    first_index: int = 0,
) -> ParsedRequest:
    """gRPC Batch (and each message of an Upload stream; `first_index` numbers events across it)."""
    if len(request.events) > limits.max_batch_events:
        raise PayloadTooLarge(
            f"the batch has {len(request.events)} events; the limit is {limits.max_batch_events}",
            violations=[("events", f"must hold at most {limits.max_batch_events} events")],
        )
    size = request.ByteSize()
    if size > limits.max_batch_bytes:
        raise PayloadTooLarge(
            f"the batch is {size} bytes; the limit is {limits.max_batch_bytes} bytes",
            violations=[("events", f"must be at most {limits.max_batch_bytes} bytes in all")],
        )
    problems: list[Violation] = []
    defaults = BatchDefaults(
        context=_struct_field(request.context, "/context", problems) if request.HasField("context") else None,
        integrations=(
            _struct_field(request.integrations, "/integrations", problems)
            if request.HasField("integrations")
            else None
        ),
        sent_at=_timestamp_text(request.sent_at) if request.HasField("sent_at") else None,
    )
    if problems:
        raise InvalidArgument(
            "the batch envelope is malformed", violations=[(v.path.lstrip("/"), v.message) for v in problems]
        )
    check_envelope_depth(defaults.context, defaults.integrations)
    intakes = tuple(
        parse_tracking_event(
            event,
            index=first_index + i,
            defaults=defaults,
            received_at=received_at,
            source_id=source_id,
            limits=limits,
        )
        for i, event in enumerate(request.events)
    )
    numbered = [
        replace(intake, index=intake.index - first_index) for intake in intakes if intake.event is None
    ]
    raise_if_undeliverable(numbered, prefix_batch=True)
    if strict:
        raise_if_rejected(numbered, prefix_batch=True)
    return ParsedRequest(write_key=None, intakes=intakes)


# --- answers and log records -------------------------------------------------------------------


def violations_to_proto(violations: Iterable[Violation]) -> list[pb.Violation]:
    return [pb.Violation(path=v.path, message=v.message, rule=v.rule) for v in violations]


def ack(intake: Intake, verdict: Verdict, *, duplicate: bool = False, quarantine_id: str = "") -> pb.EventAck:
    """The answer for one event once the service has decided (and durably recorded) it."""
    if not verdict.violations and verdict.kind is None and not verdict.is_quarantined:
        # The common case, without the empty fields (each constructor argument costs).
        return pb.EventAck(
            message_id=intake.message_id,
            status=pb.ACK_STATUS_DUPLICATE if duplicate else pb.ACK_STATUS_ACCEPTED,
            index=intake.index,
        )
    if verdict.is_quarantined:
        status = pb.ACK_STATUS_QUARANTINED
    elif duplicate:
        status = pb.ACK_STATUS_DUPLICATE
    else:
        status = pb.ACK_STATUS_ACCEPTED
    return pb.EventAck(
        message_id=intake.message_id,
        status=status,
        reasons=violations_to_proto(verdict.violations),
        kind=KIND_TO_PROTO[verdict.kind] if verdict.kind is not None else pb.FAILURE_KIND_UNSPECIFIED,
        index=intake.index,
        quarantine_id=quarantine_id if verdict.is_quarantined else "",
    )


def accepted_record(
    event: CanonicalEvent,
    verdict: Verdict,
    *,
    workspace: str,
    user_id_index: str = "",
    anonymous_id_index: str = "",
) -> pb.EventAccepted:
    """The EventAccepted to append; the blind indexes are the event store's keyed hashes of the ids."""
    if verdict.disposition is Disposition.QUARANTINED:
        raise ValueError("a quarantined event is recorded with quarantined_record")
    record = pb.EventAccepted(
        workspace=workspace,
        source_id=event.source_id,
        user_id_index=user_id_index,
        anonymous_id_index=anonymous_id_index,
    )
    if verdict.violations:
        record.violations.extend(violations_to_proto(verdict.violations))
    _fill_proto(record.event, event)
    return record


def quarantined_record(
    intake: Intake,
    verdict: Verdict,
    *,
    workspace: str,
    source_id: str,
    quarantine_id: str,
    received_at: datetime,
    user_id_index: str = "",
    anonymous_id_index: str = "",
) -> pb.EventQuarantined:
    if verdict.kind is None:
        raise ValueError("only a quarantine verdict is recorded with quarantined_record")
    record = pb.EventQuarantined(
        quarantine_id=quarantine_id,
        reasons=violations_to_proto(verdict.violations),
        kind=KIND_TO_PROTO[verdict.kind],
        workspace=workspace,
        source_id=source_id,
        user_id_index=user_id_index,
        anonymous_id_index=anonymous_id_index,
    )
    record.received_at.FromDatetime(received_at)
    if intake.event is not None:
        _fill_proto(record.event, intake.event)
    elif intake.wire_event is not None:
        record.event.CopyFrom(intake.wire_event)
    else:
        record.raw_json = intake.raw_json
    return record


# Kinds decided after parsing: their record holds the parsed event, not what the client sent.
_PARSED_KINDS = (pb.FAILURE_KIND_SCHEMA_VIOLATION, pb.FAILURE_KIND_UNPLANNED_EVENT)


def intake_from_quarantined(record: pb.EventQuarantined, *, limits: Limits = DEFAULT_LIMITS) -> Intake:
    """Re-parse a quarantined event for replay, with its original receivedAt so the clock-skew
    correction and the derived messageId come out as they would have the first time."""
    received_at = _datetime(record.received_at)
    if record.HasField("event") and record.kind in _PARSED_KINDS:
        event = event_from_proto(record.event)
        # Parsed once already: only the plan needs another look; re-deriving would be a no-op.
        return Intake(index=0, event=event, verdict=Verdict.accepted(), message_id=event.message_id)
    if record.HasField("event"):  # a gRPC event that failed parsing, kept as sent
        return parse_tracking_event(
            record.event, received_at=received_at, source_id=record.source_id, limits=limits
        )
    try:
        document = orjson.loads(record.raw_json)
    except orjson.JSONDecodeError:
        document = None
    return parse_event(document, received_at=received_at, source_id=record.source_id, limits=limits)


_PLAN_MODES: dict[pb.PlanMode.ValueType, PlanMode] = {
    pb.PLAN_MODE_UNSPECIFIED: PlanMode.ALLOW,
    pb.PLAN_MODE_ALLOW: PlanMode.ALLOW,
    pb.PLAN_MODE_FLAG: PlanMode.FLAG,
    pb.PLAN_MODE_BLOCK: PlanMode.BLOCK,
}


def plan_from_proto(source_id: str, msg: pb.TrackingPlan) -> TrackingPlan:
    """Raises InvalidArgument naming the schema that is not JSON (compile errors come from PlanCache)."""
    return TrackingPlan.from_json_texts(
        source_id,
        msg.version,
        mode=_PLAN_MODES.get(msg.mode, PlanMode.ALLOW),
        unplanned_mode=_PLAN_MODES.get(msg.unplanned_mode, PlanMode.ALLOW),
        event_schemas=dict(msg.event_schemas),
        identify_traits_schema=msg.identify_traits_schema,
    )
