"""Segment HTTP tracking API conformance of the pure parser: each call type, limits, errors, skew."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from onefold.contracts.common.v1 import errors_pb2
from onefold.ingest.domain import (
    CallType,
    Consent,
    Disposition,
    FailureKind,
    Limits,
    PayloadTooLarge,
    field_path,
    parse_event,
    parse_request,
    to_json,
)
from onefold.platform.errors import InvalidArgument

# The examples mirror the Segment HTTP API documentation's (user 019mr8mf4r of Initech).
RECEIVED = datetime(2012, 12, 2, 0, 32, 0, tzinfo=UTC)
USER = "019mr8mf4r"


def one(body: dict[str, object], call: str, **kwargs: object):  # type: ignore[no-untyped-def]
    parsed = parse_request(orjson.dumps(body), call, received_at=RECEIVED, **kwargs)  # type: ignore[arg-type]
    assert len(parsed.intakes) == 1
    return parsed.intakes[0]


def accepted(body: dict[str, object], call: str):  # type: ignore[no-untyped-def]
    intake = one(body, call)
    assert intake.event is not None, intake.verdict
    assert intake.verdict.disposition is Disposition.ACCEPTED
    return intake.event


def quarantined(
    body: object, call: str, kind: FailureKind = FailureKind.PROTOCOL_VIOLATION
) -> dict[str, str]:
    intake = one(body, call)  # type: ignore[arg-type]
    assert intake.event is None
    assert intake.verdict.kind is kind, intake.verdict
    assert intake.raw_json  # kept for replay, never dropped
    return {v.path: v.message for v in intake.verdict.violations}


# --- each call type -------------------------------------------------------------------------------


def test_identify() -> None:
    event = accepted(
        {
            "userId": USER,
            "traits": {"email": "pgibbons@example.com", "name": "Peter Gibbons", "industry": "Technology"},
            "context": {"ip": "24.5.68.47"},
            "timestamp": "2012-12-02T00:30:08.276Z",
        },
        "identify",
    )
    assert event.type is CallType.IDENTIFY
    assert event.user_id == USER
    assert event.traits["email"] == "pgibbons@example.com"
    assert event.context == {"ip": "24.5.68.47"}
    assert event.timestamp == datetime(2012, 12, 2, 0, 30, 8, 276000, tzinfo=UTC)
    assert event.received_at == RECEIVED


def test_track() -> None:
    event = accepted(
        {
            "userId": USER,
            "event": "Item Purchased",
            "properties": {"name": "Leap to Conclusions Mat", "revenue": 14.99},
            "context": {"ip": "24.5.68.47"},
            "timestamp": "2012-12-02T00:30:12.984Z",
        },
        "track",
    )
    assert (event.type, event.event) == (CallType.TRACK, "Item Purchased")
    assert event.properties == {"name": "Leap to Conclusions Mat", "revenue": 14.99}


def test_page_and_screen_carry_name_and_category() -> None:
    page = accepted(
        {
            "userId": USER,
            "name": "Tracking HTTP API",
            "category": "Docs",
            "properties": {"url": "https://x.test/a"},
        },
        "page",
    )
    assert (page.type, page.name, page.category) == (CallType.PAGE, "Tracking HTTP API", "Docs")
    screen = accepted({"anonymousId": "507f191e810c19729de860ea", "name": "Home"}, "screen")
    assert (screen.type, screen.name, screen.anonymous_id) == (
        CallType.SCREEN,
        "Home",
        "507f191e810c19729de860ea",
    )


def test_group() -> None:
    event = accepted(
        {
            "userId": USER,
            "groupId": "8e9df332ac",
            "traits": {"name": "Initech", "industry": "Technology", "employees": 329, "plan": "enterprise"},
        },
        "group",
    )
    assert (event.group_id, event.traits["employees"]) == ("8e9df332ac", 329)


def test_alias() -> None:
    event = accepted({"previousId": "39239-239239-239239-23923", "userId": USER}, "alias")
    assert (event.previous_id, event.user_id) == ("39239-239239-239239-23923", USER)


def test_batch_mixes_types_and_applies_batch_context() -> None:
    body = {
        "batch": [
            {"type": "identify", "userId": USER, "traits": {"email": "pgibbons@example.com"}},
            {"type": "track", "userId": USER, "event": "Signed Up", "context": {"device": {"name": "mine"}}},
            {"type": "page", "anonymousId": "a1", "name": "Pricing"},
        ],
        "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}, "locale": "en-US"},
        "integrations": {"All": True},
    }
    parsed = parse_request(orjson.dumps(body), "batch", received_at=RECEIVED)
    events = [i.event for i in parsed.intakes]
    assert [e.type for e in events if e] == [CallType.IDENTIFY, CallType.TRACK, CallType.PAGE]
    assert [i.index for i in parsed.intakes] == [0, 1, 2]
    # Batch-level context applies to each event; the event's own keys win.
    assert events[0] and events[0].context["device"]["name"] == "Apple iPhone 6"
    assert events[1] and events[1].context == {"device": {"name": "mine"}, "locale": "en-US"}
    assert all(e and e.integrations == {"All": True} for e in events)


def test_b_is_an_alias_of_batch_and_call_names_are_normalised() -> None:
    parsed = parse_request(orjson.dumps({"batch": []}), " B ", received_at=RECEIVED)
    assert parsed.intakes == ()


def test_write_key_in_body_is_returned_not_stored() -> None:
    parsed = parse_request(
        orjson.dumps({"writeKey": "wk_123", "userId": USER, "event": "E"}), "track", received_at=RECEIVED
    )
    assert parsed.write_key == "wk_123"
    event = parsed.intakes[0].event
    assert (
        event is not None
        and "writeKey" not in event.extra
        and "wk_123" not in orjson.dumps(to_json(event)).decode()
    )


# --- normalisation --------------------------------------------------------------------------------


def test_trims_ids_lowercases_type_and_keeps_unknown_fields() -> None:
    parsed = parse_request(
        orjson.dumps(
            {
                "batch": [
                    {
                        "type": " TRACK ",
                        "userId": "  u1 ",
                        "event": " Clicked ",
                        "channel": "server",
                        "version": 2,
                    }
                ]
            }
        ),
        "batch",
        received_at=RECEIVED,
    )
    event = parsed.intakes[0].event
    assert event is not None
    assert (event.type, event.user_id, event.event) == (CallType.TRACK, "u1", "Clicked")
    assert event.extra == {"channel": "server", "version": 2}


def test_numeric_ids_become_strings() -> None:
    event = accepted({"userId": 12345, "event": "E"}, "track")
    assert event.user_id == "12345"


def test_whitespace_only_ids_count_as_missing() -> None:
    assert "/userId" in quarantined({"userId": "   ", "event": "E"}, "track")


def test_body_type_does_not_override_the_endpoint() -> None:
    event = accepted({"type": "identify", "userId": USER, "event": "E"}, "track")
    assert event.type is CallType.TRACK


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2012-12-02T00:30:08.276Z", datetime(2012, 12, 2, 0, 30, 8, 276000, tzinfo=UTC)),
        ("2012-12-02T08:30:08.276+08:00", datetime(2012, 12, 2, 0, 30, 8, 276000, tzinfo=UTC)),
        ("2012-12-02T00:30:08", datetime(2012, 12, 2, 0, 30, 8, tzinfo=UTC)),  # no zone = UTC
        ("2012-12-02 00:30:08.123456789Z", datetime(2012, 12, 2, 0, 30, 8, 123456, tzinfo=UTC)),
        (1354408208276, datetime(2012, 12, 2, 0, 30, 8, 276000, tzinfo=UTC)),  # epoch millis
        (1354408208276.5, datetime(2012, 12, 2, 0, 30, 8, 276500, tzinfo=UTC)),
    ],
)
def test_timestamp_formats(value: object, expected: datetime) -> None:
    assert accepted({"userId": USER, "event": "E", "timestamp": value}, "track").timestamp == expected


# --- clock skew -----------------------------------------------------------------------------------


def test_clock_skew_is_corrected_from_sent_at_and_received_at() -> None:
    # The device clock runs 1 hour behind: it says it sent at 23:32 what happened at 23:30.
    event = accepted(
        {"userId": USER, "event": "E", "timestamp": "2012-12-01T23:30:00Z", "sentAt": "2012-12-01T23:32:00Z"},
        "track",
    )
    assert event.original_timestamp == datetime(2012, 12, 1, 23, 30, tzinfo=UTC)
    assert event.timestamp == RECEIVED - timedelta(minutes=2)  # receivedAt - (sentAt - timestamp)
    assert event.sent_at == datetime(2012, 12, 1, 23, 32, tzinfo=UTC)


def test_no_sent_at_keeps_the_device_timestamp() -> None:
    event = accepted({"userId": USER, "event": "E", "timestamp": "2012-12-02T00:10:00Z"}, "track")
    assert event.timestamp == event.original_timestamp == datetime(2012, 12, 2, 0, 10, tzinfo=UTC)


def test_no_timestamp_means_received_at() -> None:
    event = accepted({"userId": USER, "event": "E", "sentAt": "2012-12-01T20:00:00Z"}, "track")
    assert event.timestamp == RECEIVED
    bare = accepted({"userId": USER, "event": "E"}, "track")
    assert bare.timestamp == bare.original_timestamp == RECEIVED


def test_batch_sent_at_applies_to_events_without_their_own() -> None:
    body = {
        "batch": [
            {"type": "track", "userId": USER, "event": "A", "timestamp": "2012-12-02T00:00:00Z"},
            {
                "type": "track",
                "userId": USER,
                "event": "B",
                "timestamp": "2012-12-02T00:00:00Z",
                "sentAt": "2012-12-02T00:30:00Z",
            },
        ],
        "sentAt": "2012-12-02T00:01:00Z",
    }
    a, b = (i.event for i in parse_request(orjson.dumps(body), "batch", received_at=RECEIVED).intakes)
    assert a is not None and a.timestamp == RECEIVED - timedelta(minutes=1)
    assert b is not None and b.timestamp == RECEIVED - timedelta(minutes=30)


def test_original_timestamp_wins_so_reparsing_does_not_correct_twice() -> None:
    event = accepted(
        {
            "userId": USER,
            "event": "E",
            "originalTimestamp": "2012-12-01T23:30:00Z",
            "timestamp": "2012-12-02T00:30:00Z",  # an already corrected value, e.g. from an export
            "sentAt": "2012-12-01T23:32:00Z",
        },
        "track",
    )
    assert event.timestamp == RECEIVED - timedelta(minutes=2)


def test_far_future_and_too_old_timestamps_are_quarantined() -> None:
    future = quarantined(
        {"userId": USER, "event": "E", "timestamp": "2012-12-04T00:00:00Z"},
        "track",
        FailureKind.TIMESTAMP_VIOLATION,
    )
    assert "future" in future["/timestamp"]
    old = quarantined(
        {"userId": USER, "event": "E", "timestamp": 1354408}, "track", FailureKind.TIMESTAMP_VIOLATION
    )
    assert "past" in old["/timestamp"]  # epoch seconds sent as millis: 1970


def test_skew_correction_makes_a_far_future_device_clock_fine() -> None:
    # A device a year ahead is corrected by its own sentAt, as Segment does.
    event = accepted(
        {"userId": USER, "event": "E", "timestamp": "2013-12-02T00:30:00Z", "sentAt": "2013-12-02T00:31:00Z"},
        "track",
    )
    assert event.timestamp == RECEIVED - timedelta(minutes=1)


@pytest.mark.parametrize("value", ["yesterday", "2012-13-45T00:00:00Z", True, {"t": 1}, "2012W01", 1e300])
def test_unparseable_timestamps(value: object) -> None:
    problems = quarantined(
        {"userId": USER, "event": "E", "timestamp": value}, "track", FailureKind.TIMESTAMP_VIOLATION
    )
    assert set(problems) == {"/timestamp"}


def test_bad_sent_at_is_a_timestamp_violation() -> None:
    problems = quarantined(
        {"userId": USER, "event": "E", "sentAt": "soon"}, "track", FailureKind.TIMESTAMP_VIOLATION
    )
    assert set(problems) == {"/sentAt"}


def test_max_age_is_configurable_for_historical_imports() -> None:
    body = orjson.dumps({"userId": USER, "event": "E", "timestamp": "2001-01-01T00:00:00Z"})
    limits = Limits(max_age=timedelta(days=365 * 30))
    assert parse_request(body, "track", received_at=RECEIVED, limits=limits).intakes[0].event is not None


# --- required fields and types --------------------------------------------------------------------


@pytest.mark.parametrize("call", ["track", "identify", "page", "screen", "group"])
def test_user_id_or_anonymous_id_is_required(call: str) -> None:
    body = {"event": "E", "groupId": "g1"}
    assert quarantined(body, call)["/userId"] == "userId or anonymousId is required"
    accepted({**body, "anonymousId": "anon-1"}, call)


def test_track_needs_an_event_name() -> None:
    assert quarantined({"userId": USER, "properties": {}}, "track") == {"/event": "is required for track"}


def test_group_needs_a_group_id() -> None:
    assert quarantined({"userId": USER}, "group") == {"/groupId": "is required for group"}


def test_alias_needs_user_id_and_previous_id() -> None:
    assert set(quarantined({"anonymousId": "a"}, "alias")) == {"/userId", "/previousId"}
    assert set(quarantined({"userId": USER}, "alias")) == {"/previousId"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("userId", ["a"]),
        ("anonymousId", 1.5),
        ("userId", True),
        ("event", 7),
        ("messageId", {"a": 1}),
        ("properties", [1, 2]),
        ("traits", "x"),
        ("context", 3),
        ("integrations", "all"),
        ("name", False),
    ],
)
def test_wrong_types_name_the_field(field: str, value: object) -> None:
    body = {"userId": USER, "anonymousId": "a", "event": "E", field: value}
    problems = quarantined(body, "track")
    assert f"/{field}" in problems
    assert repr(value) not in problems[f"/{field}"]  # messages never quote values (may be personal)


def test_batch_item_without_a_type() -> None:
    parsed = parse_request(
        orjson.dumps({"batch": [{"userId": USER}, {"type": "nope", "userId": USER}]}),
        "batch",
        received_at=RECEIVED,
    )
    assert [dict((v.path, v.rule) for v in i.verdict.violations) for i in parsed.intakes] == [
        {"/type": "required"},
        {"/type": "enum"},
    ]


def test_batch_item_that_is_not_an_object() -> None:
    parsed = parse_request(orjson.dumps({"batch": ["hello", None, 3]}), "batch", received_at=RECEIVED)
    assert all(i.verdict.kind is FailureKind.PROTOCOL_VIOLATION for i in parsed.intakes)
    assert [i.raw_json for i in parsed.intakes] == [b'"hello"', b"null", b"3"]


def test_malformed_consent_is_an_error_not_ignored() -> None:
    problems = quarantined(
        {"userId": USER, "event": "E", "context": {"consent": {"categoryPreferences": {"Ads": "yes"}}}},
        "track",
    )
    assert "/context/consent/categoryPreferences" in problems


def test_consent_context() -> None:
    event = accepted(
        {
            "userId": USER,
            "event": "E",
            "context": {
                "consent": {
                    "categoryPreferences": {"Advertising": True, "Analytics": False, "Functional": True},
                    "source": "cmp:onetrust",
                    "noticeVersion": 3,
                }
            },
        },
        "track",
    )
    assert event.consent == Consent(
        granted=("Advertising", "Functional"),
        denied=("Analytics",),
        source="cmp:onetrust",
        notice_version="3",
    )


def test_unsafe_integers_are_refused_with_a_hint() -> None:
    problems = quarantined(
        {"userId": USER, "event": "E", "properties": {"order": {"ids": [2**53 + 1]}}}, "track"
    )
    assert "send it as a string" in problems["/properties/order/ids/0"]
    accepted({"userId": USER, "event": "E", "properties": {"n": 2**53, "pi": 3.141592653589793}}, "track")


# --- limits ---------------------------------------------------------------------------------------


def test_message_id_at_most_100_characters() -> None:
    accepted({"userId": USER, "event": "E", "messageId": "m" * 100}, "track")
    assert "/messageId" in quarantined({"userId": USER, "event": "E", "messageId": "m" * 101}, "track")


def test_message_id_without_nul() -> None:
    # The dedupe key is stored as text; PostgreSQL text cannot hold NUL, so it is refused everywhere.
    assert "/messageId" in quarantined({"userId": USER, "event": "E", "messageId": "m\x00"}, "track")
    accepted({"userId": USER, "event": "E", "messageId": "m\u2028\t"}, "track")


def test_identify_traits_fewer_than_300() -> None:
    accepted({"userId": USER, "traits": {f"t{i}": i for i in range(299)}}, "identify")
    problems = quarantined({"userId": USER, "traits": {f"t{i}": i for i in range(300)}}, "identify")
    assert "300" in problems["/traits"]


def test_single_call_over_32_kib_is_rejected_as_a_request() -> None:
    body = orjson.dumps({"userId": USER, "event": "E", "properties": {"blob": "x" * 33_000}})
    with pytest.raises(PayloadTooLarge) as caught:
        parse_request(body, "track", received_at=RECEIVED)
    assert caught.value.reason == errors_pb2.PAYLOAD_TOO_LARGE
    assert isinstance(caught.value, InvalidArgument)


def test_oversize_event_inside_a_batch_is_quarantined_not_the_batch() -> None:
    body = {"batch": [{"type": "track", "userId": USER, "event": "Big", "properties": {"blob": "x" * 33_000}},
                      {"type": "track", "userId": USER, "event": "Small"}]}  # fmt: skip
    big, small = parse_request(orjson.dumps(body), "batch", received_at=RECEIVED).intakes
    assert big.verdict.kind is FailureKind.SIZE_VIOLATION and big.raw_json
    assert small.event is not None


def test_batch_over_500_kib_is_rejected() -> None:
    event = {"type": "track", "userId": USER, "event": "E", "properties": {"blob": "x" * 30_000}}
    with pytest.raises(PayloadTooLarge, match="512000"):
        parse_request(orjson.dumps({"batch": [event] * 18}), "batch", received_at=RECEIVED)


def test_batch_of_more_than_2500_events_is_rejected() -> None:
    event = {"type": "track", "userId": "u", "event": "E"}
    assert (
        len(parse_request(orjson.dumps({"batch": [event] * 2500}), "batch", received_at=RECEIVED).intakes)
        == 2500
    )
    with pytest.raises(PayloadTooLarge, match="2500"):
        parse_request(orjson.dumps({"batch": [event] * 2501}), "batch", received_at=RECEIVED)


# --- request-level errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "call", "field", "text"),
    [
        (b"\xff\xfe{}", "track", "body", "UTF-8"),
        (b'{"userId": "\xc3\x28"}', "track", "body", "UTF-8"),
        (b"{nope", "track", "body", "JSON"),
        (b"", "track", "body", "JSON"),
        (b"[1, 2]", "track", "body", "object"),
        (b'{"batch": {"type": "track"}}', "batch", "batch", "array"),
        (b'{"batch": [], "context": "x"}', "batch", "context", "malformed"),
        (b'{"userId": "u", "writeKey": 5}', "track", "writeKey", "writeKey"),
        (b"{}", "purchase", "type", "unknown call"),
    ],
)
def test_unusable_requests_raise_invalid_argument(body: bytes, call: str, field: str, text: str) -> None:
    with pytest.raises(InvalidArgument, match=text) as caught:
        parse_request(body, call, received_at=RECEIVED)
    assert [f for f, _ in caught.value.violations] == [field]


def test_strict_mode_reports_every_event_problem_with_batch_paths() -> None:
    body = {"batch": [{"type": "track", "userId": USER, "event": "ok"}, {"type": "track", "properties": []},
                      {"type": "alias", "userId": USER}]}  # fmt: skip
    with pytest.raises(InvalidArgument) as caught:
        parse_request(orjson.dumps(body), "batch", received_at=RECEIVED, strict=True)
    assert {f for f, _ in caught.value.violations} == {
        "batch[1].userId",
        "batch[1].event",
        "batch[1].properties",
        "batch[2].previousId",
    }


def test_strict_single_call_paths_have_no_batch_prefix() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_request(b'{"event": "E"}', "track", received_at=RECEIVED, strict=True)
    assert caught.value.violations == [("userId", "userId or anonymousId is required")]


def test_field_path_converts_json_pointers() -> None:
    assert field_path("/properties/items/0/sku", "batch[3]") == "batch[3].properties.items[0].sku"
    assert field_path("/context/a~1b", "") == "context.a/b"
    assert field_path("", "batch[1]") == "batch[1]"


# --- message ids ----------------------------------------------------------------------------------


def test_client_message_id_is_kept() -> None:
    assert accepted({"userId": USER, "event": "E", "messageId": " m-1 "}, "track").message_id == "m-1"


def test_derived_message_id_is_stable_across_retries() -> None:
    body = {
        "userId": USER,
        "event": "E",
        "timestamp": "2012-12-02T00:30:00Z",
        "sentAt": "2012-12-02T00:30:05Z",
    }
    first = one(body, "track").event
    # The retry goes out later: new sentAt, new receivedAt; same event.
    retry = (
        parse_request(
            orjson.dumps({**body, "sentAt": "2012-12-02T00:35:00Z"}),
            "track",
            received_at=RECEIVED + timedelta(minutes=5),
        )
        .intakes[0]
        .event
    )
    assert first is not None and retry is not None
    assert first.message_id == retry.message_id
    assert len(first.message_id) == 36  # a UUID
    other = one({**body, "event": "F"}, "track").event
    assert other is not None and other.message_id != first.message_id


def test_derived_message_id_without_any_client_time_does_not_merge_repeats() -> None:
    body = orjson.dumps({"userId": USER, "event": "Clicked"})
    a = parse_request(body, "track", received_at=RECEIVED).intakes[0].event
    b = parse_request(body, "track", received_at=RECEIVED + timedelta(seconds=1)).intakes[0].event
    assert a is not None and b is not None and a.message_id != b.message_id


def test_derived_message_id_depends_on_the_source() -> None:
    body = orjson.dumps({"userId": USER, "event": "E", "timestamp": "2012-12-02T00:30:00Z"})
    ids = {
        parse_request(body, "track", received_at=RECEIVED, source_id=s).intakes[0].message_id
        for s in ("web", "ios")
    }
    assert len(ids) == 2


# --- replayable raw JSON --------------------------------------------------------------------------


def test_quarantined_batch_item_keeps_its_batch_context_type_and_sent_at() -> None:
    body = {
        "batch": [{"type": "track", "event": "E"}],
        "context": {"ip": "1.2.3.4"},
        "sentAt": "2012-12-02T00:31:00Z",
    }
    (intake,) = parse_request(orjson.dumps(body), "batch", received_at=RECEIVED).intakes
    assert orjson.loads(intake.raw_json) == {
        "type": "track",
        "event": "E",
        "context": {"ip": "1.2.3.4"},
        "sentAt": "2012-12-02T00:31:00Z",
    }
    # Fixed, it parses on its own as it would have in the batch.
    fixed = {**orjson.loads(intake.raw_json), "userId": USER}
    assert parse_event(fixed, received_at=RECEIVED).event is not None


def test_quarantined_single_call_records_its_type() -> None:
    intake = one({"properties": {}}, "track")
    assert orjson.loads(intake.raw_json)["type"] == "track"
