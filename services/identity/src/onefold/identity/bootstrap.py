"""Composition root of the identity service: its event log, application, servicers and consumers.

Nothing here runs at import time; `main()` hands the composition to the platform runner.
"""

from __future__ import annotations

from onefold.eventlog.service import ClosedAtStop, EventSourcedService, ServiceLog, open_event_store
from onefold.identity.adapters.read_model import IdentityProjection
from onefold.identity.application import IdentityApplication
from onefold.identity.domain.events import REGISTRY
from onefold.identity.entrypoints import consumers, grpc
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "identity"


def compose(ctx: ServiceContext) -> EventSourcedService[IdentityApplication]:
    store = open_event_store(ctx, REGISTRY)
    log = ServiceLog(store, projections=[IdentityProjection(store)])
    identity = IdentityApplication(log)
    return EventSourcedService(
        ctx,
        log,
        identity,
        servicers=grpc.registrations(identity),
        subscriptions=consumers.subscriptions(identity),
        components=[ClosedAtStop(identity.close)],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose))
