"""EventStore: the service's append-only, hash-chained, crypto-shredding event log.

Layering (as in pyeventsourcing): the store is the *recorder* (SQL, positions, the chain, keys);
`EventMapper` turns messages into stored payloads and back; `DataKeyCipher` / `KeyEncryptionKey` do
the cryptography. On the hot path: one batch = one transaction, plain SQL (a multi-row INSERT on
SQLite, binary COPY on PostgreSQL), hashes and ciphertext computed in-process, stream versions
from a cache checked against the chain head (see _StreamVersionCache).

Gap-free positions: appends are serialised (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a
transaction-level advisory lock), then the next positions are `max + 1 ...` assigned here. Nothing is
taken from a sequence, so a rolled-back append leaves no hole.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from google.protobuf.message import DecodeError, Message
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from onefold.contracts.common.v1 import envelope_pb2
from onefold.eventlog import schema
from onefold.eventlog.chain import GENESIS_HASH
from onefold.eventlog.chain import HEADER as _HASH_HEADER
from onefold.eventlog.chain import canonical_metadata as _canonical_json
from onefold.eventlog.cipher import (
    NONCE_BYTES,
    BlindIndex,
    DataKeyCipher,
    KeyCache,
    KeyEncryptionKey,
    new_data_key,
)
from onefold.eventlog.errors import (
    ConcurrencyError,
    CorruptPayload,
    DuplicateEvent,
    EventTooLarge,
    InvalidEvent,
    MissingKeyEncryptionKey,
    SubjectErased,
)
from onefold.eventlog.mapper import SEALED_TAG, EventMapper, NeedsKey
from onefold.eventlog.models import (
    ChainDigest,
    NewEvent,
    RecordedEvent,
    VerifyResult,
    from_micros,
    make_recorded_event,
    to_micros,
)
from onefold.eventlog.registry import EventRegistry, EventType, check_blind_indexes
from onefold.platform.database import create_engine

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
# SQLite page size for new databases (PostgreSQL's is 8 KiB too) and the per-connection page cache.
SQLITE_PAGE_SIZE = 8192
SQLITE_CACHE_KIB = 32 * 1024
# Keeps IN (...) lists well under SQLite's and PostgreSQL's bound-parameter limits.
_IN_CHUNK = 5000
_APPEND_LOCK_KEY = int.from_bytes(hashlib.sha256(b"onefold.eventlog.append").digest()[:8], "big", signed=True)
_WRITE_OPTION = "onefold_eventlog_write"
_NEW_SUBJECTS = "onefold_eventlog_new_subjects"
_APPENDED_HEAD = "onefold_eventlog_appended_head"
_PENDING_VERSIONS = "onefold_eventlog_pending_versions"
_OWN_TRANSACTION = "onefold_eventlog_own_transaction"

_EVENT_COLUMNS = (
    schema.events.c.position,
    schema.events.c.event_id,
    schema.events.c.stream_id,
    schema.events.c.stream_version,
    schema.events.c.type,
    schema.events.c.schema_version,
    schema.events.c.payload,
    schema.events.c.metadata,
    schema.events.c.workspace,
    schema.events.c.subject,
    schema.events.c.occurred_at,
    schema.events.c.recorded_at,
    schema.events.c.prev_hash,
    schema.events.c.hash,
)

_EVENT_COLUMN_NAMES = tuple(column.name for column in _EVENT_COLUMNS)
try:  # COPY runs on the driver's connection, so its errors are the driver's own
    from psycopg import IntegrityError as _PsycopgIntegrityError

    _DRIVER_INTEGRITY_ERRORS: tuple[type[Exception], ...] = (_PsycopgIntegrityError,)
except ImportError:  # pragma: no cover - psycopg ships with the platform
    _DRIVER_INTEGRITY_ERRORS = ()
_INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sa.exc.IntegrityError, *_DRIVER_INTEGRITY_ERRORS)
_PG_COPY = f"COPY events ({', '.join(_EVENT_COLUMN_NAMES)}) FROM STDIN (FORMAT BINARY)"
_PG_COPY_TYPES = [
    {"position": "int8", "stream_version": "int8", "schema_version": "int4", "payload": "bytea",
     "occurred_at": "int8", "recorded_at": "int8", "prev_hash": "bytea", "hash": "bytea"}.get(name, "text")
    for name in _EVENT_COLUMN_NAMES
]  # fmt: skip
_READ_SQL = f"SELECT {', '.join(_EVENT_COLUMN_NAMES)} FROM events WHERE position > {{p}} ORDER BY position LIMIT {{p}}"
_SQLITE_READ = _READ_SQL.format(p="?")
_PG_READ = _READ_SQL.format(p="%s")
_VERIFY_SQL = (
    "SELECT position, stream_version, schema_version, occurred_at, recorded_at, event_id, stream_id, "
    "type, workspace, subject, metadata, payload, prev_hash, hash "
    "FROM events WHERE position >= {p} ORDER BY position LIMIT {p}"
)
_SQLITE_VERIFY = _VERIFY_SQL.format(p="?")
_PG_VERIFY = _VERIFY_SQL.format(p="%s")
_HEAD_SQL = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
_ERASURE_EPOCH_SQL = f"SELECT value FROM eventlog_state WHERE name = '{schema.ERASURE_EPOCH}'"
_SQLITE_STREAM_VERSIONS = (
    "SELECT s.value, (SELECT max(e.stream_version) FROM events AS e WHERE e.stream_id = s.value) "
    "FROM json_each(?) AS s"
)
_PG_STREAM_VERSIONS = sa.text(
    "SELECT s.id, (SELECT max(e.stream_version) FROM events AS e WHERE e.stream_id = s.id) "
    "FROM unnest(CAST(:streams AS text[])) AS s(id)"
)
_SQLITE_ROW = f"({', '.join('?' for _ in _EVENT_COLUMN_NAMES)})"
# SQLite >= 3.32 allows 32766 bound parameters per statement (older: 999).
_SQLITE_ROWS_PER_INSERT = (
    1000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999 // len(_EVENT_COLUMN_NAMES)
)


@functools.lru_cache(maxsize=16)
def _sqlite_insert(rows: int) -> str:
    return f"INSERT INTO events ({', '.join(_EVENT_COLUMN_NAMES)}) VALUES {', '.join([_SQLITE_ROW] * rows)}"


def _set_timestamp(stamp: Any, moment: datetime) -> None:
    """Timestamp.FromDatetime without its timetuple round trip (same result; naive = UTC)."""
    micros = to_micros(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
    seconds, micros = divmod(micros, 1_000_000)
    stamp.seconds = seconds
    stamp.nanos = micros * 1000


_METADATA_JSON_MEMO: dict[tuple[tuple[str, Any], ...], tuple[str, bytes]] = {}  # guarded by the GIL
_METADATA_JSON_MEMO_SIZE = 10_000


def _canonical_json_memo(metadata: Mapping[str, Any]) -> tuple[str, bytes]:
    """(_canonical_json(metadata), its UTF-8), memoised: per-person metadata (a partition key)
    repeats across a person's events, and json.dumps costs more than the look-up."""
    key = tuple(metadata.items())
    if not all(type(value) is str for _name, value in key):
        # Only text is memoised: 1, 1.0 and True are equal keys but different JSON.
        text = _canonical_json(metadata)
        return text, text.encode()
    found = _METADATA_JSON_MEMO.get(key)
    if found is None:
        text = _canonical_json(metadata)
        found = (text, text.encode())
        if len(_METADATA_JSON_MEMO) >= _METADATA_JSON_MEMO_SIZE:
            _METADATA_JSON_MEMO.clear()
        _METADATA_JSON_MEMO[key] = found
    return found


