"""Outbox relay, JetStream topology and chain digests, against a real nats-server and real databases."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventStore, NewEvent, schema
from onefold.eventlog.digests import DigestPublisher, check_digest, latest_published_digest
from onefold.eventlog.relay import EXPECTED_LAST_MSG_ID, MSG_ID, OutboxRelay, RelaySettings
from onefold.eventlog.streams import (
    DLQ_STREAM,
    StreamSettings,
    consumer_name,
    ensure_consumer,
    ensure_dlq_stream,
    ensure_service_stream,
    event_filter,
    event_subject,
    partition_from_subject,
    partition_of,
    stream_name,
)
from onefold.platform.config import load_settings
from onefold.platform.nats import NatsConnection

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def contacts(count: int, start: int = 0) -> list[NewEvent]:
    """Events with personal data (encrypted at rest), a trace context, some with a partition key."""
    return [
        NewEvent(
            f"contact:ws-1:p{i % 37}",
            events_pb2.ContactCaptured(profile_id=f"p{i % 37}", email=f"user{i}@example.com", name=f"N{i}"),
            subject=f"p{i % 37}",
            workspace="ws-1" if i % 3 else "ws.two",
            metadata={"traceparent": TRACEPARENT} | ({"partition_key": f"person-{i % 5}"} if i % 2 else {}),
        )
        for i in range(start, start + count)
    ]


async def stream_messages(js: JetStreamContext, service: str, subject: str | None = None) -> list[Msg]:
    """Everything in the service's stream (events only by default), via an ephemeral consumer."""
    info = await js.stream_info(stream_name(service))
    total = info.state.messages
    sub = await js.pull_subscribe(
        subject or f"onefold.{service}.>",
        stream=stream_name(service),
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE),  # read only; no ack limit
    )
    msgs: list[Msg] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=0.5)
            except TimeoutError:
                break
            msgs.extend(batch)
            if len(msgs) >= total:
                break
    finally:
        await sub.unsubscribe()
    return msgs


def positions(msgs: list[Msg]) -> list[int]:
    return [EventEnvelope.FromString(m.data).position for m in msgs if m.subject.count(".") == 4]


# -- topology -------------------------------------------------------------------------------------


def test_subjects_partitions_and_names_are_stable() -> None:
    # CRC-32, not hash(): the same key lands in the same partition in every process and release.
    assert partition_of("person-42", 16) == zlib.crc32(b"person-42") % 16
    assert all(partition_of(f"k{i}", 8) == partition_of(f"k{i}", 8) for i in range(100))
    assert {partition_of(f"k{i}", 8) for i in range(1000)} == set(range(8))
    subject = event_subject(
        "consent",
        event_type="onefold.consent.v1.ConsentGranted",
        workspace="brand.a b*",
        stream_id="consent:w:s1",
        metadata={},
        partitions=16,
    )
    assert subject == f"onefold.consent.ConsentGranted.brand_a_b_.{partition_of('consent:w:s1', 16)}"
    keyed = event_subject(
        "consent",
        event_type="x.Y",
        workspace="",
        stream_id="s",
        metadata={"partition_key": "pk"},
        partitions=4,
    )
    assert keyed == f"onefold.consent.Y._.{partition_of('pk', 4)}"
    assert partition_from_subject(keyed) == partition_of("pk", 4)
    assert stream_name("journeys") == "ONEFOLD_JOURNEYS"
    assert consumer_name("segments", "ingest", [3, 1, 2]) == "segments__ingest__p1-2-3"
    assert event_filter("ingest") == "onefold.ingest.*.*.*"
    assert event_filter("ingest", 3) == "onefold.ingest.*.*.3"
    configured = load_settings(
        "ingest", env={"ONEFOLD_EVENTLOG__PARTITIONS": "4", "ONEFOLD_EVENTLOG__BUS_REPLICAS": "3"}
    )
    assert StreamSettings.from_config(configured.eventlog) == StreamSettings(partitions=4, replicas=3)


async def test_streams_and_consumers_are_created_or_updated_idempotently(nats: NatsConnection) -> None:
    js = (await nats.wait_connected()).jetstream()
    first = await ensure_service_stream(js, "ingest", StreamSettings(max_age_seconds=3600))
    again = await ensure_service_stream(js, "ingest", StreamSettings(max_age_seconds=3600))
    assert first.config.subjects == again.config.subjects == ["onefold.ingest.>"]
    assert again.config.storage == api.StorageType.FILE and again.config.duplicate_window == 120
    changed = await ensure_service_stream(
        js, "ingest", StreamSettings(max_age_seconds=7200, duplicate_window_seconds=30)
    )
    assert changed.config.max_age == 7200 and changed.config.duplicate_window == 30
    dlq = await ensure_dlq_stream(js)
    assert dlq.config.name == DLQ_STREAM and dlq.config.subjects == ["onefold.dlq.>"]
    for _ in range(2):
        consumer = await ensure_consumer(
            js, stream="ONEFOLD_INGEST", durable="segments__ingest", filter_subjects=[event_filter("ingest")]
        )
    assert consumer.config.max_deliver == -1 and consumer.config.ack_wait == 30
    # A changed partition assignment updates the filter in place; the consumer keeps its place.
    moved = await ensure_consumer(
        js,
        stream="ONEFOLD_INGEST",
        durable="segments__ingest",
        filter_subjects=[event_filter("ingest", 1), event_filter("ingest", 2)],
    )
    assert moved.config.filter_subjects == ["onefold.ingest.*.*.1", "onefold.ingest.*.*.2"]


