"""Client side of gRPC health: what `onefold status`, `onefold up` and tests ask a service."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The health-service name under which every service reports its NATS connection (onefold.platform.service).
NATS_HEALTH_NAME = "onefold.nats"
# The answers that say something about the service; anything else (a timeout) says nothing.
DEFINITE = frozenset({"SERVING", "NOT_SERVING"})


def health_status(target: str, service: str = "", timeout: float = 1.0) -> str:
    """'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN' … or 'UNREACHABLE'."""
    return health_statuses(target, [service], timeout)[0]


def health_statuses(target: str, services: Sequence[str], timeout: float = 1.0) -> list[str]:
    """The status of each health service name of one target, over one channel."""
    answers = []
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in services:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
                answers.append(str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)))
            except grpc.RpcError as error:
                answers.append(
                    "SERVICE_UNKNOWN" if error.code() == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
                )
    return answers


def wait_for_health(target: str, service: str = "", want: str = "SERVING", timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(target, service) == want:
            return True
        time.sleep(0.1)
    return False
