"""Composition root of the ingest service: its event log, application, servicers, HTTP API and
consumers, wired together.

Nothing here runs at import time; `main()` hands the composition to the platform runner, which
calls `compose` (in a worker thread: it creates tables), serves gRPC, then `start()`; on SIGTERM
`stop()` runs while gRPC still serves, and stops in reverse order.
"""

from __future__ import annotations

from datetime import timedelta

from onefold.eventlog.service import EventSourcedService, Loop, ServiceLog, open_event_store
from onefold.ingest.adapters.read_model import IngestProjection
from onefold.ingest.application import IngestApplication
from onefold.ingest.domain.events import REGISTRY
from onefold.ingest.entrypoints import consumers, grpc
from onefold.ingest.entrypoints.http import serve as serve_http
from onefold.ingest.settings import IngestSettings
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "ingest"


def compose(ctx: ServiceContext) -> EventSourcedService[IngestApplication]:
    log = ServiceLog(open_event_store(ctx, REGISTRY), projections=[IngestProjection()])
    tuning = ctx.settings.section(IngestSettings)
    ingest = IngestApplication(
        log,
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
        # Stopped in reverse, before the writer: the HTTP API stops taking requests, then what was
        # queued is committed (every acknowledged event is in the log) before the relay stops.
        components=[
            Loop("ingest-source-refresh", ingest.refresh_sources),
            serve_http(ingest, ctx.settings.http),
        ],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose, sections=[IngestSettings]))
