"""Composition root of the insights service: its log, the analytical copy (DuckDB) and the feed
following identity, segments and journeys, the application on them, and the service around them
(servicers, subscribers), built in that order. Nothing runs at import time; `main()` hands `compose`
to the platform runner (`python -m onefold.insights`)."""

from __future__ import annotations

from pathlib import Path

from onefold.eventlog.service import ClosedAtStop, EventSourcedService, ServiceLog, open_event_store
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.application import InsightsApplication
from onefold.insights.application.feed import WarehouseFeed
from onefold.insights.domain import events
from onefold.insights.entrypoints import consumers, grpc
from onefold.insights.settings import InsightsSettings
from onefold.platform.config import ConfigError
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "insights"
WAREHOUSE_FILE = "insights.duckdb"


def compose(ctx: ServiceContext) -> EventSourcedService[InsightsApplication]:
    if ctx.settings.eventlog.workers != 1:
        # A DuckDB file has one writing process: the copy is fed by one.
        raise ConfigError(
            "insights runs as one process: eventlog.workers must be 1 (its DuckDB file has one writer)"
        )
    settings = ctx.settings.section(InsightsSettings)
    log = ServiceLog(open_event_store(ctx, events.REGISTRY))
    warehouse = Warehouse(
        Path(settings.warehouse) if settings.warehouse else ctx.settings.data_dir / WAREHOUSE_FILE,
        threads=settings.threads,
    )
    feed = WarehouseFeed(warehouse, allowed_properties=settings.allowed_properties, tags=settings.tags)
    application = InsightsApplication(log, warehouse, feed)
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=grpc.registrations(application),
        subscriptions=consumers.subscriptions(feed),
        components=[ClosedAtStop(application.aclose)],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose, sections=[InsightsSettings]))
