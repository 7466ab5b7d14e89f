"""Projections: rebuild == live state; as-of folds; snapshots == replay from zero."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventStore, NewEvent, RecordedEvent
from onefold.eventlog.projections import (
    Projection,
    ProjectionBehind,
    Projector,
    SnapshotStore,
    StreamFold,
    fold_stream,
    load_state,
)

StoreFactory = Callable[..., EventStore]
read_models = sa.MetaData()
totals_table = sa.Table(
    "test_counter_totals",
    read_models,
    sa.Column("counter", sa.String(64), primary_key=True),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
)
profiles_table = sa.Table(
    "test_profiles",
    read_models,
    sa.Column("stream_id", sa.String(255), primary_key=True),
    sa.Column("email", sa.String(255), nullable=False),
    sa.Column("plan", sa.String(64), nullable=False),
    sa.Column("last_position", sa.BigInteger, nullable=False),
)


class CounterTotals:
    """Buffers per-counter totals in memory and writes them once per batch (flush)."""

    name = "counter-totals"
    tables = (totals_table,)

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, int]] = {}

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        if isinstance(message, events_pb2.CounterChanged):
            total, count = self._pending.get(message.counter) or self._load(conn, message.counter)
            self._pending[message.counter] = (total + message.delta, count + 1)

    def _load(self, conn: Connection, counter: str) -> tuple[int, int]:
        row = conn.execute(
            sa.select(totals_table.c.total, totals_table.c.events).where(totals_table.c.counter == counter)
        ).first()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def flush(self, conn: Connection) -> None:
        for counter, (total, count) in self._pending.items():
            conn.execute(totals_table.delete().where(totals_table.c.counter == counter))
            conn.execute(totals_table.insert().values(counter=counter, total=total, events=count))
        self._pending.clear()

    def reset(self, conn: Connection) -> None:
        self._pending.clear()
        conn.execute(totals_table.delete())


class Profiles:
    """Writes through per event; keeps the decrypted email (an erasable read model)."""

    name = "profiles"
    tables = (profiles_table,)

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        if not isinstance(message, events_pb2.ProfileUpdated):
            return
        conn.execute(profiles_table.delete().where(profiles_table.c.stream_id == event.stream_id))
        conn.execute(
            profiles_table.insert().values(
                stream_id=event.stream_id,
                email=message.email,
                plan=message.plan,
                last_position=event.position,
            )
        )

    def reset(self, conn: Connection) -> None:
        conn.execute(profiles_table.delete())


def read_model_state(store: EventStore) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with store.engine.connect() as conn:
        totals = [tuple(r) for r in conn.execute(sa.select(totals_table).order_by(totals_table.c.counter))]
        profiles = [
            tuple(r) for r in conn.execute(sa.select(profiles_table).order_by(profiles_table.c.stream_id))
        ]
    return totals, profiles


def make_projector(store: EventStore) -> tuple[Projector, CounterTotals, Profiles]:
    totals, profiles = CounterTotals(), Profiles()
    assert isinstance(totals, Projection) and isinstance(profiles, Projection)
    projector = Projector(store, [totals, profiles])
    read_models.drop_all(store.engine)
    projector.create_tables()
    return projector, totals, profiles


event_strategy = st.one_of(
    st.builds(
        lambda c, d: NewEvent(f"counter:{c}", events_pb2.CounterChanged(counter=c, delta=d)),
        st.sampled_from(["a", "b", "c"]),
        st.integers(-1000, 1000),
    ),
    st.builds(
        lambda p, e, plan: NewEvent(
            f"profile:{p}", events_pb2.ProfileUpdated(profile_id=p, email=e, plan=plan), subject=p
        ),
        st.sampled_from(["p1", "p2"]),
        st.emails(),
        st.sampled_from(["free", "pro"]),
    ),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.lists(event_strategy, min_size=1, max_size=8), min_size=1, max_size=6),
    rebuild_batch=st.integers(1, 10),
)
def test_rebuild_equals_live_state(
    make_store: StoreFactory, batches: Sequence[Sequence[NewEvent]], rebuild_batch: int
) -> None:
    store = make_store(fresh=True)
    projector, totals, profiles = make_projector(store)
    for batch in batches:
        projector.write(lambda conn, batch=batch: projector.record(conn, batch))
    live = read_model_state(store)
    expected_totals: dict[str, int] = {}
    for batch in batches:
        for event in batch:
            if isinstance(event.message, events_pb2.CounterChanged):
                expected_totals[event.message.counter] = (
                    expected_totals.get(event.message.counter, 0) + event.message.delta
                )
    assert {row[0]: row[1] for row in live[0]} == expected_totals
    seen: list[tuple[int, int]] = []
    for projection in (totals, profiles):
        projector.rebuild(
            projection, batch_size=rebuild_batch, progress=lambda done, total: seen.append((done, total))
        )
    assert read_model_state(store) == live
    assert seen[-1][0] == seen[-1][1] == store.head_position()


def test_a_write_over_a_lagging_projection_catches_it_up_first(make_store: StoreFactory) -> None:
    store = make_store()
    projector, totals, _profiles = make_projector(store)
    store.append([NewEvent("counter:a", events_pb2.CounterChanged(counter="a", delta=5))])  # bypasses it
    one = [NewEvent("counter:a", events_pb2.CounterChanged(counter="a", delta=1))]
    with pytest.raises(ProjectionBehind), store.transaction() as conn:
        projector.record(conn, one)  # never folded out of order...
    assert read_model_state(store)[0] == [] and store.head_position() == 1  # ...and rolled back
    seen_by_work: list[list[tuple[str, int, int]]] = []

    def work(conn: Connection) -> None:
        seen_by_work.append(read_model_state(store)[0])
        projector.record(conn, one)

    projector.write(work)
    assert seen_by_work[-1] == [("a", 5, 1)]  # the work ran against a caught-up read model
    assert read_model_state(store)[0] == [("a", 6, 2)]
    projector.write(lambda conn: projector.record(conn, one))
    assert read_model_state(store)[0] == [("a", 7, 3)]
    assert projector.rebuild(totals, progress=True) == 3
    assert read_model_state(store)[0] == [("a", 7, 3)]


def add(total: int, _event: RecordedEvent, message: Message) -> int:
    assert isinstance(message, events_pb2.CounterChanged)
    return total + message.delta


def test_as_of_folds(store: EventStore) -> None:
    t = datetime(2024, 6, 1, tzinfo=UTC)
    store.append([NewEvent("c", events_pb2.CounterChanged(counter="c", delta=1), occurred_at=t)])
    first = store.read()[-1]
    store.append(
        [NewEvent("c", events_pb2.CounterChanged(counter="c", delta=10), occurred_at=t - timedelta(days=2))]
    )
    assert fold_stream(store, "c", add, 0) == 11
    assert fold_stream(store, "c", add, 0, recorded_at_or_before=first.recorded_at) == 1
    assert (
        fold_stream(store, "c", add, 0, recorded_at_or_before=first.recorded_at - timedelta(seconds=1)) == 0
    )
    assert fold_stream(store, "c", add, 0, occurred_at_or_before=t - timedelta(days=1)) == 10
    assert fold_stream(store, "c", add, 0, occurred_at_or_before=t) == 11


def apply_counter(
    state: events_pb2.CounterState, _event: RecordedEvent, message: Message
) -> events_pb2.CounterState:
    if isinstance(message, events_pb2.CounterChanged):
        state.totals[message.counter] += message.delta
        state.events += 1
    return state


COUNTER_FOLD = StreamFold("counter-state", events_pb2.CounterState, apply_counter)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deltas=st.lists(st.lists(st.integers(-50, 50), min_size=1, max_size=6), min_size=1, max_size=6))
def test_snapshot_then_replay_equals_replay_from_zero(
    make_store: StoreFactory, deltas: list[list[int]]
) -> None:
    store = make_store(fresh=True)
    snapshots = SnapshotStore(store)
    for chunk in deltas:
        store.append(
            [NewEvent("long", events_pb2.CounterChanged(counter=f"k{d % 3}", delta=d)) for d in chunk]
        )
        with_snapshots = load_state(store, "long", COUNTER_FOLD, snapshots=snapshots, snapshot_every=2)
        from_zero = load_state(store, "long", COUNTER_FOLD)
        assert with_snapshots == from_zero
    loaded = snapshots.load("long", COUNTER_FOLD)
    assert loaded is None or loaded[0] <= store.stream_version("long")


def test_snapshots_of_an_erased_subject_are_deleted(store: EventStore) -> None:
    snapshots = SnapshotStore(store)
    store.append([NewEvent("s", events_pb2.CounterChanged(counter="x", delta=2), subject="subj")])
    state, version = load_state(
        store, "s", COUNTER_FOLD, snapshots=snapshots, snapshot_every=1, subject="subj"
    )
    assert snapshots.load("s", COUNTER_FOLD) == (1, state) and version == 1
    store.erase_subject("subj")
    assert snapshots.load("s", COUNTER_FOLD) is None
    assert load_state(store, "s", COUNTER_FOLD, snapshots=snapshots) == (state, 1)


class HandedMessages:
    """Keeps what it was handed: a projection that folds ProfileUpdated from its public fields."""

    name = "handed"
    tables = ()
    public_types = frozenset({events_pb2.ProfileUpdated.DESCRIPTOR.full_name})

    def __init__(self) -> None:
        self.handed: list[Message] = []

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        self.handed.append(message)

    def reset(self, conn: Connection) -> None:
        self.handed.clear()


def test_a_rebuild_decrypts_only_what_a_projection_reads(make_store: StoreFactory) -> None:
    store = make_store()
    public, decrypting = HandedMessages(), Profiles()
    projector = Projector(store, [public, decrypting])
    read_models.drop_all(store.engine)
    read_models.create_all(store.engine)
    updated = events_pb2.ProfileUpdated(profile_id="p1", email="ann@example.com", plan="pro")
    projector.write(lambda conn: projector.record(conn, [NewEvent("profile:p1", updated, subject="p1")]))
    assert public.handed == [updated]  # live: every projection gets the message as written
    projector.rebuild(public)
    projector.rebuild(decrypting)
    (rebuilt,) = public.handed
    assert isinstance(rebuilt, events_pb2.ProfileUpdated)
    assert (rebuilt.profile_id, rebuilt.plan) == ("p1", "pro") and rebuilt.email != "ann@example.com"
    assert read_model_state(store)[1][0][1] == "ann@example.com"  # the other one was decrypted
