"""The ingest service composed in-process exactly as `python -m onefold.ingest` composes it (its own
log, the application, the real gRPC server with the platform interceptor, the relay to a real
nats-server), plus helpers the gRPC tests share. No tests here.

The log is a SQLite file; a test marked `@ON_BOTH_DATABASES` runs twice, the second time on a fresh
PostgreSQL database (the durability-critical paths: dedupe, quarantine and replay, erasure)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc
from onefold.eventlog import EventStore
from onefold.eventlog.service import EventSourcedService, key_encryption_key
from onefold.ingest.application import IngestApplication
from onefold.ingest.bootstrap import compose
from onefold.ingest.domain.events import REGISTRY
from onefold.ingest.entrypoints.http import HttpServer
from onefold.platform.auth import CredentialStore
from onefold.platform.config import NatsSettings, Settings, load_settings
from onefold.platform.database import create_engine
from onefold.platform.grpc_server import GrpcServer
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.service import ServiceContext

_counter = itertools.count()

# Runs the test on SQLite and on PostgreSQL (a fresh database; skipped without ONEFOLD_TEST_POSTGRES_URL).
ON_BOTH_DATABASES = pytest.mark.parametrize(
    "ingest", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture(scope="session")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess]:
    """One nats-server for the module's in-process services (each test uses its own workspace)."""
    server = NatsServerProcess(tmp_path_factory.mktemp("ingest-nats"))
    server.start()
    yield server
    server.stop()


@dataclass
class Harness:
    settings: Settings
    composition: EventSourcedService[IngestApplication]
    server: GrpcServer
    credentials: CredentialStore
    workspace: str
    admin_token: str
    writer_token: str
    _channels: list[grpc.aio.Channel]

    @property
    def app(self) -> IngestApplication:
        return self.composition.application

    @property
    def http(self) -> HttpServer:
        return next(c for c in self.composition.components if isinstance(c, HttpServer))

    @property
    def store(self) -> EventStore:
        return self.composition.store

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stub(self, token: str | None = None) -> ingest_pb2_grpc.IngestServiceStub:
        channel = grpc.aio.insecure_channel(self.target)
        self._channels.append(channel)
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        return _AuthStub(stub, token) if token else stub  # type: ignore[return-value]

    def data_subject(self, token: str | None = None) -> data_subject_pb2_grpc.DataSubjectServiceStub:
        channel = grpc.aio.insecure_channel(self.target)
        self._channels.append(channel)
        stub = data_subject_pb2_grpc.DataSubjectServiceStub(channel)
        return _AuthStub(stub, token) if token else stub  # type: ignore[return-value]

    def token(self, scopes: list[str], workspace: str | None = None) -> str:
        return self.credentials.issue(workspace or self.workspace, scopes).token

    async def create_source(
        self, name: str = "web", plan: pb.TrackingPlan | None = None, rate: int = 0, token: str | None = None
    ) -> pb.CreateSourceResponse:
        request = pb.CreateSourceRequest(name=name, rate_limit_per_second=rate)
        if plan is not None:
            request.tracking_plan.CopyFrom(plan)
        return await self.stub(token or self.admin_token).CreateSource(request)

    def accepted(self) -> list[pb.EventAccepted]:
        """Every EventAccepted in the log, decoded."""
        out = []
        for event in self.store.iter_all():
            if event.type == pb.EventAccepted.DESCRIPTOR.full_name:
                message = self.store.decode(event)
                assert isinstance(message, pb.EventAccepted)
                out.append(message)
        return out


class _AuthStub:
    """Adds the bearer credential to every call of a generated stub."""

    def __init__(self, stub: ingest_pb2_grpc.IngestServiceStub, token: str) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self._metadata)
            return method(request, **kwargs)

        return call


