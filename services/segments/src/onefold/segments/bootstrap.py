"""Composition root of the segments service: its event log, servicers and consumers, wired together.

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

from onefold.eventlog.service import EventSourcedService, ServiceLog
from onefold.platform.service import ServiceContext, ServiceSpec, run_service
from onefold.segments import application
from onefold.segments.entrypoints import consumers, grpc

SERVICE_NAME = "segments"


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
