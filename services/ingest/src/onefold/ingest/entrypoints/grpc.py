"""gRPC servicers of the ingest service. Until its API lands it serves the platform's own:
health, reflection and onefold.platform.v1.PlatformService."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.platform.grpc_server import ServiceRegistration
from onefold.platform.service import ServiceContext


def registrations(_ctx: ServiceContext) -> Sequence[ServiceRegistration]:
    return ()
