"""The segments service composed in process exactly as `python -m onefold.segments` composes it (its
log on a SQLite file, the application, the real gRPC server with the platform interceptor, a real
nats-server), started, called over gRPC and stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.platform.config import load_settings
from onefold.platform.database import create_engine
from onefold.platform.grpc_server import GrpcServer
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.service import ServiceContext
from onefold.segments.bootstrap import SERVICE_NAME, compose
from onefold.segments.domain.events import REGISTRY
from onefold.testing.events import assert_events_handled


def test_every_declared_event_is_handled() -> None:
    # Pass the domain's folds and the read model's projection here as they are written.
    assert_events_handled(REGISTRY)


async def test_the_composed_service_serves_the_data_subject_contract(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings(
        SERVICE_NAME,
        env={},
        data_dir=str(data),
        nats={**nats_server.client_settings(SERVICE_NAME).model_dump(), "reconnect_wait_seconds": 0.1},
        auth={"cache_seconds": 0, "bootstrap_admin": False},
        eventlog={"key_file": str(tmp_path / "keys" / f"{SERVICE_NAME}.kek")},
        grpc={"port": 0, "grace_seconds": 0.5},
        telemetry={"log_level": "WARNING"},
    )
    credentials = CredentialStore(settings.auth_database_url(), cache_seconds=0)
    credentials.create_schema()
    engine = create_engine(settings.database_url())
    nats = NatsConnection(settings.nats, f"{SERVICE_NAME}-smoke-test")
    service = await asyncio.to_thread(compose, ServiceContext(settings, engine, credentials, nats))
    server = GrpcServer(SERVICE_NAME, settings.grpc, credentials, service.registrations())
    await server.start()
    nats.start()
    await service.start()
    try:
        async with asyncio.timeout(30):
            await service.leading.wait()  # holds the lease: relay, digests and subscribers run
        metadata = (("authorization", f"Bearer {credentials.issue('acme', ['dsr:write']).token}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = data_subject_pb2_grpc.DataSubjectServiceStub(channel)
            exported = await stub.ExportSubject(
                pb.ExportSubjectRequest(request_id="r-1", profile_ids=["p-1"]), metadata=metadata
            )
            erased = await stub.EraseSubject(
                pb.EraseSubjectRequest(request_id="r-1", profile_ids=["p-1"]), metadata=metadata
            )
            with pytest.raises(grpc.aio.AioRpcError) as nobody:
                await stub.EraseSubject(pb.EraseSubjectRequest(request_id="r-2"), metadata=metadata)
        # It holds nothing about anyone yet, and says so; a request naming nobody is refused.
        assert dict(exported.counts) == {"records": 0} and not exported.events
        assert dict(erased.counts) == {"records_erased": 0}
        assert nobody.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await service.stop()
        await server.stop()
        await nats.close()
        engine.dispose()
        credentials.engine.dispose()
    assert not service.leading.is_set()
