"""Sources and their write keys: who may send events, under which tracking plan and rate limit.

`SourceCreated`, `WriteKeyRotated`, `TrackingPlanSet` and `SourceDisabled` on `ingest-source:<id>`;
write keys exist only as SHA-256. Sources and keys are cached in memory (collection looks one up per
request); a refresh loop picks up changes made by other replicas sharing the database.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog import NewEvent
from onefold.eventlog.models import from_micros, to_micros
from onefold.eventlog.service import ServiceLog
from onefold.ingest.adapters.read_model import sources, write_keys
from onefold.ingest.application.requests import capped_page_size, holds_nul, remember_missing
from onefold.ingest.domain import (
    DEFAULT_LIMITS,
    CompiledPlan,
    Limits,
    PlanCache,
    TrackingPlan,
    plan_from_proto,
)
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.ingest.application")
WRITE_KEY_PREFIX = "ofw_"


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


class SourceUseCases:
    """Authenticating write keys and administering sources (state set by IngestApplication)."""

    log: ServiceLog
    clock: Callable[[], datetime]
    default_rate_limit: float
    source_refresh_seconds: float
    _plans: PlanCache
    _sources: dict[str, Source]
    _keys: dict[bytes, tuple[str, int | None]]  # key hash -> (source id, expires µs)
    # Negative caches (key hash / source id -> monotonic time it was found missing): a client
    # repeating a bad write key or source id would otherwise cost a query on the event loop per
    # request. Entries live as long as the positive cache may be stale (source_refresh_seconds).
    _missing_keys: dict[bytes, float]
    _missing_sources: dict[str, float]

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
            # A read-model column (the plan as applied), not a row of the log.
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
        with self.log.store.engine.connect() as conn:
            found = {row.source_id: self._row_to_source(row) for row in conn.execute(sa.select(sources))}
            keys = {
                bytes(row.key_hash): (row.source_id, None if row.expires_at is None else int(row.expires_at))
                for row in conn.execute(sa.select(write_keys))
            }
        self._sources, self._keys = found, keys

    def _lookup_source(self, source_id: str, *, fresh: bool = False) -> Source | None:
        """The source from the database; `fresh` skips the negative cache (admin calls read their
        own writes and those of other replicas without waiting for it to expire)."""
        if holds_nul(source_id) or (not fresh and self._recently_missing(self._missing_sources, source_id)):
            return None
        with self.log.store.engine.connect() as conn:
            row = conn.execute(sa.select(sources).where(sources.c.source_id == source_id)).first()
        if row is None:
            remember_missing(self._missing_sources, source_id)
            return None
        source = self._row_to_source(row)
        self._sources[source_id] = source
        self._missing_sources.pop(source_id, None)
        return source

    def _lookup_key(self, key_hash: bytes) -> tuple[str, int | None] | None:
        if self._recently_missing(self._missing_keys, key_hash):
            return None
        with self.log.store.engine.connect() as conn:
            row = conn.execute(sa.select(write_keys).where(write_keys.c.key_hash == key_hash)).first()
        if row is None:
            remember_missing(self._missing_keys, key_hash)
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

    async def refresh_sources(self) -> None:
        """Pick up source changes made by other replicas sharing the database (a loop; none when
        `source_refresh_seconds` is 0)."""
        while self.source_refresh_seconds > 0:
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
        await self._record_source_event(source_id, workspace, message, expected_version=0)
        return self._source(workspace, source_id, fresh=True), write_key

    async def list_sources(
        self, workspace: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Source], str]:
        size = capped_page_size(page_size)
        if holds_nul(page_token):  # a source id never holds NUL (and PostgreSQL cannot compare one)
            raise InvalidArgument(
                "the page token is not valid", violations=[("page.page_token", "is not valid")]
            )

        def query() -> list[Source]:
            statement = sa.select(sources).where(sources.c.workspace == workspace)
            if page_token:
                statement = statement.where(sources.c.source_id > page_token)
            statement = statement.order_by(sources.c.source_id).limit(size + 1)
            with self.log.store.engine.connect() as conn:
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
        await self._record_source_event(source_id, workspace, message)
        return self._source(workspace, source_id, fresh=True), write_key

    async def set_tracking_plan(
        self, workspace: str, source_id: str, tracking_plan: ingest_pb2.TrackingPlan
    ) -> Source:
        """Replace the source's plan; the version is assigned here (previous + 1)."""
        current = self._source(workspace, source_id, fresh=True)
        previous = current.tracking_plan.version if current.tracking_plan is not None else 0
        plan = self._checked_plan(source_id, tracking_plan, previous_version=previous)
        message = ingest_pb2.TrackingPlanSet(source_id=source_id, tracking_plan=plan)
        await self._record_source_event(source_id, workspace, message)
        return self._source(workspace, source_id, fresh=True)

    async def disable_source(self, workspace: str, source_id: str) -> Source:
        """Stop collecting from a source (its write key stops working). Idempotent."""
        current = self._source(workspace, source_id, fresh=True)
        if not current.disabled:
            message = ingest_pb2.SourceDisabled(source_id=source_id)
            await self._record_source_event(source_id, workspace, message)
        return self._source(workspace, source_id, fresh=True)

    def _checked_plan(
        self, source_id: str, plan: ingest_pb2.TrackingPlan, *, previous_version: int
    ) -> ingest_pb2.TrackingPlan:
        checked = ingest_pb2.TrackingPlan()
        checked.CopyFrom(plan)
        checked.version = previous_version + 1
        CompiledPlan(plan_from_proto(source_id, checked))  # raises InvalidArgument naming the schema
        return checked

    async def _record_source_event(
        self, source_id: str, workspace: str, message: Any, *, expected_version: int | None = None
    ) -> None:
        """Append the source's event (through the one write path), then refresh its cache entries."""
        event = NewEvent(
            stream_id=f"ingest-source:{source_id}",
            message=message,
            expected_version=expected_version,
            workspace=workspace,
        )
        projector = self.log.projector
        await self.log.writer.run(projector.write, functools.partial(projector.record, events=[event]))
        keys_changed = isinstance(message, ingest_pb2.SourceCreated | ingest_pb2.WriteKeyRotated)
        await asyncio.to_thread(self._reload_source, source_id, keys_changed)

    def _reload_source(self, source_id: str, keys_changed: bool) -> None:
        self._lookup_source(source_id, fresh=True)
        if not keys_changed:
            return
        with self.log.store.engine.connect() as conn:
            for row in conn.execute(sa.select(write_keys).where(write_keys.c.source_id == source_id)):
                self._missing_keys.pop(bytes(row.key_hash), None)
                self._keys[bytes(row.key_hash)] = (
                    source_id,
                    None if row.expires_at is None else int(row.expires_at),
                )
