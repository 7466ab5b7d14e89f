"""Event log benchmark: append (batches of 100 and 1000, hash chain + encryption on), replay,
rebuild, verify; beside them, in the same run, the physical floor (the very rows the store wrote,
inserted again with raw sqlite3 `executemany` into the same schema, one durable commit per batch)
and the same append workload through the `eventsourcing` library's SQLite recorder.

    python bench/eventlog.py [--events N] [--repeats R] [--json] [--postgres-url URL]
    onefold bench eventlog --json

Workload: `ContactCaptured` events (two personal fields, email and name, encrypted per data subject),
subjects drawn round-robin from 1000, one stream per subject, appended in batches. eventsourcing gets
the same events as DomainEvents, mapped by its Mapper (JSON transcoder + AES-GCM cipher) and inserted
with SQLiteApplicationRecorder.insert_events per batch. Each figure is the median of the repeats, with
the CPU µs per event this process spent on it (the store runs in-process).

Target (issue 17): append >= 0.7x the raw floor of the same run, for both batch sizes; `met` says
whether it was reached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventRegistry, EventStore, KeyEncryptionKey, NewEvent, RecordedEvent
from onefold.eventlog.projections import Projector
from onefold.testing.measure import say_targets

SUBJECTS = 1000
BATCH_SIZES = (100, 1000)
TARGET_RATIO_VS_RAW_FLOOR = 0.7


def make_events(count: int) -> list[NewEvent]:
    return [
        NewEvent(
            f"contact:subject-{i % SUBJECTS}",
            events_pb2.ContactCaptured(
                profile_id=f"profile-{i % SUBJECTS}",
                email=f"user{i}@example.com",
                name=f"User Number {i}",
                plan="pro",
                source="web",
            ),
            subject=f"subject-{i % SUBJECTS}",
            workspace="bench",
        )
        for i in range(count)
    ]


def registry() -> EventRegistry:
    reg = EventRegistry()
    reg.register(events_pb2.ContactCaptured)
    return reg


def fresh_sqlite(directory: Path, name: str) -> str:
    path = directory / f"{name}-{uuid.uuid4().hex[:8]}.db"
    return f"sqlite:///{path}"


class Rate:
    """Events per second and this process's CPU µs per event over one timed run."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def of(self, count: int) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return count / wall, cpu / max(count, 1) * 1e6


def time_appends(store: EventStore, events: Sequence[NewEvent], batch: int) -> tuple[float, float]:
    rate = Rate()
    for start in range(0, len(events), batch):
        store.append(events[start : start + batch])
    return rate.of(len(events))


def raw_insert_floor(
    written: Path, settings: dict[str, Any], directory: Path, batch: int
) -> tuple[float, float]:
    """The rows `written` holds in its events table, inserted again with plain sqlite3 into a new
    file with the same table, indexes and the store's `settings` (page size, durability, cache), one
    BEGIN IMMEDIATE ... COMMIT per batch: what the disk and SQLite cost without any of the store's
    work (encoding, encryption, hashing, versions)."""
    import sqlite3

    source = sqlite3.connect(written)
    rows = source.execute("SELECT * FROM events ORDER BY position").fetchall()
    ddl = [
        sql
        for (sql,) in source.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND sql IS NOT NULL ORDER BY type DESC"
        )
    ]
    source.close()
    target = sqlite3.connect(directory / f"raw-{uuid.uuid4().hex[:8]}.db", isolation_level=None)
    target.execute(f"PRAGMA page_size={settings['page_size']}")
    target.execute("PRAGMA journal_mode=WAL")
    target.execute(f"PRAGMA synchronous={settings['synchronous']}")
    target.execute(f"PRAGMA cache_size={settings['cache_size']}")
    for statement in ddl:
        target.execute(statement)
    insert = f"INSERT INTO events VALUES ({', '.join('?' * len(rows[0]))})"
    rate = Rate()
    for start in range(0, len(rows), batch):
        target.execute("BEGIN IMMEDIATE")
        target.executemany(insert, rows[start : start + batch])
        target.execute("COMMIT")
    measured = rate.of(len(rows))
    target.close()
    return measured


class SubjectCounts:
    """A read model: events per subject, buffered and written once per batch."""

    name = "bench-subject-counts"
    metadata = sa.MetaData()
    table = sa.Table(
        "bench_subject_counts",
        metadata,
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("last_email", sa.String(255), nullable=False),
    )
    tables = (table,)

    def __init__(self) -> None:
        self.pending: dict[str, tuple[int, str]] = {}
        self.counts: dict[str, int] = {}

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        assert isinstance(message, events_pb2.ContactCaptured)
        count = self.counts.get(event.subject, 0) + 1
        self.counts[event.subject] = count
        self.pending[event.subject] = (count, message.email)

    def flush(self, conn: Connection) -> None:
        if self.pending:
            conn.execute(self.table.delete().where(self.table.c.subject.in_(list(self.pending))))
            conn.execute(
                self.table.insert(),
                [{"subject": s, "events": c, "last_email": e} for s, (c, e) in self.pending.items()],
            )
        self.pending.clear()

    def reset(self, conn: Connection) -> None:
        self.pending.clear()
        self.counts.clear()
        conn.execute(self.table.delete())


