"""Worker processes of one service sharing its subscriptions by partition group (workers.py).

Two "processes" are two WorkerGroups, each with its own store (engine, connections, lease files)
on one database — SQLite file and PostgreSQL — consuming a real upstream log through a real
nats-server. Each round of dealing is driven by hand (`deal()`), so who holds what is checked
step by step; the handler writes an `effects` row per event applied, so "exactly once" is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from test_subscriber import (
    FAST,
    applied_positions,
    apply_effects,
    counters,
    effects,
    effects_metadata,
    publish,
)

from onefold.eventlog import EventStore
from onefold.eventlog.subscriber import Subscriber
from onefold.eventlog.workers import WorkerGroups, partition_groups
from onefold.platform.nats import NatsConnection

PARTITIONS = 16


def test_groups_deal_every_partition_once() -> None:
    groups = partition_groups(PARTITIONS, 3)
    assert groups[0] == [0, 3, 6, 9, 12, 15] and groups[2] == [2, 5, 8, 11, 14]
    assert sorted(p for group in groups for p in group) == list(range(PARTITIONS))
    assert partition_groups(PARTITIONS, 1) == [list(range(PARTITIONS))]
    with pytest.raises(ValueError, match="between 1 and the 16 partitions"):
        partition_groups(PARTITIONS, 17)


def group_subscribers(store: EventStore, nats: NatsConnection, workers: int) -> list[list[Subscriber]]:
    return [
        [
            Subscriber(
                store,
                nats,
                service="segments",
                upstream="ingest",
                handler=apply_effects,
                partitions=partitions,
                settings=FAST,
            )
        ]
        for partitions in partition_groups(PARTITIONS, workers)
    ]


async def wait_applied(store: EventStore, count: int) -> None:
    async with asyncio.timeout(60):
        while len(applied_positions(store)) < count:
            await asyncio.sleep(0.1)


def streams_in_order(store: EventStore) -> bool:
    """Every counter stream's events were applied in their log order."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(effects.c.stream_id, effects.c.position).order_by(effects.c.id)).all()
    per_stream: dict[str, list[int]] = {}
    for stream, position in rows:
        per_stream.setdefault(stream, []).append(position)
    return all(positions == sorted(positions) for positions in per_stream.values())


async def test_worker_processes_share_the_groups_and_a_dead_ones_are_taken_over_and_given_back(
    nats: NatsConnection, database_url: str, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    first_store = open_store("segments", database_url, extra=effects_metadata)
    second_store = open_store("segments", database_url, extra=effects_metadata)
    first = WorkerGroups(first_store.engine, "segments", group_subscribers(first_store, nats, 2))
    second = WorkerGroups(second_store.engine, "segments", group_subscribers(second_store, nats, 2))
    try:
        # Alone, the first process takes its slot and both groups (the second slot is empty).
        await first.deal()
        assert first.slot == 0 and first.running == {0, 1}
        upstream.append(counters(400, streams=40))
        await publish(upstream, nats)
        await wait_applied(first_store, 400)

        # The second arrives: it takes slot 1, the first gives group 1 back, the second takes it.
        await second.deal()
        assert second.slot == 1 and second.running == set()
        await first.deal()
        assert first.running == {0}
        await second.deal()
        assert second.running == {1}
        upstream.append(counters(400, streams=40))
        await publish(upstream, nats)
        await wait_applied(first_store, 800)
        assert second.groups[1][0].stats.handled > 0 and second.groups[0][0].stats.handled == 0

        # The second stops (its leases go with it): the first takes its group over.
        for group in sorted(second.running):
            await second._stop(group)
        for lease in second.slots:
            lease.release()
        await first.deal()
        assert first.running == {0, 1}
        upstream.append(counters(400, streams=40))
        await publish(upstream, nats)
        await wait_applied(first_store, 1200)
    finally:
        for workers in (first, second):
            for group in sorted(workers.running):
                await workers._stop(group)
            for lease in workers.slots:
                lease.release()

    assert sorted(applied_positions(first_store)) == list(range(1, 1201))  # each event once
    assert streams_in_order(first_store)


async def test_changing_the_number_of_workers_neither_repeats_nor_skips_an_event(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    downstream = open_store("segments", extra=effects_metadata)

    def whole_stream() -> Subscriber:
        return Subscriber(
            downstream, nats, service="segments", upstream="ingest", handler=apply_effects, settings=FAST
        )

    # One worker applies the first 300 ...
    upstream.append(counters(300, streams=30))
    await publish(upstream, nats)
    first = whole_stream()
    await first.run_until_idle()
    # ... two workers the next 300: each group starts where the whole-stream row left off.
    upstream.append(counters(300, streams=30))
    await publish(upstream, nats)
    groups = [group[0] for group in group_subscribers(downstream, nats, 2)]
    await asyncio.gather(*(group.run_until_idle() for group in groups))
    assert sorted(applied_positions(downstream)) == list(range(1, 601))
    assert sum(group.stats.handled for group in groups) == 300

    # Of the next 300, only group 0 applies its share before the service goes back to one worker,
    # which applies group 1's share and skips what group 0 already applied.
    upstream.append(counters(300, streams=30))
    await publish(upstream, nats)
    before = groups[0].stats.handled
    await groups[0].run_until_idle()
    ahead = groups[0].stats.handled - before
    again = whole_stream()
    await again.run_until_idle()
    assert sorted(applied_positions(downstream)) == list(range(1, 901))
    assert 0 < ahead < 300 and again.stats.handled == 300 - ahead
    assert streams_in_order(downstream)
    for subscriber in (first, *groups, again):  # their pull subscriptions, before NATS closes
        await subscriber.stop()
