"""Use cases of the ingest service: authenticate a source, accept events durably, quarantine the rest.

The HTTP and gRPC entrypoints call only what is declared here.

Writes and where they go (all in the service's own event log, see docs/architecture.md, "The event log"):

- an accepted event: `EventAccepted` on stream `ingest:<subject>`, where the subject is the person
  (`<workspace>:u:<hmac of user_id>`, else `<workspace>:a:<hmac of anonymous_id>`). The subject's data
  key encrypts the event's personal fields, so erasing an identifier crypto-shreds its events; the
  relay partitions on the subject (`partition_key`), so one person's events keep their order on NATS.
  Identifiers never appear in clear outside the encrypted payload.
- a quarantined event: `EventQuarantined` on `ingest-quarantine:<workspace>` (subject: the person when
  known, else the quarantine record itself), `QuarantineReplayed` when it is re-submitted;
- sources: `SourceCreated`, `WriteKeyRotated`, `TrackingPlanSet`, `SourceDisabled` on
  `ingest-source:<source_id>`. Write keys exist only as SHA-256.

Group commit: `submit()` prepares its events on the event loop and queues them; one committer task
takes everything queued (up to `max_group_events`), runs ONE database transaction for the whole
group on a single writer thread (dedupe lookup, append, dedupe rows, read models, projection
checkpoint), and resolves every caller's future after the commit. Requests that arrive while a
group is being written form the next group, so the number of transactions (and fsyncs) per second
stays roughly constant as load grows. A failure that belongs to one request (e.g. an invalid event)
is isolated by committing that group's requests one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1 import envelope_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog import EventRegistry, EventStore, NewEvent, RecordedEvent, SubjectErased
from onefold.eventlog.models import from_micros, to_micros
from onefold.eventlog.projections import Projector, tracking_name
from onefold.eventlog.streams import PARTITION_KEY
from onefold.ingest.domain import (
    DEFAULT_LIMITS,
    CompiledPlan,
    FailureKind,
    Intake,
    Limits,
    PlanCache,
    TrackingPlan,
    Verdict,
    accepted_record,
    ack,
    decide,
    first_sightings,
    intake_from_quarantined,
    plan_from_proto,
    quarantined_record,
)
from onefold.ingest.domain.protos import violations_to_proto
from onefold.ingest.projections import (
    IngestProjection,
    dedupe,
    dedupe_lookup,
    dedupe_record,
    quarantine,
    sources,
    write_keys,
)
from onefold.platform.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OnefoldError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.ingest.application")
T = TypeVar("T")

EVENT_TYPES = (
    ingest_pb2.EventAccepted,
    ingest_pb2.EventQuarantined,
    ingest_pb2.QuarantineReplayed,
    ingest_pb2.SourceCreated,
    ingest_pb2.WriteKeyRotated,
    ingest_pb2.TrackingPlanSet,
    ingest_pb2.SourceDisabled,
)
DEFAULT_DEDUPE_WINDOW = timedelta(hours=24)
DEFAULT_RATE_LIMIT = 1000.0
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_REPLAY = 1000  # quarantined events replayed per call when selecting by filter
WRITE_KEY_PREFIX = "ofw_"
_SUBJECT_INDEX_CHARS = 32  # 128 bits of the HMAC in subjects and stream ids
_MAX_MISSING = 10_000  # entries per negative cache of unknown write keys / source ids
_PRUNE_CHUNK = 5000  # expired dedupe rows deleted per statement
_PRUNE_CHUNKS_PER_CALL = 4
_ERASED_RACE_RETRIES = 3  # a subject erased between our erased-subject query and the append


def event_registry() -> EventRegistry:
    """The event types this service appends to its log (protobuf full names, with upcasters)."""
    registry = EventRegistry()
    for message_class in EVENT_TYPES:
        registry.register(message_class)
    return registry


@dataclass(frozen=True)
class Source:
    """A place events come from (a website, an app, a store's POS), owned by one workspace."""

    source_id: str
    workspace: str
    name: str
    plan: TrackingPlan | None = None
    rate_limit_per_second: float = 1000.0  # Segment's recommended ceiling per workspace
    disabled: bool = False
    limits: Limits = DEFAULT_LIMITS
    write_key_hint: str = ""
    created_at: datetime | None = None
    # The plan exactly as applied (JSON texts), for answering GetSource.
    tracking_plan: ingest_pb2.TrackingPlan | None = field(default=None, compare=False, repr=False)


def hash_write_key(write_key: str) -> bytes:
    return hashlib.sha256(write_key.encode()).digest()


def new_write_key() -> str:
    return WRITE_KEY_PREFIX + secrets.token_urlsafe(24)


def source_to_proto(source: Source) -> ingest_pb2.Source:
    msg = ingest_pb2.Source(
        source_id=source.source_id,
        workspace=source.workspace,
        name=source.name,
        write_key_hint=source.write_key_hint,
        disabled=source.disabled,
        rate_limit_per_second=int(source.rate_limit_per_second),
    )
    if source.tracking_plan is not None:
        msg.tracking_plan.CopyFrom(source.tracking_plan)
    if source.created_at is not None:
        msg.created_at.FromDatetime(source.created_at)
    return msg


@dataclass(slots=True)
class _Item:
    """One event on its way into the log."""

    intake: Intake
    verdict: Verdict
    workspace: str
    subject: str
    event: NewEvent | None  # EventAccepted / EventQuarantined (None: a replay that stays quarantined)
    message_id: str = ""  # dedupe key, set when accepted
    quarantine_id: str = ""
    replay_of: str = ""  # quarantine id, when this is a replay


@dataclass
class _Request:
    items: list[_Item]
    future: asyncio.Future[list[ingest_pb2.EventAck]]


class _ProjectionBehind(Exception):
    """The read models have not seen every event before this transaction's (see _require_current)."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class IngestApplication:
    """See the module docstring. All methods are safe to call from the event loop."""

    def __init__(
        self,
        store: EventStore,
        *,
        projection: IngestProjection | None = None,
        dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW,
        default_rate_limit_per_second: float = DEFAULT_RATE_LIMIT,
        max_group_events: int = 5000,
        linger_seconds: float = 0.0005,
        source_refresh_seconds: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.projection = projection or IngestProjection()
        self.dedupe_window = dedupe_window
        self.default_rate_limit = default_rate_limit_per_second
        self.max_group_events = max_group_events
        self.linger_seconds = linger_seconds
        self.source_refresh_seconds = source_refresh_seconds
        self.clock = clock
        self._tracking = tracking_name(self.projection)
        self._plans = PlanCache()
        self._sources: dict[str, Source] = {}
        self._keys: dict[bytes, tuple[str, int | None]] = {}  # key hash -> (source id, expires µs)
        # Negative caches (key hash / source id -> monotonic time it was found missing): a client
        # repeating a bad write key or source id would otherwise cost a query on the event loop per
        # request. Entries live as long as the positive cache may be stale (source_refresh_seconds).
        self._missing_keys: dict[bytes, float] = {}
        self._missing_sources: dict[str, float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._queue: list[_Request] = []
        self._queued_events = 0
        self._wakeup: asyncio.Event | None = None
        self._committer: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        self._accepting = False
        self._last_prune = 0.0
        self.groups_committed = 0  # for tests and metrics: transactions the committer ran
        self._load_sources()

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the group committer (and the source refresher). Safe to call twice."""
        if self._committer is not None:
            return
        await self._on_writer(self._catch_up_projection)
        self._wakeup = asyncio.Event()
        self._accepting = True
        self._committer = asyncio.create_task(self._commit_loop(), name="ingest-group-commit")
        if self.source_refresh_seconds > 0:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="ingest-source-refresh")

    async def stop(self) -> None:
        """Stop accepting, commit everything already queued, then stop the writer."""
        self._accepting = False
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._committer is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._committer
            self._committer = None
        self._writer.shutdown(wait=True)

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the single writer thread: every write of this process is serialised there."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    # -------------------------------------------------------------------------------- sources

    def source_for_write_key(self, write_key: str) -> Source:
        """The source a write key belongs to. Raises Unauthenticated (never says which part was wrong)
        and FailedPrecondition for a disabled source. Write keys are stored hashed."""
        key_hash = hash_write_key(write_key)
        entry = self._keys.get(key_hash)
        if entry is None:
            entry = self._lookup_key(key_hash)
        now_us = to_micros(self.clock())
        if entry is None or (entry[1] is not None and entry[1] <= now_us):
            raise Unauthenticated("the write key is not valid")
        source = self._sources.get(entry[0]) or self._lookup_source(entry[0])
        if source is None:
            raise Unauthenticated("the write key is not valid")
        return self._usable(source)

    def source(self, workspace: str, source_id: str) -> Source:
        """A source by id within a workspace. Raises NotFound."""
        return self._source(workspace, source_id)

    def _source(self, workspace: str, source_id: str, *, fresh: bool = False) -> Source:
        found = None if fresh else self._sources.get(source_id)
        if found is None:
            found = self._lookup_source(source_id, fresh=fresh)
        if found is None or found.workspace != workspace:
            # Another workspace's source is indistinguishable from no source at all.
            raise NotFound(
                f"no source '{source_id[:80]}' in workspace '{workspace}'",
                metadata={"source_id": source_id[:80]},
            )
        return found

    @staticmethod
    def _usable(source: Source) -> Source:
        if source.disabled:
            raise FailedPrecondition(
                f"source '{source.source_id}' is disabled", metadata={"source_id": source.source_id}
            )
        return source

    def collecting_source(self, workspace: str, source_id: str) -> Source:
        """The source gRPC collection names: it must exist in the workspace and not be disabled."""
        if not source_id:
            raise InvalidArgument(
                "name the source the events come from", violations=[("source_id", "is required")]
            )
        return self._usable(self._source(workspace, source_id))

    def _row_to_source(self, row: Any) -> Source:
        plan_proto = None
        plan = None
        if row.tracking_plan is not None:
            plan_proto = ingest_pb2.TrackingPlan.FromString(bytes(row.tracking_plan))
            plan = plan_from_proto(row.source_id, plan_proto)
        return Source(
            source_id=row.source_id,
            workspace=row.workspace,
            name=row.name,
            plan=plan,
            rate_limit_per_second=float(row.rate_limit_per_second or self.default_rate_limit),
            disabled=bool(row.disabled),
            write_key_hint=row.write_key_hint,
            created_at=from_micros(int(row.created_at)),
            tracking_plan=plan_proto,
        )

    def _load_sources(self) -> None:
        with self.store.engine.connect() as conn:
            found = {row.source_id: self._row_to_source(row) for row in conn.execute(sa.select(sources))}
            keys = {
                bytes(row.key_hash): (row.source_id, None if row.expires_at is None else int(row.expires_at))
                for row in conn.execute(sa.select(write_keys))
            }
        self._sources, self._keys = found, keys

    def _lookup_source(self, source_id: str, *, fresh: bool = False) -> Source | None:
        """The source from the database; `fresh` skips the negative cache (admin calls read their
        own writes and those of other replicas without waiting for it to expire)."""
        if _holds_nul(source_id) or (not fresh and self._recently_missing(self._missing_sources, source_id)):
            return None
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(sources).where(sources.c.source_id == source_id)).first()
        if row is None:
            _remember_missing(self._missing_sources, source_id)
            return None
        source = self._row_to_source(row)
        self._sources[source_id] = source
        self._missing_sources.pop(source_id, None)
        return source

    def _lookup_key(self, key_hash: bytes) -> tuple[str, int | None] | None:
        if self._recently_missing(self._missing_keys, key_hash):
            return None
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(write_keys).where(write_keys.c.key_hash == key_hash)).first()
        if row is None:
            _remember_missing(self._missing_keys, key_hash)
            return None
        entry = (str(row.source_id), None if row.expires_at is None else int(row.expires_at))
        self._keys[key_hash] = entry
        return entry

    def _recently_missing(self, missing: dict[Any, float], key: Any) -> bool:
        found_at = missing.get(key)
        if found_at is None:
            return False
        if time.monotonic() - found_at < self.source_refresh_seconds:
            return True
        missing.pop(key, None)
        return False

    async def _refresh_loop(self) -> None:
        """Pick up source changes made by other replicas sharing the database."""
        while True:
            await asyncio.sleep(self.source_refresh_seconds)
            try:
                await asyncio.to_thread(self._load_sources)
            except Exception:
                log.warning("ingest.source_refresh_failed", exc_info=True)

    def _compiled(self, source: Source) -> CompiledPlan | None:
        return self._plans.get(source.plan) if source.plan is not None else None

    async def create_source(
        self,
        workspace: str,
        name: str,
        *,
        tracking_plan: ingest_pb2.TrackingPlan | None = None,
        rate_limit_per_second: int = 0,
    ) -> tuple[Source, str]:
        """A new source and its write key (returned only here and by rotate_write_key)."""
        name = name.strip()
        if not name or len(name) > 200 or any(ch < " " or ch == "\x7f" for ch in name):
            raise InvalidArgument(
                "a source needs a name of 1-200 characters without control characters",
                violations=[("name", "1-200 characters, no control characters")],
            )
        source_id = "src_" + secrets.token_hex(8)
        plan = self._checked_plan(source_id, tracking_plan, previous_version=0) if tracking_plan else None
        write_key = new_write_key()
        message = ingest_pb2.SourceCreated(
            source_id=source_id,
            workspace=workspace,
            name=name,
            write_key_hash=hash_write_key(write_key),
            write_key_hint=write_key[-4:],
            rate_limit_per_second=rate_limit_per_second,
        )
        if plan is not None:
            message.tracking_plan.CopyFrom(plan)
        await self._on_writer(self._record_admin, source_id, workspace, message, 0)
        return self._source(workspace, source_id, fresh=True), write_key

    async def list_sources(
        self, workspace: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Source], str]:
        size = _page_size(page_size)
        if _holds_nul(page_token):  # a source id never holds NUL (and PostgreSQL cannot compare one)
            raise InvalidArgument(
                "the page token is not valid", violations=[("page.page_token", "is not valid")]
            )

        def query() -> list[Source]:
            statement = sa.select(sources).where(sources.c.workspace == workspace)
            if page_token:
                statement = statement.where(sources.c.source_id > page_token)
            statement = statement.order_by(sources.c.source_id).limit(size + 1)
            with self.store.engine.connect() as conn:
                return [self._row_to_source(row) for row in conn.execute(statement)]

        found = await asyncio.to_thread(query)
        next_token = found[size - 1].source_id if len(found) > size else ""
        return found[:size], next_token

    async def rotate_write_key(
        self, workspace: str, source_id: str, *, grace: timedelta = timedelta(0)
    ) -> tuple[Source, str]:
        """A new write key; the previous one keeps working for `grace`, then stops."""
        self._source(workspace, source_id, fresh=True)
        if grace < timedelta(0) or grace > timedelta(days=30):
            raise InvalidArgument(
                "the grace period must be between 0 and 30 days", violations=[("grace_seconds", "0-2592000")]
            )
        write_key = new_write_key()
        message = ingest_pb2.WriteKeyRotated(
            source_id=source_id, write_key_hash=hash_write_key(write_key), write_key_hint=write_key[-4:]
        )
        message.previous_key_expires_at.FromDatetime(self.clock() + grace)
        await self._on_writer(self._record_admin, source_id, workspace, message, None)
        return self._source(workspace, source_id, fresh=True), write_key

    async def set_tracking_plan(
        self, workspace: str, source_id: str, tracking_plan: ingest_pb2.TrackingPlan
    ) -> Source:
        """Replace the source's plan; the version is assigned here (previous + 1)."""
        current = self._source(workspace, source_id, fresh=True)
        previous = current.tracking_plan.version if current.tracking_plan is not None else 0
        plan = self._checked_plan(source_id, tracking_plan, previous_version=previous)
        message = ingest_pb2.TrackingPlanSet(source_id=source_id, tracking_plan=plan)
        await self._on_writer(self._record_admin, source_id, workspace, message, None)
        return self._source(workspace, source_id, fresh=True)

    async def disable_source(self, workspace: str, source_id: str) -> Source:
        """Stop collecting from a source (its write key stops working). Idempotent."""
        current = self._source(workspace, source_id, fresh=True)
        if not current.disabled:
            message = ingest_pb2.SourceDisabled(source_id=source_id)
            await self._on_writer(self._record_admin, source_id, workspace, message, None)
        return self._source(workspace, source_id, fresh=True)

    def _checked_plan(
        self, source_id: str, plan: ingest_pb2.TrackingPlan, *, previous_version: int
    ) -> ingest_pb2.TrackingPlan:
        checked = ingest_pb2.TrackingPlan()
        checked.CopyFrom(plan)
        checked.version = previous_version + 1
        CompiledPlan(plan_from_proto(source_id, checked))  # raises InvalidArgument naming the schema
        return checked

    def _record_admin(self, source_id: str, workspace: str, message: Any, expected: int | None) -> None:
        try:
            self._append_admin(source_id, workspace, message, expected)
        except _ProjectionBehind:
            self._catch_up_projection()
            self._append_admin(source_id, workspace, message, expected)
        self._lookup_source(source_id, fresh=True)
        if isinstance(message, ingest_pb2.SourceCreated | ingest_pb2.WriteKeyRotated):
            with self.store.engine.connect() as conn:
                for row in conn.execute(sa.select(write_keys).where(write_keys.c.source_id == source_id)):
                    self._missing_keys.pop(bytes(row.key_hash), None)
                    self._keys[bytes(row.key_hash)] = (
                        source_id,
                        None if row.expires_at is None else int(row.expires_at),
                    )

    def _append_admin(self, source_id: str, workspace: str, message: Any, expected: int | None) -> None:
        with self.store.transaction() as conn:
            recorded = self.store.append(
                [
                    NewEvent(
                        stream_id=f"ingest-source:{source_id}",
                        message=message,
                        expected_version=expected,
                        workspace=workspace,
                    )
                ],
                conn=conn,
            )
            self._require_current(conn, recorded)
            self.projection.handle(conn, recorded[0], message)
            self._checkpoint(conn, recorded)

    # ------------------------------------------------------------------------------ rate limits

    def check_rate(self, source: Source, events: int) -> None:
        """Raise ResourceExhausted(retry_after_seconds=...) when `source` is over its rate limit.

        A token bucket per source, in events per second, holding up to two seconds of the rate
        (and at least one maximal batch, so a full batch can always get through an idle source).
        """
        rate = max(source.rate_limit_per_second, 0.001)
        capacity = max(2.0 * rate, float(source.limits.max_batch_events))
        # The injectable clock, so tests can hold time still; a clock stepped back refills nothing.
        now = self.clock().timestamp()
        bucket = self._buckets.get(source.source_id)
        if bucket is None:
            bucket = self._buckets[source.source_id] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + max(now - bucket.updated, 0.0) * rate)
        bucket.updated = now
        if bucket.tokens < events:
            retry_after = round(max((events - bucket.tokens) / rate, 0.001), 3)
            raise ResourceExhausted(
                f"source '{source.source_id}' is over its rate limit of {rate:g} events per second",
                metadata={"source_id": source.source_id, "limit_per_second": f"{rate:g}"},
                retry_after_seconds=retry_after,
            )
        bucket.tokens -= events

    # ---------------------------------------------------------------------------------- submit

    def person(self, workspace: str, user_id: str, anonymous_id: str) -> tuple[str, str, str]:
        """(subject, user_id_index, anonymous_id_index) of an event's person; subject "" if none."""
        user_index = (
            self.store.blind_index(user_id, field=f"{workspace}:user_id", case_sensitive=True)
            if user_id
            else ""
        )
        anonymous_index = (
            self.store.blind_index(anonymous_id, field=f"{workspace}:anonymous_id", case_sensitive=True)
            if anonymous_id
            else ""
        )
        if user_index:
            subject = f"{workspace}:u:{user_index[:_SUBJECT_INDEX_CHARS]}"
        elif anonymous_index:
            subject = f"{workspace}:a:{anonymous_index[:_SUBJECT_INDEX_CHARS]}"
        else:
            subject = ""
        return subject, user_index, anonymous_index

    def _prepare(self, source: Source, intake: Intake, verdict: Verdict, received_at: datetime) -> _Item:
        workspace = source.workspace
        event = intake.event
        if not verdict.is_quarantined:
            assert event is not None
            subject, user_index, anonymous_index = self.person(workspace, event.user_id, event.anonymous_id)
            record = accepted_record(
                event,
                verdict,
                workspace=workspace,
                user_id_index=user_index,
                anonymous_id_index=anonymous_index,
            )
            new_event = NewEvent(
                stream_id=f"ingest:{subject}",
                message=record,
                subject=subject,
                workspace=workspace,
                occurred_at=event.timestamp,
                metadata={PARTITION_KEY: subject},
            )
            return _Item(intake, verdict, workspace, subject, new_event, message_id=event.message_id)
        quarantine_id = "q_" + uuid.uuid4().hex
        user_id, anonymous_id = _identifiers(intake)
        subject, user_index, anonymous_index = self.person(workspace, user_id, anonymous_id)
        subject = subject or f"{workspace}:q:{quarantine_id}"
        kept = quarantined_record(
            intake,
            verdict,
            workspace=workspace,
            source_id=source.source_id,
            quarantine_id=quarantine_id,
            received_at=received_at,
            user_id_index=user_index,
            anonymous_id_index=anonymous_index,
        )
        new_event = NewEvent(
            stream_id=f"ingest-quarantine:{workspace}",
            message=kept,
            subject=subject,
            workspace=workspace,
            metadata={PARTITION_KEY: subject},
        )
        return _Item(intake, verdict, workspace, subject, new_event, quarantine_id=quarantine_id)

    async def submit(self, source: Source, intakes: Sequence[Intake]) -> list[ingest_pb2.EventAck]:
        """Dedupe on (workspace, messageId), decide with the source's tracking plan, append
        EventAccepted / EventQuarantined, and return one ack per intake, in order. Returns only after
        the events are committed to the ingest log (group commit across concurrent callers)."""
        if not intakes:
            return []
        if not self._accepting:
            raise Unavailable("the ingest service is not accepting events (starting or stopping)")
        plan = self._compiled(source)
        received_at = self.clock()
        items = [self._prepare(source, intake, decide(intake, plan), received_at) for intake in intakes]
        return await self._enqueue(items)

    async def _enqueue(self, items: list[_Item]) -> list[ingest_pb2.EventAck]:
        if not self._accepting:  # checked again here: the caller may have awaited since its own check
            raise Unavailable("the ingest service is not accepting events (starting or stopping)")
        future: asyncio.Future[list[ingest_pb2.EventAck]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(items, future))
        self._queued_events += len(items)
        assert self._wakeup is not None
        self._wakeup.set()
        return await asyncio.shield(future)

    async def _commit_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if not self._accepting:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            if self.linger_seconds and self._queued_events < self.max_group_events:
                await asyncio.sleep(self.linger_seconds)  # let concurrent callers join this group
            group: list[_Request] = []
            events = 0
            while self._queue and (not group or events + len(self._queue[0].items) <= self.max_group_events):
                request = self._queue.pop(0)
                group.append(request)
                events += len(request.items)
            self._queued_events -= events
            try:
                outcomes = await self._on_writer(self._commit_group, [r.items for r in group])
            except Exception as error:
                outcomes = [_unavailable(error)] * len(group)
            for request, outcome in zip(group, outcomes, strict=True):
                if request.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    def _commit_group(self, requests: list[list[_Item]]) -> list[list[ingest_pb2.EventAck] | BaseException]:
        """On the writer thread: the whole group in one transaction; on a failure that is not the
        database's, each request alone so one bad request cannot fail the others."""
        self.groups_committed += 1
        try:
            acks = self._commit([item for items in requests for item in items])
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            return [_unavailable(error)] * len(requests)
        except Exception as error:
            if len(requests) == 1:
                return [_as_onefold(error)]
            outcomes: list[list[ingest_pb2.EventAck] | BaseException] = []
            for items in requests:
                try:
                    outcomes.append(self._commit(items))
                except Exception as single:
                    outcomes.append(_as_onefold(single))
            return outcomes
        out: list[list[ingest_pb2.EventAck] | BaseException] = []
        start = 0
        for items in requests:
            out.append(acks[start : start + len(items)])
            start += len(items)
        self._maybe_prune()
        return out

    def _commit(self, items: list[_Item]) -> list[ingest_pb2.EventAck]:
        """One transaction; events of erased subjects are turned into content-free quarantine
        records (nothing personal may be written for them). The erased subjects of the whole group
        are found with one query up front; only a subject erased after that query (a race) or read
        models found behind the log (see `_write`) cost a retry."""
        for _attempt in range(_ERASED_RACE_RETRIES):
            try:
                with self.store.transaction() as conn:
                    erased = self.store.erased_subjects(
                        conn, {item.subject for item in items if item.event is not None}
                    )
                    if erased:
                        items = [self._erased(item) if item.subject in erased else item for item in items]
                    return self._write(conn, items)
            except SubjectErased as race:
                items = [self._erased(item) if item.subject == race.subject else item for item in items]
            except _ProjectionBehind:
                self._catch_up_projection()
        raise Unavailable("the ingest log is busy; retry", retry_after_seconds=1.0)

    def _erased(self, item: _Item) -> _Item:
        quarantine_id = item.quarantine_id or "q_" + uuid.uuid4().hex
        record = ingest_pb2.EventQuarantined(
            quarantine_id=quarantine_id,
            reasons=[
                ingest_pb2.Violation(
                    path="",
                    message="the data subject was erased; events about it are no longer collected",
                    rule="subject_erased",
                )
            ],
            kind=ingest_pb2.FAILURE_KIND_SUBJECT_ERASED,
            workspace=item.workspace,
            source_id=item.intake.event.source_id if item.intake.event is not None else "",
        )
        record.received_at.FromDatetime(self.clock())
        new_event = NewEvent(
            stream_id=f"ingest-quarantine:{item.workspace}", message=record, workspace=item.workspace
        )
        return _Item(
            item.intake,
            Verdict.quarantined(item.verdict.kind or _PROTOCOL, ()),
            item.workspace,
            "",
            new_event,
            quarantine_id=quarantine_id,
            replay_of=item.replay_of,
        )

    def _write(self, conn: Connection, items: list[_Item]) -> list[ingest_pb2.EventAck]:
        """Dedupe, append, update the read models; returns the acks (valid once committed)."""
        now_us = to_micros(self.clock())
        horizon = now_us - int(self.dedupe_window.total_seconds() * 1_000_000)
        wanted: dict[str, list[int]] = {}  # workspace -> indexes of its items that carry a messageId
        for index, item in enumerate(items):
            if item.message_id and item.event is not None:
                wanted.setdefault(item.workspace, []).append(index)
        duplicate = [False] * len(items)
        for workspace, indexes in wanted.items():
            ids = [items[index].message_id for index in indexes]
            known = dedupe_lookup(conn, workspace, ids)
            seen = {message_id for message_id, seen_at in known.items() if seen_at > horizon}
            # first_sightings also keeps only the first copy of a messageId repeated in the group.
            for index, fresh in zip(indexes, first_sightings(ids, seen), strict=True):
                duplicate[index] = not fresh
        to_append: list[NewEvent] = []
        owners: list[tuple[int, str]] = []  # (item index, what the event is)
        for index, item in enumerate(items):
            if item.event is not None and not duplicate[index]:
                to_append.append(item.event)
                owners.append((index, "event"))
            if item.replay_of:
                to_append.append(self._replayed_event(item, duplicate[index]))
                owners.append((index, "replayed"))
        recorded = self.store.append(to_append, conn=conn) if to_append else []
        if recorded:
            # The dedupe lookup above is only exact if the read models had seen every earlier event.
            self._require_current(conn, recorded)
        dedupe_rows: list[tuple[str, str, int]] = []
        quarantined: list[tuple[RecordedEvent, ingest_pb2.EventQuarantined]] = []
        for (index, what), event, new in zip(owners, recorded, to_append, strict=True):
            message = new.message
            if what == "replayed":
                assert isinstance(message, ingest_pb2.QuarantineReplayed)
                self.projection.replayed(conn, message)
            elif isinstance(message, ingest_pb2.EventAccepted):
                dedupe_rows.append(
                    (items[index].workspace, items[index].message_id, to_micros(event.recorded_at))
                )
            elif isinstance(message, ingest_pb2.EventQuarantined):
                quarantined.append((event, message))
        if dedupe_rows:
            dedupe_record(conn, dedupe_rows)
        if quarantined:
            self.projection.quarantined(conn, quarantined)
        if recorded:
            self._checkpoint(conn, recorded)
        acks = []
        for index, item in enumerate(items):
            answer = ack(
                item.intake, item.verdict, duplicate=duplicate[index], quarantine_id=item.quarantine_id
            )
            if item.verdict.kind is not None and item.event is not None:
                record = item.event.message
                if isinstance(record, ingest_pb2.EventQuarantined):
                    answer.kind = record.kind
                    if not answer.reasons:
                        answer.reasons.extend(record.reasons)
            if item.replay_of:
                answer.quarantine_id = item.replay_of
            acks.append(answer)
        return acks

    def _replayed_event(self, item: _Item, duplicate: bool) -> NewEvent:
        if item.verdict.is_quarantined:
            status = ingest_pb2.ACK_STATUS_QUARANTINED
        else:
            status = ingest_pb2.ACK_STATUS_DUPLICATE if duplicate else ingest_pb2.ACK_STATUS_ACCEPTED
        message = ingest_pb2.QuarantineReplayed(
            quarantine_id=item.replay_of,
            workspace=item.workspace,
            status=status,
            message_id=item.intake.message_id,
        )
        if item.verdict.is_quarantined:
            message.reasons.extend(violations_to_proto(item.verdict.violations))
            ack_kind = ack(item.intake, item.verdict).kind
            message.kind = ack_kind
        return NewEvent(
            stream_id=f"ingest-quarantine:{item.workspace}", message=message, workspace=item.workspace
        )

    def _checkpoint(self, conn: Connection, recorded: Sequence[RecordedEvent]) -> None:
        last = recorded[-1]
        self.store.record_tracking(conn, self._tracking, last.position, last.event_id)

    def _require_current(self, conn: Connection, recorded: Sequence[RecordedEvent]) -> None:
        """Raise _ProjectionBehind unless the read models had seen every event before `recorded`
        (one query, like Projector.append). Every writer keeps them current in its own transaction,
        so this only fails after an interrupted rebuild or events written without them; the caller
        then rolls back, catches up and retries, so nothing is decided against stale read models."""
        if self.store.tracking_position(self._tracking, conn=conn) != recorded[0].position - 1:
            raise _ProjectionBehind

    def _catch_up_projection(self) -> None:
        """Bring the read models up to the log's head (at start, and after _ProjectionBehind)."""
        Projector(self.store, [self.projection]).catch_up()

    def _maybe_prune(self) -> None:
        """Forget dedupe rows older than the window, in bounded chunks: at most once a minute, or
        after the next group while a backlog of expired rows remains."""
        now = time.monotonic()
        if now - self._last_prune < 60.0:
            return
        self._last_prune = now
        horizon = to_micros(self.clock() - self.dedupe_window)
        # One DELETE of a day's expired rows can take long enough to stall the writer thread (and
        # every caller waiting on a group commit), so delete a bounded number of rows per statement,
        # a few statements per call; whatever is left goes on the next call.
        expired = (
            sa.select(dedupe.c.workspace, dedupe.c.message_id)
            .where(dedupe.c.accepted_at < horizon)
            .limit(_PRUNE_CHUNK)
        )
        statement = dedupe.delete().where(sa.tuple_(dedupe.c.workspace, dedupe.c.message_id).in_(expired))
        try:
            for _chunk in range(_PRUNE_CHUNKS_PER_CALL):
                with self.store.engine.begin() as conn:
                    deleted = conn.execute(statement).rowcount
                if deleted < _PRUNE_CHUNK:
                    break
            else:
                self._last_prune = 0.0  # more left: continue after the next group, not in a minute
        except sa.exc.SQLAlchemyError:
            log.warning("ingest.dedupe_prune_failed", exc_info=True)

    # ------------------------------------------------------------------------------ quarantine

    async def list_quarantined(
        self,
        workspace: str,
        *,
        source_id: str = "",
        kind: int = 0,
        include_replayed: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[ingest_pb2.QuarantinedEvent], str]:
        """Quarantined events of the workspace in log order; `page_token` continues a listing."""
        size = _page_size(page_size)
        after = _position_token(page_token)
        if _holds_nul(source_id):
            return [], ""  # no such source (and PostgreSQL cannot compare a text holding NUL)

        def query() -> list[tuple[int, ingest_pb2.QuarantinedEvent]]:
            statement = sa.select(quarantine).where(
                quarantine.c.workspace == workspace, quarantine.c.position > after
            )
            if source_id:
                statement = statement.where(quarantine.c.source_id == source_id)
            if kind:
                statement = statement.where(quarantine.c.kind == kind)
            if not include_replayed:
                statement = statement.where(quarantine.c.replayed.is_(False))
            statement = statement.order_by(quarantine.c.position).limit(size + 1)
            with self.store.engine.connect() as conn:
                rows = list(conn.execute(statement))
                out = []
                for row in rows:
                    record = self._load_quarantined(conn, int(row.position))
                    item = ingest_pb2.QuarantinedEvent(
                        quarantine_id=row.quarantine_id, record=record, replayed=bool(row.replayed)
                    )
                    item.quarantined_at.FromDatetime(from_micros(int(row.quarantined_at)))
                    out.append((int(row.position), item))
            return out

        found = await asyncio.to_thread(query)
        next_token = str(found[size - 1][0]) if len(found) > size else ""
        return [item for _, item in found[:size]], next_token

    def _load_quarantined(self, conn: Connection, position: int) -> ingest_pb2.EventQuarantined:
        events = self.store.read(after_position=position - 1, limit=1, conn=conn)
        message = self.store.decode(events[0], conn=conn)
        assert isinstance(message, ingest_pb2.EventQuarantined)
        return message

    async def replay_quarantined(
        self,
        workspace: str,
        *,
        quarantine_ids: Sequence[str] = (),
        source_id: str = "",
        kind: int = 0,
        dry_run: bool = False,
    ) -> list[ingest_pb2.EventAck]:
        """Re-submit quarantined events through the same checks with each source's CURRENT plan.

        Accepted ones are appended as EventAccepted (deduped like any event) with a
        QuarantineReplayed; ones that still fail get a QuarantineReplayed with the new reasons and
        stay listed. Replaying an already replayed event changes nothing and reports its outcome.
        """
        if not self._accepting:
            raise Unavailable("the ingest service is not accepting events (starting or stopping)")
        ids = list(dict.fromkeys(quarantine_ids))
        if not ids and _holds_nul(source_id):
            return []  # no such source (and PostgreSQL cannot compare a text holding NUL)

        def select() -> list[tuple[Any, ingest_pb2.EventQuarantined]]:
            statement = sa.select(quarantine).where(quarantine.c.workspace == workspace)
            if ids:
                # Ids holding NUL exist nowhere (PostgreSQL cannot compare them): reported missing below.
                storable = [qid for qid in ids if not _holds_nul(qid)]
                statement = statement.where(quarantine.c.quarantine_id.in_(storable))
            else:
                statement = statement.where(quarantine.c.replayed.is_(False))
                if source_id:
                    statement = statement.where(quarantine.c.source_id == source_id)
                if kind:
                    statement = statement.where(quarantine.c.kind == kind)
                statement = statement.order_by(quarantine.c.position).limit(MAX_REPLAY)
            with self.store.engine.connect() as conn:
                rows = list(conn.execute(statement))
                return [(row, self._load_quarantined(conn, int(row.position))) for row in rows]

        selected = await asyncio.to_thread(select)
        if ids:
            found = {row.quarantine_id for row, _ in selected}
            missing = [qid for qid in ids if qid not in found]
            if missing:
                raise NotFound(
                    f"no quarantined event {missing[0][:80]!r} in workspace '{workspace}'",
                    violations=[("quarantine_ids", f"unknown: {', '.join(m[:80] for m in missing[:10])}")],
                )
            order = {qid: i for i, qid in enumerate(ids)}
            selected.sort(key=lambda pair: order[pair[0].quarantine_id])
        answers: list[ingest_pb2.EventAck | None] = []
        pending: list[_Item] = []
        slots: list[int] = []
        for index, (row, record) in enumerate(selected):
            if row.replayed:
                answers.append(
                    ingest_pb2.EventAck(
                        message_id=row.message_id,
                        status=row.replay_status,
                        index=index,
                        quarantine_id=row.quarantine_id,
                    )
                )
                continue
            answers.append(None)
            slots.append(index)
            pending.append(self._replay_item(workspace, record, index))
        if pending and not dry_run:
            committed = await self._enqueue(pending)
        else:
            committed = [self._dry_ack(item) for item in pending]
        for slot, answer in zip(slots, committed, strict=True):
            answers[slot] = answer
        return [answer for answer in answers if answer is not None]

    def _replay_item(self, workspace: str, record: ingest_pb2.EventQuarantined, index: int) -> _Item:
        source = self._sources.get(record.source_id) or self._lookup_source(record.source_id)
        limits = source.limits if source is not None else DEFAULT_LIMITS
        intake = replace(intake_from_quarantined(record, limits=limits), index=index)
        plan = self._compiled(source) if source is not None else None
        verdict = decide(intake, plan)
        if record.kind == ingest_pb2.FAILURE_KIND_SUBJECT_ERASED:
            verdict = Verdict.quarantined(_PROTOCOL, ())
        pseudo_source = source or Source(source_id=record.source_id, workspace=workspace, name="")
        item = self._prepare(pseudo_source, intake, verdict, self.clock())
        if verdict.is_quarantined:
            # Still failing: no second quarantine record, only the QuarantineReplayed with the reasons.
            item = _Item(intake, verdict, workspace, item.subject, None)
        item.replay_of = record.quarantine_id
        return item

    @staticmethod
    def _dry_ack(item: _Item) -> ingest_pb2.EventAck:
        answer = ack(item.intake, item.verdict, quarantine_id=item.replay_of)
        answer.quarantine_id = item.replay_of
        return answer

    # -------------------------------------------------------------------- data-subject requests

    def _subjects(self, workspace: str, user_ids: Iterable[str], anonymous_ids: Iterable[str]) -> list[str]:
        subjects = [self.person(workspace, user_id, "")[0] for user_id in user_ids if user_id]
        subjects += [
            self.person(workspace, "", anonymous_id)[0] for anonymous_id in anonymous_ids if anonymous_id
        ]
        if not subjects:
            raise InvalidArgument(
                "name at least one identifier", violations=[("identifiers", "user_ids or anonymous_ids")]
            )
        return list(dict.fromkeys(subjects))

    def _subject_events(self, subjects: Sequence[str]) -> list[RecordedEvent]:
        events: dict[int, RecordedEvent] = {}
        for subject in subjects:
            for event in self.store.read_stream(f"ingest:{subject}"):
                events[event.position] = event
        with self.store.engine.connect() as conn:
            positions = [
                int(p)
                for p in conn.execute(
                    sa.select(quarantine.c.position).where(quarantine.c.subject.in_(list(subjects)))
                ).scalars()
            ]
            for position in positions:
                for event in self.store.read(after_position=position - 1, limit=1, conn=conn):
                    events[event.position] = event
        return [events[p] for p in sorted(events)]

    async def export_subject(
        self, workspace: str, user_ids: Sequence[str], anonymous_ids: Sequence[str]
    ) -> tuple[list[envelope_pb2.EventEnvelope], int]:
        """Every event (accepted and quarantined) of the identifiers, decrypted, in log order, and
        how many of the identifiers are erased (their events' personal fields read as erased)."""
        subjects = self._subjects(workspace, user_ids, anonymous_ids)

        def export() -> tuple[list[envelope_pb2.EventEnvelope], int]:
            envelopes = [self.store.to_envelope(event) for event in self._subject_events(subjects)]
            return envelopes, sum(1 for subject in subjects if self.store.is_erased(subject))

        return await asyncio.to_thread(export)

    async def erase_subject(
        self, workspace: str, user_ids: Sequence[str], anonymous_ids: Sequence[str]
    ) -> tuple[int, int]:
        """Crypto-shred the identifiers' events: (identifiers erased, events affected). Events stay
        in the log (the chain still verifies); their personal fields become unreadable, here and in
        every later relay of them. New events for an erased identifier are refused with a
        content-free quarantine record."""
        subjects = self._subjects(workspace, user_ids, anonymous_ids)

        def erase() -> tuple[int, int]:
            affected = len(self._subject_events(subjects))
            for subject in subjects:
                self.store.erase_subject(subject)
            return len(subjects), affected

        return await self._on_writer(erase)


