"""A service composed in process exactly as `python -m onefold.<service>` composes it: its log on a
SQLite file, its application, the real gRPC server with the platform interceptor and a real
nats-server; started, and stopped (and everything closed) when the block ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onefold.eventlog.service import EventSourcedService
from onefold.platform.auth import CredentialStore
from onefold.platform.config import load_settings
from onefold.platform.database import create_engine
from onefold.platform.grpc_server import GrpcServer
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.service import ServiceContext


@dataclass
class ComposedService:
    service: EventSourcedService[Any]
    credentials: CredentialStore
    target: str  # host:port of its gRPC server


@asynccontextmanager
async def composed_service(
    name: str,
    compose: Callable[[ServiceContext], EventSourcedService[Any]],
    tmp_path: Path,
    nats_server: NatsServerProcess,
) -> AsyncIterator[ComposedService]:
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings(
        name,
        env={},
        data_dir=str(data),
        nats={**nats_server.client_settings(name).model_dump(), "reconnect_wait_seconds": 0.1},
        auth={"cache_seconds": 0, "bootstrap_admin": False},
        eventlog={"key_file": str(tmp_path / "keys" / f"{name}.kek")},
        grpc={"port": 0, "grace_seconds": 0.5},
        telemetry={"log_level": "WARNING"},
    )
    credentials = CredentialStore(settings.auth_database_url(), cache_seconds=0)
    credentials.create_schema()
    engine = create_engine(settings.database_url())
    nats = NatsConnection(settings.nats, f"{name}-test")
    service = await asyncio.to_thread(compose, ServiceContext(settings, engine, credentials, nats))
    server = GrpcServer(name, settings.grpc, credentials, service.registrations())
    await server.start()
    nats.start()
    await service.start()
    try:
        yield ComposedService(service, credentials, f"127.0.0.1:{server.port}")
    finally:
        await service.stop()
        await server.stop()
        await nats.close()
        engine.dispose()
        credentials.engine.dispose()
