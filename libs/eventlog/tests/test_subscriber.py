"""Subscribers: exactly-once effect from at-least-once delivery, poison events, partitions, lag.

A real nats-server, a real upstream log (SQLite) published by the real relay, and a downstream
store on SQLite and PostgreSQL. The handler writes one `effects` row per event it is given, in the
subscriber's transaction, so "applied exactly once" is checked row by row, not inferred.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.errors import NotFoundError
from sqlalchemy.engine import Connection
from structlog.testing import capture_logs

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventStore, NewEvent, RecordedEvent
from onefold.eventlog.projections import Projector
from onefold.eventlog.relay import OutboxRelay
from onefold.eventlog.streams import (
    DLQ_STREAM,
    ensure_consumer,
    event_filter,
    stream_name,
)
from onefold.eventlog.subscriber import (
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_POSITION,
    DLQ_SERVICE,
    DLQ_UPSTREAM,
    Subscriber,
    SubscriberSettings,
)
from onefold.platform.nats import NatsConnection

effects_metadata = sa.MetaData()
# Deliberately no unique constraint: a second application of an event must show up as a row.
effects = sa.Table(
    "effects",
    effects_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("stream_id", sa.String(255), nullable=False),
    sa.Column("delta", sa.BigInteger, nullable=False),
)

FAST = SubscriberSettings(batch_size=100, fetch_timeout_seconds=0.3, retry_backoff_seconds=0.01)


def apply_effects(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
    conn.execute(
        sa.insert(effects),
        [
            {
                "position": e.position,
                "stream_id": e.stream_id,
                "delta": events_pb2.CounterChanged.FromString(e.payload).delta,
            }
            for e in envelopes
        ],
    )


def applied_positions(store: EventStore) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(effects.c.position).order_by(effects.c.id)).scalars())


def counters(count: int, streams: int = 10) -> list[NewEvent]:
    return [
        NewEvent(
            f"counter:{i % streams}", events_pb2.CounterChanged(counter=f"c{i % streams}", delta=i % 7 - 3)
        )
        for i in range(count)
    ]


async def publish(store: EventStore, nats: NatsConnection, service: str = "ingest") -> None:
    await OutboxRelay(store, nats, service=service).publish_available()


async def test_redelivered_and_republished_events_have_no_second_effect(
    nats: NatsConnection, database_url: str, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    upstream.append(counters(600))
    await publish(upstream, nats)
    downstream = open_store("segments", database_url, extra=effects_metadata)

    first = Subscriber(
        downstream, nats, service="segments", upstream="ingest", handler=apply_effects, settings=FAST
    )
    await first.run_until_idle()
    assert applied_positions(downstream) == list(range(1, 601))
    assert first.stats.handled == 600
    lag = await first.lag()
    assert lag.pending == 0 and lag.ack_pending == 0 and lag.tracking == {"ingest": 600}

    # Everything delivered again (the consumer is gone and starts over) ...
    js = (await nats.wait_connected()).jetstream()
    await js.delete_consumer(stream_name("ingest"), first.durable)
    # ... and some events re-published after the dedupe window (plain copies, no message id).
    for event in upstream.read(after_position=100, limit=5):
        await js.publish(
            f"onefold.ingest.CounterChanged._.{event.position % 16}",
            upstream.to_envelope(event).SerializeToString(),
        )

    again = Subscriber(
        downstream, nats, service="segments", upstream="ingest", handler=apply_effects, settings=FAST
    )
    await again.run_until_idle()
    assert again.stats.handled == 0 and again.stats.skipped == 605
    assert applied_positions(downstream) == list(range(1, 601))

    # New events continue from the tracking position.
    upstream.append(counters(50))
    await publish(upstream, nats)
    await again.run_until_idle()
    assert applied_positions(downstream) == list(range(1, 651))
    assert (await again.lag()).tracking == {"ingest": 650}
    await first.stop()
    await again.stop()


async def test_poison_event_is_dead_lettered_with_its_error_and_the_rest_processed(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    upstream.append(counters(250))
    await publish(upstream, nats)
    downstream = open_store("segments", extra=effects_metadata)
    poison_position = 137
    calls: list[int] = []

    def picky(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        calls.append(len(envelopes))
        if any(e.position == poison_position for e in envelopes):
            raise ValueError(f"cannot handle event {poison_position}\nsecond line of the error")
        apply_effects(conn, envelopes)

    settings = SubscriberSettings(
        batch_size=100, fetch_timeout_seconds=0.3, max_deliver=3, retry_backoff_seconds=0.01
    )
    sub = Subscriber(
        downstream, nats, service="segments", upstream="ingest", handler=picky, settings=settings
    )
    await sub.run_until_idle()

    assert applied_positions(downstream) == [p for p in range(1, 251) if p != poison_position]
    assert downstream.tracking_position("ingest") == 250
    assert sub.stats.dead_lettered == 1 and sub.stats.batch_failures == 1
    # The failing batch was retried event by event: 1 batch try, 36 good ones, 3 tries of the poison, 63 more.
    assert calls.count(1) == 36 + 3 + 63

    js = (await nats.wait_connected()).jetstream()
    dead = await js.get_last_msg(DLQ_STREAM, "onefold.dlq.segments.ingest")
    assert dead.headers is not None
    assert dead.headers[DLQ_ERROR] == f"cannot handle event {poison_position} | second line of the error"
    assert dead.headers[DLQ_UPSTREAM] == "ingest" and dead.headers[DLQ_SERVICE] == "segments"
    assert dead.headers[DLQ_POSITION] == str(poison_position) and dead.headers[DLQ_ATTEMPTS] == "3"
    assert dead.data is not None and EventEnvelope.FromString(dead.data).position == poison_position
    assert (await js.stream_info(DLQ_STREAM)).state.messages == 1
    await sub.stop()


class FlakyStore:
    """The downstream store, but its database is 'down' for the first few transactions."""

    def __init__(self, store: EventStore, failures: int) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def transaction(self) -> object:
        if self.failures > 0:
            self.failures -= 1
            raise sa.exc.OperationalError("BEGIN", {}, Exception("database is unreachable"))
        return self._store.transaction()


async def test_database_outage_is_retried_never_dead_lettered(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    upstream.append(counters(300))
    await publish(upstream, nats)
    downstream = open_store("segments", extra=effects_metadata)
    flaky = FlakyStore(downstream, failures=3)
    settings = SubscriberSettings(batch_size=100, fetch_timeout_seconds=0.3, error_backoff_seconds=0.02)
    sub = Subscriber(
        flaky, nats, service="segments", upstream="ingest", handler=apply_effects, settings=settings
    )  # type: ignore[arg-type]
    sub.start()
    try:
        async with asyncio.timeout(15):
            while downstream.tracking_position("ingest") < 300:
                await asyncio.sleep(0.05)
    finally:
        await sub.stop()
    assert applied_positions(downstream) == list(range(1, 301))
    assert sub.stats.dead_lettered == 0 and sub.stats.rewinds >= 1


async def test_partitioned_subscribers_share_the_work_and_keep_each_stream_in_order(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    upstream.append(counters(800, streams=40))
    await publish(upstream, nats)
    downstream = open_store("segments", extra=effects_metadata)
    seen: dict[str, list[int]] = {}

    def recording(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        for e in envelopes:
            seen.setdefault(e.stream_id, []).append(e.stream_version)
        apply_effects(conn, envelopes)

    low = Subscriber(
        downstream,
        nats,
        service="segments",
        upstream="ingest",
        handler=recording,
        partitions=range(8),
        settings=FAST,
    )
    high = Subscriber(
        downstream,
        nats,
        service="segments",
        upstream="ingest",
        handler=recording,
        partitions=range(8, 16),
        settings=FAST,
    )
    assert low.durable != high.durable and low.filter_subjects[0] == event_filter("ingest", 0)
    await asyncio.gather(low.run_until_idle(), high.run_until_idle())

    assert sorted(applied_positions(downstream)) == list(range(1, 801))
    assert low.stats.handled > 0 and high.stats.handled > 0
    assert low.stats.handled + high.stats.handled == 800
    for versions in seen.values():
        assert versions == sorted(versions)  # one person's events keep their order
    tracking = (await low.lag()).tracking | (await high.lag()).tracking
    assert set(tracking) == {f"ingest.p{p}" for p in range(16)}
    await low.stop()
    await high.stop()


async def test_a_subscriber_of_some_event_types_is_never_delivered_the_others(
    nats: NatsConnection, database_url: str, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    # Interleaved, so that every counter follows an event the subscriber is never given.
    upstream.append(
        [
            event
            for i in range(150)
            for event in (
                NewEvent(f"profile:{i % 7}", events_pb2.ProfileUpdated(profile_id=f"p{i % 7}")),
                NewEvent(f"counter:{i % 5}", events_pb2.CounterChanged(counter=f"c{i % 5}", delta=1)),
            )
        ]
    )
    await publish(upstream, nats)
    downstream = open_store("segments", database_url, extra=effects_metadata)
    types: list[str] = []

    def recording(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        types.extend(e.type for e in envelopes)
        apply_effects(conn, envelopes)

    counters_only = Subscriber(
        downstream,
        nats,
        service="segments",
        upstream="ingest",
        handler=recording,
        event_types=[events_pb2.CounterChanged.DESCRIPTOR.full_name],
        settings=FAST,
    )
    await counters_only.run_until_idle()

    assert set(types) == {events_pb2.CounterChanged.DESCRIPTOR.full_name} and len(types) == 150
    assert applied_positions(downstream) == list(range(2, 301, 2))
    lag = await counters_only.lag()
    assert lag.pending == 0 and lag.ack_pending == 0 and lag.tracking == {"ingest": 300}
    assert counters_only.stats.refused == 0 and counters_only.stats.dead_lettered == 0
    await counters_only.stop()


_examples = itertools.count()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    deltas=st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 5)), min_size=1, max_size=40),
    chaos=st.lists(
        st.one_of(
            st.tuples(st.just("poll"), st.integers(1, 10)),
            st.tuples(st.just("redeliver_from"), st.integers(0, 100)),  # percent of what was acknowledged
            st.tuples(st.just("republish"), st.integers(0, 100)),  # percent into the log
            st.tuples(st.just("crash"), st.integers(0, 1)),  # 0: before the commit, 1: before the acks
        ),
        max_size=12,
    ),
)
async def test_at_least_once_delivery_with_idempotent_handling_is_exactly_once(
    nats: NatsConnection,
    open_store: Callable[..., EventStore],
    deltas: list[tuple[int, int]],
    chaos: list[tuple[str, int]],
) -> None:
    example = next(_examples)
    service, consumer_service = f"up{example}", f"down{example}"
    upstream = open_store(service, extra=effects_metadata)
    upstream.append(
        [NewEvent(f"counter:{s}", events_pb2.CounterChanged(counter=f"c{s}", delta=d)) for s, d in deltas]
    )
    await publish(upstream, nats, service)
    downstream = open_store(consumer_service, extra=effects_metadata)
    js = (await nats.wait_connected()).jetstream()

    def subscriber(batch_size: int = 10) -> Subscriber:
        settings = SubscriberSettings(batch_size=batch_size, fetch_timeout_seconds=0.2)
        return Subscriber(
            downstream,
            nats,
            service=consumer_service,
            upstream=service,
            handler=apply_effects,
            settings=settings,
        )

    sub = subscriber()
    for action, amount in chaos:
        if action == "poll":
            sub.settings = SubscriberSettings(batch_size=amount, fetch_timeout_seconds=0.2)
            await sub.poll_once()
        elif action == "redeliver_from":
            # A crashed consumer / lost acks: the server delivers again from an earlier point.
            try:
                info = await js.consumer_info(stream_name(service), sub.durable)
            except NotFoundError:
                continue  # nothing was delivered yet
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            await js.delete_consumer(stream_name(service), sub.durable)
            await ensure_consumer(
                js,
                stream=stream_name(service),
                durable=sub.durable,
                filter_subjects=sub.filter_subjects,
                start_sequence=1 + floor * amount // 100,
            )
            await sub.stop()  # the old process is gone
            sub = subscriber()
        elif action == "crash":
            # The subscriber process dies holding a fetched batch: the server still counts it as
            # delivered, and will only redeliver it after ack_wait, behind newer events.
            try:
                msgs = await sub._fetch()
            except TimeoutError:
                continue
            if amount == 1:
                deliveries = [sub._delivery(m) for m in msgs]
                sub._open(deliveries, {})
                await asyncio.to_thread(sub._apply, deliveries)
            await sub.stop()
            sub = subscriber()
        else:
            # The upstream re-published an event after the dedupe window: a second copy on the bus.
            event = upstream.read(after_position=(len(deltas) - 1) * amount // 100, limit=1)[0]
            await js.publish(
                f"onefold.{service}.CounterChanged._.0", upstream.to_envelope(event).SerializeToString()
            )
    await sub.run_until_idle()
    await sub.stop()

    assert applied_positions(downstream) == list(range(1, len(deltas) + 1))
    with downstream.engine.connect() as conn:
        totals = dict(
            conn.execute(
                sa.select(effects.c.stream_id, sa.func.sum(effects.c.delta)).group_by(effects.c.stream_id)
            ).all()
        )
    expected: dict[str, int] = {}
    for s, d in deltas:
        expected[f"counter:{s}"] = expected.get(f"counter:{s}", 0) + d
    assert totals == expected


async def test_a_subscriber_started_before_its_upstream_waits_quietly_then_consumes(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    """On a first start a service may come up before the upstream has created its stream: that is
    no trouble to warn about, and the events flow once the stream exists."""
    downstream = open_store("segments", extra=effects_metadata)
    subscriber = Subscriber(
        downstream,
        nats,
        service="segments",
        upstream="journeys",
        handler=apply_effects,
        settings=SubscriberSettings(batch_size=100, fetch_timeout_seconds=0.3, error_backoff_seconds=0.05),
    )
    with capture_logs() as logs:
        subscriber.start()
        async with asyncio.timeout(30):
            while not any(entry["event"] == "subscriber.waiting_for_upstream" for entry in logs):
                await asyncio.sleep(0.05)
        upstream = open_store("journeys", extra=effects_metadata)
        upstream.append(counters(5))
        await publish(upstream, nats, service="journeys")
        async with asyncio.timeout(30):
            while applied_positions(downstream) != [1, 2, 3, 4, 5]:
                await asyncio.sleep(0.05)
        await subscriber.stop()
    assert not [entry for entry in logs if entry["log_level"] == "warning"]


class _Effects:
    """The downstream's read model: an effects row per folded CounterChanged."""

    name = "effects"
    tables = (effects,)

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        assert isinstance(message, events_pb2.CounterChanged)
        conn.execute(
            sa.insert(effects).values(position=event.position, stream_id=event.stream_id, delta=message.delta)
        )

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.delete(effects))


async def test_a_batch_over_a_read_model_left_behind_catches_it_up_and_is_never_dead_lettered(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    upstream.append(counters(20))
    await publish(upstream, nats)
    downstream = open_store("segments", extra=effects_metadata)
    projector = Projector(downstream, [_Effects()])
    # An event the read model has not folded (an interrupted rebuild, a write that bypassed it).
    downstream.append([NewEvent("own", events_pb2.CounterChanged(counter="own", delta=1))])

    def fold_as_own_events(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        projector.record(
            conn,
            [
                NewEvent("own", events_pb2.CounterChanged.FromString(envelope.payload))
                for envelope in envelopes
            ],
        )

    subscriber = Subscriber(
        downstream,
        nats,
        service="segments",
        upstream="ingest",
        handler=fold_as_own_events,
        settings=FAST,
        catch_up=projector.catch_up,
    )
    await subscriber.run_until_idle()
    assert applied_positions(downstream) == list(range(1, 22))  # the missed event first, then all 20
    assert subscriber.stats.dead_lettered == 0 and subscriber.stats.handled == 20
    await subscriber.stop()
