"""EventStore: appends, positions, optimistic concurrency, reads, checkpoints, envelopes, upcasting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2

from onefold.contracts.common.v1 import envelope_pb2
from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import (
    ConcurrencyError,
    CorruptPayload,
    DuplicateEvent,
    EventRegistry,
    EventStore,
    EventTooLarge,
    InvalidEvent,
    KeyEncryptionKey,
    MissingKeyEncryptionKey,
    NewEvent,
    UnknownEventType,
    schema,
)
from onefold.eventlog.mapper import ERASED


def counter(stream: str, delta: int = 1, expected: int | None = None, **kw: object) -> NewEvent:
    return NewEvent(
        stream, events_pb2.CounterChanged(counter=stream, delta=delta), expected_version=expected, **kw
    )  # type: ignore[arg-type]


def snapshot_of_state(store: EventStore) -> tuple[object, ...]:
    """Everything an append may touch, to prove a failed append changed nothing."""
    with store.engine.connect() as conn:
        events = conn.execute(sa.select(schema.events).order_by(schema.events.c.position)).all()
        keys = conn.execute(sa.select(schema.subject_keys).order_by(schema.subject_keys.c.subject)).all()
    return tuple(events), tuple(keys)


def test_append_assigns_gap_free_positions_and_stream_versions(store: EventStore) -> None:
    recorded = store.append([counter("a", expected=0), counter("b", expected=0), counter("a")])
    assert [e.position for e in recorded] == [1, 2, 3]
    assert [(e.stream_id, e.stream_version) for e in recorded] == [("a", 1), ("b", 1), ("a", 2)]
    more = store.append([counter("a", expected=2)])
    assert more[0].position == 4 and more[0].stream_version == 3
    assert store.head_position() == 4
    assert store.read() == recorded + more
    assert [e.stream_version for e in store.read_stream("a")] == [1, 2, 3]
    assert store.stream_version("a") == 3 and store.stream_version("nope") == 0
    assert recorded[0].type == "onefold.eventlog.testing.v1.CounterChanged"
    assert recorded[0].prev_hash == bytes(32) and recorded[1].prev_hash == recorded[0].hash
    assert recorded[0].metadata == {"source": "test"}


def test_read_pages_and_iter_all(store: EventStore) -> None:
    store.append([counter(f"s{i % 7}") for i in range(53)])
    assert [e.position for e in store.read(after_position=50)] == [51, 52, 53]
    assert [e.position for e in store.read(after_position=10, limit=5)] == [11, 12, 13, 14, 15]
    assert [e.position for e in store.iter_all(batch_size=10)] == list(range(1, 54))
    assert [e.position for e in store.iter_all(after_position=49, batch_size=2)] == [50, 51, 52, 53]


def test_round_trip_of_fields_metadata_and_times(store: EventStore) -> None:
    occurred = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    event_id = str(uuid.uuid4())
    message = events_pb2.ProfileUpdated(profile_id="p1", email="ada@example.com", plan="pro")
    message.traits.update({"age": 36, "tags": ["a", "b"]})
    message.properties["city"] = "London"
    message.address.street = "1 Lovelace Way"
    message.address.city = "London"
    message.phone_numbers.extend(["+44 1", "+44 2"])
    message.photo = b"\x00\x01"
    recorded = store.append(
        [
            NewEvent(
                "profile:w:p1",
                message,
                expected_version=0,
                subject="p1",
                workspace="w",
                occurred_at=occurred,
                event_id=event_id,
                metadata={"correlation_id": "c-1", "actor": "u-1"},
            )
        ]
    )[0]
    (stored,) = store.read()
    assert stored == recorded
    assert stored.occurred_at == occurred and stored.occurred_at.tzinfo is not None
    assert stored.event_id == event_id and stored.workspace == "w" and stored.subject == "p1"
    assert stored.metadata == {"correlation_id": "c-1", "actor": "u-1", "source": "test"}
    assert store.decode(stored) == message
    assert b"ada@example.com" not in stored.payload and b"Lovelace" not in stored.payload
    # The stored payload is still a valid protobuf of the type: personal fields simply empty.
    public = events_pb2.ProfileUpdated.FromString(stored.payload)
    assert public.profile_id == "p1" and public.plan == "pro" and public.email == ""
    assert public.address.city == "London" and public.address.street == ""


def test_expected_version_conflicts_raise_and_change_nothing(store: EventStore) -> None:
    store.append([counter("a", expected=0), counter("a")])
    before = snapshot_of_state(store)
    with pytest.raises(ConcurrencyError) as caught:
        store.append([counter("b", expected=0), counter("a", expected=1)])
    assert caught.value.actual_version == 2 and caught.value.expected_version == 1
    assert caught.value.code == grpc.StatusCode.ABORTED
    assert "stream 'a' is at version 2" in str(caught.value)
    with pytest.raises(ConcurrencyError):
        store.append([counter("a", expected=0)])
    with pytest.raises(ConcurrencyError):
        store.append([counter("new", expected=3)])
    assert snapshot_of_state(store) == before


def test_bad_input_gives_typed_errors_and_changes_nothing(store: EventStore) -> None:
    store.append([counter("a")])
    before = snapshot_of_state(store)
    unregistered = struct_pb2.Struct()
    with pytest.raises(UnknownEventType) as unknown:
        store.append([counter("b"), NewEvent("c", unregistered)])
    assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "google.protobuf.Struct" in str(unknown.value)
    with pytest.raises(InvalidEvent):
        store.append([NewEvent("c", "not a message")])  # type: ignore[arg-type]
    big = events_pb2.ProfileUpdated(profile_id="x" * 2_000_000)
    with pytest.raises(EventTooLarge) as too_large:
        store.append(
            [
                NewEvent("p", events_pb2.ProfileUpdated(email="a@b", name="n"), subject="s1"),
                NewEvent("p", big),
            ]
        )
    assert too_large.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidEvent):
        store.append([counter("")])
    with pytest.raises(InvalidEvent):
        store.append([counter("a", event_id="not-a-uuid")])
    with pytest.raises(InvalidEvent):
        store.append([counter("a", occurred_at=datetime(2024, 1, 1))])  # naive
    with pytest.raises(InvalidEvent, match="needs a data subject"):
        store.append([NewEvent("p", events_pb2.ProfileUpdated(email="a@b"))])
    duplicate = store.read()[0].event_id
    with pytest.raises(DuplicateEvent):
        store.append([counter("z", event_id=duplicate)])
    assert snapshot_of_state(store) == before
    assert store.verify().ok


def test_corrupted_payload_bytes_raise_corrupt_payload(store: EventStore) -> None:
    _plain, secret = store.append(
        [counter("a"), NewEvent("p", events_pb2.ProfileUpdated(email="ada@example.com"), subject="s")]
    )
    with store.engine.begin() as conn:
        conn.execute(
            schema.events.update().where(schema.events.c.position == 1).values(payload=b"\xff\xff\xff")
        )
        # The event has no public fields, so the payload ends with the AES-GCM tag: flip one bit.
        broken_secret = bytearray(secret.payload)
        broken_secret[-3] ^= 0x01
        conn.execute(
            schema.events.update().where(schema.events.c.position == 2).values(payload=bytes(broken_secret))
        )
    first, second = store.read()
    with pytest.raises(CorruptPayload) as caught:
        store.decode(first)
    assert caught.value.position == 1 and caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(CorruptPayload, match="does not authenticate"):
        store.decode(second)
    result = store.verify()
    assert not result.ok and result.first_bad_position == 1


def test_joined_transaction_commits_with_caller_and_failed_append_keeps_it_usable(store: EventStore) -> None:
    with store.transaction() as conn:
        store.append([counter("a")], conn=conn)
        store.record_tracking(conn, "upstream-x", 41, "e-41")
        with pytest.raises(ConcurrencyError):
            store.append([counter("a", expected=0)], conn=conn)
        store.append([counter("a", expected=1)], conn=conn)
        assert store.tracking_position("upstream-x", conn=conn) == 41
    assert [e.stream_version for e in store.read_stream("a")] == [1, 2]
    assert store.tracking_position("upstream-x") == 41

    with pytest.raises(RuntimeError), store.transaction() as conn:
        store.append([counter("a")], conn=conn)
        store.record_tracking(conn, "upstream-x", 42)
        raise RuntimeError("handler failed")
    assert store.head_position() == 2 and store.tracking_position("upstream-x") == 41


def test_tracking_and_published_positions_upsert(store: EventStore) -> None:
    assert store.tracking_position("u") == 0 and store.published_position("ONEFOLD_TEST") == 0
    with store.transaction() as conn:
        store.record_tracking(conn, "u", 5, "e5")
    with store.transaction() as conn:
        store.record_tracking(conn, "u", 9, "e9")
    store.record_published("ONEFOLD_TEST", 3)
    store.record_published("ONEFOLD_TEST", 7)
    assert store.tracking_position("u") == 9 and store.published_position("ONEFOLD_TEST") == 7


def test_on_append_listeners_run_after_commit(store: EventStore) -> None:
    heads: list[int] = []
    remove = store.on_append(heads.append)
    store.append([counter("a"), counter("b")])
    with store.transaction() as conn:
        store.append([counter("c")], conn=conn)
        assert heads == [2]  # not yet committed
    remove()
    store.append([counter("d")])
    assert heads == [2, 3]


def test_as_of_reads_by_recorded_and_occurred_time(store: EventStore) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    first = store.append([counter("a", 1, occurred_at=t0)])[0]
    late = store.append([counter("a", 10, occurred_at=t0 - timedelta(days=1))])[0]
    assert [e.position for e in store.read_stream("a", recorded_before=first.recorded_at)] == [1]
    assert [e.position for e in store.read_stream("a", recorded_before=late.recorded_at)] == [1, 2]
    assert [e.position for e in store.read_stream("a", occurred_before=t0 - timedelta(hours=1))] == [2]
    assert [e.position for e in store.read_stream("a", occurred_before=t0)] == [1, 2]


def test_envelope_carries_decrypted_payload_and_metadata(store: EventStore) -> None:
    message = events_pb2.ProfileUpdated(profile_id="p1", email="ada@example.com")
    (event,) = store.append(
        [
            NewEvent(
                "profile:p1",
                message,
                subject="p1",
                workspace="w1",
                metadata={
                    "correlation_id": "corr",
                    "causation_id": "cause",
                    "actor": "agent-7",
                    "actor_kind": "agent",
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                },
            )
        ]
    )
    envelope = store.to_envelope(event)
    assert envelope.event_id == event.event_id and envelope.position == 1 and envelope.stream_version == 1
    assert envelope.type == "onefold.eventlog.testing.v1.ProfileUpdated" and envelope.schema_version == 1
    assert events_pb2.ProfileUpdated.FromString(envelope.payload) == message
    assert envelope.correlation_id == "corr" and envelope.causation_id == "cause"
    assert envelope.actor.id == "agent-7" and envelope.actor.kind == envelope_pb2.Actor.KIND_AGENT
    assert envelope.trace.traceparent.startswith("00-0af7")
    assert envelope.source == "test" and envelope.workspace == "w1" and envelope.subject == "p1"
    assert envelope.hash == event.hash and envelope.prev_hash == bytes(32)
    assert envelope.occurred_at.ToDatetime(tzinfo=UTC) == event.occurred_at
    sealed = store.to_envelope(event, decrypt=False)
    assert sealed.payload == event.payload and b"ada@example.com" not in sealed.payload
    # Erased: the bus form carries the erased markers (the decode path), never the old value.
    store.erase_subject("p1")
    erased = events_pb2.ProfileUpdated.FromString(store.to_envelope(event).payload)
    assert erased.profile_id == "p1" and erased.email == ERASED


def test_upcasting_same_type_new_version_and_legacy_type(database_url: str, kek: KeyEncryptionKey) -> None:
    old_registry = EventRegistry()
    old_registry.register(events_pb2.CounterChanged)
    old_registry.register(events_pb2.LegacyNameSet)
    old = EventStore(database_url, service="test", registry=old_registry, keys=kek)
    old.create_schema()
    old.append(
        [
            counter("a", 5),
            NewEvent("p", events_pb2.LegacyNameSet(profile_id="p", full_name="Ada Lovelace"), subject="p"),
        ]
    )
    old.close()

    def v1_to_v2(message: object) -> events_pb2.CounterChanged:  # deltas became tenths
        assert isinstance(message, events_pb2.CounterChanged)
        return events_pb2.CounterChanged(counter=message.counter, delta=message.delta * 10)

    def legacy_to_profile(message: object) -> events_pb2.ProfileUpdated:
        assert isinstance(message, events_pb2.LegacyNameSet)
        return events_pb2.ProfileUpdated(profile_id=message.profile_id, name=message.full_name)

    new_registry = EventRegistry()
    new_registry.register(events_pb2.CounterChanged, schema_version=2, upcasters={1: v1_to_v2})
    new_registry.register(events_pb2.ProfileUpdated)
    new_registry.register_legacy(events_pb2.LegacyNameSet, upcast=legacy_to_profile)
    new = EventStore(database_url, service="test", registry=new_registry, keys=kek)
    new.append([counter("a", 7)])
    first, second, third = new.read()
    assert new.decode(first) == events_pb2.CounterChanged(counter="a", delta=50)
    assert new.decode(second) == events_pb2.ProfileUpdated(profile_id="p", name="Ada Lovelace")
    assert third.schema_version == 2 and new.decode(third) == events_pb2.CounterChanged(counter="a", delta=7)
    envelope = new.to_envelope(second)
    assert envelope.type == "onefold.eventlog.testing.v1.ProfileUpdated"
    with pytest.raises(InvalidEvent, match="legacy"):
        new.append([NewEvent("p", events_pb2.LegacyNameSet(profile_id="p"))])
    with pytest.raises(InvalidEvent, match="no upcaster"):
        EventRegistry().register(events_pb2.CounterChanged, schema_version=2)
    # An older service cannot read what a newer one wrote, and says so.
    with pytest.raises(CorruptPayload, match="newer"):
        EventStore(new.engine, service="test", registry=old_registry, keys=kek).decode(third)
    new.close()


def test_unknown_type_on_read_and_missing_key(database_url: str, kek: KeyEncryptionKey) -> None:
    registry = EventRegistry()
    registry.register(events_pb2.ProfileUpdated)
    writer = EventStore(database_url, service="test", registry=registry, keys=kek)
    writer.create_schema()
    (event,) = writer.append([NewEvent("p", events_pb2.ProfileUpdated(email="a@b"), subject="s")])
    with pytest.raises(UnknownEventType):
        EventStore(writer.engine, service="test", registry=EventRegistry(), keys=kek).decode(event)
    keyless = EventStore(writer.engine, service="test", registry=registry)
    with pytest.raises(MissingKeyEncryptionKey):
        keyless.decode(event)
    with pytest.raises(MissingKeyEncryptionKey):
        keyless.append([NewEvent("p", events_pb2.ProfileUpdated(email="a@b"), subject="s")])
    keyless.append([NewEvent("p", events_pb2.ProfileUpdated(plan="free"), subject="s")])  # no personal data
    writer.close()
