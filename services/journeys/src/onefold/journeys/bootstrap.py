"""Composition root of the journeys service: its log, the application on it, and the service
around them (servicers, subscriptions), built in that order. Nothing runs at import time;
`main()` hands `compose` to the platform runner (`python -m onefold.journeys`)."""

from __future__ import annotations

from onefold.eventlog.service import EventSourcedService, ServiceLog, open_event_store
from onefold.journeys.application import JourneysApplication
from onefold.journeys.domain import events
from onefold.journeys.entrypoints import consumers, grpc
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "journeys"


def compose(ctx: ServiceContext) -> EventSourcedService[JourneysApplication]:
    log = ServiceLog(open_event_store(ctx, events.REGISTRY))
    application = JourneysApplication(log)
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=grpc.registrations(application),
        subscriptions=consumers.subscriptions(),
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