def _new_event_ids(count: int, unix_ms: int) -> list[str]:
    """`count` time-ordered (version 7, RFC 9562) UUID strings, from one read of the OS random source.

    48 bits of milliseconds, then 74 random bits. Ids made close in time sort together, so the
    UNIQUE index on event_id grows at its right edge instead of dirtying random pages: on SQLite
    that roughly halves the pages each commit writes. Same text format as str(uuid.uuid4()).
    """
    ms = f"{unix_ms & 0xFFFF_FFFF_FFFF:012x}"
    head = f"{ms[:8]}-{ms[8:12]}-7"
    entropy = os.urandom(10 * count).hex()
    variant = "89ab"
    ids = []
    for start in range(0, 20 * count, 20):
        h = entropy[start : start + 20]
        ids.append(f"{head}{h[:3]}-{variant[int(h[3], 16) & 3]}{h[4:7]}-{h[7:19]}")
    return ids


def _configure_sqlite(engine: Engine) -> None:
    """Let this module issue BEGIN itself: BEGIN IMMEDIATE for writes, plain BEGIN for reads.

    pysqlite's own transaction handling begins lazily at the first write, which would let two
    writers read the same head position; taking the write lock up front serialises appends.
    """
    if getattr(engine, "_onefold_eventlog_configured", False):
        return

    def before_wal(dbapi_connection: Any, _record: Any) -> None:
        # Runs before the platform's `journal_mode=WAL`: the page size of a new database can only
        # be chosen before the WAL exists (a no-op for an existing file). Larger pages mean fewer
        # pages (and WAL frames) per appended batch; see SQLITE_PAGE_SIZE.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        cursor.close()

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves
        cursor = dbapi_connection.cursor()
        # Overwrite freed space with zeros, so an erased data key leaves no copy in free pages.
        cursor.execute("PRAGMA secure_delete=ON")
        # A page cache that holds the hot part of the indexes (allocated only as pages are used);
        # the default 2 MiB makes each append re-read index pages it just wrote.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    sa.event.listen(engine, "connect", before_wal, insert=True)
    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "begin", on_begin)
    engine._onefold_eventlog_configured = True  # type: ignore[attr-defined]
    engine.dispose()  # pooled connections made before the listeners would miss them


