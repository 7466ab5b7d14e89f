"""The outbox relay: publishes a service's own log to its JetStream stream, in order, at least once.

The events table is the outbox. The relay reads the events after the recorded published position,
publishes them (body: the EventEnvelope exactly as stored — personal fields still sealed with the
subject's data key, so nothing personal is ever in clear on the bus and shredding the key erases the
bus copies too; consumers get the keys from this service, see keyaccess — header
`Nats-Msg-Id = event_id`, trace context headers) and records the position once JetStream acknowledged
them. Events go out at the schema version they were stored with; their hashes cover exactly these
bytes, so a consumer can check each event's chain link.

How a batch is published:

- **Atomic batch** (normal path): up to 1000 events as one JetStream atomic batch
  (`Nats-Batch-Id`/`-Sequence`/`-Commit`, stream `allow_atomic`). The server stores all or none and
  acknowledges once, so a batch costs one round trip and one fsync instead of one per event (the
  embedded server runs `sync_interval: always`, where per-event publishing tops out near 6k/s on a
  small machine). All-or-nothing also means a batch can never land partly or out of order. The next
  batch is sent only after this one was acknowledged.
- **Pipelined per-event publish** (fallback): when the server refuses an atomic batch because it
  holds one of its ids already (a re-publish after a crash between publish and record), or when the
  server or stream cannot do atomic batches. Duplicates are then acknowledged one by one as
  duplicates and stored once. Because the client may flush messages buffered during a reconnect
  *after* earlier ones were lost with the socket, every message but the first carries
  `Nats-Expected-Last-Msg-Id` = the previous event's id: the server refuses a message unless its
  predecessor is the stream's last message, so the stream stays in log order.

Crash between publish and record: on restart the same events are published again with the same
`Nats-Msg-Id`; inside the stream's duplicate window JetStream stores nothing new. (Beyond the window a
copy may be stored twice; subscribers still skip it, since they skip any position at or below their
tracking position.) NATS down: publishes time out, the relay records what was acknowledged, backs
off, waits for the connection and resumes from the first unacknowledged event.

Run one relay per service database (the log has one writer of `published` positions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.eventlog.streams import (
    StreamSettings,
    ensure_dlq_stream,
    ensure_service_stream,
    event_subject,
    stream_name,
)
from onefold.platform.nats import NatsConnection
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.eventlog.relay")

MSG_ID = "Nats-Msg-Id"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
MAX_ATOMIC_BATCH = 1000  # the server's default limit on messages per atomic batch
_ATOMIC_DUPLICATE = 10201  # "atomic publish batch contains duplicate message id"
# "atomic publish is disabled" (stream), "not supported" (older server), "unsupported header".
_ATOMIC_UNAVAILABLE = frozenset({10174, 10175, 10177})
_ORDER_GUARD_REFUSAL = "wrong last msg ID"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"


class OutboxStore(Protocol):
    """What the relay needs of an EventStore."""

    def read(self, *, after_position: int = 0, limit: int = 1000) -> Sequence[Any]: ...
    def head_position(self) -> int: ...
    def to_envelope(self, event: Any, *, decrypt: bool = True) -> EventEnvelope: ...
    def published_position(self, stream_name: str) -> int: ...
    def record_published(self, stream_name: str, position: int) -> None: ...
    def on_append(self, listener: Callable[[int], None]) -> Callable[[], None]: ...


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = MAX_ATOMIC_BATCH
    atomic_batches: bool = True  # False: always publish event by event (pipelined)
    poll_interval_seconds: float = 1.0  # fallback when nobody calls notify() after an append
    ack_timeout_seconds: float = 5.0  # a batch's acknowledgements must arrive within this
    backoff_initial_seconds: float = 0.1
    backoff_max_seconds: float = 5.0
    max_pending_publishes: int = 8000


@dataclass(frozen=True)
class _Outgoing:
    position: int
    event_id: str
    subject: str
    body: bytes
    trace_headers: tuple[tuple[str, str], ...]


@dataclass
class RelayStats:
    published: int = 0  # events acknowledged by JetStream (duplicates included)
    duplicates: int = 0  # of those, already in the stream (a re-publish after a crash)
    failures: int = 0  # batches that stopped early (NATS down, timeout, refused)
    last_error: str = ""
    started_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Refusal:
    code: int
    description: str


class PublishIncomplete(Exception):
    """A batch was only partly acknowledged; the rest is retried from the first unacknowledged event."""

    def __init__(self, message: str, *, retry_now: bool = False) -> None:
        super().__init__(message)
        # True when the server only refused the order guard (another publisher, e.g. the chain
        # digest, put a message between two events): nothing is wrong with NATS, so no backoff.
        self.retry_now = retry_now


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        nats: NatsConnection,
        *,
        service: str,
        stream_settings: StreamSettings | None = None,
        settings: RelaySettings | None = None,
        ensure_streams: bool = True,
    ) -> None:
        self.store = store
        self.nats = nats
        self.service = service
        self.stream_settings = stream_settings or StreamSettings()
        self.settings = settings or RelaySettings()
        self.ensure_streams = ensure_streams
        self.stream_name = stream_name(service)
        self.stats = RelayStats()
        self._published: int | None = None
        self._unlisten: Callable[[], None] | None = None
        self._atomic = self.settings.atomic_batches
        self._js: JetStreamContext | None = None
        self._js_client: Client | None = None
        self._streams_ready_for: Client | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in the background until stop(); appends committed by this process wake it at once."""
        self._bind_loop()
        self._stopping = False
        self._published = None  # re-read: another replica may have relayed while we did not lead
        if self._unlisten is None:
            self._unlisten = self.store.on_append(lambda _head: self.notify())
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.service}")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Finish the batch in flight (so its position is recorded), then stop."""
        self._stopping = True
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        self.notify()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_seconds)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def notify(self) -> None:
        """Say that events were appended: the relay wakes now instead of at the next poll.

        Safe to call from any thread (appends usually run in a worker thread).
        """
        if self._loop is None or self._wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._bind_loop()
        delay = self.settings.backoff_initial_seconds
        while not self._stopping:
            try:
                published = await self.publish_available()
                delay = self.settings.backoff_initial_seconds
                if published == 0:
                    await self._wait_for_work(self.settings.poll_interval_seconds)
                continue
            except asyncio.CancelledError:
                raise
            except PublishIncomplete as exc:
                if exc.retry_now:
                    log.debug("relay.order_guard_retry", stream=self.stream_name, detail=str(exc))
                    continue
                failure: Exception = exc
            except Exception as exc:
                failure = exc
            self._record_failure(str(failure) or type(failure).__name__, retry_in_seconds=delay)
            await self._wait_for_work(delay, ignore_notify=True)
            delay = min(delay * 2, self.settings.backoff_max_seconds)

    # -- observability ----------------------------------------------------------------------------

    @property
    def published_position(self) -> int | None:
        """The last position JetStream acknowledged (None before the relay first looked)."""
        return self._published

    async def lag(self) -> int:
        """Events in the log not yet acknowledged by JetStream (head - published)."""
        head = await asyncio.to_thread(self.store.head_position)
        published = self._published
        if published is None:
            published = await asyncio.to_thread(self.store.published_position, self.stream_name)
        return max(0, head - published)

    # -- the work ---------------------------------------------------------------------------------

    async def publish_available(self, max_batches: int | None = None) -> int:
        """Publish what the log holds beyond the published position; returns how many were acknowledged.

        Raises PublishIncomplete (or a connection error) when a batch could not be fully published;
        what was acknowledged before the failure is recorded first.
        """
        self._bind_loop()
        assert self._wake is not None
        total = 0
        batches = 0
        # Read the next batch while the current one waits for its acknowledgements.
        next_batch: asyncio.Task[list[_Outgoing]] | None = None
        try:
            while (max_batches is None or batches < max_batches) and not self._stopping:
                js = await self._jetstream()
                if self._published is None:
                    self._published = await asyncio.to_thread(self.store.published_position, self.stream_name)
                if next_batch is not None:
                    batch = await next_batch
                    next_batch = None
                else:
                    self._wake.clear()  # cleared before each read: an append after it wakes us again
                    batch = await asyncio.to_thread(self._prepare, self._published)
                if not batch:
                    break
                if max_batches is None or batches + 1 < max_batches:
                    self._wake.clear()
                    next_batch = asyncio.create_task(asyncio.to_thread(self._prepare, batch[-1].position))
                published_before = self._published
                acked_through, error = await self._publish_batch(js, batch)
                if acked_through > self._published:
                    await asyncio.to_thread(self.store.record_published, self.stream_name, acked_through)
                    total += acked_through - self._published
                    self._published = acked_through
                if error is not None:
                    raise PublishIncomplete(
                        f"published through position {acked_through} of {batch[-1].position}: {error}",
                        retry_now=acked_through > published_before and _ORDER_GUARD_REFUSAL in error,
                    )
                batches += 1
        finally:
            if next_batch is not None:
                next_batch.cancel()
                with contextlib.suppress(BaseException):
                    await next_batch
        return total

    def _prepare(self, after_position: int) -> list[_Outgoing]:
        """Read and encode a batch (in a worker thread: encoding is CPU work)."""
        limit = min(self.settings.batch_size, MAX_ATOMIC_BATCH) if self._atomic else self.settings.batch_size
        events = self.store.read(after_position=after_position, limit=limit)
        partitions = self.stream_settings.partitions
        outgoing: list[_Outgoing] = []
        for event in events:
            envelope = self.store.to_envelope(event, decrypt=False)
            trace: tuple[tuple[str, str], ...] = ()
            if envelope.trace.traceparent:
                trace = (("traceparent", envelope.trace.traceparent),)
                if envelope.trace.tracestate:
                    trace += (("tracestate", envelope.trace.tracestate),)
            outgoing.append(
                _Outgoing(
                    position=event.position,
                    event_id=event.event_id,
                    subject=event_subject(
                        self.service,
                        event_type=event.type,
                        workspace=event.workspace,
                        stream_id=event.stream_id,
                        metadata=event.metadata or {},
                        partitions=partitions,
                    ),
                    body=envelope.SerializeToString(),
                    trace_headers=trace,
                )
            )
        return outgoing

    async def _publish_batch(
        self, js: JetStreamContext, batch: Sequence[_Outgoing]
    ) -> tuple[int, str | None]:
        """Publish a batch; returns (last position acknowledged in order, first error or None)."""
        if self._atomic:
            refusal = await self._publish_atomic(batch)
            if refusal is None:
                self.stats.published += len(batch)
                return batch[-1].position, None
            if refusal.code == _ATOMIC_DUPLICATE:
                # Part of this batch is in the stream already: a re-publish after a crash.
                log.info("relay.republishing_one_by_one", stream=self.stream_name, first=batch[0].position)
            elif refusal.code in _ATOMIC_UNAVAILABLE:
                log.info(
                    "relay.atomic_batches_unavailable", stream=self.stream_name, reason=refusal.description
                )
                self._atomic = False
            else:
                return self._published or 0, refusal.description
        return await self._publish_pipelined(js, batch)

    async def _publish_atomic(self, batch: Sequence[_Outgoing]) -> _Refusal | None:
        """Send the batch as one atomic JetStream batch; None when stored, else why not."""
        client = self._js_client
        assert client is not None
        if not client.is_connected:
            return _Refusal(0, "NATS connection lost")
        batch_id = uuid.uuid4().hex
        last = len(batch)
        try:
            for sequence, out in enumerate(batch, 1):
                headers = {
                    MSG_ID: out.event_id,
                    BATCH_ID: batch_id,
                    BATCH_SEQUENCE: str(sequence),
                }
                for name, value in out.trace_headers:
                    headers[name] = value
                if sequence < last:
                    # No reply: the server answers once, for the whole batch, at the commit.
                    await client.publish(out.subject, out.body, headers=headers)
                    continue
                headers[BATCH_COMMIT] = "1"
                reply = await client.request(
                    out.subject, out.body, timeout=self.settings.ack_timeout_seconds, headers=headers
                )
        except Exception as exc:
            # An uncommitted batch is discarded by the server; a committed one whose ack we lost
            # is recognised as a duplicate when we publish it again.
            return _Refusal(0, f"atomic batch not acknowledged: {exc or type(exc).__name__}")
        try:
            answer = json.loads(reply.data)
        except ValueError:
            return _Refusal(0, f"unreadable JetStream reply: {reply.data[:200]!r}")
        error = answer.get("error")
        if error:
            return _Refusal(int(error.get("err_code", 0)), str(error.get("description", error)))
        return None

    async def _publish_pipelined(
        self, js: JetStreamContext, batch: Sequence[_Outgoing]
    ) -> tuple[int, str | None]:
        client = self._js_client
        assert client is not None and self._published is not None
        futures: list[asyncio.Future[Any]] = []
        error: str | None = None
        previous_id = ""
        for out in batch:
            if not client.is_connected:
                # Never hand the client a message to buffer while it reconnects: the buffer would be
                # flushed later, possibly behind messages that were lost with the old socket.
                error = "NATS connection lost"
                break
            headers = {MSG_ID: out.event_id}
            if previous_id:
                headers[EXPECTED_LAST_MSG_ID] = previous_id
            for name, value in out.trace_headers:
                headers[name] = value
            try:
                future = await js.publish_async(
                    out.subject, out.body, headers=headers, wait_stall=self.settings.ack_timeout_seconds
                )
            except Exception as exc:
                error = f"publish failed: {exc or type(exc).__name__}"
                break
            futures.append(future)
            previous_id = out.event_id
        if futures:
            _done, pending = await asyncio.wait(futures, timeout=self.settings.ack_timeout_seconds)
            for late in pending:
                late.cancel()  # frees the client's slot; the event is published again next time
        acked_through = self._published
        for out, future in zip(batch, futures, strict=False):
            if future.cancelled():
                error = error or f"no acknowledgement within {self.settings.ack_timeout_seconds}s"
                break
            refused = future.exception()
            if refused is not None:
                error = f"JetStream refused event {out.position}: {refused}"
                break
            ack = future.result()
            self.stats.published += 1
            if getattr(ack, "duplicate", False):
                self.stats.duplicates += 1
            acked_through = out.position
        return acked_through, error

    async def _jetstream(self) -> JetStreamContext:
        if self.nats.client is not None and not self.nats.connected.is_set():
            # The connection was lost between two batches (nothing was in flight to fail): this is an
            # outage all the same, so it shows in the stats and the log before the wait for NATS.
            # (Before the first connection there is nothing to report: the service is starting.)
            self._record_failure("NATS connection lost: waiting for it to come back", retry_in_seconds=None)
        client = await self.nats.wait_connected()
        if self._js is None or self._js_client is not client:
            self._js = client.jetstream(publish_async_max_pending=self.settings.max_pending_publishes)
            self._js_client = client
        if self.ensure_streams and self._streams_ready_for is not client:
            await ensure_service_stream(self._js, self.service, self.stream_settings)
            await ensure_dlq_stream(self._js, self.stream_settings)
            self._streams_ready_for = client
        return self._js

    # -- helpers ----------------------------------------------------------------------------------

    def _record_failure(self, error: str, *, retry_in_seconds: float | None) -> None:
        self.stats.failures += 1
        self.stats.last_error = error
        # The server may have lost its store (a new volume): create the streams again.
        self._streams_ready_for = None
        log.warning(
            "relay.publish_failed",
            stream=self.stream_name,
            published_position=self._published,
            error=error,
            retry_in_seconds=retry_in_seconds,
        )

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._wake is None:
            self._loop = loop
            self._wake = asyncio.Event()

    async def _wait_for_work(self, seconds: float, *, ignore_notify: bool = False) -> None:
        """Sleep until notify(), stop() or the timeout; a backoff sleep only ends early for stop()."""
        assert self._wake is not None
        deadline = time.monotonic() + seconds
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return
            if not ignore_notify or self._stopping:
                return
            self._wake.clear()