def bench_onefold(url: str, events: Sequence[NewEvent], batch: int, kek: KeyEncryptionKey) -> EventStore:
    store = EventStore(url, service="bench", registry=registry(), keys=kek)
    store.create_schema()
    return store


_ES_CLASS: list[Any] = []


def _es_event_class(base: Any) -> Any:
    """eventsourcing's DomainEvent for the workload, defined once (its topics must stay unique)."""
    if not _ES_CLASS:
        # eventsourcing resolves topics (and builds the class) through sys.modules; `onefold bench`
        # loads this file without registering it there, so the class lives in a module of its own.
        module = types.ModuleType("onefold_bench_eventsourcing")
        sys.modules[module.__name__] = module

        class ContactCaptured(base):  # type: ignore[misc, valid-type]
            __module__ = "onefold_bench_eventsourcing"
            profile_id: str
            email: str
            name: str
            plan: str
            source: str

        module.ContactCaptured = ContactCaptured  # type: ignore[attr-defined]
        _ES_CLASS.append(ContactCaptured)
    return _ES_CLASS[0]


def eventsourcing_append_rate(directory: Path, events: Sequence[NewEvent], batch: int) -> tuple[float, float]:
    from eventsourcing.cryptography import AESCipher
    from eventsourcing.domain import DomainEvent
    from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, UUIDAsHex
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
    from eventsourcing.utils import Environment

    ContactCaptured = _es_event_class(DomainEvent)
    originators = {f"subject-{i}": uuid.uuid4() for i in range(SUBJECTS)}
    versions: dict[str, int] = {}
    now = datetime.now(UTC)
    domain_events = []
    for event in events:
        message = event.message
        assert isinstance(message, events_pb2.ContactCaptured)
        version = versions.get(event.subject, 0) + 1
        versions[event.subject] = version
        domain_events.append(
            ContactCaptured(
                originator_id=originators[event.subject],
                originator_version=version,
                timestamp=now,
                profile_id=message.profile_id,
                email=message.email,
                name=message.name,
                plan=message.plan,
                source=message.source,
            )
        )
    cipher = AESCipher(Environment(env={AESCipher.CIPHER_KEY: AESCipher.create_key(32)}))
    transcoder = JSONTranscoder()  # registered as an eventsourcing Application does by default
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    mapper: Mapper[Any] = Mapper(transcoder=transcoder, cipher=cipher)
    datastore = SQLiteDatastore(str(directory / f"es-{uuid.uuid4().hex[:8]}.db"))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    with datastore.transaction(commit=False) as cursor:

        def pragma(name: str) -> Any:
            cursor.execute(f"PRAGMA {name}")
            return cursor.fetchone()[0]

        SETTINGS["eventsourcing_sqlite"] = sqlite_settings(pragma)
    rate = Rate()
    for start in range(0, len(domain_events), batch):
        recorder.insert_events([mapper.to_stored_event(e) for e in domain_events[start : start + batch]])
    measured = rate.of(len(domain_events))
    datastore.close()
    return measured


SETTINGS: dict[str, dict[str, Any]] = {}
_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def sqlite_settings(pragma: Callable[[str], Any]) -> dict[str, Any]:
    """The durability and cache settings a SQLite connection actually runs with."""
    return {
        "journal_mode": pragma("journal_mode"),
        "synchronous": _SYNCHRONOUS.get(pragma("synchronous"), "?"),
        "page_size": pragma("page_size"),
        "cache_size": pragma("cache_size"),
    }


def onefold_sqlite_settings(store: EventStore) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return sqlite_settings(lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar())


def measure(
    label: str, repeats: int, run: Callable[[], tuple[float, float]], results: dict[str, Any], key: str
) -> None:
    """The median of `repeats` runs as results[key], its CPU µs per event beside it."""
    record(label, [run() for _ in range(repeats)], results, key)


