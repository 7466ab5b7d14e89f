"""Composition root of the destinations service: its log and read model, the clients of consent and
segments, the application on them, and the service around them (servicers, the identity and
segments subscribers, and — on the leader — the deliverer and backfill loops), built in that order. Nothing runs
at import time; `main()` hands `compose` to the platform runner (`python -m onefold.destinations`)."""

from __future__ import annotations

from onefold.destinations.adapters.read_model import DestinationsReadModel
from onefold.destinations.adapters.upstream import Upstream
from onefold.destinations.application import DestinationsApplication
from onefold.destinations.domain import events
from onefold.destinations.entrypoints import consumers, grpc
from onefold.destinations.settings import DestinationsSettings
from onefold.eventlog.service import ClosedAtStop, EventSourcedService, Loop, ServiceLog, open_event_store
from onefold.platform.client import Peers
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "destinations"


def compose(ctx: ServiceContext) -> EventSourcedService[DestinationsApplication]:
    log = ServiceLog(open_event_store(ctx, events.REGISTRY), projections=[DestinationsReadModel()])
    settings = ctx.settings.section(DestinationsSettings)
    peers = Peers(ctx.settings.peers.model_dump(), ctx.settings.auth.service_token)
    application = DestinationsApplication(log, Upstream(peers, settings.consent_timeout_seconds))
    leading = log.leading.is_set
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=grpc.registrations(application),
        subscriptions=consumers.subscriptions(application.router),
        components=[
            ClosedAtStop(peers.close, application.aclose),
            Loop("destinations-deliverer", lambda: application.run_deliverer(leading)),
            Loop("destinations-backfills", lambda: application.run_backfills(leading)),
        ],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose, sections=[DestinationsSettings]))