class EventStore:
    """The event log of one service (see the module docstring and docs/architecture.md, "The event log")."""

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        service: str,
        registry: EventRegistry,
        keys: KeyEncryptionKey | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        key_cache_size: int = 10_000,
    ) -> None:
        self.engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.is_postgres = self.engine.dialect.name == "postgresql"
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self.service = service
        self.registry = registry
        self.keys = keys
        self.max_event_bytes = max_event_bytes
        self._key_cache = KeyCache(key_cache_size)
        self._key_lock = threading.Lock()
        self._erasure_epoch: int | None = None
        self._listeners: list[Callable[[int], None]] = []
        self._default_metadata = {"source": service}
        self._default_metadata_json = _canonical_json(self._default_metadata)
        self._metadata_memo: dict[str, dict[str, str]] = {}
        self._versions = _StreamVersionCache()
        self._blind_index = BlindIndex(keys) if keys is not None else None

    # ----------------------------------------------------------------------------------- schema

    def create_schema(self) -> None:
        """Create the tables if they do not exist (idempotent)."""
        self.create_tables(schema.metadata)
        schema.migrate(self.engine)
        with self.transaction() as conn:
            exists = conn.execute(
                sa.select(schema.eventlog_state.c.value).where(
                    schema.eventlog_state.c.name == schema.ERASURE_EPOCH
                )
            ).first()
            if exists is None:
                conn.execute(schema.eventlog_state.insert().values(name=schema.ERASURE_EPOCH, value=0))

    def create_tables(self, metadata: sa.MetaData, tables: Sequence[sa.Table] | None = None) -> None:
        """Create `metadata`'s tables (or `tables`) that do not exist yet, under the log's write lock:
        replicas or workers starting together on an empty database then create them one after the
        other, where each would otherwise find a table missing and fail creating it second."""
        with self.transaction() as conn:
            metadata.create_all(conn, tables=tables)

    # ------------------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction, holding the log's write lock throughout (SQLite: BEGIN IMMEDIATE;
        PostgreSQL: a transaction-level advisory lock).

        Pass the connection to `append(..., conn=)`, `record_tracking` and your own writes to
        commit them together. Listeners registered with `on_append` run after the commit.
        """
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            info = conn.info
            info.pop(_APPENDED_HEAD, None)
            info.pop(_NEW_SUBJECTS, None)
            info.pop(_PENDING_VERSIONS, None)
            info[_OWN_TRANSACTION] = True
            try:
                with conn.begin():
                    if self.is_postgres:
                        # Like SQLite's BEGIN IMMEDIATE: write transactions of one log run one at a
                        # time, so reads made before an append (dedupe, tracking, projections) cannot
                        # be invalidated by another replica's commit in between.
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
                    yield conn
                head = info.pop(_APPENDED_HEAD, None)
                pending = info.pop(_PENDING_VERSIONS, None)
            finally:
                info.pop(_NEW_SUBJECTS, None)
                info.pop(_APPENDED_HEAD, None)
                info.pop(_PENDING_VERSIONS, None)
                info.pop(_OWN_TRANSACTION, None)
        if pending is not None:
            self._versions.committed(*pending)
        if head is not None:
            self._notify(head)

    def on_append(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call `listener(head_position)` after each committed append of this process.

        Appends joined to a connection that did not come from `transaction()` are not announced;
        a relay should poll as well. Returns a function that removes the listener.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, head: int) -> None:
        for listener in list(self._listeners):
            listener(head)

    # ------------------------------------------------------------------------------------ append

    def append(self, events: Sequence[NewEvent], *, conn: Connection | None = None) -> list[RecordedEvent]:
        """Append `events` atomically, in order, and return them as recorded.

        Raises ConcurrencyError (a stream is not at its expected version), UnknownEventType,
        EventTooLarge, InvalidEvent, SubjectErased, MissingKeyEncryptionKey; the log is then
        unchanged. With `conn`, the append joins that transaction (inside a savepoint, so a failed
        append does not spoil it); use a connection from `transaction()`.
        """
        if not events:
            return []
        if conn is None:
            with self.transaction() as own:
                return self._append(own, events)
        with conn.begin_nested():
            return self._append(conn, events)

    def _append(self, conn: Connection, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        registry_for = self.registry.for_message
        event_types: list[EventType] = [registry_for(event.message) for event in events]
        for event, event_type in zip(events, event_types, strict=True):
            if not event_type.appendable:
                raise InvalidEvent(f"event type '{event_type.name}' is a legacy type kept for reading only")
            if event_type.blind_index:
                check_blind_indexes(event_type, event.message)
        if self.is_postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
        head_position, prev_hash = self._head(conn)
        head_hash = prev_hash
        versions, stream_heads = self._assign_versions(conn, events, (head_position, prev_hash))
        ciphers = self._ciphers_for_append(conn, events, event_types)

        recorded_us = time.time_ns() // 1000
        recorded_at = from_micros(recorded_us)
        encode = EventMapper.encode
        limit = self.max_event_bytes
        service = self.service
        default_metadata = self._default_metadata
        default_metadata_json = self._default_metadata_json
        default_metadata_bytes = default_metadata_json.encode()
        pack_header = _HASH_HEADER.pack
        sha256 = hashlib.sha256
        rows: list[tuple[Any, ...]] = []
        recorded: list[RecordedEvent] = []
        append_row = rows.append
        append_recorded = recorded.append
        position = head_position
        count = len(events)
        new_ids = _new_event_ids(count, recorded_us // 1000)
        # One CSPRNG read for the batch's AES-GCM nonces; event i uses bytes [12i, 12i + 12).
        nonces = os.urandom(NONCE_BYTES * count)
        for index, event in enumerate(events):
            event_type = event_types[index]
            subject = event.subject
            nonce_at = NONCE_BYTES * index
            try:
                payload = encode(
                    event_type, event.message, subject, ciphers.get(subject), nonces[nonce_at : nonce_at + 12]
                )
            except NeedsKey:
                raise self._explain_missing_key(event_type, subject) from None
            if event.metadata:
                metadata = {"source": service, **event.metadata}
                metadata_json, metadata_bytes = _canonical_json_memo(metadata)
            else:
                metadata = dict(default_metadata)
                metadata_json = default_metadata_json
                metadata_bytes = default_metadata_bytes
            if len(payload) + len(metadata_bytes) > limit:
                raise EventTooLarge(event_type.name, len(payload) + len(metadata_bytes), limit)
            if event.occurred_at is None:
                occurred_us, occurred_at = recorded_us, recorded_at
            else:
                occurred_at = event.occurred_at
                if occurred_at.tzinfo is None:
                    raise InvalidEvent(f"occurred_at of event {index} must be timezone-aware (UTC)")
                occurred_us = to_micros(occurred_at)
                occurred_at = from_micros(occurred_us)
            event_id = new_ids[index] if event.event_id is None else _normalise_event_id(event.event_id)
            position += 1
            stream_version = versions[index]
            stream_id = event.stream_id
            workspace = event.workspace
            # chain.event_hash, inlined (a 13-argument call per event is measurable here); the
            # chain tests check the stored hashes against chain.event_hash.
            id_bytes = event_id.encode()
            stream_bytes = stream_id.encode()
            type_bytes = event_type.name_bytes
            workspace_bytes = workspace.encode()
            subject_bytes = subject.encode()
            schema_version = event_type.schema_version
            this_hash = sha256(
                b"".join(
                    (
                        prev_hash,
                        pack_header(
                            position,
                            stream_version,
                            schema_version,
                            occurred_us,
                            recorded_us,
                            len(id_bytes),
                            len(stream_bytes),
                            len(type_bytes),
                            len(workspace_bytes),
                            len(subject_bytes),
                            len(metadata_bytes),
                            len(payload),
                        ),
                        id_bytes,
                        stream_bytes,
                        type_bytes,
                        workspace_bytes,
                        subject_bytes,
                        metadata_bytes,
                        payload,
                    )
                )
            ).digest()
            type_name = event_type.name
            append_row(
                (
                    position,
                    event_id,
                    stream_id,
                    stream_version,
                    type_name,
                    schema_version,
                    payload,
                    metadata_json,
                    workspace,
                    subject,
                    occurred_us,
                    recorded_us,
                    prev_hash,
                    this_hash,
                )
            )
            append_recorded(
                make_recorded_event(
                    position,
                    event_id,
                    stream_id,
                    stream_version,
                    type_name,
                    schema_version,
                    payload,
                    metadata,
                    workspace,
                    subject,
                    occurred_at,
                    recorded_at,
                    prev_hash,
                    this_hash,
                )
            )
            prev_hash = this_hash
        try:
            self._insert_rows(conn, rows)
        except _INTEGRITY_ERRORS as exc:
            text = str(getattr(exc, "orig", exc)).lower()
            if "event_id" in text:
                raise DuplicateEvent("event_id must be unique") from None
            # Only reachable when someone writes without the append lock.
            raise ConcurrencyError(events[0].stream_id, -1, -1) from None
        info = conn.info
        info[_APPENDED_HEAD] = position
        if info.get(_OWN_TRANSACTION):
            # Remembered once the transaction commits (see _StreamVersionCache).
            pending = info.get(_PENDING_VERSIONS)
            if pending is None:
                info[_PENDING_VERSIONS] = ((head_position, head_hash), stream_heads, (position, prev_hash))
            else:
                pending[1].update(stream_heads)
                info[_PENDING_VERSIONS] = (pending[0], pending[1], (position, prev_hash))
        return recorded

    def _insert_rows(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert the batch's rows with as few statements as possible.

        SQLite: multi-row `INSERT ... VALUES (...), (...)` of up to _SQLITE_ROWS_PER_INSERT rows,
        parameters straight to the driver (SQLAlchemy's per-value bind processing would cost a
        third of an append; one statement per 1000 rows saves a further ~20% of the insert over
        executemany's per-row step). PostgreSQL: COPY (see _copy_rows).
        """
        if self.is_sqlite:
            per_insert = _SQLITE_ROWS_PER_INSERT
            for start in range(0, len(rows), per_insert):
                chunk = rows[start : start + per_insert]
                conn.exec_driver_sql(_sqlite_insert(len(chunk)), tuple(itertools.chain.from_iterable(chunk)))
        elif self.is_postgres:
            self._copy_rows(conn, rows)
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported
            conn.execute(
                schema.events.insert(), [dict(zip(_EVENT_COLUMN_NAMES, row, strict=True)) for row in rows]
            )

    def _copy_rows(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: one binary COPY into events, in the caller's transaction.

        About 4x faster than a multi-row INSERT here (no SQL text to build or parse, no per-value
        adaptation). Constraint violations surface as psycopg.IntegrityError.
        """
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
            copy.set_types(_PG_COPY_TYPES)
            write_row = copy.write_row
            for row in rows:
                write_row(row)

    def _head(self, conn: Connection) -> tuple[int, bytes]:
        # Plain SQL (the same on both databases): Core's compile-and-cache costs more than the query.
        row = conn.exec_driver_sql(_HEAD_SQL).first()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))

    def _assign_versions(
        self, conn: Connection, events: Sequence[NewEvent], head: tuple[int, bytes]
    ) -> tuple[list[int], dict[str, int]]:
        """(the version of each event, the new version of each stream), checking expectations.

        Called under the append lock with the log's current head; current stream versions come
        from the cache when it describes exactly this head, else from the database.
        """
        streams: list[str] = []
        seen: set[str] = set()
        for event in events:
            stream_id = event.stream_id
            if stream_id not in seen:
                if not isinstance(stream_id, str) or not stream_id:
                    raise InvalidEvent("every event needs a non-empty stream_id")
                seen.add(stream_id)
                streams.append(stream_id)
        current, unknown = self._versions.lookup(head, streams)
        if unknown:
            found = self._stream_versions(conn, unknown)
            for stream_id in unknown:
                current[stream_id] = found.get(stream_id, 0)
        assigned: list[int] = []
        for event in events:
            version = current[event.stream_id]
            expected = event.expected_version
            if expected is not None and expected != version:
                if not isinstance(expected, int) or expected < 0:
                    raise InvalidEvent(f"expected_version must be None or an integer >= 0, not {expected!r}")
                raise ConcurrencyError(event.stream_id, expected, version)
            version += 1
            current[event.stream_id] = version
            assigned.append(version)
        return assigned, current

    def _stream_versions(self, conn: Connection, streams: Sequence[str]) -> dict[str, int]:
        """Current version of each stream that exists (absent = new stream).

        One statement per batch, with the stream ids as a single parameter (a JSON array on
        SQLite, a text[] on PostgreSQL) and one `max(stream_version)` per stream, which both
        databases answer with a single descent of the UNIQUE(stream_id, stream_version) index,
        however long the stream. (`GROUP BY` over an `IN` list scanned every entry of every
        stream and bound one parameter per stream.)
        """
        if not streams:
            return {}
        if self.is_sqlite:
            rows = conn.exec_driver_sql(_SQLITE_STREAM_VERSIONS, (json.dumps(list(streams)),))
        elif self.is_postgres:
            rows = conn.execute(_PG_STREAM_VERSIONS, {"streams": list(streams)})
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported
            table = schema.events
            rows = conn.execute(
                sa.select(table.c.stream_id, sa.func.max(table.c.stream_version))
                .where(table.c.stream_id.in_(list(streams)))
                .group_by(table.c.stream_id)
            )
        return {stream_id: int(version) for stream_id, version in rows if version is not None}

    def _explain_missing_key(self, event_type: EventType, subject: str) -> Exception:
        if self.keys is None:
            return MissingKeyEncryptionKey(
                f"event type '{event_type.name}' has personal fields set, but this event store has no "
                "key-encryption key to protect them"
            )
        if not subject:
            return InvalidEvent(
                f"event type '{event_type.name}' has personal fields set, so it needs a data subject"
            )
        return SubjectErased(subject)

    # ------------------------------------------------------------------------------------- keys

    def _check_erasure_epoch(self, conn: Connection) -> None:
        """Drop cached data keys when any process erased a subject since we last looked."""
        epoch = conn.exec_driver_sql(_ERASURE_EPOCH_SQL).scalar()
        epoch = int(epoch or 0)
        if epoch != self._erasure_epoch:
            with self._key_lock:
                self._key_cache.clear()
                self._erasure_epoch = epoch

    def _ciphers_for_append(
        self, conn: Connection, events: Sequence[NewEvent], event_types: Sequence[EventType]
    ) -> dict[str, DataKeyCipher | None]:
        if self.keys is None:
            return {}
        subjects = {
            event.subject
            for event, event_type in zip(events, event_types, strict=True)
            if event_type.pii.has_pii
        }
        subjects.discard("")
        if not subjects:
            return {}
        self._check_erasure_epoch(conn)
        return self._ciphers(conn, subjects, create=True)

    def data_ciphers(
        self, conn: Connection, subjects: Iterable[str], *, create: bool
    ) -> dict[str, DataKeyCipher | None]:
        """The data keys of `subjects` (None = erased; absent = none yet and not `create`d), for a
        service's own state sealed under a subject's key beside its events (shredding the key
        erases both)."""
        if self.keys is None:
            raise MissingKeyEncryptionKey("sealing personal state needs the key-encryption key")
        self._check_erasure_epoch(conn)
        return self._ciphers(conn, subjects, create=create)

    def _ciphers(
        self, conn: Connection, subjects: Iterable[str], *, create: bool
    ) -> dict[str, DataKeyCipher | None]:
        """Data keys of `subjects` (None = erased); missing ones are created when `create`."""
        assert self.keys is not None
        with self._key_lock:
            found, missing = self._key_cache.get_many(subjects)
        if not missing:
            return found
        uncommitted: set[str] = conn.info.get(_NEW_SUBJECTS, set())
        table = schema.subject_keys
        loaded: dict[str, DataKeyCipher | None] = {}
        for start in range(0, len(missing), _IN_CHUNK):
            chunk = missing[start : start + _IN_CHUNK]
            query = sa.select(table.c.subject, table.c.wrapped_key).where(table.c.subject.in_(chunk))
            for subject, wrapped in conn.execute(query):
                loaded[subject] = (
                    None if wrapped is None else DataKeyCipher(self.keys.unwrap(bytes(wrapped), subject))
                )
        with self._key_lock:
            for subject, cipher in loaded.items():
                # A key created by this very transaction is cached only once it is committed.
                if subject not in uncommitted:
                    self._key_cache.put(subject, cipher)
        found.update(loaded)
        new_subjects = [subject for subject in missing if subject not in loaded]
        if new_subjects and create:
            now = time.time_ns() // 1000
            rows = []
            for subject in new_subjects:
                data_key = new_data_key()
                rows.append(
                    {
                        "subject": subject,
                        "wrapped_key": self.keys.wrap(data_key, subject),
                        "created_at": now,
                        "erased_at": None,
                    }
                )
                found[subject] = DataKeyCipher(data_key)
            conn.execute(table.insert(), rows)
            conn.info.setdefault(_NEW_SUBJECTS, set()).update(new_subjects)
        return found

    def _cipher_for_read(self, event: RecordedEvent, conn: Connection | None) -> DataKeyCipher | None:
        """The subject's cipher, or None if the subject was erased."""
        if self.keys is None:
            raise MissingKeyEncryptionKey(
                "this event holds encrypted personal fields but the event store has no key-encryption key"
            )
        subject = event.subject
        with self._key_lock:
            cached = self._key_cache.get(subject)
        if cached is not False:
            return cached  # type: ignore[return-value]
        if conn is not None:
            ciphers = self._ciphers(conn, [subject], create=False)
        else:
            with self.engine.connect() as own:
                ciphers = self._ciphers(own, [subject], create=False)
        if subject not in ciphers:
            # Erasure keeps a row, so no row at all means the key never reached this database
            # (e.g. it is being written by a transaction this connection cannot see yet).
            raise CorruptPayload(event.position, event.type, f"no data key exists for subject '{subject}'")
        return ciphers[subject]

    def erase_subject(self, subject: str, *, conn: Connection | None = None) -> None:
        """Crypto-shred `subject`: destroy its data key, so its personal fields read as erased.

        Events stay (and the chain still verifies); snapshots of the subject are deleted. On SQLite
        the write-ahead log is checkpointed and truncated afterwards, and freed space is zeroed
        (secure_delete), so the old wrapped key leaves no copy in the file. Given `conn`, the key is
        destroyed in that transaction (with whatever else it erases) and the caller checkpoints.
        """
        if not subject:
            raise InvalidEvent("erase_subject needs a subject")
        if conn is not None:
            self._destroy_key(conn, subject)
        else:
            with self.transaction() as own:
                self._destroy_key(own, subject)
        with self._key_lock:
            self._key_cache.put(subject, None)
        if conn is None and self.is_sqlite:
            self.checkpoint_wal()

    def _destroy_key(self, conn: Connection, subject: str) -> None:
        now = time.time_ns() // 1000
        table = schema.subject_keys
        updated = conn.execute(
            table.update()
            .where(table.c.subject == subject)
            .values(wrapped_key=None, erased_at=sa.func.coalesce(table.c.erased_at, now))
        ).rowcount
        if not updated:
            conn.execute(
                table.insert().values(subject=subject, wrapped_key=None, created_at=now, erased_at=now)
            )
        conn.execute(schema.snapshots.delete().where(schema.snapshots.c.subject == subject))
        conn.execute(
            schema.eventlog_state.update()
            .where(schema.eventlog_state.c.name == schema.ERASURE_EPOCH)
            .values(value=schema.eventlog_state.c.value + 1)
        )

    def rewrap_data_keys(
        self, *, batch_size: int = 1000, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Key rotation: re-wrap every live data key under this store's KEK; return how many changed.

        The store's KEK is the new one with the old one as its `previous` (see keyfile.py): keys
        still wrapped by the old KEK are unwrapped by it, re-wrapped by the new one and written back,
        `batch_size` rows per transaction, in subject order. The data keys themselves do not change,
        so nothing else is rewritten and every row is readable before, during and after. Interrupted,
        it is simply run again: rows already re-wrapped are skipped. It repeats until a full pass
        finds nothing left (a key written meanwhile by a process that had only the old KEK).
        `progress(done, total)` is called after each batch.
        """
        if self.keys is None:
            raise MissingKeyEncryptionKey("re-wrapping data keys needs the new key-encryption key")
        keys = self.keys
        table = schema.subject_keys
        live = table.c.wrapped_key.is_not(None)
        with self.engine.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(live)).scalar() or 0)
        update = (
            table.update()
            .where(table.c.subject == sa.bindparam("key_subject"), live)
            .values(wrapped_key=sa.bindparam("new_wrapped_key"))
        )
        rewrapped = 0
        while True:
            changed_this_pass, done, after = 0, 0, ""
            while True:
                with self.transaction() as conn:
                    rows = conn.execute(
                        sa.select(table.c.subject, table.c.wrapped_key)
                        .where(table.c.subject > after, live)
                        .order_by(table.c.subject)
                        .limit(batch_size)
                    ).all()
                    changes = [
                        {
                            "key_subject": subject,
                            "new_wrapped_key": keys.wrap(keys.unwrap(bytes(wrapped), subject), subject),
                        }
                        for subject, wrapped in rows
                        if not keys.wrapped_by_this(bytes(wrapped))
                    ]
                    if changes:
                        conn.execute(update, changes)
                if not rows:
                    break
                after = rows[-1][0]
                done += len(rows)
                changed_this_pass += len(changes)
                if progress is not None:
                    progress(done, max(total, done))  # keys created meanwhile can pass the count
            rewrapped += changed_this_pass
            if changed_this_pass == 0:
                break
        self.checkpoint_wal()
        return rewrapped

    def data_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        """The unwrapped data keys of `subjects` (None = erased), for consumers of this log's events on
        the bus (keyaccess.SubjectKeyServicer). A subject this log never held is absent."""
        if self.keys is None:
            raise MissingKeyEncryptionKey("subject keys need the service's key-encryption key")
        table = schema.subject_keys
        found: dict[str, bytes | None] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(subjects), _IN_CHUNK):
                chunk = list(subjects[start : start + _IN_CHUNK])
                query = sa.select(table.c.subject, table.c.wrapped_key).where(table.c.subject.in_(chunk))
                for subject, wrapped in conn.execute(query):
                    found[subject] = None if wrapped is None else self.keys.unwrap(bytes(wrapped), subject)
        return found

    def is_erased(self, subject: str) -> bool:
        table = schema.subject_keys
        with self.engine.connect() as conn:
            erased_at = conn.execute(sa.select(table.c.erased_at).where(table.c.subject == subject)).scalar()
        return erased_at is not None

    def erased_subjects(self, conn: Connection, subjects: Iterable[str]) -> set[str]:
        """Which of `subjects` are erased, read in the caller's transaction (one query per chunk),
        so a writer can set their events aside before `append` would raise SubjectErased."""
        table = schema.subject_keys
        wanted = sorted(set(subjects) - {""})
        erased: set[str] = set()
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            query = sa.select(table.c.subject).where(
                table.c.subject.in_(chunk), table.c.erased_at.is_not(None)
            )
            erased.update(conn.execute(query).scalars())
        return erased

    def checkpoint_wal(self) -> None:
        """SQLite: copy the WAL into the database file and truncate it (no-op elsewhere)."""
        if not self.is_sqlite:
            return
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def blind_index(self, value: str, *, field: str = "", case_sensitive: bool = False) -> str:
        """Keyed hash (HMAC) of an identifier that must be looked up but not stored in clear."""
        if self._blind_index is None:
            raise MissingKeyEncryptionKey("blind indexes need the service's key-encryption key")
        return self._blind_index.digest(value, field=field, case_sensitive=case_sensitive)

    # -------------------------------------------------------------------------------------- read

    def _to_events(self, rows: Iterable[Sequence[Any]]) -> list[RecordedEvent]:
        """RecordedEvents from rows in _EVENT_COLUMNS order.

        Memoised: the parsed metadata of each distinct JSON text (per store, cleared when full;
        copied per event, as RecordedEvent.metadata is a plain dict) and, per call, the datetime of
        each distinct timestamp (one appended batch shares its recorded_at; datetimes are
        immutable, so sharing is safe).
        """
        memo = self._metadata_memo
        moments: dict[int, datetime] = {}
        events: list[RecordedEvent] = []
        append = events.append
        for row in rows:
            (position, event_id, stream_id, stream_version, type_name, schema_version, payload,
             metadata_json, workspace, subject, occurred_us, recorded_us, prev_hash, this_hash) = row  # fmt: skip
            metadata = memo.get(metadata_json)
            if metadata is None:
                metadata = json.loads(metadata_json)
                if len(memo) >= 1024:
                    memo.clear()
                memo[metadata_json] = metadata
            occurred_at = moments.get(occurred_us)
            if occurred_at is None:
                occurred_at = moments[occurred_us] = from_micros(occurred_us)
            recorded_at = moments.get(recorded_us)
            if recorded_at is None:
                recorded_at = moments[recorded_us] = from_micros(recorded_us)
            append(
                make_recorded_event(
                    position,
                    event_id,
                    stream_id,
                    stream_version,
                    type_name,
                    schema_version,
                    payload if type(payload) is bytes else bytes(payload),
                    dict(metadata),
                    workspace,
                    subject,
                    occurred_at,
                    recorded_at,
                    prev_hash if type(prev_hash) is bytes else bytes(prev_hash),
                    this_hash if type(this_hash) is bytes else bytes(this_hash),
                )
            )
        return events

    def read(
        self, *, after_position: int = 0, limit: int = 1000, conn: Connection | None = None
    ) -> list[RecordedEvent]:
        """Events with position > `after_position`, in order, at most `limit`."""
        sql = _SQLITE_READ if self.is_sqlite else _PG_READ
        params = (after_position, limit)
        # Another process may have erased a subject: drop cached keys first, so what is read next is
        # never decrypted (or relayed) with a key that no longer exists.
        if conn is not None:
            self._check_erasure_epoch(conn)
            return self._to_events(conn.exec_driver_sql(sql, params).fetchall())
        with self.engine.connect() as own:
            self._check_erasure_epoch(own)
            return self._to_events(own.exec_driver_sql(sql, params).fetchall())

    def iter_all(self, *, after_position: int = 0, batch_size: int = 5000) -> Iterator[RecordedEvent]:
        """Every event after `after_position`, in order, fetched in batches (constant memory)."""
        position = after_position
        while True:
            batch = self.read(after_position=position, limit=batch_size)
            yield from batch
            if len(batch) < batch_size:
                return
            position = batch[-1].position

    def read_stream(
        self,
        stream_id: str,
        *,
        recorded_before: datetime | None = None,
        occurred_before: datetime | None = None,
        after_version: int = 0,
    ) -> list[RecordedEvent]:
        """A stream's events in version order; as-of cuts are inclusive (`recorded_at <= T`)."""
        table = schema.events
        query = sa.select(*_EVENT_COLUMNS).where(table.c.stream_id == stream_id)
        if after_version:
            query = query.where(table.c.stream_version > after_version)
        if recorded_before is not None:
            query = query.where(table.c.recorded_at <= to_micros(recorded_before))
        if occurred_before is not None:
            query = query.where(table.c.occurred_at <= to_micros(occurred_before))
        with self.engine.connect() as conn:
            self._check_erasure_epoch(conn)
            return self._to_events(conn.execute(query.order_by(table.c.stream_version)).all())

    def stream_version(self, stream_id: str) -> int:
        with self.engine.connect() as conn:
            return self._stream_versions(conn, [stream_id]).get(stream_id, 0)

    def existing_event_ids(self, conn: Connection, event_ids: Iterable[str]) -> set[str]:
        """Which of `event_ids` are already in the log (read in the caller's transaction): a consumer
        that derives its events' ids from the upstream event makes redelivery a no-op with this."""
        wanted = sorted({_normalise_event_id(event_id) for event_id in event_ids})
        found: set[str] = set()
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            rows = conn.execute(
                sa.select(schema.events.c.event_id).where(schema.events.c.event_id.in_(chunk))
            )
            found.update(event_id for (event_id,) in rows)
        return found

    def streams_head(self, stream_ids: Sequence[str], *, conn: Connection | None = None) -> int:
        """The newest position among `stream_ids` (0 when none has events): a cheap "has anything
        changed?" for a read model cached over those streams."""
        if not stream_ids:
            return 0
        query = sa.select(sa.func.max(schema.events.c.position)).where(
            schema.events.c.stream_id.in_(sorted(set(stream_ids)))
        )
        if conn is not None:
            return int(conn.execute(query).scalar() or 0)
        with self.engine.connect() as own:
            return int(own.execute(query).scalar() or 0)

    def read_streams(
        self,
        stream_ids: Sequence[str],
        *,
        types: Sequence[str] = (),
        before_position: int | None = None,
        recorded_before: datetime | None = None,
        occurred_before: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        conn: Connection | None = None,
    ) -> list[RecordedEvent]:
        """Events of several streams (optionally only some types) in log order, or newest first,
        at most `limit`, only below `before_position` when given: a page of a merged history. As-of
        cuts are inclusive (`recorded_at <= T`, `occurred_at <= T`), as in `read_stream`."""
        if not stream_ids:
            return []
        table = schema.events
        query = sa.select(*_EVENT_COLUMNS).where(table.c.stream_id.in_(sorted(set(stream_ids))))
        if types:
            query = query.where(table.c.type.in_(list(types)))
        if before_position is not None:
            query = query.where(table.c.position < before_position)
        if recorded_before is not None:
            query = query.where(table.c.recorded_at <= to_micros(recorded_before))
        if occurred_before is not None:
            query = query.where(table.c.occurred_at <= to_micros(occurred_before))
        query = query.order_by(table.c.position.desc() if newest_first else table.c.position)
        if limit is not None:
            query = query.limit(limit)
        if conn is not None:
            self._check_erasure_epoch(conn)
            return self._to_events(conn.execute(query).all())
        with self.engine.connect() as own:
            self._check_erasure_epoch(own)
            return self._to_events(own.execute(query).all())

    def read_positions(self, positions: Iterable[int], *, conn: Connection) -> list[RecordedEvent]:
        """The events at `positions`, in log order (an outbox that points at the events holding
        what it sends reads them back with this, a batch at a time)."""
        wanted = sorted(set(positions))
        self._check_erasure_epoch(conn)
        found: list[RecordedEvent] = []
        table = schema.events
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            query = sa.select(*_EVENT_COLUMNS).where(table.c.position.in_(chunk)).order_by(table.c.position)
            found += self._to_events(conn.execute(query).all())
        if self.keys is not None:
            # Their data keys in a query per chunk, where decoding them one by one would ask for
            # each subject missing from the key cache on its own.
            sealed = {event.subject for event in found if event.payload.startswith(SEALED_TAG)}
            self._ciphers(conn, sealed, create=False)
        return found

    def head_position(self, *, conn: Connection | None = None) -> int:
        if conn is not None:
            return self._head(conn)[0]
        with self.engine.connect() as own:
            return self._head(own)[0]

    def head_digest(self) -> ChainDigest:
        with self.engine.connect() as conn:
            position, head_hash = self._head(conn)
        return ChainDigest(position, head_hash)

    # ------------------------------------------------------------------------------------ decode

    def decode(
        self, event: RecordedEvent, *, conn: Connection | None = None, decrypt: bool = True
    ) -> Message:
        """The event's message: decrypted, upcast to the current type and version.

        Personal fields of an erased subject come back as `mapper.ERASED` (strings) or empty.
        Pass `conn` when decoding inside the transaction that appended the event (its data key
        may be new and not yet visible to other connections). `decrypt=False` reads the public
        fields only (personal ones come back as for an erased subject) without fetching or using a
        key: for folds that never look at personal data. Raises UnknownEventType or CorruptPayload.
        """
        event_type = self.registry.for_name(event.type)
        cipher = None
        if decrypt and event_type.pii.has_pii and event.payload.startswith(SEALED_TAG):
            cipher = self._cipher_for_read(event, conn)
        try:
            message = EventMapper.decode(event_type, event.payload, event.subject, cipher)
        except (DecodeError, ValueError, InvalidTag, IndexError) as exc:
            why = "the personal data does not authenticate" if isinstance(exc, InvalidTag) else str(exc)
            raise CorruptPayload(event.position, event.type, why or type(exc).__name__) from None
        return self._upcast(event, event_type, message)

    def _upcast(self, event: RecordedEvent, event_type: EventType, message: Message) -> Message:
        version = event.schema_version
        if version > event_type.schema_version:
            raise CorruptPayload(
                event.position,
                event.type,
                f"it was written at schema version {version}, newer than this service's "
                f"{event_type.schema_version}",
            )
        while version < event_type.schema_version:
            upcaster = event_type.upcasters.get(version)
            if upcaster is None:
                raise CorruptPayload(event.position, event.type, f"no upcaster from schema version {version}")
            message = upcaster(message)
            version += 1
        if event_type.legacy_upcast is not None:
            message = event_type.legacy_upcast(message)
            current = self.registry.for_message(message)
            if current.legacy_upcast is not None:  # a chain of replacements
                return self._upcast(event, current, message)
        return message

    def to_envelope(self, event: RecordedEvent, *, decrypt: bool = True) -> envelope_pb2.EventEnvelope:
        """The bus form of an event. With `decrypt`, the payload is the plaintext current version.

        The hashes stay those of the stored row, so a receiver confirms the chain through the
        exported digests, not by re-hashing a decrypted payload.
        """
        metadata = event.metadata
        envelope = envelope_pb2.EventEnvelope(
            event_id=event.event_id,
            type=event.type,
            stream_id=event.stream_id,
            stream_version=event.stream_version,
            position=event.position,
            workspace=event.workspace,
            correlation_id=metadata.get("correlation_id", ""),
            causation_id=metadata.get("causation_id", ""),
            prev_hash=event.prev_hash,
            hash=event.hash,
            payload=event.payload,
            source=metadata.get("source", self.service),
            schema_version=event.schema_version,
            subject=event.subject,
            metadata=metadata,
        )
        _set_timestamp(envelope.occurred_at, event.occurred_at)
        _set_timestamp(envelope.recorded_at, event.recorded_at)
        if "actor" in metadata or "actor_kind" in metadata:
            envelope.actor.id = metadata.get("actor", "")
            envelope.actor.display_name = metadata.get("actor_name", "")
            kind = metadata.get("actor_kind", "").upper()
            if kind:
                kind = kind if kind.startswith("KIND_") else "KIND_" + kind
                with contextlib.suppress(ValueError):  # an unknown kind stays KIND_UNSPECIFIED
                    envelope.actor.kind = envelope_pb2.Actor.Kind.Value(kind)
        if "traceparent" in metadata:
            envelope.trace.traceparent = metadata["traceparent"]
            envelope.trace.tracestate = metadata.get("tracestate", "")
        if decrypt:
            envelope.type, envelope.schema_version, envelope.payload = self._plaintext_payload(event)
        return envelope

    def _plaintext_payload(self, event: RecordedEvent) -> tuple[str, int, bytes]:
        """The bus payload: the current version in plaintext. An event already at the current schema
        version whose key exists is decrypted as bytes (no parse / re-serialise: the relay's hot
        path); erased subjects and older versions go through `decode` (markers, upcasters)."""
        event_type = self.registry.for_name(event.type)
        current = event.schema_version == event_type.schema_version and event_type.legacy_upcast is None
        if current and not event.payload.startswith(SEALED_TAG):
            return event_type.name, event_type.schema_version, event.payload
        if current and event_type.pii.has_pii:
            cipher = self._cipher_for_read(event, None)
            if cipher is not None:
                try:
                    plaintext = EventMapper.plaintext(event_type, event.payload, event.subject, cipher)
                    return event_type.name, event_type.schema_version, plaintext
                except (DecodeError, ValueError, InvalidTag, IndexError) as exc:
                    why = (
                        "the personal data does not authenticate" if isinstance(exc, InvalidTag) else str(exc)
                    )
                    raise CorruptPayload(event.position, event.type, why or type(exc).__name__) from None
        message = self.decode(event)
        decoded = self.registry.for_message(message)
        return decoded.name, decoded.schema_version, message.SerializeToString(deterministic=True)

    # ------------------------------------------------------------------------------ checkpoints

    def tracking_position(self, upstream: str, *, conn: Connection | None = None) -> int:
        """The last upstream position whose effects are committed here (0 = none)."""
        query = sa.select(schema.tracking.c.position).where(schema.tracking.c.upstream == upstream)
        if conn is not None:
            return int(conn.execute(query).scalar() or 0)
        with self.engine.connect() as own:
            return int(own.execute(query).scalar() or 0)

    def record_tracking(
        self,
        conn: Connection,
        upstream: str,
        position: int,
        event_id: str = "",
        event_hash: bytes | None = None,
    ) -> None:
        """Record, in the caller's transaction, that `upstream` is handled up to `position` (whose
        chain hash is `event_hash`: the next event of `upstream` must link to it)."""
        self._upsert(
            conn,
            schema.tracking,
            {"upstream": upstream, "position": position, "event_id": event_id, "hash": event_hash},
            key="upstream",
        )

    def tracked_head(self, upstream: str, *, conn: Connection | None = None) -> ChainDigest:
        """The last upstream position applied here and its hash (empty when not recorded)."""
        table = schema.tracking
        query = sa.select(table.c.position, table.c.hash).where(table.c.upstream == upstream)
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.engine.connect() as own:
                row = own.execute(query).first()
        if row is None:
            return ChainDigest(0, b"")
        return ChainDigest(int(row[0]), bytes(row[1] or b""))

    def tracked_heads(self) -> dict[str, ChainDigest]:
        """Every tracking row: what this service has consumed of its upstreams (for cross-witnessing)."""
        table = schema.tracking
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.upstream, table.c.position, table.c.hash)).all()
        return {
            str(name): ChainDigest(int(position), bytes(digest or b"")) for name, position, digest in rows
        }

    def published_position(self, stream_name: str) -> int:
        """The last position the outbox relay published to `stream_name` (0 = none)."""
        table = schema.relay_positions
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(table.c.position).where(table.c.stream_name == stream_name)).scalar()
                or 0
            )

    def record_published(self, stream_name: str, position: int) -> None:
        with self.transaction() as conn:
            self._upsert(
                conn,
                schema.relay_positions,
                {"stream_name": stream_name, "position": position},
                key="stream_name",
            )

    def _upsert(self, conn: Connection, table: sa.Table, values: dict[str, Any], *, key: str) -> None:
        values = {**values, "updated_at": time.time_ns() // 1000}
        updates = {name: value for name, value in values.items() if name != key}
        if self.is_postgres:
            pg_stmt = pg_dialect.insert(table).values(**values)
            conn.execute(pg_stmt.on_conflict_do_update(index_elements=[key], set_=updates))
        elif self.is_sqlite:
            lite_stmt = sqlite_dialect.insert(table).values(**values)
            conn.execute(lite_stmt.on_conflict_do_update(index_elements=[key], set_=updates))
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported
            if not conn.execute(table.update().where(table.c[key] == values[key]).values(**updates)).rowcount:
                conn.execute(table.insert().values(**values))

    # ------------------------------------------------------------------------------------ verify

    def verify(
        self,
        *,
        expected: Iterable[ChainDigest] = (),
        batch_size: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyResult:
        """Walk the whole chain in batches (constant memory) and report the first broken position.

        Detects an edited row (its hash no longer matches), a deleted row (a gap in positions), an
        inserted or reordered row (hash or link mismatch). Deleting or rewriting the newest events
        consistently is only visible against a digest exported earlier: pass those as `expected`.
        """
        digests: dict[int, ChainDigest] = {}
        for digest in expected:
            digests.setdefault(digest.position, digest)
        sql = _SQLITE_VERIFY if self.is_sqlite else _PG_VERIFY
        pack_header = _HASH_HEADER.pack
        sha256 = hashlib.sha256
        type_bytes: dict[str, bytes] = {}
        prev_hash = GENESIS_HASH
        expected_position = 1
        checked = 0

        def failed(position: int, problem: str, witness: str = "") -> VerifyResult:
            return VerifyResult(
                False, checked, ChainDigest(expected_position - 1, prev_hash), position, problem, witness
            )

        with self.engine.connect() as conn:
            while True:
                rows = conn.exec_driver_sql(sql, (expected_position, batch_size)).fetchall()
                conn.rollback()  # do not hold a read snapshot (and the WAL) across batches
                for row in rows:
                    (position, version, schema_version, occurred, recorded, event_id, stream_id, type_name,
                     workspace, subject, metadata_json, payload, stored_prev, stored_hash) = row  # fmt: skip
                    if position != expected_position:
                        return failed(
                            expected_position, f"event {expected_position} is missing (next is {position})"
                        )
                    if stored_prev != prev_hash:
                        return failed(position, f"event {position} does not link to event {position - 1}")
                    # chain.event_hash, inlined (it is most of the work of a verify).
                    id_bytes = event_id.encode()
                    stream_bytes = stream_id.encode()
                    name_bytes = type_bytes.get(type_name)
                    if name_bytes is None:
                        name_bytes = type_bytes[type_name] = type_name.encode()
                    workspace_bytes = workspace.encode()
                    subject_bytes = subject.encode()
                    metadata_bytes = metadata_json.encode()
                    computed = sha256(
                        b"".join(
                            (
                                prev_hash,
                                pack_header(
                                    position,
                                    version,
                                    schema_version,
                                    occurred,
                                    recorded,
                                    len(id_bytes),
                                    len(stream_bytes),
                                    len(name_bytes),
                                    len(workspace_bytes),
                                    len(subject_bytes),
                                    len(metadata_bytes),
                                    len(payload),
                                ),
                                id_bytes,
                                stream_bytes,
                                name_bytes,
                                workspace_bytes,
                                subject_bytes,
                                metadata_bytes,
                                payload,
                            )
                        )
                    ).digest()
                    if computed != stored_hash:
                        return failed(position, f"event {position} was altered: its hash does not match")
                    if digests:
                        known = digests.get(position)
                        if known is not None and known.hash != computed:
                            return failed(
                                position,
                                f"event {position} disagrees with the chain digest {_vouched(known)}",
                                known.witness,
                            )
                    prev_hash = computed
                    expected_position += 1
                    checked += 1
                if progress is not None:
                    progress(checked)
                if len(rows) < batch_size:
                    break
        beyond = sorted(position for position in digests if position >= expected_position)
        if beyond:
            last = digests[beyond[-1]]
            return failed(
                expected_position,
                f"event {expected_position} is missing: the chain digest {_vouched(last)} "
                f"names position {last.position}",
                last.witness,
            )
        return VerifyResult(True, checked, ChainDigest(expected_position - 1, prev_hash))

    def export_digests(self, *, every: int = 10_000) -> list[ChainDigest]:
        """Checkpoint digests at every `every`-th position plus the head, to be kept elsewhere."""
        table = schema.events
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.position, table.c.hash)
                .where((table.c.position % every) == 0)
                .order_by(table.c.position)
            ).all()
            head_position, head_hash = self._head(conn)
        digests = [ChainDigest(int(position), bytes(digest)) for position, digest in rows]
        if head_position and (not digests or digests[-1].position != head_position):
            digests.append(ChainDigest(head_position, head_hash))
        return digests

    def hash_at(self, position: int) -> bytes | None:
        """The stored chain hash of the event at `position` (None when there is none)."""
        table = schema.events
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(table.c.hash).where(table.c.position == position)).scalar()
        return None if found is None else bytes(found)

    def record_digest(self, digest: ChainDigest) -> None:
        """Remember a digest this service exported (e.g. published on NATS)."""
        table = schema.chain_digests
        with self.transaction() as conn:
            exists = conn.execute(
                sa.select(table.c.position).where(table.c.position == digest.position)
            ).first()
            if exists is None:
                conn.execute(
                    table.insert().values(
                        position=digest.position, hash=digest.hash, recorded_at=time.time_ns() // 1000
                    )
                )

    def recorded_digests(self) -> list[ChainDigest]:
        table = schema.chain_digests
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.position, table.c.hash).order_by(table.c.position)).all()
        return [ChainDigest(int(position), bytes(digest)) for position, digest in rows]

    def close(self) -> None:
        self.engine.dispose()


