"""Fixtures for the segments service's application tests: the application on a fresh database with a
controllable clock, and identity's events built as the subscriber hands them over.

- `segments`: a `SegmentsHarness` on a fresh SQLite file; `make_segments(url)` on any database URL
  (a second harness on the same file is the service restarted).
- The harness's shortcuts: `apply(definition)`, `track(profile, event, at, **properties)`,
  `traits(profile, **traits)`, `merge(survivor, merged)`, `unmerge(kept, parts)` deliver identity
  envelopes in one subscriber batch (`deliver`); `model_tag(profile, tag, value)` delivers an insights
  model tag (`deliver_insights`); `fire_timers()` and `run_backfills()` run the loops'
  work once; `members(name)`, `profile(profile, as_of)`, `history(profile)`, `events(profile)` read
  back.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message

from onefold.contracts.common.v1 import pagination_pb2
from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.insights.v1 import models_pb2
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog import EventStore
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.models import from_micros
from onefold.eventlog.service import ServiceLog
from onefold.platform.database import create_engine
from onefold.segments.adapters.read_model import SegmentsReadModel, members
from onefold.segments.application import SegmentsApplication
from onefold.segments.domain.definitions import SECOND
from onefold.segments.domain.events import REGISTRY
from onefold.segments.domain.streams import profile_stream

T = TypeVar("T")
WORKSPACE = "acme"
T0 = 1_780_000_000 * SECOND


class Clock:
    """The application's clock in microseconds: set and moved by the test."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, micros: int) -> int:
        self.now += micros
        return self.now


def envelope(message: Message, occurred_at: int, workspace: str = WORKSPACE) -> EventEnvelope:
    out = EventEnvelope(
        event_id=str(uuid.uuid4()),
        type=message.DESCRIPTOR.full_name,
        workspace=workspace,
        payload=message.SerializeToString(),
    )
    out.occurred_at.FromDatetime(from_micros(occurred_at))
    return out


def resolved(profile_id: str, name: str, at: int, keys: tuple[str, ...] = (), **properties: Any) -> Message:
    event = ingest_pb2.TrackingEvent(type=ingest_pb2.EVENT_TYPE_TRACK, event=name)
    event.timestamp.FromDatetime(from_micros(at))
    event.properties.update(properties)
    return identity_pb2.EventResolved(
        profile_id=profile_id, workspace=WORKSPACE, event_id=str(uuid.uuid4()), event=event, keys=list(keys)
    )


