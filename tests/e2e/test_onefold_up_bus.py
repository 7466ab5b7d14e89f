"""`onefold up`'s bus is closed: a real run makes private NATS credentials, gives each service its
own, keeps them across restarts, and its nats-server refuses anonymous clients and forged events."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from test_onefold_up import Up, _processes_mentioning

from onefold.cli.supervisor import SERVICES, operator_nats_settings
from onefold.platform.bus_permissions import ADMIN, USERS, durable_of, stream_of
from onefold.platform.nats import connect_options
from onefold.platform.nats_server import BusCredentials


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path / "data")
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(10)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def connect(url: str, credentials: BusCredentials, user: str, **options: object) -> Client:
    return await nats.connect(url, **connect_options(credentials.settings(user, url)), **options)


async def probe_the_bus(data_dir: Path) -> dict[str, object]:
    url = str(json.loads((data_dir / "run" / "endpoints.json").read_text())["nats_url"])
    credentials = BusCredentials.of_server(data_dir / "nats")
    seen: dict[str, object] = {}
    try:
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        seen["anonymous"] = "connected"
    except Exception as error:  # the server's refusal, whatever nats-py calls it
        seen["anonymous"] = str(error)

    admin = await connect(url, credentials, ADMIN)
    js = admin.jetstream()
    # The services' own consumers appear: each creates its consumer of its upstream with its own user.
    async with asyncio.timeout(60):
        for service, upstream in (("identity", "ingest"), ("consent", "identity")):
            while True:
                try:
                    await js.consumer_info(stream_of(upstream), durable_of(service, upstream))
                    break
                except NotFoundError:
                    await asyncio.sleep(0.2)
    before = (await js.stream_info(stream_of("ingest"))).state.messages

    violations: list[str] = []

    async def on_error(error: Exception) -> None:
        violations.append(str(error))

    # The audit's attack: another service's credential publishes a forged EventAccepted.
    consent = await connect(url, credentials, "consent", error_cb=on_error)
    try:
        await consent.jetstream(timeout=2).publish("onefold.ingest.EventAccepted.default.0", b"forged")
        seen["forged"] = "acknowledged"
    except Exception as error:
        seen["forged"] = type(error).__name__
    await consent.close()
    seen["stored_after_forgery"] = (await js.stream_info(stream_of("ingest"))).state.messages - before
    await admin.close()

    operator = await nats.connect(url, error_cb=on_error, **connect_options(operator_nats_settings(data_dir)))
    await operator.subscribe("onefold.>")
    await operator.flush()
    # The server's refusal reaches error_cb as a task of its own: wait for it (bounded), then close.
    deadline = asyncio.get_running_loop().time() + 10
    while not any("subscription" in v.lower() for v in violations):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    await operator.close()
    seen["violations"] = violations
    return seen


@pytest.mark.slow
def test_up_makes_private_credentials_and_its_bus_refuses_strangers(up: Up) -> None:
    up.wait_for("Ctrl-C stops everything")
    nats_dir = up.data_dir / "nats"
    credentials = BusCredentials.of_server(nats_dir)
    assert mode(nats_dir) == 0o700 and mode(credentials.directory) == 0o700
    assert mode(nats_dir / "nats-server.conf") == 0o600
    for user in USERS:
        assert mode(credentials.password_file(user)) == 0o600, user
    passwords = {user: credentials.password(user) for user in USERS}

    seen = asyncio.run(probe_the_bus(up.data_dir))
    assert "Authorization Violation" in str(seen["anonymous"])
    assert seen["forged"] != "acknowledged" and seen["stored_after_forgery"] == 0
    violations = " ".join(seen["violations"]).lower()  # type: ignore[arg-type]
    assert 'publish to "onefold.ingest.eventaccepted.default.0"' in violations
    assert 'subscription to "onefold.>"' in violations

    # Each service runs as its own user, and no password is in a log or a process's environment.
    for name in SERVICES:
        lines = (up.data_dir / "logs" / f"{name}.log").read_text().splitlines()
        connected = [json.loads(line) for line in lines if '"nats.connected"' in line]
        assert connected and {entry["user"] for entry in connected} == {name}
    logs = [up.text(), (nats_dir / "nats-server.log").read_text()]
    logs += [path.read_text() for path in (up.data_dir / "logs").iterdir()]
    for user, password in passwords.items():
        assert not any(password in log for log in logs), user
        assert _processes_mentioning(password) == [], user

    # Started again: the same credentials, and every service connects with them.
    assert up.interrupt() == 0
    again = Up(up.data_dir)
    try:
        again.wait_for("Ctrl-C stops everything")
        assert {user: credentials.password(user) for user in USERS} == passwords
    finally:
        assert again.interrupt() == 0
