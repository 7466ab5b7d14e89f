"""`onefold up` and `onefold keys rotate` end to end: private files, keys outside the data dir, the
service credential revoked at stop, installation-wide audit for the bootstrap admin only, and a key
rotation after which every service still reads what it stored."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from onefold.cli.supervisor import SERVICE_CREDENTIAL_NAME, SERVICES
from onefold.contracts.eventlog.v1 import eventlog_pb2, eventlog_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from onefold.platform.auth import ANY_WORKSPACE, CredentialStore

ONEFOLD = [sys.executable, "-m", "onefold.cli"]
TOKEN = re.compile(r"ofk_[0-9a-f]{16}_[A-Za-z0-9_-]+")


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.output = data_dir.parent / f"up-{time.monotonic_ns()}.out"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [*ONEFOLD, "up", "--data-dir", str(data_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "COLUMNS": "200"},
            )

    def wait_ready(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output.read_text()
            if "Ctrl-C stops everything" in text:
                return text
            if self.process.poll() is not None:
                raise AssertionError(f"onefold up exited early:\n{text}")
            time.sleep(0.1)
        raise AssertionError(f"onefold up not ready:\n{self.output.read_text()}")

    def targets(self) -> dict[str, str]:
        services: dict[str, str] = json.loads((self.data_dir / "run" / "endpoints.json").read_text())[
            "services"
        ]
        return services

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def onefold(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250", "ONEFOLD_TOKEN": token}
    return subprocess.run([*ONEFOLD, *args], capture_output=True, text=True, env=env, timeout=300)


def assert_private(root: Path) -> None:
    assert stat.S_IMODE(root.stat().st_mode) == 0o700, root
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def wait_for(probe: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def email_trait(identity: str, token: str, user_id: str) -> str | None:
    auth = (("authorization", f"Bearer {token}"),)
    identifier = identity_pb2.Identifier(type="user_id", value=user_id)
    with grpc.insecure_channel(identity) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        if not stub.Resolve(identity_pb2.ResolveRequest(identifier=identifier), metadata=auth).found:
            return None
        ref = identity_pb2.ProfileRef(identifier=identifier)
        profile = stub.GetProfile(identity_pb2.GetProfileRequest(profile=ref), metadata=auth)
    return next((str(t.value.string_value) for t in profile.traits if t.name == "email"), None)


def identify(ingest: str, token: str, source_id: str, user_id: str, email: str) -> None:
    event = ingest_pb2.TrackingEvent(
        type=ingest_pb2.EVENT_TYPE_IDENTIFY, message_id=uuid.uuid4().hex, user_id=user_id
    )
    event.traits.update({"email": email})
    with grpc.insecure_channel(ingest) as channel:
        sent = ingest_pb2_grpc.IngestServiceStub(channel).Batch(
            ingest_pb2.BatchRequest(source_id=source_id, events=[event]),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    assert sent.accepted == 1


def head(target: str, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        try:
            eventlog_pb2_grpc.EventLogServiceStub(channel).Head(
                eventlog_pb2.HeadRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_up_keeps_files_private_keys_outside_revokes_at_stop_and_survives_a_key_rotation(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    up = Up(data)
    try:
        admin = TOKEN.findall(up.wait_ready())[0]
        targets = up.targets()
        # Keys: one per service, outside the data dir, under the installation's own key dir.
        key_dir = (
            Path(os.environ["XDG_CONFIG_HOME"])
            / "onefold"
            / "keys"
            / (data / "installation-id").read_text().strip()
        )
        assert sorted(p.name for p in key_dir.iterdir()) == sorted(f"{name}.kek" for name in SERVICES)
        assert not (data / "keys").exists()
        assert_private(key_dir)

        with grpc.insecure_channel(targets["ingest"]) as channel:
            created = ingest_pb2_grpc.IngestServiceStub(channel).CreateSource(
                ingest_pb2.CreateSourceRequest(name="web"), metadata=(("authorization", f"Bearer {admin}"),)
            )
        identify(targets["ingest"], admin, created.source.source_id, "ann", "Ann@Example.com")
        # The profile keeps the e-mail as identity matches it: trimmed and lower-cased.
        wait_for(lambda: email_trait(targets["identity"], admin, "ann") == "ann@example.com", "ann's profile")

        # The whole installation's log: the bootstrap admin may verify it, a workspace admin may not.
        assert onefold("audit", "verify", "--data-dir", str(data), token=admin).returncode == 0
        made = onefold(
            "credentials", "create", "--workspace", "acme", "--scope", "admin", "--data-dir", str(data)
        )
        acme_admin = TOKEN.findall(made.stdout)[0]
        assert head(targets["consent"], acme_admin) == grpc.StatusCode.PERMISSION_DENIED
        assert head(targets["consent"], admin) == grpc.StatusCode.OK
        refused = onefold("audit", "verify", "consent", "--data-dir", str(data), token=acme_admin)
        assert refused.returncode == 2 and "installation:admin" in refused.stderr

        # No rotation beside a running system.
        busy = onefold("keys", "rotate", "--all", "--data-dir", str(data))
        assert busy.returncode == 2 and "is running" in busy.stderr
        assert up.stop() == 0
    finally:
        up.kill()

    # Stopped cleanly: the service-to-service credential is revoked already, not at the next start.
    store = CredentialStore(f"sqlite:///{data / 'auth.db'}")
    service_credentials = [row for row in store.list(ANY_WORKSPACE) if row["name"] == SERVICE_CREDENTIAL_NAME]
    store.engine.dispose()
    assert len(service_credentials) == 1 and service_credentials[0]["revoked_at"] is not None
    # Every database (and -wal/-shm), auth.db, log, the JetStream store: the user's alone.
    assert {"auth.db", "ingest.db", "identity.db", "logs", "nats"} <= {p.name for p in data.iterdir()}
    assert_private(data)

    before = {name: (key_dir / f"{name}.kek").read_text() for name in SERVICES}
    rotated = onefold("keys", "rotate", "--all", "--data-dir", str(data))
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    counts = {
        name: int(count.replace(",", ""))
        for name, count in re.findall(
            r"(\w+): key rotated .*?; ([\d,]+) data keys re-wrapped", rotated.stdout
        )
    }
    assert set(counts) == set(SERVICES) and counts["ingest"] >= 1 and counts["identity"] >= 1
    for name in SERVICES:
        after = (key_dir / f"{name}.kek").read_text()
        assert after.split()[0] != before[name].split()[0]
        assert "derived blind-index" in after  # blind indexes keep their key
        assert not (key_dir / f"{name}.kek.previous").exists()
    assert_private(key_dir)

    # Started again on the new keys: what was stored reads back, and new data is written.
    again = Up(data)
    try:
        again.wait_ready()
        targets = again.targets()
        assert email_trait(targets["identity"], admin, "ann") == "ann@example.com"
        identify(targets["ingest"], admin, created.source.source_id, "bo", "bo@example.com")
        wait_for(lambda: email_trait(targets["identity"], admin, "bo") == "bo@example.com", "bo's profile")
        assert onefold("audit", "verify", "--data-dir", str(data), token=admin).returncode == 0
        assert again.stop() == 0
    finally:
        again.kill()
