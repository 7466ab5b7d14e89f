"""The destinations service composed in process exactly as `python -m onefold.destinations`
composes it (its log on a SQLite file, the application, the real gRPC server with the platform
interceptor, a real nats-server), started, called over gRPC and stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.contracts.destinations.v1 import destinations_pb2, destinations_pb2_grpc
from onefold.destinations.adapters.read_model import DestinationsReadModel
from onefold.destinations.bootstrap import SERVICE_NAME, compose
from onefold.destinations.domain.definitions import DestinationVersions
from onefold.destinations.domain.events import REGISTRY
from onefold.eventlog import EventRegistry, EventStore, KeyEncryptionKey, NewEvent
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.events import assert_events_handled
from onefold.testing.services import composed_service


def test_every_declared_event_is_handled() -> None:
    assert_events_handled(REGISTRY, DestinationVersions, DestinationsReadModel)


def test_a_replay_recorded_before_version_2_is_read_as_queueing_suppressed_deliveries_too(
    tmp_path: Path,
) -> None:
    """Version 1 replays queued suppressed deliveries again too: read with `suppressed_too`, a
    rebuilt read model queues what they queued."""
    url = f"sqlite:///{tmp_path / 'destinations.db'}"
    kek = KeyEncryptionKey.generate()
    before = EventRegistry()
    before.register(destinations_pb2.DeliveriesReplayed, schema_version=1)
    old = EventStore(url, service=SERVICE_NAME, registry=before, keys=kek)
    old.create_schema()
    replay = destinations_pb2.DeliveriesReplayed(workspace="acme", destination="crm", count=3)
    old.append([NewEvent("destination:acme:crm", replay)])
    old.close()
    store = EventStore(url, service=SERVICE_NAME, registry=REGISTRY, keys=kek)
    store.append([NewEvent("destination:acme:crm", replay)])
    first, second = store.read()
    assert first.schema_version == 1 and store.decode(first).suppressed_too
    assert second.schema_version == 2 and not store.decode(second).suppressed_too
    store.close()


async def test_the_composed_service_serves_its_api_and_the_data_subject_contract(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    async with composed_service(SERVICE_NAME, compose, tmp_path, nats_server) as running:
        async with asyncio.timeout(30):
            await running.service.leading.wait()
        dsr = running.credentials.issue("acme", ["dsr:write"]).token
        reader = running.credentials.issue("acme", ["destinations:read"]).token
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = data_subject_pb2_grpc.DataSubjectServiceStub(channel)
            metadata = (("authorization", f"Bearer {dsr}"),)
            exported = await stub.ExportSubject(
                pb.ExportSubjectRequest(request_id="r-1", profile_ids=["p-1"]), metadata=metadata
            )
            erased = await stub.EraseSubject(
                pb.EraseSubjectRequest(request_id="r-1", profile_ids=["p-1"]), metadata=metadata
            )
            destinations = destinations_pb2_grpc.DestinationsServiceStub(channel)
            listed = await destinations.ListDestinations(
                destinations_pb2.ListDestinationsRequest(), metadata=(("authorization", f"Bearer {reader}"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as not_allowed:
                await destinations.Replay(
                    destinations_pb2.ReplayRequest(name="crm", dead_letters=True),
                    metadata=(("authorization", f"Bearer {reader}"),),
                )
    assert dict(exported.counts) == {"deliveries": 0, "destinations_holding": 0}
    assert dict(erased.counts) == {"deletions_queued": 0, "profiles_erased": 1}
    assert not listed.destinations
    assert not_allowed.value.code() == grpc.StatusCode.PERMISSION_DENIED
