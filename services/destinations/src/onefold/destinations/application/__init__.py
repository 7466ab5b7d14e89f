"""The destinations use cases, on the service's log (`ServiceLog`).

- `destinations` (catalog.py): destinations applied together, paused, resumed, archived, read;
  signing secrets;
- `router` (routing.py): upstream changes queued as deliveries, on the writer thread;
- `deliverer` (deliverer.py): what is queued, checked with consent and delivered, on the leader;
- `backfills` (backfills.py): a segment newly named gets its current members queued, on the leader;
- `queries` (queries.py): status per destination, dead letters;
- replay of a time range or of the dead letters; the data-subject contract (counts, erasure).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.read_model import outbox, recipients, replayable
from onefold.destinations.adapters.upstream import Upstream
from onefold.destinations.application.backfills import Backfills
from onefold.destinations.application.catalog import Clock, Destinations, wall_clock
from onefold.destinations.application.deliverer import Deliverer
from onefold.destinations.application.queries import Queries
from onefold.destinations.application.routing import Router
from onefold.destinations.domain.definitions import definition_stream
from onefold.eventlog.models import NewEvent
from onefold.eventlog.service import ServiceLog
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound


class DestinationsApplication:
    def __init__(
        self,
        log: ServiceLog,
        upstream: Upstream,
        *,
        clock: Clock = wall_clock,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.log = log
        self.clock = clock
        environment = os.environ if environ is None else environ
        self.destinations = Destinations(log, upstream.known, clock, environment)
        self.router = Router(log, self.destinations, clock)
        self.deliverer = Deliverer(log, self.destinations, upstream, clock, environment)
        self.backfills = Backfills(log, self.router, upstream)
        self.queries = Queries(log, self.deliverer.circuit, clock)
        self.router.on_queued = lambda: log.after_commit(self.deliverer.wake)

    async def run_deliverer(self, leading: Callable[[], bool]) -> None:
        await self.deliverer.duty.run(leading)

    async def run_backfills(self, leading: Callable[[], bool]) -> None:
        await self.backfills.run(leading)

    async def apply(
        self, workspace: str, destinations: Sequence[pb.Destination], actor: str, *, dry_run: bool = False
    ) -> pb.ApplyDestinationsResponse:
        """Apply (all or none); a destination newly naming segments then gets their members."""
        applied = await self.destinations.apply(workspace, destinations, actor, dry_run=dry_run)
        self.backfills.wake()
        return applied

    async def set_status(self, workspace: str, name: str, status: int, actor: str) -> pb.Destination:
        changed = await self.destinations.set_status(workspace, name, status, actor)
        self.deliverer.wake()  # resumed: what waited goes now
        return changed

    async def replay(
        self,
        workspace: str,
        name: str,
        actor: str,
        *,
        since: datetime | None,
        until: datetime | None,
        dead_letters: bool,
    ) -> int:
        """Queue again, under their ids, the destination's dead letters or what was queued within
        [since, until); returns how many."""
        if not dead_letters and since is None:
            raise InvalidArgument(
                "replay needs since (a time range) or dead_letters", violations=[("since", "required")]
            )
        if since is not None and until is not None and until <= since:
            raise InvalidArgument("until must be after since", violations=[("until", "not after since")])

        def work(conn: Connection) -> int:
            status = self.destinations.status_of(conn, workspace, name)
            if status == pb.DESTINATION_STATUS_UNSPECIFIED:
                raise NotFound(f"no destination named {name!r}")
            if status == pb.DESTINATION_STATUS_ARCHIVED:
                raise FailedPrecondition(f"destination {name!r} is archived")
            replay = pb.DeliveriesReplayed(
                workspace=workspace, destination=name, dead_letters=dead_letters, actor=actor
            )
            if since is not None:
                replay.since.FromDatetime(since)
            if until is not None:
                replay.until.FromDatetime(until)
            replay.count = int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(outbox).where(replayable(replay))
                ).scalar()
                or 0
            )
            if replay.count:
                event = NewEvent(
                    stream_id=definition_stream(workspace, name),
                    message=replay,
                    workspace=workspace,
                    occurred_at=self.clock(),
                    metadata={"actor": actor},
                )
                self.log.projector.record(conn, [event])
            return replay.count

        queued = await self.log.writer.run(self.log.projector.write, work)
        self.deliverer.wake()
        return queued

    # The data-subject contract: what destinations holds about a person is keyed by profile id —
    # the deliveries queued about them (sealed under their key) and where they were sent.

    async def export_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """How many records destinations holds about these profiles, by kind."""

        def count() -> dict[str, int]:
            ids = list(profile_ids)
            with self.log.store.engine.connect() as conn:
                deliveries = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(outbox)
                    .where((outbox.c.workspace == workspace) & outbox.c.profile_id.in_(ids))
                ).scalar()
                sent_to = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(recipients)
                    .where((recipients.c.workspace == workspace) & recipients.c.profile_id.in_(ids))
                ).scalar()
            return {"deliveries": int(deliveries or 0), "destinations_holding": int(sent_to or 0)}

        return await asyncio.to_thread(count)

    async def erase_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """Drop what is queued about them, queue a deletion for every destination that received
        them, and shred their keys (what was queued about them reads as erased from then on). The
        answer — recorded on the erasure request — names each destination sent a deletion."""
        work = functools.partial(self.router.erase, workspace=workspace, profile_ids=list(profile_ids))
        deletions = await self.log.writer.run(self.log.projector.write, work)
        if self.log.store.is_sqlite:
            await asyncio.to_thread(self.log.store.checkpoint_wal)
        self.deliverer.wake()
        return {
            "deletions_queued": sum(deletions.values()),
            "profiles_erased": len(profile_ids),
            **{f"deletion_queued:{name}": count for name, count in sorted(deletions.items())},
        }

    async def aclose(self) -> None:
        await self.deliverer.aclose()


__all__ = ["DestinationsApplication"]
