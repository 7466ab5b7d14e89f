"""Composition root of the identity service: its event log, application, servicers and consumers.

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from onefold.eventlog.service import EventSourcedService
from onefold.identity import application
from onefold.identity.entrypoints import consumers, grpc
from onefold.identity.projections import IdentityProjection
from onefold.platform.grpc_server import ServiceRegistration
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "identity"


class IdentityComposition:
    """The EventSourcedService (log, relay, digests, the ingest subscriber) plus the identity
    application that the subscriber and the gRPC servicer call."""

    def __init__(self, ctx: ServiceContext) -> None:
        projection = IdentityProjection()
        self.service = EventSourcedService(
            ctx,
            registry=application.event_registry(),
            projections=[projection],
            servicers=lambda _service: grpc.registrations(self.application),
            subscriptions=consumers.subscriptions(lambda: self.application),
        )
        self.application = application.IdentityApplication(self.service.store, projection)

    def registrations(self) -> Sequence[ServiceRegistration]:
        return self.service.registrations()

    async def start(self) -> None:
        await asyncio.to_thread(self.application.catch_up)
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()


def compose(ctx: ServiceContext) -> IdentityComposition:
    return IdentityComposition(ctx)


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
