"""`onefold keys rotate` on a service database (SQLite and PostgreSQL), and its refusal beside a
running service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventRegistry, EventStore, NewEvent
from onefold.eventlog.keyfile import load_key_file, previous_path
from onefold.eventlog.lease import LeaderLease


def registry() -> EventRegistry:
    events = EventRegistry()
    events.register(events_pb2.ProfileUpdated)
    return events


def rotate(data: Path, key_file: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ONEFOLD_DATABASE__URL": database_url,
        "ONEFOLD_EVENTLOG__KEY_FILE": str(key_file),
        "COLUMNS": "200",
    }
    env.pop("ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY", None)
    command = [
        sys.executable,
        "-m",
        "onefold.cli",
        "keys",
        "rotate",
        "--service",
        "ingest",
        "--data-dir",
        str(data),
    ]
    return subprocess.run(
        [*command, "--batch-size", "3"], capture_output=True, text=True, env=env, timeout=120
    )


def test_keys_rotate_rewraps_a_service_database_and_refuses_beside_a_running_leader(
    tmp_path: Path, database_url: str
) -> None:
    data, key_file = tmp_path / "data", tmp_path / "secret" / "ingest.kek"
    kek = load_key_file(key_file, create=True)
    store = EventStore(database_url, service="ingest", registry=registry(), keys=kek)
    store.create_schema()
    subjects = [f"s{n}" for n in range(8)]
    store.append(
        [
            NewEvent(f"p:{s}", events_pb2.ProfileUpdated(profile_id=s, email=f"{s}@example.com"), subject=s)
            for s in subjects
        ]
    )

    # A running service holds the leader lease: no rotation, and the key file is untouched.
    running = LeaderLease(store.engine, "ingest:eventlog")
    assert running.try_acquire()
    refused = rotate(data, key_file, database_url)
    running.release()
    assert refused.returncode == 2 and "stop every replica first" in refused.stderr
    assert load_key_file(key_file).key_id == kek.key_id and not previous_path(key_file).exists()
    store.close()

    rotated = rotate(data, key_file, database_url)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "ingest: key rotated" in rotated.stdout and "8 data keys re-wrapped" in rotated.stdout
    new = load_key_file(key_file)
    assert new.key_id != kek.key_id and new.previous is None and not previous_path(key_file).exists()
    after = EventStore(database_url, service="ingest", registry=registry(), keys=new)
    assert [after.decode(e).email for e in after.read()] == [f"{s}@example.com" for s in subjects]  # type: ignore[attr-defined]
    after.close()
