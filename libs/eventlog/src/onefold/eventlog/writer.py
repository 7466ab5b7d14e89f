"""The one concurrency model of every service: all writes on ONE writer thread, group-committed.

A service's writes (RPCs that append, subscriber batches, background duties) all run on the
service's `Writer` thread, one transaction at a time; reads run on other threads
(`asyncio.to_thread`) over their own connections and never wait behind a write (SQLite WAL,
PostgreSQL MVCC). Why one thread rather than a lock per use case or a pool of writers:

- the log has one write lock anyway (SQLite `BEGIN IMMEDIATE`, a PostgreSQL advisory lock), so more
  writer threads would only queue on it — and on SQLite spin on SQLITE_BUSY;
- in-memory state folded from the log (identity's graph, caches) is touched by one thread only;
- concurrent callers can share one transaction (one fsync): `GroupCommit` takes everything queued
  while the previous group was being written and commits it together, so the transactions per
  second stay bounded while the events per second grow with the load.

`Writer.run(fn, *args)` runs one unit of work on the thread; `Writer.group(commit)` returns a
`GroupCommit` whose `submit(items)` hands a caller's items to `commit(items_of_the_group)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from onefold.platform.errors import OnefoldError, Unavailable
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.eventlog")
T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")


def unavailable(error: BaseException, service: str) -> OnefoldError:
    """What a caller sees when the database (or the OS under it) failed: retry later."""
    log.warning("eventlog.commit_failed", service=service, error=str(error)[:300], exc_info=error)
    return Unavailable(f"the {service} log is not available right now; retry", retry_after_seconds=1.0)


def caller_outcome(error: BaseException, service: str) -> BaseException:
    """The outcome a caller sees for a failed write. Only the database or the OS failing is
    transient (Unavailable, retry); anything else is a bug, passed on unchanged so the platform
    answers INTERNAL with a log reference rather than hiding it behind "retry"."""
    if isinstance(error, OnefoldError):
        return error
    if isinstance(error, sa.exc.DBAPIError | OSError):
        return unavailable(error, service)
    return error


class Writer:
    """The service's single writer thread (see the module docstring)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{service}-writer")
        self._groups: list[GroupCommit[Any, Any]] = []
        self._stopped = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread (one unit of work: it opens its own transaction).

        After `stop` (the service is shutting down while gRPC may still answer) a write is refused
        with UNAVAILABLE, so the caller retries elsewhere or later."""
        if self._stopped:
            raise Unavailable(f"the {self.service} service is stopping; retry", retry_after_seconds=1.0)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def group(
        self,
        commit: Callable[[list[Item]], list[Result]],
        *,
        max_group_items: int = 5000,
        linger_seconds: float = 0.0005,
        after_group: Callable[[], None] | None = None,
    ) -> GroupCommit[Item, Result]:
        """A group committer on this thread. `commit` gets the items of every request in the group
        and returns one result per item, in order; `after_group` runs on the thread after each
        successful group (housekeeping that must not delay the callers' results)."""
        group: GroupCommit[Item, Result] = GroupCommit(
            self,
            commit,
            max_group_items=max_group_items,
            linger_seconds=linger_seconds,
            after_group=after_group,
        )
        self._groups.append(group)
        return group

    async def start(self) -> None:
        for group in self._groups:
            group.start()

    async def stop(self) -> None:
        """Commit what is already queued, then stop the thread."""
        for group in self._groups:
            await group.stop()
        self._stopped = True
        self._executor.shutdown(wait=True)


@dataclass
class _Request(Generic[Item, Result]):
    items: list[Item]
    future: asyncio.Future[list[Result]]


class GroupCommit(Generic[Item, Result]):
    """Concurrent callers' items committed together, in arrival order, one group at a time."""

    def __init__(
        self,
        writer: Writer,
        commit: Callable[[list[Item]], list[Result]],
        *,
        max_group_items: int,
        linger_seconds: float,
        after_group: Callable[[], None] | None,
    ) -> None:
        self.writer = writer
        self.commit = commit
        self.max_group_items = max_group_items
        self.linger_seconds = linger_seconds
        self.after_group = after_group
        self.groups_committed = 0  # for tests and metrics: transactions run for groups
        self._queue: list[_Request[Item, Result]] = []
        self._queued_items = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.accepting = False

    def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self.accepting = True
        self._task = asyncio.create_task(self._loop(), name=f"{self.writer.service}-group-commit")

    async def stop(self) -> None:
        """Stop accepting; what is queued is still committed."""
        self.accepting = False
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._task
            self._task = None

    async def submit(self, items: list[Item]) -> list[Result]:
        """Queue `items`; returns their results once the group holding them has committed."""
        if not self.accepting:
            raise Unavailable(
                f"the {self.writer.service} service is not accepting writes (starting or stopping)"
            )
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(items, future))
        self._queued_items += len(items)
        assert self._wakeup is not None
        self._wakeup.set()
        return await asyncio.shield(future)

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if not self.accepting:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            if self.linger_seconds and self._queued_items < self.max_group_items:
                await asyncio.sleep(self.linger_seconds)  # let concurrent callers join this group
            group: list[_Request[Item, Result]] = []
            items = 0
            while self._queue and (not group or items + len(self._queue[0].items) <= self.max_group_items):
                request = self._queue.pop(0)
                group.append(request)
                items += len(request.items)
            self._queued_items -= items
            try:
                outcomes = await self.writer.run(self._commit_group, [request.items for request in group])
            except Exception as error:
                outcomes = [unavailable(error, self.writer.service)] * len(group)
            for request, outcome in zip(group, outcomes, strict=True):
                if request.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    def _commit_group(self, requests: Sequence[list[Item]]) -> list[list[Result] | BaseException]:
        """On the writer thread: the whole group in one transaction; on a failure that is not the
        database's, each request alone so one bad request cannot fail the others."""
        self.groups_committed += 1
        service = self.writer.service
        try:
            results = self.commit([item for items in requests for item in items])
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            return [unavailable(error, service)] * len(requests)
        except Exception as error:
            if len(requests) == 1:
                return [caller_outcome(error, service)]
            outcomes: list[list[Result] | BaseException] = []
            for items in requests:
                try:
                    outcomes.append(self.commit(items))
                except Exception as single:
                    outcomes.append(caller_outcome(single, service))
            return outcomes
        out: list[list[Result] | BaseException] = []
        start = 0
        for items in requests:
            out.append(results[start : start + len(items)])
            start += len(items)
        if self.after_group is not None:
            try:
                self.after_group()
            except Exception:  # housekeeping: the group is committed whatever happens here
                log.warning("eventlog.after_group_failed", service=service, exc_info=True)
        return out