def _vouched(digest: ChainDigest) -> str:
    return f"witnessed by {digest.witness}" if digest.witness else "exported earlier"


def _normalise_event_id(event_id: str) -> str:
    try:
        return str(uuid.UUID(event_id))
    except (ValueError, AttributeError, TypeError):
        raise InvalidEvent(f"event_id must be a UUID, not {event_id!r}") from None


class _StreamVersionCache:
    """Stream versions as of one exact log head, kept by this process between its own appends.

    Looking up 1000 streams' versions costs about as much as inserting them. The cache answers
    instead, but only for the head it was filled at: an append reads the head (position and
    hash) under the append lock and uses the cache only if it equals that key. The hash chain
    commits to every event, so an equal head means the log is exactly the one this process
    last committed: any other writer, a rolled-back append, a truncation or a rewrite changes
    the key and the versions are read from the database again. The cache is updated only after
    a commit of `transaction()` (appends on other connections do not touch it), and only when it
    still describes the head that transaction started from. UNIQUE(stream_id, stream_version)
    stays the last line of defence either way.
    """

    MAX_STREAMS = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, bytes] | None = None
        self._versions: dict[str, int] = {}

    def lookup(self, head: tuple[int, bytes], streams: Sequence[str]) -> tuple[dict[str, int], list[str]]:
        """(versions known for `head`, streams to read from the database)."""
        with self._lock:
            if self._key != head:
                return {}, list(streams)
            cached = self._versions
            known: dict[str, int] = {}
            unknown: list[str] = []
            for stream_id in streams:
                version = cached.get(stream_id)
                if version is None:
                    unknown.append(stream_id)
                else:
                    known[stream_id] = version
            return known, unknown

    def committed(self, start: tuple[int, bytes], versions: dict[str, int], end: tuple[int, bytes]) -> None:
        """A transaction that began at head `start` committed; the log is now at `end`."""
        with self._lock:
            if self._key != start:
                # Not the state we described (another writer, or an append of ours on another
                # connection): start again from this transaction's streams alone.
                self._versions = {}
            elif len(self._versions) + len(versions) > self.MAX_STREAMS:
                self._versions = {}
            self._versions.update(versions)
            self._key = end
