"""The insights service's use cases: the analytical copy fed from the streams (feed.py) and read;
the models trained on it and written back to profiles as tags (models.py)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.eventlog.service import ServiceLog
from onefold.insights.adapters import warehouse as store
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.application.feed import WarehouseFeed
from onefold.insights.application.models import ModelTraining


class InsightsApplication:
    def __init__(
        self, log: ServiceLog, warehouse: Warehouse, feed: WarehouseFeed, *, models: ModelTraining
    ) -> None:
        self.log = log
        self.warehouse = warehouse
        self.feed = feed
        self.models = models

    async def status(self, workspace: str) -> pb.InsightsStatus:
        """The workspace's rows per table and each upstream's applied position (on a cursor of its own)."""

        def read() -> pb.InsightsStatus:
            cursor = self.warehouse.cursor()
            try:
                rows = store.table_rows(cursor, workspace)
                applied = store.applied_positions(cursor)
            finally:
                cursor.close()
            return pb.InsightsStatus(
                tables=[pb.TableRows(table=table, rows=count) for table, count in rows.items()],
                applied=[
                    pb.UpstreamApplied(upstream=name, position=position)
                    for name, position in sorted(applied.items())
                ],
            )

        return await asyncio.to_thread(read)

    async def export_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """What the copy holds of these profiles: rows per table (no personal field is ever in it), and
        the model tags they hold now (sealed under their keys)."""

        def count() -> dict[str, int]:
            cursor = self.warehouse.cursor()
            try:
                rows = store.profile_rows(cursor, workspace, list(profile_ids))
            finally:
                cursor.close()
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
