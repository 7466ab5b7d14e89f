"""Concurrent appenders never lose or interleave a stream's versions; positions stay gap-free."""

from __future__ import annotations

import functools
import random
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import ConcurrencyError, EventRegistry, EventStore, KeyEncryptionKey, NewEvent, schema
from onefold.testing.together import all_at_once


def check_log_is_consistent(store: EventStore, expected_count: int) -> None:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                schema.events.c.position, schema.events.c.stream_id, schema.events.c.stream_version
            ).order_by(schema.events.c.position)
        ).all()
    assert [r.position for r in rows] == list(range(1, expected_count + 1)), "positions have gaps"
    versions: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        versions[r.stream_id].append(r.stream_version)
    for stream_id, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"stream {stream_id} versions {seen}"
    assert store.verify().ok


def test_threads_with_optimistic_concurrency(store: EventStore) -> None:
    streams = ["hot:1", "hot:2", "hot:3"]
    appended = [0] * 4
    conflicts = [0] * 4
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        try:
            for _ in range(15):
                while True:
                    stream = rng.choice(streams)
                    version = store.stream_version(stream)
                    size = rng.randint(1, 3)
                    batch = [
                        NewEvent(
                            stream,
                            events_pb2.CounterChanged(counter=stream, delta=index),
                            expected_version=version if i == 0 else None,
                        )
                        for i in range(size)
                    ]
                    batch.append(NewEvent(f"own:{index}", events_pb2.CounterChanged(counter="own", delta=1)))
                    try:
                        store.append(batch)
                    except ConcurrencyError:
                        conflicts[index] += 1
                        continue
                    appended[index] += len(batch)
                    break
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "an appender hung"
    assert not errors, errors
    check_log_is_consistent(store, sum(appended))


WORKER = textwrap.dedent(
    """
    import sys
    from onefold.contracts.eventlog.testing.v1 import events_pb2
    from onefold.eventlog import ConcurrencyError, EventRegistry, EventStore, KeyEncryptionKey, NewEvent

    url, index, kek = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    registry = EventRegistry()
    registry.register(events_pb2.ProfileUpdated)
    registry.register(events_pb2.CounterChanged)
    store = EventStore(url, service="test", registry=registry, keys=KeyEncryptionKey.from_base64(kek))
    appended = 0
    for round in range(60):
        stream = f"shared:{round % 2}"
        while True:
            version = store.stream_version(stream)
            batch = [
                NewEvent(stream, events_pb2.CounterChanged(counter=stream, delta=1), expected_version=version),
                NewEvent(stream, events_pb2.ProfileUpdated(email=f"w{index}@example.com"), subject=f"s{round % 5}"),
                NewEvent(f"solo:{index}", events_pb2.CounterChanged(counter="solo", delta=1)),
            ]
            try:
                store.append(batch)
            except ConcurrencyError:
                continue
            appended += len(batch)
            break
    print(appended)
    """
)


def test_separate_processes_on_one_sqlite_file(tmp_path: Path, store: EventStore) -> None:
    if not store.is_sqlite:
        pytest.skip("separate processes on one file is about SQLite locking; threads cover PostgreSQL")
    assert store.keys is not None
    url = str(store.engine.url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(i), store.keys.to_base64()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    totals = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        totals.append(int(out.strip()))
    check_log_is_consistent(store, sum(totals))
    # Every process created keys for the same subjects: exactly one key per subject survived.
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.subject_keys)).scalar() == 5
    for event in store.read(limit=10_000):
        store.decode(event)  # every process's ciphertext opens with the one stored key


def test_processes_starting_together_on_an_empty_database_create_one_schema(
    database_url: str, registry: EventRegistry, kek: KeyEncryptionKey
) -> None:
    """Replicas (or workers) starting at once: each creates the log's and its projections' tables,
    one after the other under the write lock, and none fails on a table another just created."""
    extra = sa.MetaData()
    sa.Table("projection_rows", extra, sa.Column("id", sa.Integer, primary_key=True))
    stores = [EventStore(database_url, service="test", registry=registry, keys=kek) for _ in range(4)]

    def start_up(store: EventStore) -> None:
        store.create_schema()
        store.create_tables(extra)

    errors = all_at_once([functools.partial(start_up, store) for store in stores])
    try:
        assert errors == []
        assert {"events", "projection_rows"} <= set(sa.inspect(stores[0].engine).get_table_names())
        stores[0].append([NewEvent("s:1", events_pb2.CounterChanged(counter="s", delta=1))])
        check_log_is_consistent(stores[0], 1)
    finally:
        for store in stores:
            store.close()
