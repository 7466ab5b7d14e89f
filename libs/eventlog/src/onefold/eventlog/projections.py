"""Projections (read models folded from the log), replay, as-of reads and snapshots.

- A `Projection` owns some tables and folds events into them with `handle`. The `Projector` is the
  one write path of every service: `write(work)` runs a transaction in which `record(conn, events)`
  appends, folds into every projection and moves the tracking rows (`projection:<name>`) together,
  after checking the projections are current. It also catches up from the tracking rows and
  `rebuild`s a projection by
  resetting its tables and re-folding the whole log, with an optional rich progress bar. A rebuilt
  projection equals the live one because both run the same `handle` over the same events in order.
- `fold_stream` answers as-of questions: the state of a stream as the system knew it at T
  (`recorded_at <= T`) or as it was in the world at T (`occurred_at <= T`, folded in occurred order).
- `SnapshotStore` keeps a folded state (a protobuf message) at a stream version; personal fields of
  the state are encrypted like event payloads and the snapshot is deleted when its subject is erased.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar, runtime_checkable

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from google.protobuf.message import DecodeError, Message
from sqlalchemy.engine import Connection

from onefold.eventlog import schema
from onefold.eventlog.mapper import EventMapper, NeedsKey
from onefold.eventlog.models import NewEvent, RecordedEvent
from onefold.eventlog.registry import EventType, pii_plan
from onefold.eventlog.store import EventStore
from onefold.platform.errors import Unavailable

S = TypeVar("S")
T = TypeVar("T")
M = TypeVar("M", bound=Message)
ProgressCallback = Callable[[int, int], None]  # (events done, events total)


@runtime_checkable
class Projection(Protocol):
    """A read model: `handle` folds one event into `tables`; `reset` empties them."""

    name: str
    tables: Sequence[sa.Table]

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None: ...

    def reset(self, conn: Connection) -> None: ...


class PublicFieldsProjection(Projection, Protocol):
    """A projection that folds the events of `public_types` from their public fields only: catch-up
    and rebuild decode those without fetching a data key or decrypting (live, `record` hands every
    projection the message as written)."""

    public_types: frozenset[str]


class BufferedProjection(Projection, Protocol):
    """A projection that buffers writes in memory and writes them in `flush` (once per batch)."""

    def flush(self, conn: Connection) -> None: ...


class ProjectionBehind(Exception):
    """A projection has not seen every event before this transaction's (see Projector.record)."""


def tracking_name(projection: Projection) -> str:
    return f"projection:{projection.name}"


