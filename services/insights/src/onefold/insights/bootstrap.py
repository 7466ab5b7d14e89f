"""Composition root of the insights service: its log (with the read model of the models written
back), the analytical copy (DuckDB), the models trained on it and the feed following identity,
segments and journeys, the application on them, and the service around them (servicers,
subscribers, and — on the leader — the scheduled retrain), built in that order. Nothing runs at import time; `main()` hands `compose`
to the platform runner (`python -m onefold.insights`)."""

from __future__ import annotations

from pathlib import Path

from onefold.eventlog.service import ClosedAtStop, EventSourcedService, Loop, ServiceLog, open_event_store
from onefold.insights.adapters.model_tags import ModelsReadModel
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.application import InsightsApplication
from onefold.insights.application.feed import WarehouseFeed
from onefold.insights.application.models import ModelTraining
from onefold.insights.domain import events
from onefold.insights.entrypoints import consumers, grpc, models_grpc
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
    store = open_event_store(ctx, events.REGISTRY)
    log = ServiceLog(store, projections=[ModelsReadModel(store)])
    warehouse = Warehouse(
        Path(settings.warehouse) if settings.warehouse else ctx.settings.data_dir / WAREHOUSE_FILE,
        threads=settings.threads,
    )
    models = ModelTraining(
        log, warehouse, threads=settings.threads, seed=settings.seed, retrain=settings.retrain
    )
    feed = WarehouseFeed(
        warehouse, allowed_properties=settings.allowed_properties, tags=settings.tags, erased=models.forget
    )
    application = InsightsApplication(log, warehouse, feed, models=models)
    leading = log.leading.is_set
    retrain = [Loop("insights-retrain", lambda: models.run_retrain(leading))] if settings.retrain else []
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=[*grpc.registrations(application), models_grpc.registration(models)],
        subscriptions=consumers.subscriptions(feed),
        components=[*retrain, ClosedAtStop(application.aclose)],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose, sections=[InsightsSettings]))
