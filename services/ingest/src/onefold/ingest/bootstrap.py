"""Composition root of the ingest service: its event log, application, servicers, HTTP API and
consumers, wired together.

Nothing here runs at import time; `main()` hands the composition to the platform runner, which
calls `compose` (in a worker thread: it creates tables), serves gRPC, then `start()`; on SIGTERM
`stop()` runs while gRPC still serves, and stops in reverse order.
"""

from __future__ import annotations

from datetime import timedelta

from onefold.eventlog.service import EventSourcedService, ServiceLog
from onefold.ingest import application
from onefold.ingest.entrypoints import consumers, grpc
from onefold.ingest.entrypoints.http import serve as serve_http
from onefold.ingest.projections import IngestProjection
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "ingest"


def compose(ctx: ServiceContext) -> EventSourcedService[application.IngestApplication]:
    projection = IngestProjection()
    log = ServiceLog(ctx, events=application.event_registry(), projections=[projection])
    tuning = ctx.settings.ingest
    ingest = application.IngestApplication(
        log.store,
        projection=projection,
        dedupe_window=timedelta(seconds=tuning.dedupe_window_seconds),
        default_rate_limit_per_second=tuning.default_rate_limit_per_second,
        max_group_events=tuning.max_group_events,
        linger_seconds=tuning.linger_seconds,
    )
    return EventSourcedService(
        ctx,
        log,
        ingest,
        servicers=grpc.registrations(ingest),
        subscriptions=consumers.subscriptions(),
        # Stopped in reverse: the HTTP API stops taking requests, then what was queued is committed
        # (every acknowledged event is in the log) before the relay stops.
        components=[ingest, serve_http(ingest, ctx.settings.http)],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
