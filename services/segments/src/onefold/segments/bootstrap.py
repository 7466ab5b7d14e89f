"""Composition root of the segments service: its log, the application on it, and the service
around them (servicers, subscriptions), built in that order. Nothing runs at import time;
`main()` hands `compose` to the platform runner (`python -m onefold.segments`)."""

from __future__ import annotations

from onefold.eventlog.service import EventSourcedService, ServiceLog, open_event_store
from onefold.platform.service import ServiceContext, ServiceSpec, run_service
from onefold.segments.application import SegmentsApplication
from onefold.segments.domain import events
from onefold.segments.entrypoints import consumers, grpc

SERVICE_NAME = "segments"


def compose(ctx: ServiceContext) -> EventSourcedService[SegmentsApplication]:
    log = ServiceLog(open_event_store(ctx, events.REGISTRY))
    application = SegmentsApplication(log)
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=grpc.registrations(application),
        subscriptions=consumers.subscriptions(),
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
