"""gRPC clients of Onefold services: credentials, workspace and trace context on every call.

Used by services calling each other (with the service credential and the workspace they act for)
and by the CLI (with a person's credential).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


class Peers:
    """Channels to the other services (settings.peers), authenticated with this service's own
    credential (auth.service_token); the workspace acted for travels with each call
    (`metadata=peers.acting_for(workspace)`). Channels are made on first use and closed together."""

    def __init__(self, addresses: Mapping[str, str], token: str) -> None:
        self._addresses = {name: target for name, target in addresses.items() if target}
        self._token = token
        self._channels: dict[str, grpc.aio.Channel] = {}

    def known(self, name: str) -> bool:
        return name in self._addresses and bool(self._token)

    def channel(self, name: str) -> grpc.aio.Channel | None:
        """The channel to `name`, or None when no address (or no service credential) is configured."""
        if not self.known(name):
            return None
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = authenticated_channel(self._addresses[name], self._token)
        return channel

    @staticmethod
    def acting_for(workspace: str) -> tuple[tuple[str, str], ...]:
        return ((WORKSPACE_HEADER, workspace),)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
