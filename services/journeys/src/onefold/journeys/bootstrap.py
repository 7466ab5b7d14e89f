"""Composition root of the journeys service: its event log, servicers and consumers, wired together.

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

from onefold.eventlog.service import EventSourcedService, ServiceLog
from onefold.journeys import application
from onefold.journeys.entrypoints import consumers, grpc
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "journeys"


def compose(ctx: ServiceContext) -> EventSourcedService[None]:
    log = ServiceLog(ctx, events=application.event_registry())
    return EventSourcedService(
        ctx,
        log,
        None,
        servicers=grpc.registrations(),
        subscriptions=consumers.subscriptions(),
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
