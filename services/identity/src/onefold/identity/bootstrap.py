"""Composition root of the identity service: wires settings, storage, servicers and consumers.

Nothing here runs at import time; `main()` builds the service and hands it to the platform runner.
"""

from __future__ import annotations

from onefold.identity.entrypoints import consumers, grpc
from onefold.platform.service import ServiceSpec, run_service

SERVICE_NAME = "identity"


def build_spec() -> ServiceSpec:
    return ServiceSpec(
        name=SERVICE_NAME,
        registrations=grpc.registrations,
        on_started=consumers.start,
    )


def main() -> int:
    return run_service(build_spec())
