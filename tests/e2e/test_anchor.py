"""The independent anchor end to end: a real consent process publishes signed digests to the witness
stream; its database is cut back while it is stopped; it refuses to start, and `onefold audit verify`
(reading the witness stream, and the stopped service's database file) names the first missing position
and the witness that shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

from onefold.cli.audit import Verified, verdict
from onefold.consent.domain.events import REGISTRY
from onefold.contracts.eventlog.v1 import eventlog_pb2
from onefold.eventlog import EventStore, KeyEncryptionKey, NewEvent
from onefold.eventlog.digests import WITNESS_STREAM_LABEL, read_witness
from onefold.platform.auth import INSTALLATION_ADMIN, CredentialStore
from onefold.platform.bus_permissions import OPERATOR
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.processes import ServiceProcess

ONEFOLD = [sys.executable, "-m", "onefold.cli"]


def seed_consent_log(data_dir: Path, count: int) -> None:
    """A consent log of `count` events of its real types, under the key the service will use."""
    keys = data_dir / "keys"
    keys.mkdir(parents=True)
    kek = KeyEncryptionKey.generate()
    (keys / "consent.kek").write_text(kek.to_base64() + "\n")
    registry = REGISTRY
    types = [registry.for_name(name) for name in sorted(registry.names())]
    types = [t for t in types if t.appendable and not t.pii.has_pii]
    events = []
    for i in range(count):
        message = types[i % len(types)].message_class()
        for fd in message.DESCRIPTOR.fields:
            if fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated:
                setattr(message, fd.name, f"{fd.name}-{i}")
        events.append(NewEvent(f"seed:{i}", message, workspace="default"))
    store = EventStore(f"sqlite:///{data_dir / 'consent.db'}", service="consent", registry=registry, keys=kek)
    store.create_schema()
    store.append(events)
    store.close()


async def witnessed_position(server: NatsServerProcess, service: str) -> int:
    connection = NatsConnection(server.client_settings(OPERATOR), "test-anchor")
    client = await connection.connect_once()
    try:
        witnesses = await read_witness(client.jetstream(), [service])
    finally:
        await connection.close()
    last = witnesses[service].last
    return last.digest.digest.position if last is not None else 0


def audit_verify(
    data_dir: Path, token: str, target: str, server: NatsServerProcess, *extra: str, status: int
) -> subprocess.CompletedProcess[str]:
    """`onefold audit verify consent` reading the witnesses as the `operator` NATS user."""
    done = subprocess.run(
        [
            *ONEFOLD,
            "audit",
            "verify",
            "consent",
            *extra,
            "--target",
            target,
            "--nats",
            server.url,
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ONEFOLD_TOKEN": token,
            "COLUMNS": "250",
            "ONEFOLD_NATS__USER": OPERATOR,
            "ONEFOLD_NATS__PASSWORD_FILE": str(server.credentials.password_file(OPERATOR)),
        },
        timeout=120,
    )
    assert done.returncode == status, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_a_cut_log_is_refused_at_start_and_named_by_audit_verify(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    data_dir = tmp_path / "data"
    seed_consent_log(data_dir, 20)
    consent = ServiceProcess(name="consent", data_dir=data_dir, nats=nats_server)
    consent.start()
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(witnessed_position(nats_server, "consent")) != 20:
            assert time.monotonic() < deadline, consent.log_path.read_text()[-3000:]
            time.sleep(0.2)
        token = (
            CredentialStore(f"sqlite:///{data_dir / 'auth.db'}")
            .issue("default", ["admin", INSTALLATION_ADMIN])
            .token
        )
        intact = audit_verify(data_dir, token, consent.target, nats_server, "--json", status=0)
        [result] = json.loads(intact.stdout)
        assert result["ok"] and result["witnessed"] >= 1 and result["head_position"] == 20, intact.stdout
        assert not result["from_file"] and result["witness_conflicts"] == []
    finally:
        assert consent.stop() == 0

    # Someone with access to the data dir removes the newest events and every local trace of them.
    database = sqlite3.connect(data_dir / "consent.db")
    database.execute("DELETE FROM events WHERE position >= 16")
    database.execute("DELETE FROM chain_digests")
    database.execute("DELETE FROM relay_positions")
    database.commit()
    database.close()

    refused = ServiceProcess(name="consent", data_dir=data_dir, nats=nats_server, port=consent.port)
    with contextlib.suppress(RuntimeError):  # it may exit before it ever reports SERVING
        refused.start()
    assert refused.process is not None
    assert refused.process.wait(60) == 2
    log = refused.log_path.read_text()
    assert "the log ends at position 15 but position 20 was already witnessed" in log
    assert "Run `onefold audit verify consent`" in log

    # The service is down: audit verify reads its database file and checks it against the witnesses.
    broken = audit_verify(data_dir, token, refused.target, nats_server, status=1)
    assert "the consent log is not intact at position 16" in broken.stderr
    assert f"the witness that disagrees: {WITNESS_STREAM_LABEL}" in broken.stderr
    assert "from its file" in broken.stdout


def test_the_verdict_names_the_witness_conflicts_and_unchecked_witnesses() -> None:
    broken = Verified(
        "ingest",
        "127.0.0.1:1",
        eventlog_pb2.VerifyResponse(
            service="ingest",
            ok=False,
            first_bad_position=25,
            problem="event 25 disagrees with the chain digest witnessed by identity's consumed head",
            witness="identity's consumed head (witness record 7)",
        ),
    )
    conflict = "witness record 3 for position 9 is signed by a different key than the pinned one"
    conflicted = Verified(
        "consent",
        "127.0.0.1:2",
        eventlog_pb2.VerifyResponse(service="consent", ok=True),
        witness_conflicts=[conflict],
    )
    intact = Verified("segments", "127.0.0.1:3", eventlog_pb2.VerifyResponse(service="segments", ok=True))
    status, sentences = verdict([broken, conflicted, intact])
    assert status == 1 and not conflicted.ok and intact.ok
    assert sentences == [
        "the ingest log is not intact at position 25: event 25 disagrees with the chain digest witnessed "
        "by identity's consumed head (the witness that disagrees: identity's consumed head (witness record 7))",
        f"the witness stream holds a conflicting digest of consent: {conflict}",
    ]
    status, sentences = verdict(
        [intact], witness_error="NATS at nats://127.0.0.1:4222 answered TimeoutError: "
    )
    assert status == 2 and sentences[0].startswith("the logs could not be checked against their witnesses")