# -- relay ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic-batches", "pipelined"])
async def test_relay_publishes_the_log_in_order_with_event_ids_as_message_ids(
    nats: NatsConnection, database_url: str, open_store: Callable[..., EventStore], atomic: bool
) -> None:
    store = open_store("ingest", database_url)
    recorded = store.append(contacts(1000)) + store.append(contacts(1500, start=1000))
    relay = OutboxRelay(
        store, nats, service="ingest", settings=RelaySettings(atomic_batches=atomic, batch_size=1000)
    )
    assert await relay.lag() == 2500

    assert await relay.publish_available() == 2500

    assert store.published_position("ONEFOLD_INGEST") == 2500 and await relay.lag() == 0
    msgs = await stream_messages((await nats.wait_connected()).jetstream(), "ingest")
    assert len(msgs) == 2500
    for msg, event in zip(msgs, recorded, strict=True):
        envelope = EventEnvelope.FromString(msg.data)
        assert envelope.position == event.position and envelope.event_id == event.event_id
        assert msg.headers is not None and msg.headers[MSG_ID] == event.event_id
        assert msg.headers["traceparent"] == TRACEPARENT  # one trace spans log -> NATS -> consumer
        # On the bus the payload is exactly the stored one: personal fields sealed.
        assert envelope.payload == event.payload and envelope.hash == event.hash
        assert b"@example.com" not in msg.data
        key = event.metadata.get("partition_key") or event.stream_id
        assert msg.subject == event_subject(
            "ingest",
            event_type=event.type,
            workspace=event.workspace,
            stream_id=event.stream_id,
            metadata=event.metadata,
            partitions=16,
        )
        assert partition_from_subject(msg.subject) == partition_of(key, 16)
    if not atomic:
        # The order guard: every message but a batch's first names its predecessor.
        assert msgs[1].headers is not None and msgs[1].headers[EXPECTED_LAST_MSG_ID] == recorded[0].event_id


class CrashesBeforeRecording:
    """The store, but the process 'dies' when the relay is about to record a published position."""

    def __init__(self, store: EventStore, crash_at_call: int = 1) -> None:
        self._store = store
        self._calls = 0
        self._crash_at_call = crash_at_call

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def record_published(self, stream: str, position: int) -> None:
        self._calls += 1
        if self._calls >= self._crash_at_call:
            raise SystemError("crashed after publishing, before recording the position")
        self._store.record_published(stream, position)


@pytest.mark.parametrize("crash_at_call", [1, 2])
async def test_crash_between_publish_and_record_republishes_without_duplicates(
    nats: NatsConnection, open_store: Callable[..., EventStore], crash_at_call: int
) -> None:
    store = open_store()
    store.append(contacts(2500))
    crashing = OutboxRelay(CrashesBeforeRecording(store, crash_at_call), nats, service="ingest")  # type: ignore[arg-type]
    with pytest.raises(SystemError):
        await crashing.publish_available()
    recorded_before_restart = store.published_position("ONEFOLD_INGEST")
    assert recorded_before_restart == (crash_at_call - 1) * 1000

    restarted = OutboxRelay(store, nats, service="ingest")
    assert await restarted.publish_available() == 2500 - recorded_before_restart

    # The batch published before the crash was recognised as already there (dedupe by event id).
    assert restarted.stats.duplicates == 1000
    msgs = await stream_messages((await nats.wait_connected()).jetstream(), "ingest")
    assert positions(msgs) == list(range(1, 2501))
    assert store.published_position("ONEFOLD_INGEST") == 2500


async def test_relay_wakes_on_append_and_reports_lag(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    store = open_store()
    # A poll interval far longer than the test: only the append notification can wake the relay.
    relay = OutboxRelay(store, nats, service="ingest", settings=RelaySettings(poll_interval_seconds=60))
    relay.start()
    try:
        async with asyncio.timeout(5):
            while relay.published_position is None:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(store.append, contacts(10))
        # Within 5 s although the next poll is 60 s away: the append's notification woke the relay.
        async with asyncio.timeout(5):
            while relay.published_position != 10:
                await asyncio.sleep(0.005)
        assert await relay.lag() == 0
    finally:
        await relay.stop()


# -- chain digests --------------------------------------------------------------------------------


async def test_chain_digest_on_nats_exposes_a_rewritten_log(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    store = open_store()
    store.append(contacts(50))
    publisher = DigestPublisher(store, nats, service="ingest")
    published = await publisher.publish_now()
    assert published is not None and published.position == 50
    assert await publisher.publish_now() is None  # head unchanged: nothing new to say
    js = (await nats.wait_connected()).jetstream()
    received = await latest_published_digest(js, "ingest")
    assert received is not None and received.digest == store.head_digest() and received.service == "ingest"
    assert check_digest(store, received).ok
    assert store.recorded_digests() == [published]

    # The relay's events and the digests share the stream; subscribers' filters never see digests.
    relay = OutboxRelay(store, nats, service="ingest", settings=RelaySettings(atomic_batches=False))
    await relay.publish_available()
    assert len(await stream_messages(js, "ingest", event_filter("ingest"))) == 50

    # Someone with database access removes the newest events: the chain alone still verifies...
    with store.engine.begin() as conn:
        conn.execute(sa.delete(schema.events).where(schema.events.c.position > 45))
    assert store.verify().ok
    # ...but not against the copy of the digest kept on NATS.
    result = check_digest(store, received)
    assert not result.ok and result.first_bad_position == 46
