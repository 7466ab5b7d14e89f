"""Fault test: `python -m onefold.ingest` under concurrent load is SIGKILLed mid-load and restarted;
every event it acknowledged is in its log exactly once, and clients retrying what was not
acknowledged create no duplicates. On a SQLite file and on PostgreSQL (`database_url`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from test_ingest_grpc_harness import event, open_log

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.platform.client import authenticated_channel
from onefold.testing.processes import ServiceProcess

CLIENTS = 8
BATCH = 25


async def _create_source(target: str, token: str) -> str:
    async with authenticated_channel(target, token) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        response = await stub.CreateSource(
            pb.CreateSourceRequest(name="pos", rate_limit_per_second=10_000_000)
        )
        return response.source.source_id


async def _load(
    target: str, token: str, source_id: str, sent: list[pb.BatchRequest], acked: set[str], stop_after: float
) -> None:
    """Clients send batches until the service dies (or `stop_after` seconds pass)."""
    deadline = time.monotonic() + stop_after

    async def client(n: int) -> None:
        async with authenticated_channel(target, token) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            while time.monotonic() < deadline:
                batch = pb.BatchRequest(
                    source_id=source_id,
                    events=[event(user_id=f"c{n}-u{i % 5}", properties={"i": i}) for i in range(BATCH)],
                )
                sent.append(batch)
                try:
                    response = await stub.Batch(batch, timeout=5)
                except grpc.aio.AioRpcError:
                    return  # the service is gone: what was not answered counts as not acknowledged
                for answer in response.results:
                    assert answer.status in (pb.ACK_STATUS_ACCEPTED, pb.ACK_STATUS_DUPLICATE)
                    acked.add(answer.message_id)

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))


async def _retry_all(target: str, token: str, sent: list[pb.BatchRequest]) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    async with authenticated_channel(target, token) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for batch in sent:
            response = await stub.Batch(batch, timeout=10)
            statuses.update(answer.status for answer in response.results)
    return statuses


def test_sigkill_mid_load_loses_no_acknowledged_event_and_duplicates_none(
    tmp_path: Path, nats_url: str, database_url: str, start_service: Callable[..., ServiceProcess]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    credentials = CredentialStore(f"sqlite:///{data_dir / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    token = credentials.issue("retail", ["admin"]).token
    credentials.engine.dispose()
    service = start_service("ingest", data_dir=data_dir, onefold_database__url=database_url)
    source_id = asyncio.run(_create_source(service.target, token))

    sent: list[pb.BatchRequest] = []
    acked: set[str] = set()

    async def load_then_kill() -> None:
        loader = asyncio.create_task(_load(service.target, token, source_id, sent, acked, stop_after=20))
        while len(acked) < 1500 and not loader.done():
            await asyncio.sleep(0.02)
        service.kill()  # SIGKILL while batches are in flight
        with contextlib.suppress(Exception):
            await asyncio.wait_for(loader, 15)

    asyncio.run(load_then_kill())
    assert len(acked) >= 1500, "the load ran before the kill"
    all_ids = {e.message_id for batch in sent for e in batch.events}
    assert len(all_ids) > len(acked), "some batches were in flight when the service died"

    # Restart on the same data directory; clients retry every batch they sent.
    service.start()
    statuses = asyncio.run(_retry_all(service.target, token, sent))
    assert statuses[pb.ACK_STATUS_DUPLICATE] >= len(acked)
    assert statuses[pb.ACK_STATUS_QUARANTINED] == 0
    assert service.stop() == 0

    log = open_log(data_dir, database_url)
    try:
        counts: collections.Counter[str] = collections.Counter()
        for recorded in log.iter_all():
            if recorded.type == pb.EventAccepted.DESCRIPTOR.full_name:
                message = log.decode(recorded)
                assert isinstance(message, pb.EventAccepted)
                counts[message.event.message_id] += 1
        missing = acked - counts.keys()
        assert not missing, f"{len(missing)} acknowledged events are not in the log"
        assert set(counts) == all_ids  # after the retries: every event, ...
        assert max(counts.values()) == 1  # ... exactly once
        assert log.verify().ok
    finally:
        log.close()