class Projector:
    """Keeps projections in step with the log: live, by catching up, or by a full rebuild."""

    def __init__(self, store: EventStore, projections: Sequence[Projection]) -> None:
        self.store = store
        self.projections = list(projections)

    def create_tables(self) -> None:
        tables = [table for projection in self.projections for table in projection.tables]
        if tables:
            self.store.create_tables(tables[0].metadata, tables)

    def record(self, conn: Connection, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """THE write path: append `events` and fold them into every projection, with the tracking
        rows, in the caller's transaction (from `write` or a subscriber's batch).

        Decisions are taken against the read models, so they must have seen every earlier event:
        raises ProjectionBehind when one lags (after an interrupted rebuild, or events written
        without it); `write` then rolls back, catches up and runs the work again. The messages are
        folded as given: nothing is re-read or decoded.
        """
        recorded = self.store.append(events, conn=conn)
        if not recorded:
            return recorded
        first = recorded[0].position
        for projection in self.projections:
            if self.store.tracking_position(tracking_name(projection), conn=conn) != first - 1:
                raise ProjectionBehind(projection.name)
        for projection in self.projections:
            handle = projection.handle
            for event, new in zip(recorded, events, strict=True):
                handle(conn, event, new.message)
            flush = getattr(projection, "flush", None)
            if flush is not None:
                flush(conn)
            last = recorded[-1]
            self.store.record_tracking(conn, tracking_name(projection), last.position, last.event_id)
        return recorded

    def write(self, work: Callable[[Connection], T], *, attempts: int = 3) -> T:
        """Run `work(conn)` in one write transaction; when a projection was behind, catch up and run
        it again (so nothing is decided against a stale read model). Call on the writer thread."""
        for _attempt in range(attempts):
            try:
                with self.store.transaction() as conn:
                    return work(conn)
            except ProjectionBehind:
                self.catch_up()
        raise Unavailable(
            f"the {self.store.service} read model is being rebuilt; retry", retry_after_seconds=1.0
        )

    def _apply(self, conn: Connection, projection: Projection, events: Sequence[RecordedEvent]) -> None:
        decode = self.store.decode
        handle = projection.handle
        public_types: frozenset[str] = getattr(projection, "public_types", frozenset())
        for event in events:
            handle(conn, event, decode(event, conn=conn, decrypt=event.type not in public_types))
        flush = getattr(projection, "flush", None)
        if flush is not None:
            flush(conn)
        last = events[-1]
        self.store.record_tracking(conn, tracking_name(projection), last.position, last.event_id)

    def catch_up(
        self,
        projection: Projection | None = None,
        *,
        batch_size: int = 5000,
        report: ProgressCallback | None = None,
    ) -> int:
        """Apply the events the projection(s) have not seen yet, one transaction per batch.

        Returns how many events were applied. Each batch commits the projection's writes together
        with its tracking row, so an interrupted catch-up resumes where it stopped.
        """
        applied = 0
        total = self.store.head_position() if report is not None else 0
        for target in [projection] if projection is not None else self.projections:
            while True:
                with self.store.transaction() as conn:
                    after = self.store.tracking_position(tracking_name(target), conn=conn)
                    batch = self.store.read(after_position=after, limit=batch_size, conn=conn)
                    if batch:
                        self._apply(conn, target, batch)
                applied += len(batch)
                if report is not None:
                    report(applied, max(total, applied))
                if len(batch) < batch_size:
                    break
        return applied

    def rebuild(
        self,
        projection: Projection,
        *,
        progress: bool | ProgressCallback = False,
        batch_size: int = 5000,
    ) -> int:
        """Reset the projection and fold the whole log into it again; returns events folded.

        `progress=True` shows a rich progress bar on stderr; a callable gets (done, total).
        """
        with self.store.transaction() as conn:
            projection.reset(conn)
            self.store.record_tracking(conn, tracking_name(projection), 0, "")
        if progress is True:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (
                TextColumn(f"rebuilding {projection.name}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=Console(stderr=True)) as bar:
                task = bar.add_task("rebuild", total=self.store.head_position())
                return self.catch_up(
                    projection,
                    batch_size=batch_size,
                    report=lambda done, total: bar.update(task, completed=done, total=total),
                )
        return self.catch_up(
            projection, batch_size=batch_size, report=progress if callable(progress) else None
        )


# ----------------------------------------------------------------------------------- as-of reads


def fold_stream(
    store: EventStore,
    stream_id: str,
    apply: Callable[[S, RecordedEvent, Message], S],
    initial: S,
    *,
    recorded_at_or_before: datetime | None = None,
    occurred_at_or_before: datetime | None = None,
) -> S:
    """Fold one stream, optionally as of a moment.

    `recorded_at_or_before`: what the system knew at T. `occurred_at_or_before`: what was true in
    the world at T; those events are folded in the order they occurred (then by version), so a
    late-recorded, earlier-occurring event lands where it belongs.
    """
    events = store.read_stream(
        stream_id, recorded_before=recorded_at_or_before, occurred_before=occurred_at_or_before
    )
    if occurred_at_or_before is not None:
        events.sort(key=lambda event: (event.occurred_at, event.stream_version))
    state = initial
    for event in events:
        state = apply(state, event, store.decode(event))
    return state


# ------------------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class StreamFold(Generic[M]):
    """How to fold one kind of stream into a protobuf state; `name` keys its snapshots."""

    name: str
    state_class: type[M]
    apply: Callable[[M, RecordedEvent, Message], M]


class SnapshotStore:
    """Folded stream states at a version, so a long stream need not be replayed from zero."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._state_types: dict[type[Message], EventType] = {}

    def _state_type(self, state_class: type[Message]) -> EventType:
        event_type = self._state_types.get(state_class)
        if event_type is None:
            event_type = EventType(
                name=state_class.DESCRIPTOR.full_name,
                message_class=state_class,
                schema_version=1,
                pii=pii_plan(state_class.DESCRIPTOR),
            )
            self._state_types[state_class] = event_type
        return event_type

    def save(
        self, stream_id: str, fold: StreamFold[M], version: int, position: int, state: M, subject: str = ""
    ) -> None:
        event_type = self._state_type(fold.state_class)
        with self.store.transaction() as conn:
            cipher = None
            if event_type.pii.has_pii and subject and self.store.keys is not None:
                cipher = self.store._ciphers(conn, [subject], create=True).get(subject)
            try:
                payload = EventMapper.encode(event_type, state, subject, cipher)
            except NeedsKey:
                return  # no key (or erased subject): personal state is simply not snapshotted
            table = schema.snapshots
            conn.execute(table.delete().where((table.c.stream_id == stream_id) & (table.c.fold == fold.name)))
            conn.execute(
                table.insert().values(
                    stream_id=stream_id,
                    fold=fold.name,
                    stream_version=version,
                    position=position,
                    type=event_type.name,
                    state=payload,
                    subject=subject,
                    recorded_at=time.time_ns() // 1000,
                )
            )

    def load(self, stream_id: str, fold: StreamFold[M]) -> tuple[int, M] | None:
        """(version, state) of the latest snapshot, or None (also when it does not decode)."""
        table = schema.snapshots
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(table.c.stream_version, table.c.state, table.c.subject, table.c.type).where(
                    (table.c.stream_id == stream_id) & (table.c.fold == fold.name)
                )
            ).first()
        if row is None or row[3] != fold.state_class.DESCRIPTOR.full_name:
            return None
        event_type = self._state_type(fold.state_class)
        payload, subject = bytes(row[1]), row[2]
        cipher = None
        if EventMapper.has_sealed_part(payload):
            if self.store.keys is None:
                return None
            with self.store.engine.connect() as conn:
                cipher = self.store._ciphers(conn, [subject], create=False).get(subject)
            if cipher is None:
                return None  # erased (or never keyed): replay instead
        try:
            state = EventMapper.decode(event_type, payload, subject, cipher)
        except (DecodeError, ValueError, InvalidTag):
            return None  # a snapshot is only a cache: fall back to a replay
        assert isinstance(state, fold.state_class)
        return int(row[0]), state


def load_state(
    store: EventStore,
    stream_id: str,
    fold: StreamFold[M],
    *,
    snapshots: SnapshotStore | None = None,
    snapshot_every: int = 0,
    subject: str = "",
) -> tuple[M, int]:
    """(state, version) of a stream: from the latest snapshot plus newer events, or from zero.

    With `snapshot_every`, a new snapshot is saved once that many events were folded past the last.
    """
    state: M = fold.state_class()
    version = 0
    if snapshots is not None:
        loaded = snapshots.load(stream_id, fold)
        if loaded is not None:
            version, state = loaded
    folded = 0
    last_position = 0
    for event in store.read_stream(stream_id, after_version=version):
        state = fold.apply(state, event, store.decode(event))
        version = event.stream_version
        last_position = event.position
        folded += 1
    if snapshots is not None and snapshot_every and folded >= snapshot_every:
        snapshots.save(stream_id, fold, version, last_position, state, subject=subject)
    return state, version
