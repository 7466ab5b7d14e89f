"""The writer thread and group commit every service uses (onefold.eventlog.writer), and the
declared-events check (onefold.eventlog.dispatch, onefold.testing.events)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventRegistry, InvalidEvent
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.writer import Writer
from onefold.platform.errors import InvalidArgument, Unavailable
from onefold.testing.events import assert_events_handled


async def test_concurrent_callers_share_groups_and_get_their_own_results_in_order() -> None:
    writer = Writer("test")
    threads: set[str] = set()
    groups: list[list[int]] = []

    def commit(items: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        groups.append(items)
        return [item * 10 for item in items]

    group = writer.group(commit, linger_seconds=0.01)
    await writer.start()
    results = await asyncio.gather(*(group.submit([n, n + 1]) for n in range(0, 40, 2)))
    await writer.stop()
    assert results == [[n * 10, (n + 1) * 10] for n in range(0, 40, 2)]
    assert sum(len(g) for g in groups) == 40 and len(groups) < 20  # callers shared transactions
    assert threads == {next(iter(threads))} and next(iter(threads)).startswith("test-writer")


async def test_one_bad_request_fails_alone_and_a_database_error_asks_to_retry() -> None:
    writer = Writer("test")

    def commit(items: list[int]) -> list[int]:
        if -1 in items:
            raise InvalidArgument("negative")
        if -2 in items:
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
        return items

    group = writer.group(commit, linger_seconds=0.01)
    await writer.start()
    good, bad = await asyncio.gather(group.submit([1]), group.submit([-1]), return_exceptions=True)
    assert good == [1] and isinstance(bad, InvalidArgument)
    with pytest.raises(Unavailable):
        await group.submit([-2])
    await writer.stop()
    with pytest.raises(Unavailable):
        await group.submit([3])  # stopped: refused, not lost
    with pytest.raises(Unavailable):
        await writer.run(commit, [4])


async def test_stop_commits_what_was_queued() -> None:
    writer = Writer("test")
    committed: list[int] = []
    group = writer.group(lambda items: committed.extend(items) or items, linger_seconds=0.05)
    await writer.start()
    pending = asyncio.ensure_future(group.submit([7]))
    await asyncio.sleep(0)
    await writer.stop()
    assert await pending == [7] and committed == [7]


class _Fold(Handlers):
    @handles(events_pb2.CounterChanged)
    def _counter(self, total: int) -> int:
        return total + 1


def test_dispatch_by_declared_type_and_the_check_that_every_event_is_handled() -> None:
    assert _Fold().dispatch(events_pb2.CounterChanged(), 1) == 2
    assert _Fold().dispatch(events_pb2.ProfileUpdated(), 1) is None
    registry = EventRegistry.declared_in(
        events_pb2, upcasters={"onefold.eventlog.testing.v1.CounterChanged": {1: lambda message: message}}
    )
    assert registry.names() == [
        "onefold.eventlog.testing.v1.CounterChanged",
        "onefold.eventlog.testing.v1.ProfileUpdated",
    ]
    assert registry.for_name("onefold.eventlog.testing.v1.CounterChanged").schema_version == 2
    with pytest.raises(InvalidEvent, match="no upcaster"):
        EventRegistry.declared_in(events_pb2)
    with pytest.raises(AssertionError, match="ProfileUpdated"):
        assert_events_handled(registry, _Fold)
    assert_events_handled(
        registry, _Fold, not_folded={"onefold.eventlog.testing.v1.ProfileUpdated": "audit only"}
    )
    with pytest.raises(AssertionError, match="not registered"):
        assert_events_handled(EventRegistry(), _Fold)
