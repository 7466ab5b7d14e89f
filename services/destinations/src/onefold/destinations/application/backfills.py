"""A destination newly naming a segment receives its current members, not only later changes.

Applying such a version records `AudienceBackfillRequested`; on the leader, this duty pages each
segment's members from the segments service (ListMembers) and queues a SEGMENT_ENTERED delivery
for each, one page per transaction together with the `AudienceBackfillPage` that records how far it
got — so a restart resumes at the next page, and a page run twice queues nothing twice (the
deliveries' ids are derived from the version, the segment and the person).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import grpc
import sqlalchemy as sa

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.read_model import backfills, catalog
from onefold.destinations.adapters.upstream import Upstream
from onefold.destinations.application.routing import BackfillPage, Router
from onefold.eventlog.service import Duty, ServiceLog
from onefold.platform.errors import Unavailable
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.destinations")
IDLE_WAIT_SECONDS = 60.0
RETRY_WAIT_SECONDS = 5.0


class Backfills:
    def __init__(self, log_: ServiceLog, router: Router, upstream: Upstream) -> None:
        self.log = log_
        self.router = router
        self.upstream = upstream
        self.duty = Duty(
            "destinations.backfills",
            self._round,
            idle_seconds=IDLE_WAIT_SECONDS,
            retry_seconds=RETRY_WAIT_SECONDS,
        )

    def wake(self) -> None:
        self.duty.wake()

    async def run(self, leading: Callable[[], bool]) -> None:
        await self.duty.run(leading)

    async def _round(self) -> float | None:
        """One page of one pending backfill; 0 (at once) while any is pending."""
        pending = await asyncio.to_thread(self._next_pending)
        if pending is None:
            return None
        try:
            members, next_token = await self.upstream.members_page(
                pending.workspace, pending.segment, pending.page_token
            )
        except (grpc.aio.AioRpcError, Unavailable) as exc:
            log.warning(
                "destinations.backfill_waiting", destination=pending.destination, error=type(exc).__name__
            )
            return RETRY_WAIT_SECONDS
        work = functools.partial(
            self.router.backfill_page, page=pending, members=members, next_token=next_token
        )
        await self.log.writer.run(self.log.projector.write, work)
        return 0.0

    def _next_pending(self) -> BackfillPage | None:
        with self.log.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    backfills.c.workspace,
                    backfills.c.destination,
                    backfills.c.segment,
                    backfills.c.version,
                    backfills.c.page_token,
                )
                .select_from(
                    backfills.join(
                        catalog,
                        (catalog.c.workspace == backfills.c.workspace)
                        & (catalog.c.name == backfills.c.destination),
                    )
                )
                .where(backfills.c.done.is_(False) & (catalog.c.status != pb.DESTINATION_STATUS_ARCHIVED))
                .limit(1)
            ).first()
        return None if row is None else BackfillPage(*row)
