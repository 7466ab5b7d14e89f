"""Scheduled journeys: at each moment of a journey's schedule (cron in a time zone, or once), its
audience enters — the members of its segment now (asked of segments), or, without a segment, every
profile journeys has heard of. On the leader, a page of the audience per transaction.

Each run is recorded (`ScheduledEntryRan`, on the journey's definition stream) once its audience
has been entered, and the next run is the schedule's first moment after the recorded one. A moment
missed while the service was down runs once when it is back (not once per missed moment); a run
interrupted midway runs again, and the people it had entered are refused by their re-entry rules
(REENTRY_ALWAYS restarts them: a journey that re-enters everyone on every run accepts that).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import datetime

import grpc
import sqlalchemy as sa

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.models import NewEvent, from_micros
from onefold.eventlog.service import Duty, ServiceLog
from onefold.journeys.adapters.profile_facts import profile_facts
from onefold.journeys.adapters.read_model import schedules
from onefold.journeys.adapters.upstream import Upstream
from onefold.journeys.application.catalog import Clock, Journeys
from onefold.journeys.application.runs import Runs
from onefold.journeys.domain.catalog import definition_stream
from onefold.journeys.domain.definitions import OnSchedule
from onefold.journeys.domain.instance import next_scheduled_entry
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.journeys")
AUDIENCE_PAGE = 500
RETRY_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Due:
    workspace: str
    name: str
    version: int
    fire_at: datetime
    segment: str  # "" = every profile journeys has heard of


class Schedules:
    def __init__(
        self, log_: ServiceLog, journeys: Journeys, runs: Runs, upstream: Upstream, clock: Clock
    ) -> None:
        self.log = log_
        self.journeys = journeys
        self.runs = runs
        self.upstream = upstream
        self.clock = clock
        # On the leader: run schedules at their moments, planned again when a journey is published.
        self.duty = Duty("journeys.schedules", self._round, retry_seconds=RETRY_WAIT_SECONDS)

    def wake(self) -> None:
        """A journey was published: plan again now."""
        self.duty.wake()

    async def _round(self) -> float | None:
        try:
            upcoming = await self.run_once()
        except grpc.aio.AioRpcError as exc:
            log.warning("journeys.segments_unreachable", code=exc.code().name)
            return RETRY_WAIT_SECONDS
        return None if upcoming is None else (upcoming - self.clock()).total_seconds()

    def _plan(self, now: datetime) -> tuple[list[Due], datetime | None]:
        """The runs due now, and the next moment one falls due after them."""
        due: list[Due] = []
        upcoming: datetime | None = None
        with self.log.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(schedules.c.workspace, schedules.c.name, schedules.c.after_us)
            ).all()
            running = {
                (workspace, r.name): r.journey
                for workspace in {str(row[0]) for row in rows}
                for r in self.journeys.running(conn, workspace)
            }
        for workspace, name, after_us in rows:
            journey = running.get((str(workspace), str(name)))
            if journey is None or not isinstance(journey.entry.trigger, OnSchedule):
                continue
            moment = next_scheduled_entry(journey, from_micros(int(after_us)))
            if moment is None:
                continue
            if moment <= now:
                due.append(
                    Due(str(workspace), str(name), journey.version, moment, journey.entry.trigger.segment)
                )
            elif upcoming is None or moment < upcoming:
                upcoming = moment
        return due, upcoming

    async def run_once(self) -> datetime | None:
        """Run what is due; the next moment a run falls due (None: no scheduled journey)."""
        due, upcoming = await asyncio.to_thread(self._plan, self.clock())
        for run in due:
            await self._run(run)
        return upcoming if not due else self.clock()  # after runs, plan again at once

    async def _run(self, run: Due) -> None:
        audience = (
            await self.upstream.members(run.workspace, run.segment)
            if run.segment
            else await asyncio.to_thread(self._everyone, run.workspace)
        )
        entered = 0
        for start in range(0, len(audience), AUDIENCE_PAGE):
            page = audience[start : start + AUDIENCE_PAGE]
            work = functools.partial(
                self.runs.enter_scheduled, workspace=run.workspace, name=run.name, profile_ids=page
            )
            entered += await self.log.writer.run(self.log.projector.write, work)
        ran = pb.ScheduledEntryRan(
            workspace=run.workspace,
            name=run.name,
            version=run.version,
            audience=len(audience),
            entered=entered,
        )
        ran.fire_at.FromDatetime(run.fire_at)
        event = NewEvent(
            stream_id=definition_stream(run.workspace, run.name),
            message=ran,
            workspace=run.workspace,
            occurred_at=self.clock(),
        )
        await self.log.writer.run(
            self.log.projector.write, lambda conn: self.log.projector.record(conn, [event])
        )
        log.info("journeys.schedule_ran", journey=run.name, audience=len(audience), entered=entered)

    def _everyone(self, workspace: str) -> list[str]:
        with self.log.store.engine.connect() as conn:
            query = sa.select(profile_facts.c.profile_id).where(profile_facts.c.workspace == workspace)
            return [str(row[0]) for row in conn.execute(query.order_by(profile_facts.c.profile_id))]
