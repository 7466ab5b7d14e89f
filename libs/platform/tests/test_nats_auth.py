"""The bus is closed: a real nats-server with the product's authorization (the `nats_server` fixture,
the same config `onefold up` writes) refuses anonymous clients, and each service's NATS user may
publish only its own subjects and read only the streams it consumes (onefold.platform.bus_permissions).

A refusal is observed as the server reports it: a permission violation arrives before the answer to
the PING that follows (`flush`), so no test waits for a timeout to conclude "denied".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from onefold.eventlog import streams
from onefold.eventlog.workers import partition_groups
from onefold.platform.bus_permissions import (
    ADMIN,
    CONSUMES,
    DLQ_STREAM,
    OPERATOR,
    SERVICES,
    SUBJECT_ROOT,
    USERS,
    WITNESS_STREAM,
    consumers_of,
    digest_subject_of,
    durable_of,
    service_user,
    stream_of,
)
from onefold.platform.config import ConfigError, NatsSettings
from onefold.platform.nats import connect_options, safe_url
from onefold.platform.nats_server import NatsServerProcess

EVENT = "onefold.ingest.EventAccepted.acme.3"


class BusClient:
    """A raw NATS client as one user that tells whether the server refused what it sent.

    A publish is sent as a request: an allowed one always gets an answer (the stream's or JetStream's,
    or the server's "no responders"), a refused one a permission violation instead. Either arrives;
    the test waits for whichever comes (the timeout only bounds a broken server)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.violations: list[str] = []
        self.reported = asyncio.Event()

    async def on_error(self, error: Exception) -> None:
        self.violations.append(str(error).lower())
        self.reported.set()

    async def _violation(self, needle: str, answered: asyncio.Future[bool] | None = None) -> bool:
        async with asyncio.timeout(30):
            while True:
                if any(needle in violation for violation in self.violations):
                    return True
                if answered is not None and answered.done():
                    return False
                self.reported.clear()
                waiting = [asyncio.ensure_future(self.reported.wait())]
                if answered is not None:
                    waiting.append(answered)  # type: ignore[arg-type]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                waiting[0].cancel()

    async def refused_publish(self, subject: str, payload: bytes = b"{}") -> bool:
        self.violations.clear()
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def on_answer(_msg: Msg) -> None:
            if not answered.done():
                answered.set_result(True)

        inbox = self.client.new_inbox()
        subscription = await self.client.subscribe(inbox, cb=on_answer)
        await self.client.publish(subject, payload, reply=inbox)
        try:
            return await self._violation(f'publish to "{subject.lower()}"', answered)
        finally:
            await subscription.unsubscribe()

    async def refused_subscribe(self, subject: str) -> bool:
        self.violations.clear()
        subscription = await self.client.subscribe(subject)
        try:
            return await self._violation(f'subscription to "{subject.lower()}"')
        finally:
            await subscription.unsubscribe()


Connect = Callable[[str], Awaitable[BusClient]]


@pytest.fixture
async def bus(nats_server: NatsServerProcess) -> AsyncIterator[Connect]:
    opened: list[Client] = []

    async def connect(user: str) -> BusClient:
        bus_client = BusClient(Client())
        await bus_client.client.connect(
            nats_server.url,
            error_cb=bus_client.on_error,
            allow_reconnect=False,
            **nats_server.connect_options(user),
        )
        opened.append(bus_client.client)
        return bus_client

    yield connect
    for client in opened:
        await client.close()


async def publish_events(nats_server: NatsServerProcess, count: int) -> None:
    """ingest, as its own user, creates its stream and publishes `count` events."""
    client = await nats.connect(nats_server.url, **nats_server.connect_options("ingest"))
    try:
        js = client.jetstream()
        await streams.ensure_service_stream(js, "ingest")
        for i in range(count):
            await js.publish(EVENT, json.dumps({"n": i}).encode())
    finally:
        await client.close()


async def stored(nats_server: NatsServerProcess, stream: str) -> int:
    client = await nats.connect(nats_server.url, **nats_server.connect_options(ADMIN))
    try:
        return (await client.jetstream().stream_info(stream)).state.messages
    finally:
        await client.close()


async def test_a_client_without_the_right_password_cannot_connect(nats_server: NatsServerProcess) -> None:
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=0)
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(
            nats_server.url,
            user="identity",
            password="guessed",
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )


