"""Personal data stays sealed on the bus; consumers open it with keys asked of the producer over gRPC.

A real nats-server, the real relay and subscriber, and the producer's SubjectKeyService on a real
gRPC server with the platform's authentication: what the stream holds, what the handler sees, and
what an erasure at the producer does to both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.contracts.eventlog.v1 import eventlog_pb2, eventlog_pb2_grpc
from onefold.eventlog import EventStore, NewEvent
from onefold.eventlog.keyaccess import KeysUnavailable, RemoteSubjectKeys, registration
from onefold.eventlog.mapper import ERASED
from onefold.eventlog.relay import OutboxRelay
from onefold.eventlog.streams import DLQ_STREAM, stream_name
from onefold.eventlog.subscriber import DLQ_ERROR, Subscriber, SubscriberSettings
from onefold.platform.auth import ANY_WORKSPACE, CredentialStore
from onefold.platform.client import authenticated_channel
from onefold.platform.config import GrpcSettings
from onefold.platform.grpc_server import GrpcServer
from onefold.platform.nats import NatsConnection

FAST = SubscriberSettings(
    batch_size=100, fetch_timeout_seconds=0.3, retry_backoff_seconds=0.01, max_deliver=2
)


def contacts(count: int) -> list[NewEvent]:
    return [
        NewEvent(
            f"contact:ws-1:p{i % 5}",
            events_pb2.ContactCaptured(
                profile_id=f"p{i % 5}", email=f"user{i}@example.com", name=f"Name {i}"
            ),
            subject=f"p{i % 5}",
            workspace="ws-1",
        )
        for i in range(count)
    ]


class Seen:
    """The handler: what a consumer's code gets to read."""

    def __init__(self) -> None:
        self.contacts: list[events_pb2.ContactCaptured] = []

    def __call__(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        self.contacts.extend(events_pb2.ContactCaptured.FromString(e.payload) for e in envelopes)


@pytest.fixture
async def key_server(
    open_store: Callable[..., EventStore], credential_store: CredentialStore
) -> AsyncIterator[tuple[EventStore, GrpcServer]]:
    upstream = open_store("ingest")
    server = GrpcServer(
        "ingest", GrpcSettings(port=0, grace_seconds=0.1), credential_store, [registration(upstream)]
    )
    await server.start()
    yield upstream, server
    await server.stop()


async def stream_bytes(nats: NatsConnection, service: str) -> bytes:
    js = (await nats.wait_connected()).jetstream()
    info = await js.stream_info(stream_name(service))
    found = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        found.append((await js.get_msg(stream_name(service), sequence)).data or b"")
    return b"".join(found)


async def test_the_bus_holds_ciphertext_and_consumers_read_plaintext_until_the_producer_erases(
    nats: NatsConnection,
    open_store: Callable[..., EventStore],
    key_server: tuple[EventStore, GrpcServer],
    credential_store: CredentialStore,
) -> None:
    upstream, server = key_server
    upstream.append(contacts(50))
    await OutboxRelay(upstream, nats, service="ingest").publish_available()
    on_the_bus = await stream_bytes(nats, "ingest")
    assert b"@example.com" not in on_the_bus and b"Name " not in on_the_bus

    token = credential_store.issue(ANY_WORKSPACE, ["service"]).token
    channel = authenticated_channel(f"127.0.0.1:{server.port}", token)
    keys = RemoteSubjectKeys("ingest", lambda: channel)
    seen = Seen()
    downstream = open_store("identity")
    subscriber = Subscriber(
        downstream, nats, service="identity", upstream="ingest", handler=seen, settings=FAST, keys=keys
    )
    await subscriber.run_until_idle()
    assert [c.email for c in seen.contacts] == [f"user{i}@example.com" for i in range(50)]
    assert keys.fetched == 5  # one call for the five subjects of the first batch; cached after

    # The producer shreds p1's key: a consumer (here a new one, with no cached keys) replaying the
    # stream reads markers for p1 and plaintext for everyone else. The stream itself never changed.
    upstream.erase_subject("p1")
    replay = Seen()
    fresh_keys = RemoteSubjectKeys("ingest", lambda: channel)
    again = Subscriber(
        open_store("segments"),
        nats,
        service="segments",
        upstream="ingest",
        handler=replay,
        settings=FAST,
        keys=fresh_keys,
    )
    await again.run_until_idle()
    for i, contact in enumerate(replay.contacts):
        if contact.profile_id == "p1":
            assert contact.email == ERASED and contact.name == ERASED
        else:
            assert contact.email == f"user{i}@example.com"
    await subscriber.stop()
    await again.stop()
    await channel.close()


async def test_only_service_credentials_get_subject_keys(
    key_server: tuple[EventStore, GrpcServer], credential_store: CredentialStore
) -> None:
    upstream, server = key_server
    upstream.append(contacts(1))
    request = eventlog_pb2.SubjectKeysRequest(subjects=["p0"])
    admin = credential_store.issue("ws-1", ["admin"]).token
    async with authenticated_channel(f"127.0.0.1:{server.port}", admin) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await eventlog_pb2_grpc.SubjectKeyServiceStub(channel).GetSubjectKeys(request)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await eventlog_pb2_grpc.SubjectKeyServiceStub(channel).GetSubjectKeys(request)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    service = credential_store.issue(ANY_WORKSPACE, ["service"]).token
    async with authenticated_channel(f"127.0.0.1:{server.port}", service) as channel:
        stub = eventlog_pb2_grpc.SubjectKeyServiceStub(channel)
        answer = await stub.GetSubjectKeys(eventlog_pb2.SubjectKeysRequest(subjects=["p0", "never-seen"]))
        assert [(k.subject, len(k.data_key), k.erased) for k in answer.keys] == [("p0", 32, False)]
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await stub.GetSubjectKeys(eventlog_pb2.SubjectKeysRequest(subjects=["s"] * 1001))
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_consumer_without_keys_does_not_apply_sealed_events(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest")
    upstream.append(contacts(3))
    await OutboxRelay(upstream, nats, service="ingest").publish_available()
    seen = Seen()
    unconfigured = Subscriber(
        open_store("identity"),
        nats,
        service="identity",
        upstream="ingest",
        handler=seen,
        settings=FAST,
        keys=RemoteSubjectKeys("ingest", lambda: None),
    )
    with pytest.raises(KeysUnavailable, match=r"peers\.ingest"):
        await unconfigured.poll_once()
    assert seen.contacts == []


async def test_a_forged_sealed_part_is_dead_lettered_not_applied(
    nats: NatsConnection,
    open_store: Callable[..., EventStore],
    key_server: tuple[EventStore, GrpcServer],
    credential_store: CredentialStore,
) -> None:
    upstream, server = key_server
    upstream.append(contacts(2))
    await OutboxRelay(upstream, nats, service="ingest").publish_available()
    js = (await nats.wait_connected()).jetstream()
    # Someone re-publishes event 2 as position 3 with its ciphertext flipped.
    forged = EventEnvelope.FromString((await js.get_msg(stream_name("ingest"), 2)).data or b"")
    forged.position = 3
    forged.event_id = "forged"
    payload = bytearray(forged.payload)
    payload[20] ^= 0xFF
    forged.payload = bytes(payload)
    await js.publish("onefold.ingest.ContactCaptured.ws-1.0", forged.SerializeToString())

    token = credential_store.issue(ANY_WORKSPACE, ["service"]).token
    channel = authenticated_channel(f"127.0.0.1:{server.port}", token)
    seen = Seen()
    subscriber = Subscriber(
        open_store("identity"),
        nats,
        service="identity",
        upstream="ingest",
        handler=seen,
        settings=FAST,
        keys=RemoteSubjectKeys("ingest", lambda: channel),
    )
    await subscriber.run_until_idle()
    assert len(seen.contacts) == 2 and subscriber.stats.dead_lettered == 1
    dead = await js.get_last_msg(DLQ_STREAM, "onefold.dlq.>")
    assert dead.headers is not None and "does not authenticate" in dead.headers[DLQ_ERROR]
    await subscriber.stop()
    await channel.close()
