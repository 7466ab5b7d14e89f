"""Property tests: nothing a client sends makes the parser raise anything but the typed errors, and
JSON -> canonical -> proto -> canonical -> JSON is stable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.ingest.domain import (
    CallType,
    Intake,
    event_from_proto,
    parse_event,
    parse_request,
    parse_tracking_event,
    to_json,
    to_proto,
)
from onefold.platform.errors import InvalidArgument

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
CALLS = [c.value for c in CallType]
KNOWN = ["type", "messageId", "anonymousId", "userId", "previousId", "groupId", "event", "name", "category",
         "properties", "traits", "context", "integrations", "timestamp", "sentAt", "originalTimestamp"]  # fmt: skip
PROPERTIES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
safe_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
safe_objects = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        safe_scalars,
        lambda i: st.lists(i, max_size=3) | st.dictionaries(st.text(max_size=6), i, max_size=3),
        max_leaves=12,
    ),
    max_size=5,
)
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2024, 5, 2), timezones=st.just(UTC))
timestamps = times.map(lambda t: t.isoformat()) | times.map(lambda t: int(t.timestamp() * 1000))
ids = st.text(min_size=1, max_size=12) | st.integers(0, 10**12)


@st.composite
def segment_events(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly plausible Segment calls, with a share of wrong types and missing fields."""
    event: dict[str, Any] = {"type": draw(st.sampled_from(CALLS) | st.text(max_size=6))}
    for key in ("userId", "anonymousId", "previousId", "groupId"):
        if draw(st.booleans()):
            event[key] = draw(ids | json_values)
    for key in ("event", "name", "category", "messageId"):
        if draw(st.booleans()):
            event[key] = draw(st.text(max_size=30) | json_values)
    for key in ("properties", "traits", "context", "integrations"):
        if draw(st.booleans()):
            event[key] = draw(safe_objects | json_values)
    if draw(st.booleans()):
        event.setdefault("context", {})
        if isinstance(event["context"], dict):
            event["context"]["consent"] = {
                "categoryPreferences": draw(
                    st.dictionaries(st.text(max_size=10), st.booleans() | scalars, max_size=3)
                ),
                "source": draw(st.text(max_size=5) | scalars),
            }
    for key in ("timestamp", "sentAt", "originalTimestamp"):
        if draw(st.booleans()):
            event[key] = draw(timestamps | json_values)
    event.update(
        draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in KNOWN), json_values, max_size=2))
    )
    return event


