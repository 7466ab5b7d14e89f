"""NATS connections that keep trying: a service outlives NATS restarts and says so in its logs.

nats-py reconnects an established connection by itself, but gives up on a first connection that
fails; NatsConnection retries that too, so a service may start before NATS does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

from onefold.platform.config import NatsSettings
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.nats")

StateCallback = Callable[[bool], Awaitable[None]]


class NatsConnection:
    def __init__(self, settings: NatsSettings, name: str, on_state: StateCallback | None = None) -> None:
        self.settings = settings
        self.name = name
        self.on_state = on_state
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _notify(self, connected: bool) -> None:
        if connected:
            self.connected.set()
        else:
            self.connected.clear()
        if self.on_state is not None:
            await self.on_state(connected)

    async def _disconnected(self) -> None:
        log.warning("nats.disconnected", url=self.settings.url)
        await self._notify(False)

    async def _reconnected(self) -> None:
        log.info("nats.reconnected", url=self.settings.url)
        await self._notify(True)

    async def _error(self, exc: Exception) -> None:
        log.debug("nats.error", error=str(exc) or type(exc).__name__)

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
        )
        self.client = client
        log.info("nats.connected", url=self.settings.url)
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
                    url=self.settings.url,
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
        if self._task and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None and not self.client.is_closed:
            with contextlib.suppress(Exception):
                await self.client.drain()
            with contextlib.suppress(Exception):
                await self.client.close()