@pytest.mark.parametrize("intruder", ["consent", "journeys", "segments", OPERATOR])
async def test_no_other_user_reads_ingests_stream_or_forges_its_events(
    nats_server: NatsServerProcess, bus: Connect, intruder: str
) -> None:
    await publish_events(nats_server, 3)
    client = await bus(intruder)
    stream = stream_of("ingest")
    for subject in (
        f"$JS.API.CONSUMER.CREATE.{stream}",  # an ephemeral consumer
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable_of(intruder, 'ingest')}.onefold.ingest.>",
        f"$JS.API.CONSUMER.CREATE.{stream}.identity__ingest.onefold.ingest.>",  # another's name
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable_of(intruder, 'ingest')}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.identity__ingest",
        f"$JS.API.CONSUMER.DELETE.{stream}.identity__ingest",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.{EVENT}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.DELETE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        EVENT,  # a forged EventAccepted
    ):
        assert await client.refused_publish(subject), subject
    for subject in ("onefold.>", "onefold.ingest.>", ">", "_INBOX.>", "_INBOX.identity.>", "$JS.>"):
        assert await client.refused_subscribe(subject), subject

    assert await stored(nats_server, stream) == 3  # nothing forged was stored
    admin = await nats.connect(nats_server.url, **nats_server.connect_options(ADMIN))
    try:
        consumers = await admin.jetstream().consumers_info(stream)
    finally:
        await admin.close()
    assert consumers == []  # and no consumer was created


async def test_the_consuming_service_reads_its_upstream_through_its_own_consumer_only(
    nats_server: NatsServerProcess, bus: Connect
) -> None:
    await publish_events(nats_server, 3)
    client = await nats.connect(nats_server.url, **nats_server.connect_options("identity"))
    try:
        js = client.jetstream()
        await streams.ensure_consumer(
            js,
            stream=stream_of("ingest"),
            durable=durable_of("identity", "ingest"),
            filter_subjects=[streams.event_filter("ingest")],
        )
        subscription = await js.pull_subscribe_bind(
            durable_of("identity", "ingest"), stream=stream_of("ingest")
        )
        messages = await subscription.fetch(3, timeout=10)
        for message in messages:
            await message.ack_sync()
        assert [json.loads(m.data)["n"] for m in messages] == [0, 1, 2]
        info = await js.consumer_info(stream_of("ingest"), durable_of("identity", "ingest"))
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await client.close()
    identity = await bus("identity")
    assert await identity.refused_publish(f"$JS.API.CONSUMER.CREATE.{stream_of('ingest')}.segments__ingest")
    assert await identity.refused_publish(f"$JS.API.STREAM.MSG.GET.{stream_of('ingest')}")
    assert await identity.refused_publish(EVENT)


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_may_consume_exactly_the_upstreams_the_graph_declares(
    bus: Connect, service: str
) -> None:
    client = await bus(service)
    for upstream in SERVICES:
        durable = durable_of(service, upstream)
        create = f"$JS.API.CONSUMER.CREATE.{stream_of(upstream)}.{durable}.onefold.{upstream}.*.*.*"
        ack = f"$JS.ACK.{stream_of(upstream)}.{durable}.1.1.1.1.1"
        consumes = upstream in CONSUMES[service]
        assert await client.refused_publish(create) is not consumes, (service, upstream)
        assert await client.refused_publish(ack) is not consumes, (service, upstream)
        own = upstream == service
        assert await client.refused_publish(f"onefold.{upstream}.Kind.ws.0") is not own, (service, upstream)
        assert await client.refused_publish(f"$JS.API.STREAM.CREATE.{stream_of(upstream)}") is not own
        assert await client.refused_publish(f"onefold.dlq.{upstream}.x") is not own
    assert not await client.refused_publish(digest_subject_of(service))


