"""Subscribers: a durable JetStream pull consumer per (service, upstream[, partitions]).

Exactly-once *effect* from at-least-once delivery:

- a batch is handled inside ONE store transaction together with the tracking row (upstream key →
  last position); the messages are acknowledged only after that commit;
- an event whose position is at or below the tracking position was already applied (a redelivery,
  or a re-publish by the upstream relay) and is acknowledged without calling the handler.

"Skip what is at or below the tracking position" is only right if events arrive in log order. The
relay keeps the stream in order; the consumer can still deliver out of order when deliveries were
lost (a crashed subscriber, a dropped connection, a restarted server): the server then holds those
messages until `ack_wait` expires while it delivers newer ones. So whenever that may have happened
(start, reconnect, errors) the subscriber checks the consumer and, if messages it does not hold are
pending, *rewinds*: it re-creates the consumer at the acknowledgement floor, so delivery restarts in
order from the first unacknowledged event (what was applied is skipped).

Chain links: an event is applied only if it is the one its producer recorded. Its `hash` must be
the hash recomputed from the envelope as received (checked before anything is decrypted), and for
a subscriber of all partitions its `prev_hash` must be the hash of the last event applied when it
directly follows it. A message that fails either is refused: not applied, the tracking row not
moved, acknowledged (a redelivery would fail the same way), copied to the dead-letter stream with
the reason, and logged as an error. So a message injected on the bus, or a copy of an event whose
producer's log was rewritten, never reaches a handler.

Poison events: when a batch fails, its events are retried one by one (each with its own
transaction) to isolate the failing one, with backoff, up to `max_deliver` attempts. Then the event
goes to the dead-letter stream with its error, the tracking row moves past it (in its own
transaction) and processing continues. Errors of the store itself (database down) are not poison:
the batch is retried after a backoff and never dead-lettered.

Run one Subscriber per durable consumer at a time; scale out by giving replicas disjoint partitions
(workers.py). What a subscriber has applied of a partition is the larger of its partition's tracking
row and the row of the whole stream, whichever way it ran before: a service going from one worker to
several (or back) neither applies an event twice nor skips one. A partitioned subscriber raises its
partitions' rows to the whole stream's row before its first fetch; a subscriber of every partition
skips an event its partition's row already covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.eventlog.chain import envelope_hash
from onefold.eventlog.cipher import DataKeyCipher
from onefold.eventlog.keyaccess import KeySource, KeysUnavailable, Unsealer, is_sealed
from onefold.eventlog.models import ChainDigest
from onefold.eventlog.projections import ProjectionBehind
from onefold.eventlog.streams import (
    StreamSettings,
    consumer_name,
    dlq_subject,
    ensure_consumer,
    ensure_dlq_stream,
    event_filter,
    partition_from_subject,
    stream_name,
)
from onefold.eventlog.writer import Writer
from onefold.platform.nats import NatsConnection
from onefold.platform.telemetry import extract_context, get_logger, tracer

log = get_logger("onefold.eventlog.subscriber")
# JetStream's error code for "stream not found".
STREAM_NOT_FOUND = 10059

Handler = Callable[[Connection, Sequence[EventEnvelope]], None]

# Dead-letter headers: what failed, where it came from, and who gave up on it.
DLQ_ERROR = "Onefold-Error"
DLQ_UPSTREAM = "Onefold-Upstream"
DLQ_POSITION = "Onefold-Position"
DLQ_SERVICE = "Onefold-Service"
DLQ_EVENT_ID = "Onefold-Event-Id"
DLQ_SUBJECT = "Onefold-Subject"
DLQ_ATTEMPTS = "Onefold-Attempts"


class TrackingStore(Protocol):
    """What a subscriber needs of an EventStore."""

    def transaction(self) -> AbstractContextManager[Connection]: ...
    def tracking_position(self, upstream: str, *, conn: Connection | None = None) -> int: ...
    def tracked_head(self, upstream: str, *, conn: Connection | None = None) -> ChainDigest: ...
    def record_tracking(
        self,
        conn: Connection,
        upstream: str,
        position: int,
        event_id: str = "",
        event_hash: bytes | None = None,
    ) -> None: ...
    def tracked_heads(self) -> dict[str, ChainDigest]: ...


@dataclass(frozen=True)
class SubscriberSettings:
    batch_size: int = 256
    fetch_timeout_seconds: float = 1.0  # an idle fetch returns after this; a timeout is normal
    max_deliver: int = 5  # attempts at one event before it is dead-lettered
    ack_wait_seconds: float = 30.0  # longer than a batch takes, retries included
    retry_backoff_seconds: float = 0.05  # first retry of a failing event; doubles per attempt
    error_backoff_seconds: float = 0.2  # NATS or database trouble; doubles up to the max
    error_backoff_max_seconds: float = 5.0


@dataclass(frozen=True)
class SubscriberLag:
    pending: int  # in the stream, not yet delivered to this consumer
    ack_pending: int  # delivered, not yet acknowledged
    tracking: dict[str, int]  # tracking key -> last applied position

    @property
    def total(self) -> int:
        return self.pending + self.ack_pending


@dataclass
class SubscriberStats:
    handled: int = 0  # events passed to the handler and committed
    skipped: int = 0  # redeliveries at or below the tracking position
    dead_lettered: int = 0
    refused: int = 0  # failed their chain-link check: never applied
    rewinds: int = 0
    batch_failures: int = 0
    last_error: str = ""
    started_at: float = field(default_factory=time.monotonic)


class HandlerFailed(Exception):
    """The handler raised: the event may be poison (unlike a failure of the store itself)."""


@dataclass
class _Delivery:
    msg: Msg
    envelope: EventEnvelope
    tracking_key: str
    applied_in_partition: int = 0  # what the partition's own row says was applied (see the module)
    # The envelope with its personal data opened (before the write transaction), or why it could not be.
    opened: EventEnvelope | None = None
    unopened: Exception | None = None

    def for_handler(self) -> EventEnvelope:
        if self.opened is None:
            raise self.unopened or KeysUnavailable("the event was not opened")
        return self.opened


@dataclass(frozen=True)
class _Refusal:
    delivery: _Delivery
    reason: str


class Subscriber:
    def __init__(
        self,
        store: TrackingStore,
        nats: NatsConnection,
        *,
        service: str,
        upstream: str,
        handler: Handler,
        partitions: Sequence[int] | None = None,
        event_types: Sequence[str] | None = None,
        name: str | None = None,
        settings: SubscriberSettings | None = None,
        stream_settings: StreamSettings | None = None,
        keys: KeySource | None = None,
        writer: Writer | None = None,
        catch_up: Callable[[], object] | None = None,
    ) -> None:
        """`service` consumes the events published by `upstream`.

        `partitions`: only these partitions (None = all). `event_types`: only events of these types
        (protobuf full names; None = all), filtered by subject on the server: the tracking row then
        moves over the positions of the events left out, and the link check applies where two
        delivered events are adjacent in the upstream log. `name` distinguishes two subscribers of the
        same service to the same upstream (each has its own consumer and tracking rows). `keys`: the
        upstream's subject keys, to open the sealed personal data of its events before the handler
        sees them (keyaccess); without it a sealed event fails its batch. `writer`: the service's
        writer thread, where every batch is applied (without it, a worker thread of its own).
        `catch_up`: brings the service's read models up to its log when a handler finds them behind
        (`ProjectionBehind`); the batch is then applied again — such a batch is never dead-lettered.
        """
        self.store = store
        self.nats = nats
        self.service = service
        self.upstream = upstream
        self.handler = handler
        self._write: Callable[..., Awaitable[Any]] = writer.run if writer is not None else asyncio.to_thread
        self._catch_up = catch_up
        self.partitions = sorted(set(partitions)) if partitions is not None else None
        self.settings = settings or SubscriberSettings()
        self.stream_settings = stream_settings or StreamSettings()
        self.label = name or upstream
        self.stream = stream_name(upstream)
        self.durable = consumer_name(service, self.label, self.partitions)
        self.event_types = sorted(set(event_types)) if event_types is not None else None
        # The server leaves out what the handler would ignore: never fetched, checked or opened.
        self.filter_subjects = [
            event_filter(upstream, partition, event_type)
            for partition in (self.partitions if self.partitions is not None else [None])
            for event_type in (self.event_types if self.event_types is not None else [None])
        ]
        self.stats = SubscriberStats()
        self._unsealer = Unsealer(keys) if keys is not None else None
        self._js: JetStreamContext | None = None
        self._client: Client | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._reconnects_seen = -1
        self._suspect = True  # check for lost deliveries before the first fetch
        self._tracking_settled = False  # the whole-stream and partition rows reconciled (see the module)
        self._partition_rows: dict[int, int] = {}  # a subscriber of all partitions: rows left by workers
        self._stopping = False
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._stop_event: asyncio.Event | None = None

    # -- tracking keys ----------------------------------------------------------------------------

    def tracking_key(self, partition: int | None) -> str:
        """One tracking row per subscriber, or one per partition for a partitioned subscriber.

        Per-partition rows let partitions move between replicas without losing their place.
        """
        if self.partitions is None or partition is None:
            return self.label
        return f"{self.label}.p{partition}"

    def tracking_keys(self) -> list[str]:
        if self.partitions is None:
            return [self.label]
        return [self.tracking_key(p) for p in self.partitions]

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._suspect = True  # deliveries stranded by an earlier stop must be rewound, not skipped
        self._stop_event = asyncio.Event()
        self._task = asyncio.create_task(self.run(), name=f"subscriber-{self.durable}")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Let the batch in hand commit and be acknowledged, then stop; an idle fetch is cancelled."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        task, self._task = self._task, None
        if task is not None:
            if not self._busy:
                task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_seconds)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def run(self) -> None:
        delay = self.settings.error_backoff_seconds
        while not self._stopping:
            try:
                msgs = await self._fetch()
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except NotFoundError as exc:
                self._suspect = True
                if exc.err_code == STREAM_NOT_FOUND:
                    # The upstream creates its stream when it starts; on a first start it may come up
                    # after us. Nothing is wrong: wait for it without a warning.
                    log.info("subscriber.waiting_for_upstream", consumer=self.durable, stream=self.stream)
                else:
                    self._trouble("subscriber.fetch_failed", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.settings.error_backoff_max_seconds)
                continue
            except Exception as exc:
                self._suspect = True  # e.g. the consumer was deleted: reconcile re-creates it
                self._trouble("subscriber.fetch_failed", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.settings.error_backoff_max_seconds)
                continue
            self._busy = True
            try:
                await self._process(msgs)
                delay = self.settings.error_backoff_seconds
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Nothing of this batch past the failure was acknowledged; rewind and try again.
                self._suspect = True
                self._trouble("subscriber.batch_failed", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.settings.error_backoff_max_seconds)
            finally:
                self._busy = False

    async def poll_once(self) -> int:
        """Fetch one batch and handle it; returns how many messages came (0 when none did)."""
        try:
            msgs = await self._fetch()
        except (nats.errors.TimeoutError, TimeoutError):
            return 0
        await self._process(msgs)
        return len(msgs)

    async def run_until_idle(self, idle_fetches: int = 1) -> None:
        """Consume until a fetch finds nothing (`idle_fetches` times in a row): for tests and tools."""
        idle = 0
        while idle < idle_fetches:
            idle = idle + 1 if await self.poll_once() == 0 else 0

    # -- observability ----------------------------------------------------------------------------

    async def lag(self) -> SubscriberLag:
        js = await self._jetstream()
        info = await js.consumer_info(self.stream, self.durable)
        tracking = await asyncio.to_thread(
            lambda: {key: self.store.tracking_position(key) for key in self.tracking_keys()}
        )
        return SubscriberLag(
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            tracking=tracking,
        )

    # -- fetching ---------------------------------------------------------------------------------

    async def _jetstream(self) -> JetStreamContext:
        client = await self.nats.wait_connected()
        if self._js is None or self._client is not client:
            self._js = client.jetstream()
            self._client = client
            self._sub = None
            self._suspect = True
        return self._js

    async def _fetch(self) -> list[Msg]:
        js = await self._jetstream()
        assert self._client is not None
        reconnects = int(self._client.stats.get("reconnects", 0))
        if reconnects != self._reconnects_seen:
            # Deliveries (or our acks) may have been lost with the old connection.
            self._reconnects_seen = reconnects
            self._suspect = True
        if not self._tracking_settled:
            await self._write(self._settle_tracking)
            self._tracking_settled = True
        if self._sub is None:
            await ensure_dlq_stream(js, self.stream_settings)
            await self._ensure_consumer(js)
            self._sub = await js.pull_subscribe_bind(self.durable, stream=self.stream)
        if self._suspect:
            await self._reconcile(js)
        assert self._sub is not None
        return await self._sub.fetch(self.settings.batch_size, timeout=self.settings.fetch_timeout_seconds)

    def _settle_tracking(self) -> None:
        """Take over what was applied while the service ran with another number of workers."""
        prefix = f"{self.label}.p"
        if self.partitions is None:
            rows = self.store.tracked_heads()
            whole = rows.get(self.label, ChainDigest(0, b"")).position
            self._partition_rows = {
                int(key[len(prefix) :]): head.position
                for key, head in rows.items()
                if key.startswith(prefix) and key[len(prefix) :].isdigit() and head.position > whole
            }
            return
        with self.store.transaction() as conn:
            whole_stream = self.store.tracked_head(self.label, conn=conn)
            for key in self.tracking_keys():
                if self.store.tracking_position(key, conn=conn) < whole_stream.position:
                    self.store.record_tracking(conn, key, whole_stream.position, "", whole_stream.hash)

    async def _ensure_consumer(self, js: JetStreamContext, start_sequence: int | None = None) -> None:
        await ensure_consumer(
            js,
            stream=self.stream,
            durable=self.durable,
            filter_subjects=self.filter_subjects,
            ack_wait_seconds=self.settings.ack_wait_seconds,
            max_ack_pending=max(1000, self.settings.batch_size * 4),
            replicas=self.stream_settings.replicas,
            start_sequence=start_sequence,
        )

    async def _reconcile(self, js: JetStreamContext) -> None:
        """Rewind the consumer when it holds deliveries we never saw or never acknowledged."""
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            await self._ensure_consumer(js)
            info = await js.consumer_info(self.stream, self.durable)
        if info.num_ack_pending:
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            log.info(
                "subscriber.rewind",
                consumer=self.durable,
                unacknowledged=info.num_ack_pending,
                from_stream_sequence=floor + 1,
            )
            if self._sub is not None:
                # Late deliveries of the old consumer must not reach the new one's fetches.
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
                self._sub = None
            # Shielded: a stop() in between must not leave the consumer deleted (its successor
            # would start over from the first event; correct, since all is skipped, but slow).
            await asyncio.shield(self._recreate_consumer(js, floor + 1))
            self._sub = await js.pull_subscribe_bind(self.durable, stream=self.stream)
            self.stats.rewinds += 1
        self._suspect = False

    async def _recreate_consumer(self, js: JetStreamContext, start_sequence: int) -> None:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self.stream, self.durable)
        await self._ensure_consumer(js, start_sequence=start_sequence)

    # -- processing -------------------------------------------------------------------------------

    async def _process(self, msgs: Sequence[Msg]) -> None:
        deliveries: list[_Delivery] = []
        for msg in msgs:
            try:
                envelope = EventEnvelope.FromString(msg.data)
            except DecodeError as exc:
                # Not an event at all: nothing to retry, nothing to track.
                await self._dead_letter(msg, None, f"undecodable EventEnvelope: {exc}", attempts=1)
                await msg.ack()
                continue
            if envelope_hash(envelope) != envelope.hash:
                await self._refuse(
                    self._delivery(msg, envelope),
                    f"event {envelope.position} does not match its hash: altered or forged",
                )
                continue
            deliveries.append(self._delivery(msg, envelope))
        if not deliveries:
            return
        ciphers = await self._ciphers(deliveries)
        # Opened outside the write transaction: the log's write lock (which every worker process of
        # the service takes in turn) is held for the handler only.
        await asyncio.to_thread(self._open, deliveries, ciphers)
        # The batch's span continues the trace of its first event (gRPC -> log -> NATS -> here);
        # the handler runs inside it (to_thread copies the context).
        first = deliveries[0].envelope
        with tracer("onefold.eventlog").start_as_current_span(
            "eventlog.subscriber.batch",
            context=extract_context(deliveries[0].msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "onefold.consumer": self.durable,
                "onefold.upstream": self.upstream,
                "onefold.events": len(deliveries),
                "onefold.first_position": first.position,
            },
        ):
            await self._handle(deliveries)

    async def _ciphers(self, deliveries: Sequence[_Delivery]) -> dict[str, DataKeyCipher | None]:
        """The upstream's keys for the sealed events of a batch (fetched before the transaction, so
        no database transaction waits on a network call)."""
        envelopes = [delivery.envelope for delivery in deliveries]
        if self._unsealer is None:
            if any(is_sealed(envelope) for envelope in envelopes):
                raise KeysUnavailable(
                    f"events from {self.upstream} carry sealed personal data and this subscriber "
                    "has no key source for them"
                )
            return {}
        return await self._unsealer.ciphers_for(envelopes)

    async def _handle(self, deliveries: Sequence[_Delivery]) -> None:
        try:
            try:
                refusals = await self._write(self._apply, deliveries)
            except ProjectionBehind as behind:
                if self._catch_up is None:
                    raise
                log.info("subscriber.read_model_behind", consumer=self.durable, projection=str(behind))
                await self._write(self._catch_up)
                refusals = await self._write(self._apply, deliveries)
        except HandlerFailed as exc:
            self.stats.batch_failures += 1
            log.warning(
                "subscriber.batch_handler_failed",
                consumer=self.durable,
                events=len(deliveries),
                error=str(exc.__cause__ or exc),
            )
            await self._apply_one_by_one(deliveries)
            return
        refused = {id(refusal.delivery): refusal for refusal in refusals}
        for delivery in deliveries:
            refusal = refused.get(id(delivery))
            if refusal is not None:
                await self._refuse(delivery, refusal.reason)
            else:
                await delivery.msg.ack()

    def _delivery(self, msg: Msg, envelope: EventEnvelope | None = None) -> _Delivery:
        if envelope is None:
            envelope = EventEnvelope.FromString(msg.data)
        partition = partition_from_subject(msg.subject)
        applied = self._partition_rows.get(partition, 0) if partition is not None else 0
        return _Delivery(msg, envelope, self.tracking_key(partition), applied)

    def _apply(self, deliveries: Sequence[_Delivery]) -> list[_Refusal]:
        """One transaction: the handler's writes and the tracking rows (worker thread).

        Returns the deliveries refused because they do not link to the event applied before them.
        """
        refusals: list[_Refusal] = []
        with self.store.transaction() as conn:
            tracked: dict[str, ChainDigest] = {}
            fresh: list[_Delivery] = []
            for delivery in deliveries:
                key = delivery.tracking_key
                if key not in tracked:
                    tracked[key] = self.store.tracked_head(key, conn=conn)
                envelope = delivery.envelope
                last = tracked[key]
                if envelope.position <= max(last.position, delivery.applied_in_partition):
                    continue
                if self._breaks_link(envelope, last):
                    refusals.append(
                        _Refusal(
                            delivery, f"event {envelope.position} does not link to event {last.position}"
                        )
                    )
                    continue
                fresh.append(delivery)
                tracked[key] = ChainDigest(envelope.position, envelope.hash)
            skipped = len(deliveries) - len(fresh) - len(refusals)
            if fresh:
                try:
                    self.handler(conn, [delivery.for_handler() for delivery in fresh])
                except ProjectionBehind:
                    raise  # not the events' fault: _handle catches the read model up and retries
                except Exception as exc:
                    raise HandlerFailed(str(exc) or type(exc).__name__) from exc
                last_per_key: dict[str, _Delivery] = {}
                for delivery in fresh:
                    last_per_key[delivery.tracking_key] = delivery
                for key, newest in last_per_key.items():
                    self.store.record_tracking(
                        conn, key, newest.envelope.position, newest.envelope.event_id, newest.envelope.hash
                    )
        self.stats.handled += len(fresh)
        self.stats.skipped += skipped
        return refusals

    def _breaks_link(self, envelope: EventEnvelope, last: ChainDigest) -> bool:
        """Does `envelope` directly follow the last applied event without linking to it?

        Only a subscriber of every partition sees each position; a gap (the first event ever, a
        dead-lettered or expired one) leaves nothing here to link to.
        """
        return (
            self.partitions is None
            and envelope.position == last.position + 1
            and bool(last.hash)
            and envelope.prev_hash != last.hash
        )

    async def _refuse(self, delivery: _Delivery, reason: str) -> None:
        """Report a message that failed its chain-link check, and drop it (a redelivery fails the same way)."""
        envelope = delivery.envelope
        log.error(
            "subscriber.refused",
            consumer=self.durable,
            upstream=self.upstream,
            position=envelope.position,
            event_id=envelope.event_id,
            reason=reason,
        )
        await self._dead_letter(
            delivery.msg,
            envelope,
            f"refused: {reason}",
            attempts=1,
            msg_id=f"{self.durable}:refused:{delivery.msg.metadata.sequence.stream}",
        )
        self.stats.refused += 1
        await delivery.msg.ack()

    def _open(self, deliveries: Sequence[_Delivery], ciphers: dict[str, DataKeyCipher | None]) -> None:
        """Open each envelope's personal data for the handler (a worker thread). The received
        envelopes stay as they came, sealed, as their hashes cover them; one that cannot be opened
        fails in the handler's place (retried, then dead-lettered)."""
        unsealer = self._unsealer
        for delivery in deliveries:
            if unsealer is None:
                delivery.opened = delivery.envelope
                continue
            try:
                delivery.opened = unsealer.open(delivery.envelope, ciphers)
            except Exception as error:
                delivery.unopened = error

    def _skip_past(self, delivery: _Delivery) -> None:
        """Move the tracking row past a dead-lettered event (worker thread)."""
        with self.store.transaction() as conn:
            current = self.store.tracking_position(delivery.tracking_key, conn=conn)
            if delivery.envelope.position > current:
                self.store.record_tracking(
                    conn,
                    delivery.tracking_key,
                    delivery.envelope.position,
                    delivery.envelope.event_id,
                    delivery.envelope.hash,
                )

    async def _apply_one_by_one(self, deliveries: Sequence[_Delivery]) -> None:
        for delivery in deliveries:
            # Deliveries before this one (a crashed earlier attempt, say) count as attempts too.
            attempt = max(1, delivery.msg.metadata.num_delivered)
            while True:
                try:
                    refusals = await self._write(self._apply, [delivery])
                    if refusals:
                        await self._refuse(delivery, refusals[0].reason)
                    else:
                        await delivery.msg.ack()
                    break
                except HandlerFailed as exc:
                    error = str(exc.__cause__ or exc) or type(exc).__name__
                    if attempt >= self.settings.max_deliver:
                        await self._dead_letter(delivery.msg, delivery.envelope, error, attempts=attempt)
                        await self._write(self._skip_past, delivery)
                        await delivery.msg.ack()
                        break
                    log.info(
                        "subscriber.retrying_event",
                        consumer=self.durable,
                        position=delivery.envelope.position,
                        attempt=attempt,
                        error=error,
                    )
                    # Keep the messages in hand ours while we wait (no redelivery behind our back).
                    with contextlib.suppress(Exception):
                        await delivery.msg.in_progress()
                    await self._sleep(self.settings.retry_backoff_seconds * 2 ** (attempt - 1))
                    if self._stopping:
                        # Unacknowledged deliveries come back (in order) to the next subscriber.
                        raise asyncio.CancelledError from exc
                    attempt += 1

    async def _dead_letter(
        self, msg: Msg, envelope: EventEnvelope | None, error: str, *, attempts: int, msg_id: str = ""
    ) -> None:
        """Store the event in the DLQ (acknowledged by JetStream) before anything moves past it."""
        js = await self._jetstream()
        event_id = envelope.event_id if envelope is not None else ""
        position = envelope.position if envelope is not None else 0
        headers = {
            # Idempotent: a dead-letter publish retried after a crash is stored once.
            "Nats-Msg-Id": msg_id or f"{self.durable}:{event_id or msg.metadata.sequence.stream}",
            DLQ_ERROR: _header_value(error),
            DLQ_UPSTREAM: self.upstream,
            DLQ_POSITION: str(position),
            DLQ_SERVICE: self.service,
            DLQ_EVENT_ID: event_id,
            DLQ_SUBJECT: msg.subject,
            DLQ_ATTEMPTS: str(attempts),
        }
        await js.publish(dlq_subject(self.service, self.label), msg.data, headers=headers)
        self.stats.dead_lettered += 1
        log.warning(
            "subscriber.dead_lettered",
            consumer=self.durable,
            position=position,
            event_id=event_id,
            attempts=attempts,
            error=error,
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _trouble(self, what: str, exc: BaseException, delay: float) -> None:
        self.stats.last_error = str(exc) or type(exc).__name__
        log.warning(what, consumer=self.durable, error=self.stats.last_error, retry_in_seconds=delay)

    async def _sleep(self, seconds: float) -> None:
        if self._stop_event is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)


def _header_value(text: str, limit: int = 2000) -> str:
    """Headers are single lines: fold an error message (tracebacks included) into one."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[:limit]
