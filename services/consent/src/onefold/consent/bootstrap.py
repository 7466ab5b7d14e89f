"""Composition root of the consent service: its event log, application, servicers, the identity
subscriber, the channels to the other services (subjects by identifier; data-subject requests) and
the background loops (on the leader replica) that retry data-subject requests' pending steps and
carry out the PIPL Art. 47 deletion duties (expiry, retention).

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

from onefold.consent.adapters.read_model import ConsentReadModel
from onefold.consent.application import ConsentApplication
from onefold.consent.domain.events import REGISTRY
from onefold.consent.entrypoints import consumers, grpc
from onefold.eventlog.service import ClosedAtStop, EventSourcedService, Loop, ServiceLog, open_event_store
from onefold.platform.client import Peers
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "consent"


def compose(ctx: ServiceContext) -> EventSourcedService[ConsentApplication]:
    log = ServiceLog(open_event_store(ctx, REGISTRY), projections=[ConsentReadModel()])
    peers = Peers(ctx.settings.peers.model_dump(), ctx.settings.auth.service_token)
    application = ConsentApplication(log, peers)
    leading = log.leading.is_set
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=grpc.registrations(application, peers),
        subscriptions=consumers.subscriptions(application.identity),
        components=[
            ClosedAtStop(peers.close, application.close),
            Loop("consent-subject-requests", lambda: application.requests.run(leading)),
            Loop("consent-duties", lambda: application.run_duties(leading)),
        ],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
