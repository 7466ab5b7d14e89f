"""NATS connections that keep trying: a service outlives NATS restarts and says so in its logs.

nats-py reconnects an established connection by itself, but gives up on a first connection that
fails; NatsConnection retries that too, so a service may start before NATS does.

Each client connects as its own NATS user (settings `nats.user` and `nats.password_file`) with its
own reply inbox `_INBOX.<user>`, the only subjects the server lets it subscribe to
(onefold.platform.bus_permissions). The password is read at each connect, so a rotated file is used
by the next connection, and it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client

from onefold.platform.bus_permissions import inbox_prefix
from onefold.platform.config import ConfigError, NatsSettings
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.nats")

StateCallback = Callable[[bool], Awaitable[None]]


def _password(settings: NatsSettings) -> str:
    if settings.password or not settings.password_file:
        return settings.password
    path = Path(settings.password_file)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the NATS password file {path}: {exc.strerror or exc}") from None


def connect_options(settings: NatsSettings) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` that carry this client's credential and TLS trust."""
    options: dict[str, Any] = {}
    if settings.user:
        options.update(
            user=settings.user, password=_password(settings), inbox_prefix=inbox_prefix(settings.user)
        )
    if settings.tls_ca_file:
        try:
            options["tls"] = ssl.create_default_context(cafile=settings.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the NATS CA certificate {settings.tls_ca_file}: {exc}") from None
    return options


def safe_url(url: str) -> str:
    """The URL without any user:password written into it, for logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host))


class NatsConnection:
    def __init__(self, settings: NatsSettings, name: str, on_state: StateCallback | None = None) -> None:
        self.settings = settings
        self.name = name
        self.on_state = on_state
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # set by close(): the disconnect that follows is ours, not a fault

    async def _notify(self, connected: bool) -> None:
        if connected:
            self.connected.set()
        else:
            self.connected.clear()
        if self.on_state is not None:
            await self.on_state(connected)

    @property
    def url(self) -> str:
        return safe_url(self.settings.url)

    async def _disconnected(self) -> None:
        if self._closing:
            log.info("nats.closed", url=self.url)
        else:
            log.warning("nats.disconnected", url=self.url)
        await self._notify(False)

    async def _reconnected(self) -> None:
        log.info("nats.reconnected", url=self.url)
        await self._notify(True)

    async def _error(self, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        if "permissions violation" in message.lower():
            # A subject this service's NATS user may not use: a bug or a misdeclared consumption graph.
            log.warning("nats.permission_denied", user=self.settings.user, error=message[:300])
            return
        log.debug("nats.error", error=message)

    async def connect_once(self) -> Client:
        client = await nats.connect(
            self.settings.url,
            name=self.name,
            connect_timeout=self.settings.connect_timeout_seconds,
            reconnect_time_wait=self.settings.reconnect_wait_seconds,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            **connect_options(self.settings),
        )
        self.client = client
        log.info("nats.connected", url=self.url, user=self.settings.user)
        await self._notify(True)
        return client

    async def _connect_forever(self) -> None:
        delay = self.settings.reconnect_wait_seconds
        while True:
            try:
                await self.connect_once()
                return
            except Exception as exc:
                log.warning(
                    "nats.unreachable",
                    url=self.url,
                    error=str(exc) or type(exc).__name__,
                    retry_in_seconds=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def start(self) -> None:
        """Connect in the background; `connected` is set whenever the connection is up."""
        self._task = asyncio.create_task(self._connect_forever(), name=f"nats-connect-{self.name}")

    async def wait_connected(self) -> Client:
        """Wait for a live connection (wrap in `asyncio.timeout(...)` to bound the wait)."""
        await self.connected.wait()
        assert self.client is not None
        return self.client

    async def close(self) -> None:
        self._closing = True
        if self._task and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None and not self.client.is_closed:
            with contextlib.suppress(Exception):
                await self.client.drain()
            with contextlib.suppress(Exception):
                await self.client.close()
