"""Duty: the leader's background loop, written once for every service's timers, senders, schedules
and backfills."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Connection

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventStore, NewEvent
from onefold.eventlog.service import Duty, ServiceLog


async def test_a_duty_runs_only_on_the_leader_retries_a_failed_round_and_runs_again_when_woken() -> None:
    rounds: list[int] = []
    done = asyncio.Event()
    leading = False

    async def round_() -> float | None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("the first round fails")
        done.set()
        return None  # nothing planned: the next round comes when woken

    duty = Duty("test", round_, idle_seconds=3600, retry_seconds=0.01)
    duty.FOLLOWER_POLL_SECONDS = 0.01
    task = asyncio.create_task(duty.run(lambda: leading))
    try:
        await asyncio.sleep(0.1)
        assert rounds == []  # a follower does none of the work
        leading = True
        await asyncio.wait_for(done.wait(), 30)
        assert len(rounds) == 2  # the failed round was tried again
        done.clear()
        await asyncio.to_thread(duty.wake)  # from another thread, as the writer wakes it
        await asyncio.wait_for(done.wait(), 30)
        assert len(rounds) == 3
    finally:
        task.cancel()


async def test_a_round_saying_there_is_more_is_followed_by_the_next_at_once() -> None:
    rounds: list[int] = []
    finished = asyncio.Event()

    async def round_() -> float | None:
        rounds.append(len(rounds))
        if len(rounds) < 3:
            return 0.0  # a full batch: there is more
        finished.set()
        return None

    duty = Duty("test", round_, idle_seconds=3600)
    task = asyncio.create_task(duty.run(lambda: True))
    try:
        await asyncio.wait_for(finished.wait(), 30)  # never waited an idle hour between rounds
        assert rounds == [0, 1, 2]
    finally:
        task.cancel()


def test_after_commit_calls_back_once_the_writing_transaction_committed(store: EventStore) -> None:
    log = ServiceLog(store)
    woken: list[str] = []

    def wake() -> None:
        woken.append("woken")

    def write(conn: Connection) -> None:
        log.after_commit(wake)
        log.after_commit(wake)  # asked twice in one transaction: woken once
        log.projector.record(conn, [NewEvent("counter:a", events_pb2.CounterChanged(counter="a", delta=1))])
        assert woken == []  # not yet: a duty woken now could read before the commit

    log.projector.write(write)
    assert woken == ["woken"]
    store.append([NewEvent("counter:a", events_pb2.CounterChanged(counter="a", delta=1))])
    assert woken == ["woken"]  # a later commit does not call it again