@dataclass
class SegmentsHarness:
    log: ServiceLog
    app: SegmentsApplication
    projection: SegmentsReadModel
    clock: Clock
    loop: asyncio.AbstractEventLoop

    @property
    def store(self) -> EventStore:
        return self.log.store

    def sync(self, use_case: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(use_case, self.loop).result()

    def close(self) -> None:
        """Stop as the service does (a test may close one early: a restart); idempotent."""
        if not self.loop.is_running():
            return
        self.sync(self.log.writer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.store.engine.dispose()

    # -------------------------------------------------------------------------- definitions

    def apply(self, definition: pb.Definition, *, dry_run: bool = False) -> pb.ApplyDefinitionResponse:
        return self.sync(self.app.definitions.apply(WORKSPACE, definition, "cred-test", dry_run=dry_run))

    def archive(self, name: str) -> pb.Definition:
        return self.sync(self.app.definitions.archive(WORKSPACE, name, "cred-test"))

    def run_backfills(self, pages: int | None = None) -> int:
        """Run unfinished backfills' pages (all, or `pages` of them) as the loop does; pages run."""
        ran = 0
        with self.store.engine.connect() as conn:
            running = self.app.states.unfinished_backfills(conn)
        for backfill in running:
            while not backfill.finished and (pages is None or ran < pages):
                backfill = self.log.projector.write(
                    lambda conn, b=backfill: self.app.profiles.backfill_page(conn, backfill=b)
                )
                ran += 1
        return ran

    # -------------------------------------------------------------------------- identity's events

    def deliver(self, *messages: Message, occurred_at: int | None = None) -> None:
        """One identity subscriber batch: one store transaction around the handler."""
        envelopes = [envelope(m, occurred_at or self.clock.now) for m in messages]
        with self.store.transaction() as conn:
            self.app.profiles.handle_identity(conn, envelopes)

    def track(
        self, profile_id: str, name: str, at: int | None = None, keys: tuple[str, ...] = (), **properties: Any
    ) -> None:
        self.deliver(resolved(profile_id, name, self.clock.now if at is None else at, keys, **properties))

    def traits(self, profile_id: str, keys: tuple[str, ...] = (), **traits: Any) -> None:
        message = identity_pb2.TraitsUpdated(
            profile_id=profile_id, workspace=WORKSPACE, evidence_event_id=str(uuid.uuid4()), keys=list(keys)
        )
        message.traits.update(traits)
        self.deliver(message)

    def merge(self, survivor: str, merged: str) -> None:
        self.deliver(identity_pb2.ProfilesMerged(survivor_id=survivor, merged_id=merged, workspace=WORKSPACE))

    def unmerge(self, kept: str, parts: dict[str, list[str]]) -> None:
        """Identity splits `kept` into `parts` (profile id -> its identifier keys)."""
        self.deliver(
            identity_pb2.ProfileUnmerged(
                profile_id=kept,
                workspace=WORKSPACE,
                parts=[identity_pb2.ProfileUnmerged.Part(profile_id=p, keys=k) for p, k in parts.items()],
            )
        )

    # -------------------------------------------------------------------------- insights' model tags

    def deliver_insights(self, *messages: Message) -> None:
        """One insights subscriber batch: one store transaction around the handler."""
        envelopes = [envelope(m, self.clock.now) for m in messages]
        with self.store.transaction() as conn:
            self.app.profiles.handle_insights(conn, envelopes)

    def model_tag(
        self, profile_id: str, tag: str, value: str, score: float = 0.5, model_version: str = "churn_risk@v1"
    ) -> None:
        self.deliver_insights(
            models_pb2.ProfileModelTagged(
                workspace=WORKSPACE,
                profile_id=profile_id,
                tag=tag,
                value=value,
                score=score,
                model=model_version.split("@")[0],
                model_version=model_version,
            )
        )

    def fire_timers(self) -> int:
        return self.log.projector.write(self.app.profiles.fire_due)

    def run_schedules(self) -> int | None:
        """Start the scheduled runs due now (as the loop does); the next moment one falls due."""
        return self.sync(self.app.schedules.run_once())

    # -------------------------------------------------------------------------- reading back

    def members(self, name: str) -> list[str]:
        with self.store.engine.connect() as conn:
            return [
                str(r[0])
                for r in conn.execute(
                    sa.select(members.c.profile_id)
                    .where(members.c.workspace == WORKSPACE, members.c.name == name)
                    .order_by(members.c.profile_id)
                )
            ]

    def profile(self, profile_id: str, as_of: datetime | None = None) -> pb.ProfileSegments:
        return self.sync(self.app.queries.profile(WORKSPACE, profile_id, as_of))

    def history(self, profile_id: str, name: str = "") -> pb.GetMembershipHistoryResponse:
        return self.sync(self.app.queries.history(WORKSPACE, profile_id, name, pagination_pb2.PageRequest()))

    def events(self, profile_id: str) -> list[Message]:
        return [self.store.decode(e) for e in self.store.read_stream(profile_stream(WORKSPACE, profile_id))]

    def member_rows(self) -> list[tuple[Any, ...]]:
        with self.store.engine.connect() as conn:
            return sorted(tuple(r)[:3] for r in conn.execute(sa.select(members)))

    def rebuild(self) -> int:
        return self.log.projector.rebuild(self.projection)


def make_harness(url: str, keys: KeyEncryptionKey, clock: Clock) -> SegmentsHarness:
    store = EventStore(create_engine(url), service="segments", registry=REGISTRY, keys=keys)
    store.create_schema()
    projection = SegmentsReadModel()
    log = ServiceLog(store, projections=[projection])
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="segments-harness", daemon=True).start()
    return SegmentsHarness(log, SegmentsApplication(log, clock=clock), projection, clock, loop)


@pytest.fixture
def make_segments() -> Iterator[Callable[..., SegmentsHarness]]:
    made: list[SegmentsHarness] = []
    keys = KeyEncryptionKey.generate()

    def make(url: str, clock: Clock | None = None) -> SegmentsHarness:
        harness = make_harness(url, keys, clock or Clock())
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def segments(tmp_path: Path, make_segments: Callable[..., SegmentsHarness]) -> SegmentsHarness:
    return make_segments(f"sqlite:///{tmp_path / 'segments.db'}")


@pytest.fixture
def segments_on_both_databases(
    database_url: str, make_segments: Callable[..., SegmentsHarness]
) -> SegmentsHarness:
    """As `segments`, once on SQLite and once on PostgreSQL (skipped without it)."""
    return make_segments(database_url)
