"""Each service is a real process with the platform's gRPC server: health, auth, clean SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from onefold.cli.supervisor import SERVICES
from onefold.contracts.platform.v1 import platform_pb2, platform_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.platform.health import health_status, wait_for_health
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.processes import ServiceProcess


@pytest.mark.parametrize("name", SERVICES)
def test_service_serves_authenticates_and_stops(
    name: str, tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(name, data_dir=tmp_path / "data")
    assert wait_for_health(service.target, "onefold.nats", timeout=15)
    store = CredentialStore(f"sqlite:///{tmp_path / 'data' / 'auth.db'}")
    token = store.issue("acme", ["profiles:read"]).token
    with grpc.insecure_channel(service.target) as channel:
        stub = platform_pb2_grpc.PlatformServiceStub(channel)
        reply = stub.WhoAmI(platform_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {token}")])
        assert (reply.service, reply.workspace) == (name, "acme")
        with pytest.raises(grpc.RpcError) as caught:
            stub.WhoAmI(platform_pb2.WhoAmIRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert service.stop() == 0  # SIGTERM: graceful, exit code 0
    assert health_status(service.target, timeout=0.5) == "UNREACHABLE"
    log = service.log_path.read_text()
    assert "service.stopped" in log


def test_service_starts_before_nats_and_connects_when_it_arrives(tmp_path: Path) -> None:
    nats = NatsServerProcess(tmp_path / "nats")  # port chosen, server not started yet
    service = ServiceProcess("consent", tmp_path / "data", nats)
    service.start()
    try:
        assert health_status(service.target) == "SERVING"
        assert health_status(service.target, "onefold.nats") == "NOT_SERVING"
        nats.start()
        assert wait_for_health(service.target, "onefold.nats", timeout=30)
        nats.kill()
        assert wait_for_health(service.target, "onefold.nats", want="NOT_SERVING", timeout=15)
        nats.start()
        assert wait_for_health(service.target, "onefold.nats", timeout=30)
    finally:
        service.stop()
        nats.stop()


def test_first_start_prints_the_admin_credential_once(tmp_path: Path, nats_server: NatsServerProcess) -> None:
    def run_once() -> str:
        service = ServiceProcess("segments", tmp_path / "data", nats_server)
        service.start()
        service.stop()
        return service.log_path.read_text()

    first = run_once()
    assert first.count("Admin credential for workspace 'default' (shown once): ofk_") == 1
    second = run_once()
    assert second.count("Admin credential") == 1  # the log file is appended: still only the first one


def test_credentials_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "onefold.cli", "credentials"]
    data = ["--data-dir", str(tmp_path)]
    created = subprocess.run(
        [*cli, "create", "--workspace", "acme", "--scope", "ingest:write", "--scope", "profiles:read", *data],
        capture_output=True,
        text=True,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("ofk_")
    # Only a hash is stored. (Scan before opening SQLite here: closing another descriptor of the same
    # file would drop this process's POSIX locks on it.)
    secret = token.split("_", 2)[2]  # ofk_<id>_<secret>; the secret itself may contain "_"
    assert secret not in (tmp_path / "auth.db").read_bytes().decode(errors="replace")
    store = CredentialStore(f"sqlite:///{tmp_path / 'auth.db'}", cache_seconds=0)
    principal = store.authenticate(token)
    assert principal.workspace == "acme" and principal.scopes == {"ingest:write", "profiles:read"}
    listed = subprocess.run(
        [*cli, "list", *data], capture_output=True, text=True, check=True, env={"COLUMNS": "200"}
    )
    assert principal.credential_id in listed.stdout
    subprocess.run([*cli, "revoke", principal.credential_id, *data], check=True, capture_output=True)
    with pytest.raises(Exception, match="revoked"):
        store.authenticate(token)
    bad = subprocess.run(
        [*cli, "create", "--workspace", "acme", "--scope", "everything", *data],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown scope(s): everything" in bad.stderr
