"""Campaign costs: set by the workspace (`SetCampaignCost`), recorded in the log as
`CampaignCostSet` (stream `insights-costs:<workspace>`), and copied to the warehouse's `costs`
table, where ROI reads them. The copy is written in the log's transaction, before it commits: a
failed copy records nothing; a commit that fails after the copy leaves a row the next set of the
same campaign, channel and period replaces."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC

from sqlalchemy.engine import Connection

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.eventlog.models import NewEvent
from onefold.eventlog.service import ServiceLog
from onefold.insights.adapters import warehouse as store
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.domain.costs import checked_cost


def cost_stream(workspace: str) -> str:
    return f"insights-costs:{workspace}"


class CampaignCosts:
    def __init__(self, log: ServiceLog, warehouse: Warehouse) -> None:
        self.log = log
        self.warehouse = warehouse

    async def set(self, workspace: str, cost: pb.CampaignCost, actor: str) -> pb.CampaignCost:
        checked = checked_cost(cost)
        event = NewEvent(
            stream_id=cost_stream(workspace),
            message=pb.CampaignCostSet(workspace=workspace, cost=checked, actor=actor),
            workspace=workspace,
        )
        await self.log.writer.run(
            self.log.projector.write, functools.partial(self._record, workspace, checked, event)
        )
        return checked

    def _record(self, workspace: str, cost: pb.CampaignCost, event: NewEvent, conn: Connection) -> None:
        self.log.projector.record(conn, [event])
        with self.warehouse.transaction() as db:
            store.set_cost(
                db,
                workspace,
                cost.campaign,
                cost.channel,
                cost.period_start.ToDatetime(),
                cost.period_end.ToDatetime(),
                cost.amount,
                cost.currency,
            )

    async def listed(self, workspace: str) -> list[pb.CampaignCost]:
        def read() -> list[pb.CampaignCost]:
            rows = self.warehouse.reading(lambda cursor: store.costs_of(cursor, workspace))
            found = []
            for campaign, channel, start, end, amount, currency in rows:
                cost = pb.CampaignCost(campaign=campaign, channel=channel, amount=amount, currency=currency)
                cost.period_start.FromDatetime(start.replace(tzinfo=UTC))
                cost.period_end.FromDatetime(end.replace(tzinfo=UTC))
                found.append(cost)
            return found

        return await asyncio.to_thread(read)