async def test_operator_reads_chain_digests_and_nothing_else(
    nats_server: NatsServerProcess, bus: Connect
) -> None:
    operator = await bus(OPERATOR)
    for service in SERVICES:
        assert await operator.refused_publish(
            f"$JS.API.DIRECT.GET.{stream_of(service)}.{digest_subject_of(service)}"
        )
        assert await operator.refused_publish(
            f"$JS.API.DIRECT.GET.{stream_of(service)}.onefold.{service}.X.ws.0"
        )
        assert await operator.refused_publish(f"$JS.API.STREAM.MSG.GET.{stream_of(service)}")
        assert await operator.refused_publish(digest_subject_of(service))
    assert not await operator.refused_publish(f"$JS.API.STREAM.MSG.GET.{WITNESS_STREAM}")
    assert not await operator.refused_publish(f"$JS.API.CONSUMER.CREATE.{WITNESS_STREAM}")
    assert await operator.refused_publish(f"$JS.API.STREAM.CREATE.{WITNESS_STREAM}")
    assert await operator.refused_publish(f"$JS.API.STREAM.INFO.{DLQ_STREAM}")

    # A digest a service published to the witness stream (which it may create) is readable by the operator.
    consent = await nats.connect(nats_server.url, **nats_server.connect_options("consent"))
    try:
        js = consent.jetstream()
        await streams.ensure_witness_stream(js)
        await js.publish(digest_subject_of("consent"), b'{"position": 7}', stream=WITNESS_STREAM)
    finally:
        await consent.close()
    reader = await nats.connect(nats_server.url, **nats_server.connect_options(OPERATOR))
    try:
        last = await reader.jetstream().get_last_msg(WITNESS_STREAM, digest_subject_of("consent"))
    finally:
        await reader.close()
    assert json.loads(last.data or b"") == {"position": 7}


def test_the_graph_names_what_the_event_log_uses() -> None:
    assert SUBJECT_ROOT == streams.SUBJECT_ROOT and DLQ_STREAM == streams.DLQ_STREAM
    assert WITNESS_STREAM == streams.WITNESS_STREAM
    for service, upstream in itertools.product(SERVICES, SERVICES):
        assert stream_of(service) == streams.stream_name(service)
        assert durable_of(service, upstream) == streams.consumer_name(service, upstream)
        assert digest_subject_of(service) == streams.digest_subject(service)
        assert streams.dlq_subject(service, upstream).startswith(f"onefold.dlq.{service}.")
    # With worker processes, the consumers of their partition groups (onefold.eventlog.workers).
    for workers in (2, 3, 16):
        assert consumers_of("segments", "identity", workers, 16) == [
            streams.consumer_name("segments", "identity", group) for group in partition_groups(16, workers)
        ]
    granted = service_user("segments", workers=2).publish
    assert "$JS.API.CONSUMER.MSG.NEXT.ONEFOLD_IDENTITY.segments__identity__p1-3-5-7-9-11-13-15" in granted
    assert "$JS.API.CONSUMER.MSG.NEXT.ONEFOLD_IDENTITY.segments__identity" not in granted


def test_credentials_are_private_files_kept_across_restarts(nats_server: NatsServerProcess) -> None:
    directory = nats_server.credentials.directory
    assert stat.S_IMODE(nats_server.store_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    config = nats_server.store_dir / "nats-server.conf"
    for path in [config, nats_server.log_path, *(nats_server.credentials.password_file(u) for u in USERS)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    passwords = {user: nats_server.credentials.password(user) for user in USERS}
    assert len(set(passwords.values())) == len(USERS) and all(len(p) >= 40 for p in passwords.values())

    nats_server.stop()
    nats_server.start()
    assert {user: nats_server.credentials.password(user) for user in USERS} == passwords
    log = nats_server.log_path.read_text()
    assert not [user for user, password in passwords.items() if password in log]


def test_a_password_file_made_readable_by_others_is_made_private_again(tmp_path: Path) -> None:
    server = NatsServerProcess(tmp_path / "nats")
    server.credentials.ensure()
    loose = server.credentials.password_file("identity")
    loose.chmod(0o644)
    server.start()
    try:
        assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    finally:
        server.stop()


def test_an_unreadable_password_file_is_one_sentence_without_the_secret(tmp_path: Path) -> None:
    missing = tmp_path / "identity.password"
    with pytest.raises(ConfigError) as caught:
        connect_options(NatsSettings(user="identity", password_file=str(missing)))
    assert str(caught.value) == f"cannot read the NATS password file {missing}: No such file or directory"
    assert safe_url("nats://identity:s3cret@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert safe_url("tls://nats:4222") == "tls://nats:4222"
