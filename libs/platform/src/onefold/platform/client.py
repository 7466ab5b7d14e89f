"""gRPC clients of Onefold services: credentials, workspace and trace context on every call.

Used by services calling each other (with the service credential and the workspace they act for)
and by the CLI (with a person's credential).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from onefold.platform.auth import WORKSPACE_HEADER
from onefold.platform.telemetry import inject_headers


class _MetadataInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, token: str, workspace: str | None) -> None:
        self._static = [("authorization", f"Bearer {token}")]
        if workspace:
            self._static.append((WORKSPACE_HEADER, workspace))

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        metadata.extend(self._static)
        metadata.extend(inject_headers().items())  # continue the caller's trace in the callee
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._details(details), requests)


def authenticated_channel(
    target: str,
    token: str,
    *,
    workspace: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An aio channel whose every call carries `token` (and, for service credentials, `workspace`)."""
    return grpc.aio.insecure_channel(
        target, options=list(options), interceptors=[_MetadataInterceptor(token, workspace)]
    )