def record(label: str, runs: Sequence[tuple[float, float]], results: dict[str, Any], key: str) -> None:
    rate, cpu_us = sorted(runs)[len(runs) // 2]
    results[key] = round(rate)
    results[key.removesuffix("_per_s") + "_cpu_us_per_event"] = round(cpu_us, 1)
    print(f"  {label:<58} {results[key]:>10,} events/s  {cpu_us:6.1f} µs CPU/event", file=sys.stderr)


def run_onefold_suite(
    prefix: str,
    make_url: Callable[[], str],
    events: Sequence[NewEvent],
    repeats: int,
    results: dict[str, Any],
    raw_floor_in: Path | None = None,
) -> None:
    """Append, replay, rebuild and verify; with `raw_floor_in` (SQLite), the raw floor beside appends."""
    kek = KeyEncryptionKey.generate()
    last: list[EventStore] = []

    for batch in BATCH_SIZES:
        floors: list[tuple[float, float]] = []
        ratios: list[float] = []

        def append_run(
            batch: int = batch, floors: list[tuple[float, float]] = floors, ratios: list[float] = ratios
        ) -> tuple[float, float]:
            """One append of the workload; on SQLite the raw floor runs right after on the same rows,
            so each ratio compares two runs made under the same load on this noisy machine."""
            store = bench_onefold(make_url(), events, batch, kek)
            measured = time_appends(store, events, batch)
            if last:
                last.pop().close()
            last.append(store)
            if store.is_sqlite and raw_floor_in is not None:
                settings = SETTINGS["onefold_sqlite"] = onefold_sqlite_settings(store)
                floor = raw_insert_floor(Path(store.engine.url.database or ""), settings, raw_floor_in, batch)
                floors.append(floor)
                ratios.append(measured[0] / floor[0])
            return measured

        measure(f"{prefix} append, batches of {batch} (chain + encryption)", repeats, append_run, results,
                f"{prefix}_append_batch{batch}_per_s")  # fmt: skip
        if floors:
            record(f"raw sqlite3 executemany of the same rows, batches of {batch}", floors, results,
                   f"raw_sqlite_insert_batch{batch}_per_s")  # fmt: skip
            ratio = statistics.median(ratios)
            results[f"ratio_vs_raw_floor_batch{batch}"] = round(ratio, 2)
            print(f"  {'ratio onefold / raw floor (median of pairs), batches of ' + str(batch):<58} {ratio:>10.2f}x",
                  file=sys.stderr)  # fmt: skip

    store = last[0]

    def replay_run() -> tuple[float, float]:
        rate = Rate()
        count = 0
        for event in store.iter_all(batch_size=5000):
            store.decode(event)
            count += 1
        return rate.of(count)

    def rebuild_run() -> tuple[float, float]:
        projection = SubjectCounts()
        projector = Projector(store, [projection])
        projector.create_tables()
        rate = Rate()
        count = projector.rebuild(projection, batch_size=5000)
        return rate.of(count)

    def verify_run() -> tuple[float, float]:
        rate = Rate()
        result = store.verify(batch_size=20_000)
        assert result.ok, result.problem
        return rate.of(result.events_checked)

    measure(
        f"{prefix} replay (read + decrypt + decode)", repeats, replay_run, results, f"{prefix}_replay_per_s"
    )
    measure(
        f"{prefix} rebuild (projection, decrypt)", repeats, rebuild_run, results, f"{prefix}_rebuild_per_s"
    )
    measure(f"{prefix} verify (hash chain)", repeats, verify_run, results, f"{prefix}_verify_per_s")
    store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per run (default 50000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--postgres-url", default="", help="also measure PostgreSQL (a scratch database is made)"
    )
    parser.add_argument("--skip-eventsourcing", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)

    events = make_events(args.events)
    results: dict[str, Any] = {
        "events": args.events,
        "repeats": args.repeats,
        "subjects": SUBJECTS,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}",
    }
    print(f"event log benchmark: {args.events:,} events, median of {args.repeats}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="onefold-bench-") as tmp:
        directory = Path(tmp)
        run_onefold_suite(
            "sqlite", lambda: fresh_sqlite(directory, "onefold"), events, args.repeats, results, directory
        )
        if not args.skip_eventsourcing:
            for batch in BATCH_SIZES:
                measure(
                    f"eventsourcing 9 SQLite recorder, batches of {batch} (AES-GCM)",
                    args.repeats,
                    lambda batch=batch: eventsourcing_append_rate(directory, events, batch),  # type: ignore[misc]
                    results,
                    f"eventsourcing_append_batch{batch}_per_s",
                )
                ratio = (
                    results[f"sqlite_append_batch{batch}_per_s"]
                    / results[f"eventsourcing_append_batch{batch}_per_s"]
                )
                results[f"ratio_vs_eventsourcing_batch{batch}"] = round(ratio, 2)
                print(
                    f"  {'ratio onefold / eventsourcing, batches of ' + str(batch):<58} {ratio:>10.2f}x",
                    file=sys.stderr,
                )
        if args.postgres_url:
            from onefold.platform.database import normalise_url
            from onefold.testing.postgres import temporary_database

            with temporary_database(normalise_url(args.postgres_url), prefix="onefold_bench") as pg_url:

                def make_pg_url() -> str:
                    engine = sa.create_engine(pg_url)
                    from onefold.eventlog import schema

                    schema.metadata.drop_all(engine)
                    SubjectCounts.metadata.drop_all(engine)
                    engine.dispose()
                    return pg_url

                run_onefold_suite("postgres", make_pg_url, events, args.repeats, results)
    results["settings"] = SETTINGS
    for name, settings in SETTINGS.items():
        print(f"  settings {name}: " + ", ".join(f"{k}={v}" for k, v in settings.items()), file=sys.stderr)
    print(
        "  (both sides commit once per batch; synchronous=FULL in WAL mode fsyncs the WAL on each commit)",
        file=sys.stderr,
    )
    results["targets"] = {"append_vs_raw_floor": TARGET_RATIO_VS_RAW_FLOOR}
    results["met"] = {
        f"append_vs_raw_floor_batch{batch}": results[f"ratio_vs_raw_floor_batch{batch}"]
        >= TARGET_RATIO_VS_RAW_FLOOR
        for batch in BATCH_SIZES
    }
    say_targets(results["met"])
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
