"""The hash chain: verify() passes on an honest log and names the first tampered position."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import ChainDigest, EventStore, NewEvent, schema
from onefold.eventlog.chain import event_hash

StoreFactory = Callable[..., EventStore]
events_table = schema.events


def fill(store: EventStore, count: int) -> None:
    batch = []
    for i in range(count):
        if i % 3 == 0:
            message = events_pb2.ProfileUpdated(profile_id=f"p{i}", email=f"p{i}@example.com")
            batch.append(NewEvent(f"profile:{i % 4}", message, subject=f"p{i % 4}"))
        else:
            batch.append(NewEvent(f"counter:{i % 5}", events_pb2.CounterChanged(counter="c", delta=i)))
    for start in range(0, count, 7):  # several appends, so the chain spans transactions
        store.append(batch[start : start + 7])


def row(conn: Connection, position: int) -> dict[str, object]:
    return dict(
        conn.execute(sa.select(events_table).where(events_table.c.position == position)).one()._mapping
    )


def shift_up(conn: Connection, after: int, head: int) -> None:
    for position in range(head, after, -1):  # from the top, so the primary key never collides
        conn.execute(
            events_table.update().where(events_table.c.position == position).values(position=position + 1)
        )


def tamper(store: EventStore, kind: str, index: int, other: int, head: int) -> int:
    """Apply one tampering and return the position verify() must name."""
    with store.engine.begin() as conn:
        if kind == "edit_payload":
            payload = row(conn, index)["payload"]
            assert isinstance(payload, bytes)
            conn.execute(
                events_table.update()
                .where(events_table.c.position == index)
                .values(payload=payload + b"\x00")
            )
            return index
        if kind == "edit_metadata":
            conn.execute(
                events_table.update()
                .where(events_table.c.position == index)
                .values(metadata='{"source":"someone-else"}')
            )
            return index
        if kind == "delete":
            conn.execute(events_table.delete().where(events_table.c.position == index))
            return index
        if kind == "insert":
            forged = row(conn, index)
            shift_up(conn, index, head)
            forged.update(
                position=index + 1,
                event_id=str(os.urandom(16).hex()[:36]),
                stream_id="forged",
                stream_version=1,
                prev_hash=forged["hash"],
                hash=os.urandom(32),
            )
            conn.execute(events_table.insert().values(**forged))
            return index + 1
        if kind == "swap":
            first, second = sorted((index, other))
            if first == second:
                second = first + 1 if first < head else first - 1
                first, second = sorted((first, second))
            a, b = row(conn, first), row(conn, second)
            # Park one row out of the way: (stream_id, stream_version) and event_id are unique.
            conn.execute(events_table.delete().where(events_table.c.position.in_([first, second])))
            conn.execute(events_table.insert().values(**{**b, "position": first}))
            conn.execute(events_table.insert().values(**{**a, "position": second}))
            return first
    raise AssertionError(kind)


def test_honest_log_verifies_and_digests_match(store: EventStore) -> None:
    fill(store, 40)
    result = store.verify(batch_size=7)
    assert result.ok and result.events_checked == 40 and result.first_bad_position is None
    assert result.head == store.head_digest() and result.head.position == 40
    digests = store.export_digests(every=10)
    assert [d.position for d in digests] == [10, 20, 30, 40]
    assert store.verify(expected=digests).ok
    assert ChainDigest.from_dict(digests[0].to_dict()) == digests[0]
    store.record_digest(digests[-1])
    store.record_digest(digests[-1])
    assert store.recorded_digests() == [digests[-1]]


def test_empty_log_verifies(store: EventStore) -> None:
    result = store.verify()
    assert result.ok and result.events_checked == 0 and result.head == ChainDigest(0, bytes(32))


def test_chain_hash_is_the_documented_encoding(store: EventStore) -> None:
    (event,) = store.append([NewEvent("s", events_pb2.CounterChanged(counter="c", delta=1), workspace="w")])
    with store.engine.connect() as conn:
        stored = row(conn, 1)
    expected = event_hash(
        bytes(32),
        1,
        1,
        1,
        stored["occurred_at"],  # type: ignore[arg-type]
        stored["recorded_at"],  # type: ignore[arg-type]
        event.event_id.encode(),
        b"s",
        b"onefold.eventlog.testing.v1.CounterChanged",
        b"w",
        b"",
        b'{"source":"test"}',
        event.payload,
    )
    assert event.hash == expected == stored["hash"]


def test_truncating_the_newest_events_is_caught_by_an_exported_digest(store: EventStore) -> None:
    fill(store, 12)
    head = store.head_digest()
    with store.engine.begin() as conn:
        conn.execute(events_table.delete().where(events_table.c.position > 10))
    assert store.verify().ok  # a consistent prefix is a valid chain ...
    result = store.verify(expected=[head])  # ... but not the one that was published
    assert not result.ok and result.first_bad_position == 11


def test_rewritten_history_disagrees_with_a_checkpoint_digest(store: EventStore) -> None:
    fill(store, 10)
    checkpoint = store.export_digests(every=5)[0]
    with store.engine.begin() as conn:  # rewrite event 3 and re-chain everything after it
        conn.execute(events_table.update().where(events_table.c.position == 3).values(workspace="evil"))
        prev = row(conn, 2)["hash"]
        for position in range(3, 11):
            r = row(conn, position)
            new_hash = event_hash(
                prev,  # type: ignore[arg-type]
                position,
                r["stream_version"],  # type: ignore[arg-type]
                r["schema_version"],  # type: ignore[arg-type]
                r["occurred_at"],  # type: ignore[arg-type]
                r["recorded_at"],  # type: ignore[arg-type]
                str(r["event_id"]).encode(),
                str(r["stream_id"]).encode(),
                str(r["type"]).encode(),
                str(r["workspace"]).encode(),
                str(r["subject"]).encode(),
                str(r["metadata"]).encode(),
                r["payload"],  # type: ignore[arg-type]
            )
            conn.execute(
                events_table.update()
                .where(events_table.c.position == position)
                .values(prev_hash=prev, hash=new_hash)
            )
            prev = new_hash
    assert store.verify().ok
    result = store.verify(expected=[checkpoint])
    assert not result.ok and result.first_bad_position == 5


TAMPERS = ["edit_payload", "edit_metadata", "delete", "insert", "swap"]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=st.integers(min_value=2, max_value=30),
    kind=st.sampled_from(TAMPERS),
    data=st.data(),
)
def test_any_single_tamper_is_detected_at_its_position(
    make_store: StoreFactory, count: int, kind: str, data: st.DataObject
) -> None:
    store = make_store(fresh=True)
    fill(store, count)
    published = store.head_digest()
    assert store.verify().ok
    index = data.draw(st.integers(min_value=1, max_value=count), label="index")
    other = data.draw(st.integers(min_value=1, max_value=count), label="other")
    expected_position = tamper(store, kind, index, other, count)
    result = store.verify(
        expected=[published], batch_size=data.draw(st.sampled_from([3, 1000]), label="batch")
    )
    assert not result.ok, f"{kind} at {index} was not detected"
    assert result.first_bad_position == expected_position, result.problem
    assert result.problem


@pytest.mark.parametrize("kind", TAMPERS)
def test_each_tamper_kind_in_the_middle(make_store: StoreFactory, kind: str) -> None:
    store = make_store()
    fill(store, 9)
    published = store.head_digest()
    expected_position = tamper(store, kind, 4, 7, 9)
    result = store.verify(expected=[published])
    assert (result.ok, result.first_bad_position) == (False, expected_position)
