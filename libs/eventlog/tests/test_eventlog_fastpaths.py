"""The append fast paths keep every guarantee: the stream-version cache, the mapper's direct
encoding of plain personal fields, batch nonces, time-ordered event ids and the bulk insert."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import ConcurrencyError, EventStore, NewEvent, schema
from onefold.eventlog.cipher import DataKeyCipher, new_data_key
from onefold.eventlog.mapper import SEALED_TAG, EventMapper, associated_data, split
from onefold.eventlog.registry import EventRegistry

StoreFactory = Callable[..., EventStore]


def counter(stream: str, expected: int | None = None) -> NewEvent:
    return NewEvent(stream, events_pb2.CounterChanged(counter=stream, delta=1), expected_version=expected)


def versions(store: EventStore) -> list[tuple[str, int]]:
    table = schema.events
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.stream_id, table.c.stream_version).order_by(table.c.position))
        return [(stream_id, int(version)) for stream_id, version in rows]


def test_version_cache_notices_another_writer(make_store: StoreFactory) -> None:
    first = make_store()
    second = make_store()  # another process, as far as the cache of `first` knows
    first.append([counter("a", 0), counter("b", 0)])
    second.append([counter("a", 1)])
    with pytest.raises(ConcurrencyError):
        first.append([counter("a", 1)])  # a cached "a at 1" would accept this
    first.append([counter("a", 2), counter("b", 1)])
    assert versions(first) == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]


def test_version_cache_ignores_a_rolled_back_savepoint(store: EventStore) -> None:
    store.append([counter("a", 0)])
    with store.transaction() as conn:
        nested = conn.begin_nested()
        store.append([counter("a", 1), counter("a")], conn=conn)
        nested.rollback()
    # The cache was told about versions 2 and 3 at a head that never committed.
    store.append([counter("a", 1)])
    assert versions(store) == [("a", 1), ("a", 2)]


def test_version_cache_after_truncation(store: EventStore) -> None:
    store.append([counter("a", 0), counter("a")])
    with store.engine.begin() as conn:
        conn.execute(schema.events.delete().where(schema.events.c.position == 2))
    store.append([counter("a", 1)])
    assert versions(store) == [("a", 1), ("a", 2)]


def test_several_appends_in_one_transaction_then_cached(store: EventStore) -> None:
    with store.transaction() as conn:
        store.append([counter("a", 0)], conn=conn)
        store.append([counter("a", 1), counter("b", 0)], conn=conn)
    store.append([counter("a", 2), counter("b", 1)])
    with pytest.raises(ConcurrencyError):
        store.append([counter("a", 2)])
    assert versions(store) == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)]


def test_large_batches_span_several_insert_statements(store: EventStore) -> None:
    events = [counter(f"s{i % 7}") for i in range(2500)]
    recorded = store.append(events)
    assert [event.position for event in recorded] == list(range(1, 2501))
    assert store.read(limit=3000) == recorded
    assert store.verify().ok


def test_generated_event_ids_are_time_ordered_uuids(store: EventStore) -> None:
    recorded = store.append([counter("a") for _ in range(50)])
    ids = [uuid.UUID(event.event_id) for event in recorded]
    assert all(str(parsed) == event.event_id for parsed, event in zip(ids, recorded, strict=True))
    assert {parsed.version for parsed in ids} == {7} and len(set(ids)) == 50
    stamp_ms = ids[0].int >> 80
    assert abs(stamp_ms - recorded[0].recorded_at.timestamp() * 1000) < 2


text = st.text(max_size=300)


@settings(max_examples=200, deadline=None)
@given(profile_id=text, email=text, name=text, plan=text)
def test_plain_personal_fields_encode_exactly_like_the_general_path(
    profile_id: str, email: str, name: str, plan: str
) -> None:
    registry = EventRegistry()
    event_type = registry.register(events_pb2.ContactCaptured)
    assert event_type.pii.direct_steps is not None
    message = events_pb2.ContactCaptured(profile_id=profile_id, email=email, name=name, plan=plan)
    cipher = DataKeyCipher(new_data_key())
    nonce = bytes(range(12))
    payload = EventMapper.encode(event_type, message, "subject", cipher, nonce)
    public, personal = split(message, event_type.pii)
    secret = personal.SerializeToString(deterministic=True)
    if not secret:
        assert payload == public.SerializeToString(deterministic=True)
    else:
        expected_sealed = cipher.seal(secret, associated_data(event_type.name, "subject"), nonce)
        assert payload.startswith(SEALED_TAG) and expected_sealed in payload
        assert payload.endswith(public.SerializeToString(deterministic=True))
    assert EventMapper.decode(event_type, payload, "subject", cipher) == message


def test_batch_nonces_are_distinct(store: EventStore) -> None:
    recorded = store.append(
        [NewEvent("c", events_pb2.ContactCaptured(email="a@example.com"), subject="p1") for _ in range(200)]
    )
    nonces = set()
    for event in recorded:
        assert event.payload.startswith(SEALED_TAG)
        # tag (5 bytes) | length (1) | flags (1) | nonce (12) | ...
        nonces.add(event.payload[len(SEALED_TAG) + 2 : len(SEALED_TAG) + 14])
    assert len(nonces) == 200
    assert all(store.decode(event).email == "a@example.com" for event in recorded)
