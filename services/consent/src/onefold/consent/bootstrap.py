"""Composition root of the consent service: its event log, application, servicers, the identity
subscriber, the channels to the other services (subjects by identifier; data-subject requests) and
the background loops (on the leader replica) that retry data-subject requests' pending steps and
carry out the PIPL Art. 47 deletion duties (expiry, retention).

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from onefold.consent import application, duties
from onefold.consent.entrypoints import consumers, grpc
from onefold.consent.projections import ConsentProjection
from onefold.consent.requests import SubjectRequests
from onefold.eventlog.service import EventSourcedService, Loop, ServiceLog
from onefold.platform.client import Peers
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "consent"


@dataclass(frozen=True)
class ConsentUseCases:
    """What the service runs: the ledger's use cases and the data-subject requests."""

    ledger: application.ConsentApplication
    requests: SubjectRequests


class _PeersChannels:
    """Closes the channels to the other services when the service stops."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.peers.close()


def compose(ctx: ServiceContext) -> EventSourcedService[ConsentUseCases]:
    projection = ConsentProjection()
    settings = ctx.settings
    log = ServiceLog(ctx, events=application.event_registry(), projections=[projection])
    peers = Peers(settings.peers.model_dump(), settings.auth.service_token)
    consent = application.ConsentApplication(log.store, projection)
    requests = SubjectRequests(consent, peers)
    leading = log.leading.is_set
    return EventSourcedService(
        ctx,
        log,
        ConsentUseCases(consent, requests),
        servicers=grpc.registrations(consent, peers, requests),
        subscriptions=consumers.subscriptions(consent),
        components=[
            _PeersChannels(peers),
            Loop("consent-subject-requests", lambda: requests.run(leading)),
            Loop("consent-duties", lambda: duties.run_duties(consent, requests, leading)),
        ],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
