"""A NatsConnection says which disconnects are faults: a lost server is a warning, our own close is
not (a clean stop of five services must not log five warnings)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from onefold.platform.bus_permissions import ADMIN
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess


async def _connected(nats_server: NatsServerProcess) -> NatsConnection:
    connection = NatsConnection(nats_server.client_settings(ADMIN, reconnect_wait_seconds=0.1), "test")
    connection.start()
    async with asyncio.timeout(10):
        await connection.wait_connected()
    return connection


async def test_closing_on_purpose_logs_closed_at_info_and_no_warning(nats_server: NatsServerProcess) -> None:
    connection = await _connected(nats_server)
    with capture_logs() as logs:
        await connection.close()
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert ("nats.closed", "info") in events
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []
    assert not connection.connected.is_set()


async def test_losing_the_server_is_still_a_warning(nats_server: NatsServerProcess) -> None:
    connection = await _connected(nats_server)
    try:
        with capture_logs() as logs:
            nats_server.kill()
            async with asyncio.timeout(10):
                while connection.connected.is_set():
                    await asyncio.sleep(0.01)
        assert ("nats.disconnected", "warning") in [(entry["event"], entry["log_level"]) for entry in logs]
    finally:
        await connection.close()
