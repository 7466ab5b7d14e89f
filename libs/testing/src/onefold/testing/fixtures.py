"""Pytest fixtures shared by every test directory (registered by the root conftest.py).

- `nats_server`: a real nats-server with JetStream on a free port and a temporary store, with the
  product's authorization (a user per service, `operator`, `admin`: onefold.platform.bus_permissions);
  call `.kill()` / `.start()` on it in fault tests (same port, same store). Clients connect with
  `nats_server.client_settings(user)`, `.client_environment(user)` or `.connect_options(user)`.
- `nats_url`: its URL; `nats_connection`: a connected onefold.platform NatsConnection to it as `admin`
  (raw access for tests of the event log itself, which play several services on one connection).
- `fresh_postgres_url`: an empty PostgreSQL database for one test (skips without
  ONEFOLD_TEST_POSTGRES_URL, fails under CI=true without it).
- `database_url`: parametrised over SQLite (a temp file) and PostgreSQL.
- `credential_store`: a real credential store in a temp file.
- `start_service`: starts `python -m onefold.<name>` subprocesses, stopped at teardown.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from onefold.platform.auth import CredentialStore
from onefold.platform.bus_permissions import ADMIN
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.postgres import POSTGRES_ENV, postgres_admin_url, temporary_database
from onefold.testing.processes import ServiceProcess, peer_env


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess]:
    server = NatsServerProcess(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServerProcess) -> str:
    return nats_server.url


@pytest.fixture
async def nats_connection(nats_server: NatsServerProcess) -> AsyncIterator[NatsConnection]:
    """A connected platform NatsConnection as `admin` (reconnects quickly after `nats_server.kill()/.start()`)."""
    connection = NatsConnection(nats_server.client_settings(ADMIN, reconnect_wait_seconds=0.1), "test")
    connection.start()
    async with asyncio.timeout(10):
        await connection.wait_connected()
    yield connection
    await connection.close()


def _require_postgres_admin_url() -> str:
    """The PostgreSQL admin URL; skips the test without one (fails it under CI=true)."""
    admin = postgres_admin_url()
    if admin is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: set {POSTGRES_ENV}")
        pytest.skip(f"set {POSTGRES_ENV} to run against PostgreSQL")
    return admin


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database for one test (for tests that need a clean schema)."""
    with temporary_database(_require_postgres_admin_url()) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def credential_store(tmp_path: Path) -> CredentialStore:
    store = CredentialStore(f"sqlite:///{tmp_path / 'auth.db'}", cache_seconds=0)
    store.create_schema()
    return store


@pytest.fixture
def start_service(tmp_path: Path, nats_server: NatsServerProcess) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(name: str, data_dir: Path | None = None, **extra_env: str) -> ServiceProcess:
        data = data_dir or tmp_path / "data"
        data.mkdir(parents=True, exist_ok=True)
        # Services started in one data dir can call each other, like under `onefold up`.
        env = peer_env(data, (s for s in started if s.data_dir == data))
        env.update({k.upper(): v for k, v in extra_env.items()})
        service = ServiceProcess(name=name, data_dir=data, nats=nats_server, extra_env=env)
        service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()
