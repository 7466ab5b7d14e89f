"""Composition root of the consent service: its event log, servicers and consumers, wired together.

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

from onefold.consent import application
from onefold.consent.entrypoints import consumers, grpc
from onefold.eventlog.service import EventSourcedService
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "consent"


def compose(ctx: ServiceContext) -> EventSourcedService:
    return EventSourcedService(
        ctx,
        registry=application.event_registry(),
        servicers=grpc.registrations,
        subscriptions=consumers.subscriptions(),
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
