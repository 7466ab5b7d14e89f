"""Composition root of the consent service: its event log, application, servicers, the identity
subscriber, the channels to the other services (subjects by identifier; data-subject requests) and
the background loops (on the leader replica) that retry data-subject requests' pending steps and
carry out the PIPL Art. 47 deletion duties (expiry, retention).

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from onefold.consent import application, duties
from onefold.consent.entrypoints import consumers, grpc
from onefold.consent.projections import ConsentProjection
from onefold.consent.requests import SubjectRequests
from onefold.eventlog.service import EventSourcedService
from onefold.platform.client import Peers
from onefold.platform.grpc_server import ServiceRegistration
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "consent"


class ConsentComposition:
    def __init__(self, ctx: ServiceContext) -> None:
        projection = ConsentProjection()
        settings = ctx.settings
        self.peers = Peers(settings.peers.model_dump(), settings.auth.service_token)
        self.service = EventSourcedService(
            ctx,
            registry=application.event_registry(),
            projections=[projection],
            servicers=lambda _service: grpc.registrations(self.application, self.peers, self.requests),
            subscriptions=consumers.subscriptions(lambda: self.application),
        )
        self.application = application.ConsentApplication(self.service.store, projection)
        self.requests = SubjectRequests(self.application, self.peers)
        self._tasks: list[asyncio.Task[None]] = []

    def registrations(self) -> Sequence[ServiceRegistration]:
        return self.service.registrations()

    async def start(self) -> None:
        await asyncio.to_thread(self.application.catch_up)
        await self.service.start()
        leading = self.service.leading.is_set
        self._tasks = [
            asyncio.create_task(self.requests.run(leading), name="consent-subject-requests"),
            asyncio.create_task(
                duties.run_duties(self.application, self.requests, leading), name="consent-duties"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.service.stop()
        await self.peers.close()


def compose(ctx: ServiceContext) -> ConsentComposition:
    return ConsentComposition(ctx)


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
