"""The hot path's shortcuts give exactly what the general code gives: Struct filling, struct_to_dict,
the unsafe-integer pre-scan, and the event log mapper's direct encoding of the ingest records'
personal fields (nested TrackingEvent with whole-Struct pii fields)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.eventlog.cipher import DataKeyCipher, new_data_key
from onefold.eventlog.mapper import EventMapper, split
from onefold.ingest.domain.events import REGISTRY
from onefold.ingest.domain.protos import NonFiniteNumber, _escape, _fill_struct, _plain, struct_to_dict
from onefold.ingest.domain.segment import _has_long_digit_run

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
objects = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=12,
    ),
    max_size=6,
)


def _updated(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@FAST
@given(values=objects)
def test_fill_struct_is_struct_update(values: dict[str, Any]) -> None:
    filled = struct_pb2.Struct()
    _fill_struct(filled, values)
    expected = _updated(values)
    assert filled == expected
    assert filled.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("bad", [{"a": object()}, {"a": 10**400}, {"a": {"b": b"bytes"}}])
def test_fill_struct_refuses_what_struct_update_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises((ValueError, OverflowError)) as expected:
        struct_pb2.Struct().update(bad)
    with pytest.raises(expected.type):
        _fill_struct(struct_pb2.Struct(), bad)


@FAST
@given(values=objects)
def test_struct_to_dict_fast_path_matches_the_pointer_tracking_one(values: dict[str, Any]) -> None:
    struct = _updated(values)
    slow = {key: _plain(value, f"/{_escape(key)}") for key, value in struct.fields.items()}
    fast = struct_to_dict(struct)
    assert fast == slow and repr(fast) == repr(slow)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_struct_to_dict_still_names_the_non_finite_number(bad: float) -> None:
    struct = _updated({"a/b": {"c": [1, bad]}})
    with pytest.raises(NonFiniteNumber) as error:
        struct_to_dict(struct, "/properties")
    assert error.value.path == "/properties/a~1b/c/1"


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=80) | st.text(alphabet='0123456789a":,-', max_size=80).map(str.encode))
def test_long_digit_prescan_matches_the_regex(raw: bytes) -> None:
    assert _has_long_digit_run(raw) == (re.search(rb"[0-9]{16,}", raw) is not None)


ids = st.sampled_from(["", "user-1", "ü" * 70])


@st.composite
def tracking_events(draw: st.DrawFn) -> pb.TrackingEvent:
    event = pb.TrackingEvent(
        message_id=draw(ids),
        user_id=draw(ids),
        anonymous_id=draw(ids),
        previous_id=draw(ids),
        group_id=draw(ids),
        event=draw(ids),
    )
    for name in ("properties", "traits", "context", "integrations", "extra"):
        choice = draw(st.integers(0, 2))
        if choice == 1:
            getattr(event, name).SetInParent()  # present but empty
        elif choice == 2:
            getattr(event, name).update(draw(objects))
    if draw(st.booleans()):
        event.consent.purposes_granted.append("analytics")
    return event


@FAST
@given(event=tracking_events(), shape=st.integers(0, 2), raw_json=st.sampled_from([b"", b"{}", b"x" * 300]))
def test_ingest_records_encode_like_the_general_split(
    event: pb.TrackingEvent, shape: int, raw_json: bytes
) -> None:
    cipher = DataKeyCipher(new_data_key())
    accepted = pb.EventAccepted(workspace="w", user_id_index="i")
    quarantined = pb.EventQuarantined(quarantine_id="q", raw_json=raw_json)
    for record in (accepted, quarantined):
        if shape == 1:
            record.event.CopyFrom(event)
        elif shape == 2:
            record.event.SetInParent()
        event_type = REGISTRY.for_message(record)
        assert event_type.pii.direct_steps is not None
        payload = EventMapper.encode(event_type, record, "subject", cipher, bytes(12))
        public, personal = split(record, event_type.pii)
        secret = personal.SerializeToString(deterministic=True)
        if not secret:
            assert payload == public.SerializeToString(deterministic=True)
        else:
            assert payload.endswith(public.SerializeToString(deterministic=True))
            sealed = cipher.seal(secret, event_type.name_bytes + b"\x00subject", bytes(12))
            assert sealed in payload
        assert EventMapper.decode(event_type, payload, "subject", cipher) == record