_PROTOCOL = FailureKind.PROTOCOL_VIOLATION


def _identifiers(intake: Intake) -> tuple[str, str]:
    """Best-effort user / anonymous id of an event that may not have parsed (for its subject)."""
    if intake.event is not None:
        return intake.event.user_id, intake.event.anonymous_id
    if intake.wire_event is not None:
        return intake.wire_event.user_id[:1024], intake.wire_event.anonymous_id[:1024]
    if intake.raw_json:
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(intake.raw_json)
            if isinstance(document, dict):
                user_id, anonymous_id = document.get("userId"), document.get("anonymousId")
                return (
                    str(user_id)[:1024] if isinstance(user_id, str | int) and user_id != "" else "",
                    str(anonymous_id)[:1024]
                    if isinstance(anonymous_id, str | int) and anonymous_id != ""
                    else "",
                )
    return "", ""


def _holds_nul(text: str) -> bool:
    """Whether `text` holds NUL, which PostgreSQL text can neither store nor be compared with (a
    query with such a parameter fails). No id this service issues holds one, so a request naming one
    names nothing: answered as not found, without asking the database."""
    return "\x00" in text


def _remember_missing(missing: dict[Any, float], key: Any) -> None:
    # Bounded: random keys must not grow memory; forgetting them all only costs queries again.
    if len(missing) >= _MAX_MISSING:
        missing.clear()
    missing[key] = time.monotonic()


def _page_size(requested: int) -> int:
    return min(requested, MAX_PAGE_SIZE) if requested > 0 else DEFAULT_PAGE_SIZE


def _position_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 19:
        raise InvalidArgument("the page token is not valid", violations=[("page.page_token", "is not valid")])
    return int(token)


def _unavailable(error: BaseException) -> OnefoldError:
    log.warning("ingest.commit_failed", error=str(error)[:300], exc_info=error)
    return Unavailable("the ingest log is not available right now; retry", retry_after_seconds=1.0)


def _as_onefold(error: BaseException) -> BaseException:
    """The outcome a caller sees for a failed commit. Only the database or the OS failing is
    transient (Unavailable, retry); anything else is a bug, so it is passed on unchanged for the
    platform to answer INTERNAL with a log reference rather than hiding it behind "retry"."""
    if isinstance(error, OnefoldError):
        return error
    if isinstance(error, sa.exc.DBAPIError | OSError):
        return _unavailable(error)
    return error
