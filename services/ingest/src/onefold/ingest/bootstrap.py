"""Composition root of the ingest service: its event log, application, servicers, HTTP API and
consumers, wired together.

Nothing here runs at import time; `main()` hands the composition to the platform runner, which
calls `compose` (in a worker thread: it creates tables), serves gRPC, then `start()`; on SIGTERM
`stop()` runs while gRPC still serves, and stops in reverse order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from onefold.eventlog.service import EventSourcedService
from onefold.ingest import application
from onefold.ingest.entrypoints import consumers, grpc
from onefold.ingest.entrypoints.http import HttpServer
from onefold.ingest.entrypoints.http import serve as serve_http
from onefold.ingest.projections import IngestProjection
from onefold.platform.grpc_server import ServiceRegistration
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "ingest"


class IngestComposition:
    """The EventSourcedService (log, relay, digests) plus the ingest application that both the gRPC
    servicer and the HTTP tracking API call."""

    def __init__(self, ctx: ServiceContext) -> None:
        projection = IngestProjection()
        self.service = EventSourcedService(
            ctx,
            registry=application.event_registry(),
            projections=[projection],
            servicers=lambda _service: grpc.registrations(self.application),
            subscriptions=consumers.subscriptions(),
        )
        tuning = ctx.settings.ingest
        self.application = application.IngestApplication(
            self.service.store,
            projection=projection,
            dedupe_window=timedelta(seconds=tuning.dedupe_window_seconds),
            default_rate_limit_per_second=tuning.default_rate_limit_per_second,
            max_group_events=tuning.max_group_events,
            linger_seconds=tuning.linger_seconds,
        )
        self.http: HttpServer | None = None

    def registrations(self) -> Sequence[ServiceRegistration]:
        return self.service.registrations()

    async def start(self) -> None:
        await self.application.start()
        await self.service.start()
        self.http = serve_http(self.application, self.service.ctx.settings.http)
        await self.http.start()

    async def stop(self) -> None:
        # Stop taking requests, commit what was queued (every acknowledged event is in the log),
        # then stop the relay and close the store.
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self.application.stop()
        await self.service.stop()


def compose(ctx: ServiceContext) -> IngestComposition:
    return IngestComposition(ctx)


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
