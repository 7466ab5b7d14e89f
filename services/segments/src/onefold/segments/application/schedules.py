"""Scheduled runs: BATCH definitions and RFM by workspace quintiles, each on its cron schedule in its
time zone. A run is a pass over every profile (a backfill recomputing the definition); an RFM run
first computes the quintile boundaries over every profile's purchases, then recomputes with them.

A definition that never ran is due at once (RFM quintiles then exist from the start); an RFM by
quintiles without a schedule runs daily at 03:00 in its time zone.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy.engine import Connection

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.models import from_micros, to_micros
from onefold.eventlog.service import Duty, ServiceLog
from onefold.platform.telemetry import get_logger
from onefold.segments.adapters.profile_states import ProfileStates
from onefold.segments.adapters.read_model import workspaces_with_definitions
from onefold.segments.application.profiles import BACKFILL_PAGE, IDLE_WAIT_SECONDS, ProfileFolds
from onefold.segments.application.workspaces import Workspaces
from onefold.segments.domain.definitions import CutOffs, Micros, RfmSpec
from onefold.segments.domain.features import PurchasesAcc
from onefold.segments.domain.rfm import measures, population_boundaries

log = get_logger("onefold.segments")
DEFAULT_RFM_SCHEDULE = "0 3 * * *"


def schedule_of(definition: pb.Definition) -> str | None:
    """The cron schedule a definition runs on, or None when it is kept current in real time."""
    if definition.archived:
        return None
    if definition.evaluation == pb.EVALUATION_BATCH:
        return definition.schedule
    if definition.WhichOneof("kind") == "rfm" and not definition.rfm.HasField("cut_offs"):
        return definition.schedule.strip() or DEFAULT_RFM_SCHEDULE
    return None


def next_run(schedule: str, time_zone: str, after: Micros) -> Micros:
    local = from_micros(after).astimezone(ZoneInfo(time_zone or "UTC"))
    return to_micros(croniter(schedule, local).get_next(datetime))


class Schedules:
    def __init__(
        self, log_: ServiceLog, states: ProfileStates, workspaces: Workspaces, profiles: ProfileFolds
    ) -> None:
        self.log = log_
        self.states = states
        self.workspaces = workspaces
        self.profiles = profiles
        # On the leader: scheduled runs started at their moment.
        self.duty = Duty("segments.schedules", self._round, idle_seconds=IDLE_WAIT_SECONDS)

    def due(self) -> tuple[list[tuple[str, pb.Definition]], Micros | None]:
        """(the scheduled definitions due now, the next moment one falls due)."""
        now = self.profiles.clock()
        due: list[tuple[str, pb.Definition]] = []
        upcoming: Micros | None = None
        with self.log.store.engine.connect() as conn:
            last = self.states.last_runs(conn)
            for workspace in workspaces_with_definitions(conn):
                for definition in self.workspaces.load(conn, workspace)[1]:
                    schedule = schedule_of(definition)
                    if schedule is None:
                        continue
                    previous = last.get((workspace, definition.name))
                    moment = now if previous is None else next_run(schedule, definition.time_zone, previous)
                    if moment <= now:
                        due.append((workspace, definition))
                        moment = next_run(schedule, definition.time_zone, now)
                    upcoming = moment if upcoming is None else min(upcoming, moment)
        return due, upcoming

    def quintiles(self, workspace: str, name: str) -> CutOffs | None:
        """The workspace's RFM boundaries now, from every profile's purchases (read side)."""
        now = self.profiles.clock()
        population = []
        with self.log.store.engine.connect() as conn:
            compiled = self.workspaces.compiled(conn, workspace)
            spec = compiled.definitions[name].spec if name in compiled.definitions else None
            if not isinstance(spec, RfmSpec):
                return None
            cursor = ""
            while profile_ids := self.states.page(conn, workspace, cursor, BACKFILL_PAGE):
                cursor = profile_ids[-1]
                for state in self.states.load(conn, workspace, profile_ids).values():
                    acc = state.features.get(spec.feature)
                    if isinstance(acc, PurchasesAcc) and (m := measures(acc, now)) is not None:
                        population.append(m)
        return population_boundaries(population)

    def record(
        self, conn: Connection, *, workspace: str, definition: pb.Definition, boundaries: CutOffs | None
    ) -> None:
        """The run happened now: its boundaries kept, and every profile recomputed with them."""
        self.states.record_run(conn, workspace, definition.name, self.profiles.clock(), boundaries)
        self.profiles.start_backfill(
            conn, workspace, definition.name, definition.version, [], [definition.name]
        )

    async def run_once(self) -> Micros | None:
        """Start every due run; the next moment one falls due."""
        due, upcoming = await asyncio.to_thread(self.due)
        for workspace, definition in due:
            boundaries = None
            if definition.WhichOneof("kind") == "rfm":
                boundaries = await asyncio.to_thread(self.quintiles, workspace, definition.name)
            work = functools.partial(
                self.record, workspace=workspace, definition=definition, boundaries=boundaries
            )
            await self.log.writer.run(self.log.projector.write, work)
            self.profiles.wake_backfills()
            log.info("segments.scheduled_run", workspace=workspace, definition=definition.name)
        return upcoming

    async def _round(self) -> float | None:
        """Start what is due; seconds until the next run (looked at again at least every minute, so
        a definition set meanwhile is picked up)."""
        upcoming = await self.run_once()
        return None if upcoming is None else (upcoming - self.profiles.clock()) / 1e6
