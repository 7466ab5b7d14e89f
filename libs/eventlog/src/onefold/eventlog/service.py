"""An event-sourced service, composed: what every Onefold service's bootstrap builds.

Built in this order by the service's `bootstrap.compose`:

1. `open_event_store` — the service's own log (EventStore on the service database, with its
   key-encryption key); a read model that reads the log (not only the event it folds) is given it.
2. `ServiceLog` — that store, its projections with the one write path (`Projector.write` /
   `record`) and the one writer thread (`Writer`). The application is built on it.
3. `EventSourcedService` — everything around the application: the outbox relay that publishes the
   log to the service's JetStream stream, signed chain digests on the witness stream, the durable
   subscribers to upstream services (their batches run on the writer thread too), the audit and key
   servicers. It refuses to run on a log that is behind or diverges from what it already published
   (digests.check_start): at start, or — when NATS is not reachable then — before the relay or the
   digests publish anything. Every replica serves; only the holder of the leader lease (one per
   database, see lease.py) runs the relay, digests and subscribers — the subscribers unless
   `eventlog.workers` > 1, when the service's processes share them by partition (workers.py).

    def compose(ctx: ServiceContext) -> EventSourcedService[Application]:
        store = open_event_store(ctx, events.REGISTRY)
        log = ServiceLog(store, projections=[ReadModel()])
        app = Application(log, ...)
        return EventSourcedService(ctx, log, app, servicers=grpc.registrations(app), subscriptions=...)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Gauge

from onefold.contracts.eventlog.v1.eventlog_pb2 import LagResponse
from onefold.eventlog import audit, keyaccess
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.digests import (
    CHAIN_HEALTH_NAME,
    ChainDiverged,
    ChainSigner,
    DigestPublisher,
    check_start,
)
from onefold.eventlog.errors import MissingKeyEncryptionKey
from onefold.eventlog.keyfile import load_key_file
from onefold.eventlog.lease import LeaderLease
from onefold.eventlog.projections import Projection, Projector
from onefold.eventlog.registry import EventRegistry
from onefold.eventlog.relay import OutboxRelay
from onefold.eventlog.store import EventStore
from onefold.eventlog.streams import StreamSettings
from onefold.eventlog.subscriber import Handler, Subscriber
from onefold.eventlog.workers import WorkerGroups, partition_groups
from onefold.eventlog.writer import Writer
from onefold.platform.client import Peers
from onefold.platform.config import ConfigError, Settings
from onefold.platform.grpc_server import ServiceRegistration
from onefold.platform.service import ServiceContext
from onefold.platform.telemetry import get_logger

logger = get_logger("onefold.eventlog")
A = TypeVar("A")
LEASE_CHECK_SECONDS = 2.0
# How long start waits for NATS to compare the log with the witness stream; later, the leader does.
START_CHECK_SECONDS = 5.0
LAG_PROBE_SECONDS = 2.0  # a Lag call answers within this even when NATS does not
BACKLOG_REPORT_SECONDS = 15.0  # how often the leader refreshes the backlog gauge (a scrape's pace)
BACKLOG = Gauge(
    "onefold_backlog_events",
    "Events not yet handled: `upstream` is the service consumed (pending + in flight), or `relay` for "
    "the service's own events not yet acknowledged by JetStream",
    ["service", "upstream"],
)


@dataclass(frozen=True)
class Subscription:
    """This service consumes `upstream`'s events with `handler` (in one transaction per batch)."""

    upstream: str
    handler: Handler
    # The event types (protobuf full names) the handler reads; the others are not fetched at all.
    event_types: Sequence[str] | None = None
    name: str | None = None
    partitions: Sequence[int] | None = None


def key_encryption_key(settings: Settings) -> KeyEncryptionKey:
    """The service's KEK: from `eventlog.key_encryption_key` (a Secret), else `eventlog.key_file`.

    A key file that does not exist yet is created (mode 0600) — for `onefold up` on one machine.
    Without either the service refuses to start: personal data must never be written unprotected,
    and a key made up on the spot in a container would be lost with it. A key file inside the data
    directory is a warning: a copy of the directory (a backup) would hold both the data and its key.
    """
    config = settings.eventlog
    try:
        if config.key_encryption_key:
            return KeyEncryptionKey.from_text(config.key_encryption_key)
        if config.key_file:
            path = Path(config.key_file)
            kek = load_key_file(path, create=True)
            if path.resolve().is_relative_to(settings.data_dir.resolve()):
                logger.warning(
                    "eventlog.key_beside_data",
                    key_file=str(path),
                    data_dir=str(settings.data_dir),
                    advice="keep the key-encryption key outside the data directory "
                    "(onefold up --key-dir, eventlog.key_file or ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY)",
                )
            return kek
    except MissingKeyEncryptionKey as error:
        raise ConfigError(f"eventlog key-encryption key: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read the key file {config.key_file}: {error.strerror}") from None
    raise ConfigError(
        "no key-encryption key: set eventlog.key_encryption_key (ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY, "
        "from a Secret) or eventlog.key_file"
    )


