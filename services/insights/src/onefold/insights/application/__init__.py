"""The insights service's use cases: the analytical copy fed from the streams (feed.py) and read;
the models trained on it and written back to profiles as tags (models.py)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import duckdb

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.eventlog.service import ServiceLog
from onefold.insights.adapters import warehouse as store
from onefold.insights.adapters.attribution import AttributionResult, run_attribution
from onefold.insights.adapters.cohorts import CohortResult, run_cohorts
from onefold.insights.adapters.funnels import FunnelResult, run_funnel
from onefold.insights.adapters.roi import RoiResult, run_roi
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.application.costs import CampaignCosts
from onefold.insights.application.feed import WarehouseFeed
from onefold.insights.application.models import ModelTraining
from onefold.insights.domain.specs import AttributionSpec, CohortSpec, FunnelSpec, RoiSpec

T = TypeVar("T")
# Analyses at once: each already uses `insights.threads` of DuckDB; more would only queue for the cores.
CONCURRENT_ANALYSES = 2


class InsightsApplication:
    def __init__(
        self, log: ServiceLog, warehouse: Warehouse, feed: WarehouseFeed, *, models: ModelTraining
    ) -> None:
        self.log = log
        self.warehouse = warehouse
        self.feed = feed
        self.models = models
        self.costs = CampaignCosts(log, warehouse)
        self._analyses = asyncio.Semaphore(CONCURRENT_ANALYSES)

    async def _analyse(self, run: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run an analysis on a cursor of its own, in a worker thread: never beside the feed's writer."""

        async with self._analyses:
            return await asyncio.to_thread(self.warehouse.reading, run)

    async def funnel(self, workspace: str, spec: FunnelSpec) -> FunnelResult:
        return await self._analyse(lambda db: run_funnel(db, workspace, spec))

    async def attribution(self, workspace: str, spec: AttributionSpec) -> AttributionResult:
        return await self._analyse(lambda db: run_attribution(db, workspace, spec))

    async def cohorts(self, workspace: str, spec: CohortSpec) -> CohortResult:
        return await self._analyse(lambda db: run_cohorts(db, workspace, spec))

    async def roi(self, workspace: str, spec: RoiSpec) -> RoiResult:
        return await self._analyse(lambda db: run_roi(db, workspace, spec))

    async def status(self, workspace: str) -> pb.InsightsStatus:
        """The workspace's rows per table and each upstream's applied position (on a cursor of its own)."""

        def read(cursor: duckdb.DuckDBPyConnection) -> pb.InsightsStatus:
            rows = store.table_rows(cursor, workspace)
            applied = store.applied_positions(cursor)
            return pb.InsightsStatus(
                tables=[pb.TableRows(table=table, rows=count) for table, count in rows.items()],
                applied=[
                    pb.UpstreamApplied(upstream=name, position=position)
                    for name, position in sorted(applied.items())
                ],
            )

        return await asyncio.to_thread(self.warehouse.reading, read)

    async def export_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """What the copy holds of these profiles: rows per table (no personal field is ever in it), and
        the model tags they hold now (sealed under their keys)."""

        def count() -> dict[str, int]:
            rows = self.warehouse.reading(
                lambda cursor: store.profile_rows(cursor, workspace, list(profile_ids))
            )
            rows["model_tags"] = self.models.held(workspace, profile_ids)
            return rows

        return await asyncio.to_thread(count)

    async def erase_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """Delete every row of these profiles (on the writer thread: never beside a batch of the feed),
        and shred their keys in the service's log: the model tags given to them read as erased."""

        def erase() -> dict[str, int]:
            with self.warehouse.transaction() as db:
                return store.erase_profiles(db, workspace, list(profile_ids))

        removed = await self.log.writer.run(erase)
        forget = functools.partial(self.models.forget, workspace=workspace, profile_ids=list(profile_ids))
        removed["model_tags"] = await self.log.writer.run(self.log.projector.write, forget)
        if self.log.store.is_sqlite:  # no copy of a shredded key left in the write-ahead log
            await asyncio.to_thread(self.log.store.checkpoint_wal)
        return removed

    async def aclose(self) -> None:
        await asyncio.to_thread(self.warehouse.close)
