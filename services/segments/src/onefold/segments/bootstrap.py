"""Composition root of the segments service: its log and read model, the application on them, and
the service around them (servicers, the identity subscriber, and — on the leader — the timer,
backfill and schedule loops), built in that order. Nothing runs at import time; `main()` hands `compose` to the
platform runner (`python -m onefold.segments`)."""

from __future__ import annotations

from onefold.eventlog.service import EventSourcedService, Loop, ServiceLog, open_event_store
from onefold.platform.service import ServiceContext, ServiceSpec, run_service
from onefold.segments.adapters.read_model import SegmentsReadModel
from onefold.segments.application import SegmentsApplication
from onefold.segments.domain.events import REGISTRY
from onefold.segments.entrypoints import consumers, grpc

SERVICE_NAME = "segments"


def compose(ctx: ServiceContext) -> EventSourcedService[SegmentsApplication]:
    log = ServiceLog(open_event_store(ctx, REGISTRY), projections=[SegmentsReadModel()])
    application = SegmentsApplication(log)
    leading = log.leading.is_set
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=grpc.registrations(application),
        subscriptions=consumers.subscriptions(application.profiles),
        components=[
            Loop("segments-timers", lambda: application.run_timers(leading)),
            Loop("segments-backfills", lambda: application.run_backfills(leading)),
            Loop("segments-schedules", lambda: application.run_schedules(leading)),
        ],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
