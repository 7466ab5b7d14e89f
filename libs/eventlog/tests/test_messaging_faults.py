"""Fault tests: nats-server SIGKILLed mid-publish and mid-consume, a subscriber process SIGKILLed.

After each fault: every event is in the stream exactly once and in log order, and every event's
effect is applied downstream exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext, api
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventStore, NewEvent, RecordedEvent
from onefold.eventlog.relay import MSG_ID, OutboxRelay, RelaySettings
from onefold.eventlog.streams import event_filter, stream_name
from onefold.eventlog.subscriber import Subscriber, SubscriberSettings
from onefold.platform.bus_permissions import ADMIN
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess

pytestmark = pytest.mark.slow

effects_metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("position", sa.BigInteger, nullable=False),
)


def apply_effects(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
    conn.execute(sa.insert(effects), [{"position": e.position} for e in envelopes])


def applied_positions(store: EventStore) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(effects.c.position).order_by(effects.c.id)).scalars())


def counters(count: int) -> list[NewEvent]:
    return [
        NewEvent(f"counter:{i % 13}", events_pb2.CounterChanged(counter=f"c{i % 13}", delta=1))
        for i in range(count)
    ]


async def stream_positions(js: JetStreamContext, service: str) -> tuple[list[int], list[str]]:
    """Positions and message ids of the service's stream, in stream order."""
    total = (await js.stream_info(stream_name(service))).state.messages
    sub = await js.pull_subscribe(
        event_filter(service),
        stream=stream_name(service),
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE),
    )
    found: list[int] = []
    ids: list[str] = []
    try:
        while len(found) < total:
            for msg in await sub.fetch(1000, timeout=2):
                found.append(EventEnvelope.FromString(msg.data).position)
                ids.append((msg.headers or {}).get(MSG_ID, ""))
    finally:
        await sub.unsubscribe()
    return found, ids


async def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Until `condition` holds; `seconds` bounds a hang, it is no timing claim."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds}s waiting until {what}") from None


class KillsNatsWhileEncoding:
    """The store, but nats-server is SIGKILLed while the relay encodes the event at `position`.

    The relay encodes the next batch while the current one is published and acknowledged, so a kill
    early in the next batch lands with the current one in flight.
    """

    def __init__(self, store: EventStore, server: NatsServerProcess, position: int) -> None:
        self._store = store
        self._server = server
        self._position = position
        self.killed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def to_envelope(self, event: RecordedEvent, *, decrypt: bool = True) -> EventEnvelope:
        if event.position == self._position and not self.killed:
            self.killed = True
            self._server.kill()
        return self._store.to_envelope(event, decrypt=decrypt)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic-batches", "pipelined"])
async def test_nats_killed_mid_publish_loses_nothing_and_duplicates_nothing(
    nats: NatsConnection, nats_server: NatsServerProcess, open_store: Callable[..., EventStore], atomic: bool
) -> None:
    store = open_store("ingest", extra=effects_metadata)
    store.append(counters(3000))
    killer = KillsNatsWhileEncoding(store, nats_server, position=2010)
    settings = RelaySettings(
        batch_size=1000, atomic_batches=atomic, ack_timeout_seconds=1.0, backoff_initial_seconds=0.05
    )
    relay = OutboxRelay(killer, nats, service="ingest", settings=settings)  # type: ignore[arg-type]
    relay.start()
    try:
        await wait_until(lambda: killer.killed, 60, "nats-server was killed mid-publish")
        # The service keeps appending while NATS is down; the relay backs off.
        await asyncio.to_thread(store.append, counters(1000))
        await wait_until(lambda: relay.stats.failures >= 1, 60, "the relay backed off")
        nats_server.start()
        await wait_until(lambda: relay.published_position == 4000, 60, "the relay caught up")
        assert await relay.lag() == 0
    finally:
        await relay.stop()
    assert relay.stats.failures >= 1

    found, ids = await stream_positions((await nats.wait_connected()).jetstream(), "ingest")
    assert found == list(range(1, 4001))  # all there, once each, in log order
    assert len(set(ids)) == 4000


async def test_nats_lost_between_batches_shows_as_an_outage_and_nothing_is_lost(
    nats: NatsConnection, nats_server: NatsServerProcess, open_store: Callable[..., EventStore]
) -> None:
    """Nothing in flight when NATS goes: the relay waits for the connection, and says so."""
    store = open_store("ingest", extra=effects_metadata)
    store.append(counters(10))
    relay = OutboxRelay(store, nats, service="ingest", settings=RelaySettings(backoff_initial_seconds=0.05))
    relay.start()
    try:
        await wait_until(lambda: relay.published_position == 10, 60, "the relay published")
        nats_server.kill()
        await wait_until(lambda: not nats.connected.is_set(), 60, "the client saw the connection go")
        await asyncio.to_thread(store.append, counters(5))
        await wait_until(lambda: relay.stats.failures >= 1, 60, "the relay reported the outage")
        assert "NATS connection lost" in relay.stats.last_error
        nats_server.start()
        await wait_until(lambda: relay.published_position == 15, 60, "the relay caught up")
    finally:
        await relay.stop()
    found, _ids = await stream_positions((await nats.wait_connected()).jetstream(), "ingest")
    assert found == list(range(1, 16))


