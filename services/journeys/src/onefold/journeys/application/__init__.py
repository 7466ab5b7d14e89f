"""The journeys use cases, on the service's log (`ServiceLog`).

- `journeys` (catalog.py): journeys and templates applied together, published, paused, archived,
  read; the compiled versions the runs work with;
- `runs` (runs.py): entries, upstream events moving instances, timers, consent withdrawn, archive
  and erasure — on the writer thread;
- `sender` (sender.py): queued messages asked of consent, paced, rendered, sent, recorded;
- `schedules` (schedules.py): scheduled journeys entering their audience at each moment;
- `queries` (queries.py): an instance, its history with consent evidence, a journey's results;
- the data-subject contract (export counts, erasure).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.service import ServiceLog
from onefold.journeys.adapters.profile_facts import ProfileFacts
from onefold.journeys.adapters.providers.factory import Channels
from onefold.journeys.adapters.read_model import instances, outbox
from onefold.journeys.adapters.templates import Templates
from onefold.journeys.adapters.upstream import Upstream
from onefold.journeys.application.catalog import Clock, Journeys, wall_clock
from onefold.journeys.application.queries import Queries
from onefold.journeys.application.runs import Runs
from onefold.journeys.application.schedules import Schedules
from onefold.journeys.application.sender import Sender
from onefold.journeys.domain.pacing import PacingPolicy


class JourneysApplication:
    def __init__(
        self,
        log: ServiceLog,
        upstream: Upstream,
        channels: Channels,
        *,
        policy: PacingPolicy | None = None,
        clock: Clock = wall_clock,
    ) -> None:
        self.log = log
        self.channels = channels
        renderer = Templates()
        self.facts = ProfileFacts(log.store)
        self.journeys = Journeys(log, renderer, upstream.known, clock)
        self.runs = Runs(log, self.journeys, self.facts, clock)
        self.sender = Sender(
            log, self.journeys, self.facts, upstream, channels, renderer, policy or PacingPolicy(), clock
        )
        self.runs.on_queued = lambda: log.after_commit(self.sender.wake)
        self.schedules = Schedules(log, self.journeys, self.runs, upstream, clock)
        self.queries = Queries(log)

    async def archive(self, workspace: str, name: str, actor: str) -> pb.Journey:
        """Archive a journey; its instances in flight exit in the same transaction."""
        return await self.journeys.archive(
            workspace, name, actor, lambda conn: self.runs.archive_instances(conn, workspace, name)
        )

    def published(self) -> None:
        """A journey was published or resumed: its due timers fire and its schedule is planned now."""
        self.runs.wake_timers()
        self.schedules.wake()

    async def run_timers(self, leading: Callable[[], bool]) -> None:
        await self.runs.timers.run(leading)

    async def run_sender(self, leading: Callable[[], bool]) -> None:
        await self.sender.duty.run(leading)

    async def run_schedules(self, leading: Callable[[], bool]) -> None:
        await self.schedules.duty.run(leading)

    # The data-subject contract: what journeys holds about a person is keyed by profile id — the
    # instances (their events), the profile's facts, the outbox rows and the sandbox's kept sends.

    async def export_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """How many records journeys holds about these profiles, by kind."""
        counts = await asyncio.to_thread(self._export_counts, workspace, profile_ids)
        counts["sandbox_sends"] = sum([await self.channels.sandbox.count(workspace, p) for p in profile_ids])
        return counts

    def _export_counts(self, workspace: str, profile_ids: Sequence[str]) -> dict[str, int]:
        ids = list(profile_ids)
        with self.log.store.engine.connect() as conn:
            held = conn.execute(
                sa.select(sa.func.count())
                .select_from(instances)
                .where((instances.c.workspace == workspace) & instances.c.profile_id.in_(ids))
            ).scalar()
            messages = conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where((outbox.c.workspace == workspace) & outbox.c.profile_id.in_(ids))
            ).scalar()
            facts = self.facts.count(conn, workspace, ids)
        return {"journey_instances": int(held or 0), "messages": int(messages or 0), "profile_facts": facts}

    async def erase_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """Stop every instance (recorded, reason "erased"; unsent messages suppressed), delete the
        facts and the sandbox's kept sends, and shred the profiles' keys."""
        work = functools.partial(self.runs.erase, workspace=workspace, profile_ids=profile_ids)
        stopped = await self.log.writer.run(self.log.projector.write, work)
        kept = sum([await self.channels.sandbox.erase(workspace, p) for p in profile_ids])
        return {
            "instances_stopped": stopped,
            "sandbox_sends_erased": kept,
            "profiles_erased": len(profile_ids),
        }


__all__ = ["JourneysApplication"]