class Component(Protocol):
    """Something the application runs beside its RPCs (a refresher, a timer wheel, a duty loop)."""

    async def start(self) -> object: ...

    async def stop(self) -> object: ...


def open_event_store(ctx: ServiceContext, events: EventRegistry) -> EventStore:
    """The service's own log on its database, with its key-encryption key (tables created)."""
    store = EventStore(
        ctx.engine, service=ctx.settings.service, registry=events, keys=key_encryption_key(ctx.settings)
    )
    store.create_schema()
    return store


class ServiceLog:
    """The service's own log, read models and writer thread: what its application is built on."""

    def __init__(self, store: EventStore, *, projections: Sequence[Projection] = ()) -> None:
        if store.keys is None:
            raise ConfigError("a service's log needs its key-encryption key (open it with open_event_store)")
        self.name = store.service
        self.keys = store.keys
        self.store = store
        self.projector = Projector(self.store, projections)
        self.projector.create_tables()
        self.writer = Writer(self.name)
        # Set while this replica holds the leader lease (runs the relay, subscribers and duties).
        self.leading = asyncio.Event()
        self._after_commit: list[Callable[[], None]] = []
        store.on_append(self._committed)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the transaction now writing has committed (from the writer thread).

        For waking a duty that reads what the transaction wrote: woken from inside it, the duty's
        round could read before the commit, find nothing, and sleep. A transaction rolled back
        leaves the callback to the next commit: a spare wake-up, never a lost one."""
        self._after_commit.append(callback)

    def _committed(self, head: int) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in dict.fromkeys(callbacks):  # one wake-up each, however many batches asked
            callback()


class ClosedAtStop:
    """A component that closes what the application holds open (channels to other services,
    providers' connections) when the service stops."""

    def __init__(self, *closers: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.closers = closers

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for close in self.closers:
            await close()


class Duty:
    """Background work only the leader replica does (timers, a sender, schedules, backfills): the
    loop around one round of it, written once.

    `step()` does a round and says when the next is due: in that many seconds (0: at once, there is
    more), or None when nothing is planned (the next round comes when woken, or after
    `idle_seconds`). A follower looks again every FOLLOWER_POLL_SECONDS whether it leads. A round
    that fails is logged and tried again after `retry_seconds`. `wake()` — safe from any thread, the
    writer's after a write that gave the duty work — runs the next round now; a wake during a round
    is not lost (the round after it runs at once)."""

    FOLLOWER_POLL_SECONDS = 2.0

    def __init__(
        self,
        name: str,
        step: Callable[[], Coroutine[Any, Any, float | None]],
        *,
        idle_seconds: float = 60.0,
        retry_seconds: float = 5.0,
    ) -> None:
        self.name = name
        self.step = step
        self.idle_seconds = idle_seconds
        self.retry_seconds = retry_seconds
        self._woken = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to wake
                self._loop.call_soon_threadsafe(self._woken.set)

    async def run(self, leading: Callable[[], bool]) -> None:
        """Until cancelled: a round whenever this replica leads and one is due."""
        self._loop = asyncio.get_running_loop()
        while True:
            wait = self.FOLLOWER_POLL_SECONDS
            if leading():
                self._woken.clear()  # before the round: a wake during it runs the next one at once
                try:
                    after = await self.step()
                    wait = self.idle_seconds if after is None else min(max(after, 0.0), self.idle_seconds)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("duty.failed", duty=self.name)
                    wait = self.retry_seconds
                if wait == 0:
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout=wait)


class Loop:
    """A component that runs `run()` as a task from start to stop (a duty loop, a retry loop)."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self.run = run
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class EventSourcedService(Generic[A]):
    """The running service around `application` (its use cases, kept here for tests and benches)."""

    def __init__(
        self,
        ctx: ServiceContext,
        log: ServiceLog,
        application: A,
        *,
        servicers: Sequence[ServiceRegistration] = (),
        subscriptions: Sequence[Subscription] = (),
        components: Sequence[Component] = (),
    ) -> None:
        self.ctx = ctx
        self.log = log
        self.application = application
        self.name = log.name
        self.store = log.store
        self.signer = ChainSigner.from_key_encryption_key(log.keys)
        bus = StreamSettings.from_config(ctx.settings.eventlog)
        # Upstreams' events arrive sealed; their subject keys come from the upstream itself.
        self.key_peers = Peers(ctx.settings.peers.model_dump(), ctx.settings.auth.service_token)
        self.relay = OutboxRelay(self.store, ctx.nats, service=self.name, stream_settings=bus)

        def subscriber(subscription: Subscription, partitions: Sequence[int] | None) -> Subscriber:
            return Subscriber(
                self.store,
                ctx.nats,
                service=self.name,
                upstream=subscription.upstream,
                handler=subscription.handler,
                name=subscription.name,
                partitions=partitions,
                event_types=subscription.event_types,
                stream_settings=bus,
                keys=keyaccess.RemoteSubjectKeys(
                    subscription.upstream, functools.partial(self.key_peers.channel, subscription.upstream)
                ),
                writer=log.writer,
                catch_up=log.projector.catch_up,
            )

        # One worker: the leader consumes everything. Several: each subscription has a consumer per
        # partition group, and the service's processes share the groups (workers.py).
        workers = ctx.settings.eventlog.workers
        self.worker_groups: WorkerGroups | None = None
        if workers == 1:
            self.subscribers = [subscriber(s, s.partitions) for s in subscriptions]
        else:
            groups = [
                [subscriber(s, partitions) for s in subscriptions]
                for partitions in partition_groups(bus.partitions, workers)
            ]
            self.worker_groups = WorkerGroups(ctx.engine, self.name, groups)
            self.subscribers = [member for group in groups for member in group]
        self.digests = DigestPublisher(
            self.store,
            ctx.nats,
            service=self.name,
            signer=self.signer,
            upstreams={key: sub.upstream for sub in self.subscribers for key in sub.tracking_keys()},
            stream_settings=bus,
            on_alarm=self._chain_alarm,
        )
        self._witness_checked = False
        self._servicers = tuple(servicers)
        self.components = tuple(components)
        self.lease = LeaderLease(ctx.engine, f"{self.name}:eventlog")
        self.leading = log.leading
        self._leader_task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._workers_task: asyncio.Task[None] | None = None

    @property
    def leader_subscribers(self) -> Sequence[Subscriber]:
        """What the leader consumes: everything with one worker, nothing when workers share it."""
        return self.subscribers if self.worker_groups is None else ()

    def registrations(self) -> Sequence[ServiceRegistration]:
        return (
            *self._servicers,
            audit.registration(self.store, self.name, self.backlog),
            keyaccess.registration(self.store),
        )

    async def backlog(self) -> LagResponse:
        """The log's events not yet relayed, and each upstream's events not yet applied here."""
        head = await asyncio.to_thread(self.store.head_position)
        published = self.relay.published_position
        if published is None:
            published = await asyncio.to_thread(self.store.published_position, self.relay.stream_name)
        answer = LagResponse(
            service=self.name,
            head_position=head,
            published_position=published,
            leading=self.leading.is_set(),
        )
        for subscriber in self.subscribers:
            consumer = answer.consumers.add(upstream=subscriber.upstream, consumer=subscriber.durable)
            try:
                async with asyncio.timeout(LAG_PROBE_SECONDS):
                    lag = await subscriber.lag()
            except Exception as error:  # NATS unreachable, or the consumer not made yet
                consumer.error = str(error) or type(error).__name__
                continue
            consumer.pending = lag.pending
            consumer.ack_pending = lag.ack_pending
            consumer.applied.update(lag.tracking)
        return answer

    async def _report_backlog(self) -> None:
        """While leading, keep `onefold_backlog_events` current for Prometheus scrapes."""
        while True:
            await asyncio.sleep(BACKLOG_REPORT_SECONDS)
            if not self.leading.is_set():
                continue
            try:
                answer = await self.backlog()
            except Exception as error:  # the database is down: the gauge keeps its last values
                logger.debug("eventlog.backlog_unavailable", service=self.name, error=str(error))
                continue
            BACKLOG.labels(self.name, "relay").set(max(0, answer.head_position - answer.published_position))
            per_upstream: dict[str, int] = {}
            for consumer in answer.consumers:  # one per partition group when workers share them
                if not consumer.error:
                    per_upstream[consumer.upstream] = (
                        per_upstream.get(consumer.upstream, 0) + consumer.pending + consumer.ack_pending
                    )
            for upstream, events in per_upstream.items():
                BACKLOG.labels(self.name, upstream).set(events)

    async def start(self) -> None:
        """Serve at once; run the relay, digests and subscribers while holding the leader lease.

        Raises ConfigError (the service does not start) when the log is behind or diverges from
        what this service already published.
        """
        await self.log.writer.run(self.log.projector.catch_up)
        await self.log.writer.start()
        for component in self.components:
            await component.start()
        try:
            async with asyncio.timeout(START_CHECK_SECONDS):
                client = await self.ctx.nats.wait_connected()
        except TimeoutError:
            logger.warning(
                "eventlog.witness_check_deferred", service=self.name, reason="NATS is not reachable yet"
            )
            client = None
        try:
            try:
                await check_start(self.store, client.jetstream() if client else None, self.name, self.signer)
                self._witness_checked = client is not None
            except ChainDiverged:
                raise
            except Exception as error:  # the witness stream did not answer: the leader checks later
                logger.warning("eventlog.witness_check_deferred", service=self.name, reason=str(error)[:300])
                await check_start(self.store, None, self.name, self.signer)
        except ChainDiverged as error:
            logger.error("eventlog.chain_diverged", service=self.name, problem=str(error))
            raise ConfigError(str(error)) from None
        if self.ctx.set_health is not None:
            await self.ctx.set_health(True, CHAIN_HEALTH_NAME)
        self._leader_task = asyncio.create_task(self._lead(), name=f"eventlog-leader-{self.name}")
        self._backlog_task = asyncio.create_task(self._report_backlog(), name=f"eventlog-backlog-{self.name}")
        if self.worker_groups is not None:
            self._workers_task = asyncio.create_task(
                self.worker_groups.run(), name=f"eventlog-workers-{self.name}"
            )

    async def stop(self) -> None:
        # Components first (an API stops taking requests and what it queued is committed), then the
        # relay and subscribers, then the writer thread.
        for component in reversed(self.components):
            await component.stop()
        for task in (self._workers_task, self._backlog_task, self._leader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.log.writer.stop()
        self.lease.release()
        await self.key_peers.close()
        self.store.close()

    async def _lead(self) -> None:
        while True:
            try:
                acquired = await asyncio.to_thread(self.lease.try_acquire)
            except Exception as error:  # the database is down: keep trying, never give up leading
                logger.warning("eventlog.lease_unavailable", service=self.name, error=str(error))
                acquired = False
            if acquired and not self._witness_checked:
                try:
                    client = await self.ctx.nats.wait_connected()
                    await check_start(self.store, client.jetstream(), self.name, self.signer)
                    self._witness_checked = True
                except ChainDiverged as error:
                    # Nothing is relayed or witnessed from this log: it stays as found, for the audit.
                    logger.error("eventlog.chain_diverged", service=self.name, problem=str(error))
                    await self._chain_alarm(str(error))
                    await asyncio.to_thread(self.lease.release)
                    return
                except Exception as error:  # NATS went away again: try on the next round
                    logger.warning("eventlog.witness_check_failed", service=self.name, error=str(error))
                    acquired = False
                    await asyncio.to_thread(self.lease.release)
            if acquired:
                logger.info("eventlog.leading", service=self.name)
                self.leading.set()
                self.relay.start()
                self.digests.start()
                for subscriber in self.leader_subscribers:
                    subscriber.start()
                try:
                    # Polls the lease's database connection (nothing here could signal its loss) and the digests.
                    while not self.digests.diverged and await asyncio.to_thread(self.lease.still_held):  # noqa: ASYNC110
                        await asyncio.sleep(LEASE_CHECK_SECONDS)
                    if not self.digests.diverged:
                        logger.warning("eventlog.lease_lost", service=self.name)
                finally:
                    self.leading.clear()
                    for subscriber in self.leader_subscribers:
                        await subscriber.stop()
                    await self.digests.stop()
                    await self.relay.stop()
                if self.digests.diverged:
                    # The log was cut or rewritten under the running service: stop relaying and
                    # consuming on it (the alarm is raised); `onefold audit verify` names the position.
                    logger.error(
                        "eventlog.stopped_on_divergence", service=self.name, problem=self.digests.alarm
                    )
                    await asyncio.to_thread(self.lease.release)
                    return
            await asyncio.sleep(LEASE_CHECK_SECONDS)

    async def _chain_alarm(self, problem: str) -> None:
        """The log and the witness stream disagree: `onefold.chain` reports NOT_SERVING from now on."""
        if self.ctx.set_health is not None:
            await self.ctx.set_health(False, CHAIN_HEALTH_NAME)
