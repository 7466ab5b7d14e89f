"""The journeys service composed in process exactly as `python -m onefold.journeys` composes it (its
log on a SQLite file, the application, the real gRPC server with the platform interceptor, a real
nats-server), started, called over gRPC and stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.journeys.adapters.read_model import JourneysReadModel
from onefold.journeys.bootstrap import SERVICE_NAME, compose
from onefold.journeys.domain.catalog import Catalog
from onefold.journeys.domain.events import REGISTRY
from onefold.journeys.domain.instance import Instance
from onefold.journeys.domain.templates import TemplateVersions
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.events import assert_events_handled
from onefold.testing.services import composed_service


def test_every_declared_event_is_handled() -> None:
    assert_events_handled(REGISTRY, Catalog, TemplateVersions, Instance, JourneysReadModel)


async def test_the_composed_service_serves_the_data_subject_contract(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    async with composed_service(SERVICE_NAME, compose, tmp_path, nats_server) as running:
        async with asyncio.timeout(30):
            await running.service.leading.wait()  # holds the lease: relay, digests and subscribers run
        token = running.credentials.issue("acme", ["dsr:write"]).token
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = data_subject_pb2_grpc.DataSubjectServiceStub(channel)
            exported = await stub.ExportSubject(
                pb.ExportSubjectRequest(request_id="r-1", profile_ids=["p-1"]), metadata=metadata
            )
            erased = await stub.EraseSubject(
                pb.EraseSubjectRequest(request_id="r-1", profile_ids=["p-1"]), metadata=metadata
            )
            with pytest.raises(grpc.aio.AioRpcError) as nobody:
                await stub.EraseSubject(pb.EraseSubjectRequest(request_id="r-2"), metadata=metadata)
    # It holds nothing about this person, and says so by kind; a request naming nobody is refused.
    assert dict(exported.counts) == {
        "journey_instances": 0,
        "messages": 0,
        "profile_facts": 0,
        "sandbox_sends": 0,
    }
    assert not exported.events
    assert dict(erased.counts) == {"instances_stopped": 0, "sandbox_sends_erased": 0, "profiles_erased": 1}
    assert nobody.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not running.service.leading.is_set()  # stopped
