"""onefold.ingest.v1 messages: TrackingEvent round trips, gRPC requests through the same checks,
log records, acks, quarantine replay, the personal-data marks, and dedupe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.options.v1 import options_pb2
from onefold.ingest.domain import (
    BatchDefaults,
    CallType,
    FailureKind,
    Limits,
    PayloadTooLarge,
    PlanCache,
    PlanMode,
    TrackingPlan,
    Verdict,
    accepted_record,
    ack,
    decide,
    event_from_proto,
    first_sightings,
    intake_from_quarantined,
    parse_batch_request,
    parse_event,
    parse_request,
    parse_tracking_event,
    quarantined_record,
    to_json,
    to_proto,
)
from onefold.platform.errors import InvalidArgument

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
FULL = {
    "type": "track",
    "messageId": "ajs-next-1714564800-abc",
    "anonymousId": "507f191e810c19729de860ea",
    "userId": "019mr8mf4r",
    "event": "Order Completed",
    "properties": {
        "order_id": "50314b8e",
        "total": 27.5,
        "products": [{"sku": "45790-32", "qty": 2}],
        "coupon": None,
    },
    "traits": {"plan": "premium"},
    "context": {
        "ip": "8.8.8.8",
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "consent": {
            "categoryPreferences": {"Advertising": False, "Analytics": True},
            "noticeVersion": "2024-03",
        },
    },
    "integrations": {"All": True, "Mixpanel": False},
    "timestamp": "2024-05-01T11:59:58.123456Z",
    "sentAt": "2024-05-01T11:59:59.500Z",
    "channel": "browser",
}


def parsed(body: dict[str, object] = FULL, **kwargs: object):  # type: ignore[no-untyped-def]
    intake = parse_event(body, received_at=NOW, source_id="web", **kwargs)  # type: ignore[arg-type]
    assert intake.event is not None, intake.verdict
    return intake.event


# --- round trips ----------------------------------------------------------------------------------


def test_json_to_proto_and_back_is_lossless() -> None:
    event = parsed()
    msg = to_proto(event)
    assert msg.type == pb.EVENT_TYPE_TRACK
    assert msg.properties["products"][0]["sku"] == "45790-32"
    assert list(msg.consent.purposes_granted) == ["Analytics"]
    assert msg.consent.notice_version == "2024-03"
    assert msg.extra["channel"] == "browser"
    assert msg.source_id == "web"
    again = event_from_proto(pb.TrackingEvent.FromString(msg.SerializeToString()))
    assert again == event
    assert to_json(again) == to_json(event)


def test_to_json_is_segment_shaped_and_reparses_to_the_same_event() -> None:
    event = parsed()
    out = to_json(event)
    assert out["timestamp"] == "2024-05-01T11:59:58.623456Z"  # corrected: received 12:00:00, sent 11:59:59.5
    assert out["originalTimestamp"] == "2024-05-01T11:59:58.123456Z"
    assert out["receivedAt"] == "2024-05-01T12:00:00.000Z"
    assert out["channel"] == "browser"
    assert parse_event(out, received_at=NOW, source_id="web").event == event


def test_integers_survive_struct_doubles() -> None:
    event = parsed({"type": "identify", "userId": "u", "traits": {"age": 41, "score": 2**53, "ratio": 0.5}})
    back = event_from_proto(to_proto(event))
    assert back.traits == {"age": 41, "score": 2**53, "ratio": 0.5}
    assert type(back.traits["age"]) is int


# --- gRPC requests --------------------------------------------------------------------------------


def grpc_event(**fields: object) -> pb.TrackingEvent:
    return pb.TrackingEvent(**fields)  # type: ignore[arg-type]


def test_grpc_track_goes_through_the_same_checks() -> None:
    msg = grpc_event(user_id=" u1 ", event="Signed Up")
    msg.properties.update({"plan": "pro", "seats": 3})
    msg.timestamp.FromDatetime(NOW - timedelta(minutes=1))
    intake = parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW, source_id="ios")
    assert intake.event is not None
    assert (intake.event.user_id, intake.event.properties["seats"], intake.event.source_id) == (
        "u1",
        3,
        "ios",
    )
    assert intake.event.timestamp == NOW - timedelta(minutes=1)
    assert intake.event.message_id  # derived


def test_grpc_rpc_wins_over_the_message_type_and_ignores_client_received_at() -> None:
    msg = grpc_event(type=pb.EVENT_TYPE_IDENTIFY, user_id="u1", event="E")
    msg.received_at.FromDatetime(NOW - timedelta(days=300))
    event = parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW).event
    assert event is not None and event.type is CallType.TRACK and event.received_at == NOW


def test_grpc_missing_ids_quarantine_with_the_event_as_json() -> None:
    intake = parse_tracking_event(grpc_event(event="E"), call=CallType.TRACK, received_at=NOW)
    assert intake.verdict.kind is FailureKind.PROTOCOL_VIOLATION
    assert orjson.loads(intake.raw_json) == {"type": "track", "event": "E"}


def test_grpc_non_finite_numbers_are_protocol_violations() -> None:
    msg = grpc_event(user_id="u", event="E")
    msg.properties.update({"price": float("nan"), "ok": 1})
    intake = parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW)
    assert intake.verdict.kind is FailureKind.PROTOCOL_VIOLATION
    assert [v.path for v in intake.verdict.violations] == ["/properties/price"]


def test_grpc_extra_cannot_smuggle_spec_fields() -> None:
    msg = grpc_event(user_id="u", event="E")
    msg.extra.update({"userId": "someone-else", "channel": "server"})
    intake = parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW)
    assert [v.path for v in intake.verdict.violations] == ["/extra/userId"]


def test_grpc_typed_consent_lands_in_context() -> None:
    msg = grpc_event(
        user_id="u", event="E", consent=pb.ConsentContext(purposes_granted=["marketing"], source="pos")
    )
    event = parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW).event
    assert event is not None
    assert event.context["consent"] == {"categoryPreferences": {"marketing": True}, "source": "pos"}
    assert event.consent is not None and event.consent.granted == ("marketing",)


def test_grpc_consent_that_disagrees_with_context_is_refused() -> None:
    msg = grpc_event(user_id="u", event="E", consent=pb.ConsentContext(purposes_granted=["marketing"]))
    msg.context.update({"consent": {"categoryPreferences": {"marketing": False}}})
    intake = parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW)
    assert [v.path for v in intake.verdict.violations] == ["/consent"]


def test_our_own_proto_is_accepted_back_unchanged() -> None:
    event = parsed()
    again = parse_tracking_event(to_proto(event), received_at=NOW, source_id="web").event
    assert again == event


def test_grpc_batch_applies_defaults_and_numbers_events() -> None:
    request = pb.BatchRequest(
        events=[
            grpc_event(type=pb.EVENT_TYPE_TRACK, user_id="u", event="A"),
            grpc_event(type=pb.EVENT_TYPE_PAGE),
        ]
    )
    request.context.update({"locale": "zh-CN"})
    request.sent_at.FromDatetime(NOW - timedelta(hours=1))
    request.events[0].timestamp.FromDatetime(NOW - timedelta(hours=1, minutes=5))
    result = parse_batch_request(request, received_at=NOW, first_index=500)
    first, second = result.intakes
    assert first.event is not None and first.event.context == {"locale": "zh-CN"}
    assert first.event.timestamp == NOW - timedelta(minutes=5)
    assert (first.index, second.index) == (500, 501)
    assert second.verdict.kind is FailureKind.PROTOCOL_VIOLATION
    with pytest.raises(InvalidArgument) as caught:
        parse_batch_request(request, received_at=NOW, first_index=500, strict=True)
    assert [f for f, _ in caught.value.violations] == ["batch[1].userId"]


def test_grpc_batch_limits() -> None:
    small = Limits(max_batch_events=2, max_batch_bytes=200)
    with pytest.raises(PayloadTooLarge):
        parse_batch_request(pb.BatchRequest(events=[grpc_event()] * 3), received_at=NOW, limits=small)
    with pytest.raises(PayloadTooLarge):
        parse_batch_request(
            pb.BatchRequest(events=[grpc_event(event="x" * 300)]), received_at=NOW, limits=small
        )


def test_grpc_oversize_event_is_a_size_violation() -> None:
    msg = grpc_event(user_id="u", event="E")
    msg.properties.update({"blob": "x" * 40_000})
    assert (
        parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW).verdict.kind
        is FailureKind.SIZE_VIOLATION
    )


# --- records, acks, replay ------------------------------------------------------------------------


def test_accepted_record_carries_flag_violations_and_blind_indexes() -> None:
    plan = PlanCache().get(
        TrackingPlan("web", 1, PlanMode.FLAG, event_schemas={"Order Completed": {"required": ["currency"]}})
    )
    intake = parse_event(FULL, received_at=NOW, source_id="web")
    verdict = decide(intake, plan)
    assert intake.event is not None
    record = accepted_record(intake.event, verdict, workspace="acme", user_id_index="h1")
    assert (record.workspace, record.source_id, record.user_id_index) == ("acme", "web", "h1")
    assert [v.rule for v in record.violations] == ["required"]
    assert event_from_proto(record.event) == intake.event
    answer = ack(intake, verdict)
    assert (answer.status, answer.message_id, len(answer.reasons)) == (
        pb.ACK_STATUS_ACCEPTED,
        FULL["messageId"],
        1,
    )
    with pytest.raises(ValueError, match="quarantined"):
        accepted_record(intake.event, Verdict.quarantined(FailureKind.SCHEMA_VIOLATION, []), workspace="acme")


def test_duplicate_ack() -> None:
    intake = parse_event(FULL, received_at=NOW)
    assert ack(intake, intake.verdict, duplicate=True).status == pb.ACK_STATUS_DUPLICATE


def test_schema_quarantine_keeps_the_event_and_replays_after_the_plan_is_fixed() -> None:
    strict = PlanCache().get(
        TrackingPlan("web", 1, PlanMode.BLOCK, event_schemas={"Order Completed": {"required": ["currency"]}})
    )
    intake = parse_event(FULL, received_at=NOW, source_id="web")
    verdict = decide(intake, strict)
    record = quarantined_record(
        intake, verdict, workspace="acme", source_id="web", quarantine_id="q1", received_at=NOW
    )
    assert record.HasField("event") and not record.raw_json
    assert record.kind == pb.FAILURE_KIND_SCHEMA_VIOLATION
    answer = ack(intake, verdict, quarantine_id="q1")
    assert (answer.status, answer.kind, answer.quarantine_id) == (
        pb.ACK_STATUS_QUARANTINED,
        pb.FAILURE_KIND_SCHEMA_VIOLATION,
        "q1",
    )

    replay = intake_from_quarantined(pb.EventQuarantined.FromString(record.SerializeToString()))
    assert replay.event == intake.event  # same messageId, so a replay is deduped like any retry
    fixed = PlanCache().get(TrackingPlan("web", 2, PlanMode.BLOCK, event_schemas={"Order Completed": {}}))
    assert not decide(replay, fixed).is_quarantined


def test_protocol_quarantine_keeps_raw_json_and_replays_with_the_original_received_at() -> None:
    body = {
        "batch": [{"type": "track", "event": "E", "timestamp": "2024-05-01T11:00:00Z"}],
        "sentAt": "2024-05-01T11:30:00Z",
    }
    (intake,) = parse_request(orjson.dumps(body), "batch", received_at=NOW, source_id="web").intakes
    record = quarantined_record(
        intake, intake.verdict, workspace="acme", source_id="web", quarantine_id="q2", received_at=NOW
    )
    assert not record.HasField("event") and record.raw_json
    assert record.kind == pb.FAILURE_KIND_PROTOCOL_VIOLATION
    # Still broken: replay says so again.
    assert intake_from_quarantined(record).verdict.kind is FailureKind.PROTOCOL_VIOLATION
    # The data is fixed (as an operator would, before re-submitting).
    record.raw_json = orjson.dumps({**orjson.loads(record.raw_json), "userId": "u"})
    replay = intake_from_quarantined(record)
    assert replay.event is not None
    assert replay.event.timestamp == NOW - timedelta(minutes=30)  # same skew correction as the first time
    assert replay.event.source_id == "web"


def test_quarantined_record_needs_a_quarantine_verdict() -> None:
    intake = parse_event(FULL, received_at=NOW)
    with pytest.raises(ValueError, match="quarantine"):
        quarantined_record(
            intake, intake.verdict, workspace="a", source_id="s", quarantine_id="q", received_at=NOW
        )


def test_unreadable_raw_json_replays_as_a_protocol_violation() -> None:
    record = pb.EventQuarantined(raw_json=b"\xff not json", kind=pb.FAILURE_KIND_PROTOCOL_VIOLATION)
    record.received_at.FromDatetime(NOW)
    assert intake_from_quarantined(record).verdict.kind is FailureKind.PROTOCOL_VIOLATION


def test_batch_defaults_are_exported_for_import_paths() -> None:
    defaults = BatchDefaults(context={"source": "crm"})
    event = parse_event({"type": "identify", "userId": "u"}, defaults=defaults, received_at=NOW).event
    assert event is not None and event.context == {"source": "crm"}


# --- personal-data marks --------------------------------------------------------------------------


def _marked(descriptor: object, option: object) -> set[str]:
    return {f.name for f in descriptor.fields if f.GetOptions().Extensions[option]}  # type: ignore[attr-defined]


def test_personal_fields_are_marked_for_encryption() -> None:
    assert _marked(pb.TrackingEvent.DESCRIPTOR, options_pb2.pii) == {
        "anonymous_id", "user_id", "previous_id", "properties", "traits", "context", "extra",
    }  # fmt: skip
    assert _marked(pb.EventQuarantined.DESCRIPTOR, options_pb2.pii) == {"raw_json"}
    assert _marked(pb.EventAccepted.DESCRIPTOR, options_pb2.blind_index) == {
        "user_id_index",
        "anonymous_id_index",
    }
    # Reasons are not encrypted, so they must never quote values: checked across the parser's tests.
    assert _marked(pb.Violation.DESCRIPTOR, options_pb2.pii) == set()


# --- dedupe ---------------------------------------------------------------------------------------


def test_first_sightings_within_a_batch_and_against_seen() -> None:
    assert first_sightings(["a", "b", "a", "c"], {"c"}) == [True, True, False, False]


def test_device_clocks_before_1970_round_trip() -> None:
    # A device whose clock was reset: skew correction fixes `timestamp`, the original is kept as sent.
    event = parsed(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": "1969-12-31T23:59:58.5Z",
            "sentAt": "1970-01-01T00:00:01Z",
        }
    )
    assert event.timestamp == NOW - timedelta(seconds=2.5)
    assert event_from_proto(to_proto(event)) == event


def test_grpc_event_that_fails_parsing_is_quarantined_as_sent_and_replays() -> None:
    msg = grpc_event(user_id="u", event="E", message_id="m-42")
    msg.properties.update({"price": float("inf"), "sku": "a"})
    intake = parse_tracking_event(msg, call=CallType.TRACK, received_at=NOW, source_id="ios")
    assert intake.message_id == "m-42"  # the client can match the answer to what it sent
    record = quarantined_record(
        intake, intake.verdict, workspace="w", source_id="ios", quarantine_id="q", received_at=NOW
    )
    assert record.event.properties["sku"] == "a" and record.event.type == pb.EVENT_TYPE_TRACK  # nothing lost
    assert intake_from_quarantined(record).verdict.kind is FailureKind.PROTOCOL_VIOLATION
    record.event.properties["price"] = 9.5  # the operator fixes the data
    replay = intake_from_quarantined(record)
    assert replay.event is not None and replay.event.properties == {"price": 9.5, "sku": "a"}
    assert replay.message_id == "m-42"


def test_http_event_that_fails_parsing_still_answers_with_its_message_id() -> None:
    (intake,) = parse_request(b'{"event": "E", "messageId": " m-7 "}', "track", received_at=NOW).intakes
    assert intake.event is None and intake.message_id == "m-7"
    assert ack(intake, intake.verdict, quarantine_id="q").message_id == "m-7"
