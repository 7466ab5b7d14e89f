"""gRPC servicers of the ingest service. Until its API lands it serves the platform's own:
health, reflection and onefold.platform.v1.PlatformService."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import EventSourcedService
from onefold.platform.grpc_server import ServiceRegistration


def registrations(_service: EventSourcedService) -> Sequence[ServiceRegistration]:
    return ()
