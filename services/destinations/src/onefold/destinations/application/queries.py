"""Reading how destinations are doing: per destination what waits, what was delivered, suppressed
and dead-lettered, the lag and the last error (`onefold destinations status`); a page of dead
letters. From the read model, never behind the writer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sqlalchemy as sa

from onefold.contracts.common.v1 import pagination_pb2
from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.read_model import (
    DEAD,
    DELIVERED,
    QUEUED,
    SUPPRESSED,
    backfills,
    catalog,
    outbox,
)
from onefold.destinations.application.catalog import Clock
from onefold.destinations.application.deliverer import LAG
from onefold.eventlog.models import from_micros
from onefold.eventlog.service import ServiceLog
from onefold.platform.errors import InvalidArgument, NotFound

MAX_PAGE = 1000


class Queries:
    def __init__(self, log: ServiceLog, circuit: Callable[[str, str], str], clock: Clock) -> None:
        self.log = log
        self.circuit = circuit
        self.clock = clock

    async def status(self, workspace: str, name: str) -> pb.DestinationsStatusResponse:
        return await asyncio.to_thread(self._status, workspace, name)

    def _status(self, workspace: str, name: str) -> pb.DestinationsStatusResponse:
        now = self.clock()
        where = catalog.c.workspace == workspace
        if name:
            where = where & (catalog.c.name == name)
        waiting = sa.case((outbox.c.attempts > 0, "retrying"), else_="queued")
        with self.log.store.engine.connect() as conn:
            rows = conn.execute(sa.select(catalog).where(where).order_by(catalog.c.name)).all()
            if name and not rows:
                raise NotFound(f"no destination named {name!r}")
            counts: dict[tuple[str, str], int] = {}
            for destination, status, count in conn.execute(
                sa.select(
                    outbox.c.destination,
                    sa.case((outbox.c.status == QUEUED, waiting), else_=outbox.c.status),
                    sa.func.count(),
                )
                .where(outbox.c.workspace == workspace)
                .group_by(
                    outbox.c.destination, sa.case((outbox.c.status == QUEUED, waiting), else_=outbox.c.status)
                )
            ):
                counts[(str(destination), str(status))] = int(count)
            backfilling: dict[str, list[str]] = {}
            for destination, segment in conn.execute(
                sa.select(backfills.c.destination, backfills.c.segment)
                .where((backfills.c.workspace == workspace) & backfills.c.done.is_(False))
                .order_by(backfills.c.segment)
            ):
                backfilling.setdefault(str(destination), []).append(str(segment))
            oldest = {
                str(d): int(q)
                for d, q in conn.execute(
                    sa.select(outbox.c.destination, sa.func.min(outbox.c.queued_at_us))
                    .where((outbox.c.workspace == workspace) & (outbox.c.status == QUEUED))
                    .group_by(outbox.c.destination)
                )
            }
        response = pb.DestinationsStatusResponse()
        for row in rows:
            health = response.destinations.add(
                name=row.name,
                status=row.status,
                kind=row.kind,
                queued=counts.get((row.name, "queued"), 0),
                retrying=counts.get((row.name, "retrying"), 0),
                delivered=counts.get((row.name, DELIVERED), 0),
                suppressed=counts.get((row.name, SUPPRESSED), 0),
                dead_letters=counts.get((row.name, DEAD), 0),
                last_error=row.last_error,
                circuit=self.circuit(workspace, row.name),
                backfilling=backfilling.get(row.name, []),
            )
            if row.name in oldest:
                health.lag_seconds = max((now - from_micros(oldest[row.name])).total_seconds(), 0.0)
            LAG.labels(row.name).set(health.lag_seconds)
            if row.last_error_at_us is not None:
                health.last_error_at.FromDatetime(from_micros(int(row.last_error_at_us)))
            if row.last_delivered_at_us is not None:
                health.last_delivered_at.FromDatetime(from_micros(int(row.last_delivered_at_us)))
        return response

    async def dead_letters(
        self, workspace: str, name: str, page: pagination_pb2.PageRequest
    ) -> pb.ListDeadLettersResponse:
        return await asyncio.to_thread(self._dead_letters, workspace, name, page)

    def _dead_letters(
        self, workspace: str, name: str, page: pagination_pb2.PageRequest
    ) -> pb.ListDeadLettersResponse:
        size = page.page_size or 100
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE}")
        try:
            after = int(page.page_token or "0")
        except ValueError:
            raise InvalidArgument("page_token is not one this service gave") from None
        query = (
            sa.select(outbox)
            .where(
                (outbox.c.workspace == workspace)
                & (outbox.c.destination == name)
                & (outbox.c.status == DEAD)
                & (outbox.c.position > after)
            )
            .order_by(outbox.c.position)
            .limit(size + 1)
        )
        with self.log.store.engine.connect() as conn:
            known = conn.execute(
                sa.select(catalog.c.name).where((catalog.c.workspace == workspace) & (catalog.c.name == name))
            ).first()
            if known is None:
                raise NotFound(f"no destination named {name!r}")
            rows = conn.execute(query).all()
        response = pb.ListDeadLettersResponse()
        for row in rows[:size]:
            letter = response.dead_letters.add(
                delivery_id=row.delivery_id,
                profile_id=row.profile_id,
                kind=row.kind,
                name=row.name,
                attempts=row.attempts,
                error=row.last_error,
            )
            letter.queued_at.FromDatetime(from_micros(int(row.queued_at_us)))
        if len(rows) > size:
            response.page.next_page_token = str(rows[size - 1].position)
        return response
