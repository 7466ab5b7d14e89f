"""The segments use cases, on the service's log (`ServiceLog`).

- `profiles` (profiles.py): identity's events folded into each profile's state (the subscriber's
  handler), timers firing, backfills working through profiles — all on the writer thread;
- `definitions` (definitions.py): set, archive, read and preview definitions;
- `queries` (queries.py): members, a profile's memberships now or as of a moment, history;
- `schedules` (schedules.py): BATCH definitions and RFM quintiles on their cron schedules;
- the data-subject contract (export counts, erasure).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence

from onefold.eventlog.service import ServiceLog
from onefold.segments.adapters.profile_states import ProfileStates
from onefold.segments.adapters.read_model import held_by
from onefold.segments.application.definitions import Definitions
from onefold.segments.application.profiles import Clock, ProfileFolds, wall_clock
from onefold.segments.application.queries import Queries
from onefold.segments.application.schedules import Schedules
from onefold.segments.application.workspaces import Workspaces


class SegmentsApplication:
    def __init__(self, log: ServiceLog, *, clock: Clock = wall_clock) -> None:
        self.log = log
        self.states = ProfileStates(log.store)
        workspaces = Workspaces(self.states)
        self.profiles = ProfileFolds(log, self.states, workspaces, clock)
        self.definitions = Definitions(log, self.states, workspaces, self.profiles)
        self.queries = Queries(log, self.states, workspaces)
        self.schedules = Schedules(log, self.states, workspaces, self.profiles)

    async def run_timers(self, leading: Callable[[], bool]) -> None:
        await self.profiles.timers.run(leading)

    async def run_backfills(self, leading: Callable[[], bool]) -> None:
        await self.profiles.backfills.run(leading)

    async def run_schedules(self, leading: Callable[[], bool]) -> None:
        await self.schedules.duty.run(leading)

    # The data-subject contract: what segments holds about a person is keyed by profile id (and
    # the ids merged into it): its state, history records, and current memberships, tags and values.

    async def export_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """How many records segments holds about these profiles, by kind."""
        return await asyncio.to_thread(self._export_counts, workspace, profile_ids)

    def _export_counts(self, workspace: str, profile_ids: Sequence[str]) -> dict[str, int]:
        with self.log.store.engine.connect() as conn:
            ids = self.states.family(conn, workspace, profile_ids)
            held = held_by(conn, workspace, ids)
            states = len(self.states.load(conn, workspace, ids))
            records = self.states.history_records(conn, workspace, ids)
        kinds = [kind for _, _, kind in held]
        return {
            "segments": kinds.count("segment"),
            "tags": sum(1 for k in kinds if k not in ("segment", "computed_trait")),
            "computed_traits": kinds.count("computed_trait"),
            "profile_states": states,
            "history_records": records,
        }

    async def erase_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """Withdraw every output (recorded as exits with why "erased"), delete the state and history
        and shred the profiles' keys (their change events' personal values read as erased)."""
        work = functools.partial(self.profiles.erase, workspace=workspace, profile_ids=profile_ids)
        withdrawn = await self.log.writer.run(self.log.projector.write, work)
        return {"outputs_withdrawn": withdrawn, "profiles_erased": len(profile_ids)}


__all__ = ["SegmentsApplication"]