words = st.text(min_size=1, max_size=12).filter(str.strip)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed Segment calls of every type, so the round trip is exercised on accepted events."""
    happened = draw(times)
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(CALLS)),
        "userId": draw(words | st.integers(0, 10**12)),
        "previousId": draw(words),
        "groupId": draw(words),
        "event": draw(words),
        "properties": draw(safe_objects),
        "context": {
            **draw(safe_objects),
            "consent": {"categoryPreferences": draw(st.dictionaries(words, st.booleans(), max_size=3))},
        },
        "timestamp": draw(st.sampled_from([happened.isoformat(), int(happened.timestamp() * 1000)])),
    }
    optional = {
        "anonymousId": words,
        # Any text but NUL, which a messageId must not hold (PostgreSQL text cannot store it).
        "messageId": st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=100
        ).filter(str.strip),
        "name": st.text(max_size=10),
        "category": st.text(max_size=10),
        "traits": safe_objects,
        "integrations": safe_objects,
        "sentAt": st.integers(0, 10**8).map(lambda ms: (happened + timedelta(milliseconds=ms)).isoformat()),
        "channel": safe_scalars,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            event[key] = draw(strategy)
    return event


def assert_well_formed(intake: Intake) -> None:
    if intake.event is None:
        assert intake.verdict.is_quarantined and intake.verdict.violations and intake.raw_json
    else:
        assert not intake.verdict.is_quarantined and intake.event.message_id


@PROPERTIES
@given(body=st.binary(max_size=300), call=st.sampled_from([*CALLS, "batch", "b"]))
def test_arbitrary_bytes_raise_only_invalid_argument(body: bytes, call: str) -> None:
    try:
        parsed = parse_request(body, call, received_at=NOW)
    except InvalidArgument:
        return
    for intake in parsed.intakes:
        assert_well_formed(intake)


@PROPERTIES
@given(document=json_values, call=st.sampled_from([*CALLS, "batch"]))
def test_arbitrary_json_raises_only_invalid_argument(document: object, call: str) -> None:
    try:
        parsed = parse_request(orjson.dumps(document), call, received_at=NOW)
    except InvalidArgument:
        return
    for intake in parsed.intakes:
        assert_well_formed(intake)


@PROPERTIES
@given(
    events=st.lists(segment_events(), max_size=5),
    envelope=st.dictionaries(st.sampled_from(["context", "integrations", "sentAt"]), json_values),
)
def test_arbitrary_batches_raise_only_invalid_argument(
    events: list[dict[str, Any]], envelope: dict[str, Any]
) -> None:
    try:
        parsed = parse_request(
            orjson.dumps({"batch": events, **envelope}), "batch", received_at=NOW, strict=False
        )
    except InvalidArgument:
        return
    assert [i.index for i in parsed.intakes] == list(range(len(events)))
    for intake in parsed.intakes:
        assert_well_formed(intake)


@PROPERTIES
@given(event=valid_events())
def test_valid_events_are_accepted_and_round_trip(event: dict[str, Any]) -> None:
    intake = parse_event(event, received_at=NOW, source_id="src")
    assert intake.event is not None, intake.verdict
    assert_round_trips(intake)


@PROPERTIES
@given(event=segment_events())
def test_parse_proto_json_round_trip_is_stable(event: dict[str, Any]) -> None:
    assert_round_trips(parse_event(event, received_at=NOW, source_id="src"))


def assert_round_trips(intake: Intake) -> None:
    assert_well_formed(intake)
    if intake.event is None:
        # A quarantined event replays from its raw JSON to the same verdict.
        again = parse_event(orjson.loads(intake.raw_json), received_at=NOW, source_id="src")
        assert again.verdict == intake.verdict
        return
    canonical = intake.event
    wire = pb.TrackingEvent.FromString(to_proto(canonical).SerializeToString())
    assert event_from_proto(wire) == canonical
    assert to_json(event_from_proto(wire)) == to_json(canonical)
    assert parse_event(to_json(canonical), received_at=NOW, source_id="src").event == canonical
    assert parse_tracking_event(wire, received_at=NOW, source_id="src").event == canonical


@PROPERTIES
@given(device=times, skew=st.integers(-(10**8), 10**8), delay=st.integers(0, 10**7))
def test_skew_correction_preserves_the_gap_between_event_and_send(
    device: datetime, skew: int, delay: int
) -> None:
    # The device clock is off by `skew` ms; it sent the event `delay` ms after it happened.
    sent = device + timedelta(milliseconds=delay)
    received = sent - timedelta(milliseconds=skew)
    body = {
        "type": "track",
        "userId": "u",
        "event": "E",
        "timestamp": device.isoformat(),
        "sentAt": sent.isoformat(),
    }
    event = parse_event(body, received_at=received).event
    assert event is not None
    assert event.timestamp == received - timedelta(milliseconds=delay)
    assert event.received_at - event.timestamp == event.sent_at - event.original_timestamp  # type: ignore[operator]


@PROPERTIES
@given(
    msg=st.builds(
        pb.TrackingEvent,
        type=st.integers(0, 9),
        message_id=st.text(max_size=120),
        user_id=st.text(max_size=5),
        anonymous_id=st.text(max_size=5),
        event=st.text(max_size=5),
    ),
    properties=json_values,
    seconds=st.integers(-(2**40), 2**40),
    nan=st.sampled_from([None, float("nan"), float("inf")]),
)
def test_arbitrary_tracking_events_never_raise(
    msg: pb.TrackingEvent, properties: object, seconds: int, nan: float | None
) -> None:
    if isinstance(properties, dict):
        try:
            msg.properties.update(properties)
        except ValueError:  # a proto string must be valid UTF-8; such a message cannot be sent at all
            return
    if nan is not None:
        msg.context.update({"x": nan})
    msg.timestamp.seconds = seconds
    assert_well_formed(parse_tracking_event(msg, received_at=NOW))