def settings_for(data_dir: Path, nats: NatsSettings, database_url: str = "", **overrides: Any) -> Settings:
    """The settings `python -m onefold.ingest` would load for this data dir (and database; empty =
    the SQLite file <data_dir>/ingest.db), connecting to NATS with `nats` (its URL and credential)."""
    return load_settings(
        "ingest",
        env={},
        data_dir=str(data_dir),
        database={"url": database_url},
        nats={**nats.model_dump(), "reconnect_wait_seconds": 0.1},
        auth={"cache_seconds": 0, "bootstrap_admin": False},
        eventlog={"key_file": str(data_dir / "keys" / "ingest.kek")},
        grpc={"port": 0, "grace_seconds": 0.5},
        telemetry={"log_level": "WARNING"},
        **overrides,
    )


@pytest.fixture
async def ingest(
    request: pytest.FixtureRequest, tmp_path: Path, shared_nats: NatsServerProcess
) -> AsyncIterator[Harness]:
    on_postgres = getattr(request, "param", "sqlite") == "postgres"
    database_url = request.getfixturevalue("fresh_postgres_url") if on_postgres else ""
    settings = settings_for(tmp_path / "data", shared_nats.client_settings("ingest"), database_url)
    settings.data_dir.mkdir(parents=True)
    credentials = CredentialStore(settings.auth_database_url(), cache_seconds=0)
    credentials.create_schema()
    engine = create_engine(settings.database_url())
    nats = NatsConnection(settings.nats, "onefold-ingest-test")
    composition = await asyncio.to_thread(compose, ServiceContext(settings, engine, credentials, nats))
    server = GrpcServer("ingest", settings.grpc, credentials, composition.registrations())
    await server.start()
    nats.start()
    await composition.start()
    workspace = f"ws{next(_counter)}-{uuid.uuid4().hex[:6]}"
    harness = Harness(
        settings=settings,
        composition=composition,
        server=server,
        credentials=credentials,
        workspace=workspace,
        admin_token=credentials.issue(workspace, ["admin"]).token,
        writer_token=credentials.issue(workspace, ["ingest:write"]).token,
        _channels=[],
    )
    try:
        yield harness
    finally:
        for channel in harness._channels:
            await channel.close()
        await composition.stop()
        await server.stop()
        await nats.close()
        engine.dispose()
        credentials.engine.dispose()


def open_log(data_dir: Path, database_url: str = "") -> EventStore:
    """The service's log as another process sees it (with the service's key file)."""
    settings = settings_for(data_dir, NatsSettings(url="nats://127.0.0.1:1"), database_url)
    return EventStore(
        settings.database_url(),
        service="ingest",
        registry=REGISTRY,
        keys=key_encryption_key(settings),
    )


# --- building events --------------------------------------------------------------------------


def struct(**values: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def event(
    kind: pb.EventType.ValueType = pb.EVENT_TYPE_TRACK,
    *,
    user_id: str = "",
    anonymous_id: str = "",
    message_id: str | None = None,
    name: str = "Product Viewed",
    properties: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
    **fields: Any,
) -> pb.TrackingEvent:
    msg = pb.TrackingEvent(
        type=kind,
        message_id=message_id if message_id is not None else uuid.uuid4().hex,
        user_id=user_id,
        anonymous_id=anonymous_id or ("" if user_id else "anon-" + uuid.uuid4().hex[:8]),
        **fields,
    )
    if kind == pb.EVENT_TYPE_TRACK:
        msg.event = name
    if kind in (pb.EVENT_TYPE_PAGE, pb.EVENT_TYPE_SCREEN):
        msg.name = name
    if properties is not None:
        msg.properties.CopyFrom(struct(**properties))
    if traits is not None:
        msg.traits.CopyFrom(struct(**traits))
    return msg


def plan(
    mode: pb.PlanMode.ValueType = pb.PLAN_MODE_BLOCK,
    unplanned: pb.PlanMode.ValueType = pb.PLAN_MODE_ALLOW,
    **schemas: str,
) -> pb.TrackingPlan:
    return pb.TrackingPlan(mode=mode, unplanned_mode=unplanned, event_schemas=schemas)


PRICE_SCHEMA = '{"type": "object", "required": ["price"], "properties": {"price": {"type": "number"}}}'