async def test_nats_killed_mid_consume_applies_every_event_exactly_once(
    nats: NatsConnection, nats_server: NatsServerProcess, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    upstream.append(counters(3000))
    relay = OutboxRelay(
        upstream, nats, service="ingest", settings=RelaySettings(backoff_initial_seconds=0.05)
    )
    await relay.publish_available()
    downstream = open_store("segments", extra=effects_metadata)
    killed = False

    def handler(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        nonlocal killed
        apply_effects(conn, envelopes)
        if not killed and envelopes[-1].position >= 1000:
            # Dies after this batch's writes, before its commit and acks; later deliveries in flight.
            killed = True
            nats_server.kill()

    settings = SubscriberSettings(batch_size=50, fetch_timeout_seconds=0.3, error_backoff_seconds=0.05)
    sub = Subscriber(
        downstream, nats, service="segments", upstream="ingest", handler=handler, settings=settings
    )
    relay.start()  # also publishes what is appended during the outage
    sub.start()
    try:
        await wait_until(lambda: killed, 20, "nats-server was killed mid-consume")
        await asyncio.to_thread(upstream.append, counters(500))
        await asyncio.sleep(0.3)
        nats_server.start()
        await wait_until(
            lambda: downstream.tracking_position("ingest") == 3500, 40, "the subscriber caught up"
        )
    finally:
        await sub.stop()
        await relay.stop()
    assert applied_positions(downstream) == list(range(1, 3501))
    lag = await sub.lag()
    assert lag.pending == 0 and lag.tracking == {"ingest": 3500}


SUBSCRIBER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys, time
    import sqlalchemy as sa
    from onefold.contracts.eventlog.testing.v1 import events_pb2
    from onefold.eventlog import EventRegistry, EventStore
    from onefold.eventlog.subscriber import Subscriber, SubscriberSettings
    from onefold.platform.config import NatsSettings
    from onefold.platform.nats import NatsConnection

    database_url, nats_settings = sys.argv[1], NatsSettings.model_validate_json(sys.argv[2])
    effects = sa.Table("effects", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("position", sa.BigInteger, nullable=False))

    def handler(conn, envelopes):
        conn.execute(sa.insert(effects), [{"position": e.position} for e in envelopes])
        time.sleep(0.002)  # some work per batch: the kill lands mid-stream

    async def main():
        registry = EventRegistry()
        registry.register(events_pb2.CounterChanged)
        store = EventStore(database_url, service="segments", registry=registry)
        nats = NatsConnection(nats_settings, "segments")
        nats.start()
        settings = SubscriberSettings(batch_size=25, fetch_timeout_seconds=0.3)
        sub = Subscriber(store, nats, service="segments", upstream="ingest", handler=handler, settings=settings)
        await sub.run()

    asyncio.run(main())
    """
)


async def test_subscriber_process_killed_mid_consume_applies_every_event_exactly_once(
    nats: NatsConnection,
    nats_server: NatsServerProcess,
    open_store: Callable[..., EventStore],
    tmp_path: Path,
) -> None:
    upstream = open_store("ingest", extra=effects_metadata)
    upstream.append(counters(2000))
    await OutboxRelay(upstream, nats, service="ingest").publish_available()
    downstream = open_store("segments", extra=effects_metadata)
    database_url = str(downstream.engine.url)
    # admin: this test's segments consumes ingest, which the bus's consumption graph does not declare.
    subscriber_nats = nats_server.client_settings(ADMIN, reconnect_wait_seconds=0.1).model_dump_json()

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER_PROCESS, database_url, subscriber_nats],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "subscriber.log", "ab"),
        )

    first = spawn()
    try:
        await wait_until(
            lambda: downstream.tracking_position("ingest") >= 400, 30, "the subscriber is under way"
        )
        os.kill(first.pid, signal.SIGKILL)  # mid-batch, between commits and acks, as it comes
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    stopped_at = downstream.tracking_position("ingest")
    assert stopped_at < 2000, "the subscriber finished before it could be killed; make the handler slower"

    second = spawn()
    try:
        await wait_until(
            lambda: downstream.tracking_position("ingest") == 2000, 30, "the restarted subscriber caught up"
        )
    finally:
        second.terminate()
        second.wait(10)
    assert applied_positions(downstream) == list(range(1, 2001))
