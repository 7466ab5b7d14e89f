"""`onefold up` end to end: real nats-server, seven real service processes, the real CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from onefold.cli.supervisor import SERVICES
from onefold.contracts.platform.v1 import platform_pb2, platform_pb2_grpc
from onefold.platform.health import health_status, wait_for_health
from onefold.platform.ports import free_port

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

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.process.poll() is not None:
                raise AssertionError(f"onefold up exited early:\n{text}")
            time.sleep(0.1)
        raise AssertionError(f"'{needle}' not printed within {timeout}s:\n{self.text()}")

    def endpoints(self) -> dict[str, str]:
        services: dict[str, str] = json.loads((self.data_dir / "run" / "endpoints.json").read_text())[
            "services"
        ]
        return services

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)


def _processes_mentioning(text: str) -> list[str]:
    """'pid: cmdline' of every process whose command line or environment mentions `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (proc / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline or text in environ:
                found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path / "data")
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(10)


def _who_am_i(target: str, token: str | None) -> platform_pb2.WhoAmIResponse:
    with grpc.insecure_channel(target) as channel:
        metadata = [("authorization", f"Bearer {token}")] if token else None
        reply: platform_pb2.WhoAmIResponse = platform_pb2_grpc.PlatformServiceStub(channel).WhoAmI(
            platform_pb2.WhoAmIRequest(), metadata=metadata, timeout=5
        )
        return reply


@pytest.mark.slow
def test_up_serves_reconnects_stops_cleanly_and_resumes(up: Up) -> None:
    text = up.wait_for("Ctrl-C stops everything")
    tokens = TOKEN.findall(text)
    assert len(tokens) == 1, text  # the admin credential, printed once
    admin = tokens[0]
    endpoints = up.endpoints()
    assert set(SERVICES) <= set(endpoints)

    status = subprocess.run(
        [*ONEFOLD, "status", "--data-dir", str(up.data_dir)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout + status.stderr

    for name in SERVICES:
        reply = _who_am_i(endpoints[name], admin)
        assert (reply.service, reply.workspace) == (name, "default")
        with pytest.raises(grpc.RpcError) as caught:
            _who_am_i(endpoints[name], None)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # The Segment-compatible HTTP API of ingest is up too (no write key: 401, in Segment's shape).
    http = json.loads((up.data_dir / "run" / "endpoints.json").read_text())["http"]["ingest"]
    assert http in text
    import httpx

    assert httpx.get(f"{http}/health", timeout=5).status_code == 200
    assert httpx.post(f"{http}/v1/track", json={"event": "x", "userId": "u"}, timeout=5).status_code == 401

    # Kill nats-server: the supervisor reports it, restarts it, and every service reconnects.
    for name in SERVICES:
        assert wait_for_health(endpoints[name], "onefold.nats", timeout=10)
    nats_pid = next(
        int(line.split(":")[0])
        for line in _processes_mentioning(str(up.data_dir / "nats" / "nats-server.conf"))
    )
    os.kill(nats_pid, signal.SIGKILL)
    up.wait_for("nats-server exited unexpectedly", timeout=15)
    up.wait_for("nats-server is back", timeout=15)
    for name in SERVICES:
        assert wait_for_health(endpoints[name], "onefold.nats", timeout=30), f"{name} did not reconnect"
        up.wait_for(f"{name} reconnected to NATS", timeout=10)

    # A crashed service is reported and restarted.
    ingest_pid = next(
        int(line.split(":")[0])
        for line in _processes_mentioning(str(up.data_dir))
        if "-m onefold.ingest" in line
    )
    os.kill(ingest_pid, signal.SIGKILL)
    up.wait_for("ingest exited unexpectedly", timeout=15)
    assert wait_for_health(endpoints["ingest"], timeout=30)

    # Ctrl-C: everything stops, nothing is left behind.
    assert up.interrupt() == 0
    assert "stopped." in up.text()
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(up.data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(up.data_dir)) == []
    for target in endpoints.values():
        assert health_status(target, timeout=0.5) == "UNREACHABLE"

    # Started again on the same data dir: resumes (same credential store, no new admin printed).
    again = Up(up.data_dir)
    try:
        text = again.wait_for("Ctrl-C stops everything")
        assert TOKEN.findall(text) == []
        reply = _who_am_i(again.endpoints()["consent"], admin)
        assert reply.workspace == "default"
    finally:
        assert again.interrupt() == 0
    assert _processes_mentioning(str(up.data_dir)) == []


def test_second_up_on_the_same_data_dir_is_refused(up: Up) -> None:
    up.wait_for("Ctrl-C stops everything")
    second = subprocess.run(
        [*ONEFOLD, "up", "--data-dir", str(up.data_dir)], capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 2
    assert "another `onefold up` is already running" in second.stderr
    assert "Traceback" not in second.stderr
    assert (up.data_dir / "run" / "endpoints.json").exists()  # the running instance's state is untouched
    status = subprocess.run(
        [*ONEFOLD, "status", "--data-dir", str(up.data_dir)], capture_output=True, text=True
    )
    assert status.returncode == 0
    assert up.interrupt() == 0


def test_unusable_data_dir_is_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = subprocess.run(
        [*ONEFOLD, "up", "--data-dir", str(blocker / "data")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "is not usable" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_status_without_a_running_system_fails(tmp_path: Path) -> None:
    result = subprocess.run([*ONEFOLD, "status", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "nothing is running" in result.stderr


def test_service_with_port_in_use_or_unknown_key_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "ONEFOLD_DATA_DIR": str(tmp_path),
            "ONEFOLD_GRPC__PORT": str(port),
            "ONEFOLD_NATS__URL": f"nats://127.0.0.1:{free_port()}",
        }
        result = subprocess.run(
            [sys.executable, "-m", "onefold.ingest"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2  # no key-encryption key configured: refuse to write personal data
        assert "onefold-ingest: no key-encryption key: set eventlog.key_encryption_key" in result.stderr
        env["ONEFOLD_EVENTLOG__KEY_FILE"] = str(tmp_path / "ingest.kek")
        result = subprocess.run(
            [sys.executable, "-m", "onefold.ingest"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    env["ONEFOLD_GRPC__PROT"] = "1"
    result = subprocess.run([sys.executable, "-m", "onefold.ingest"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "onefold-ingest: unknown configuration key 'grpc.prot' in defaults and environment"
    )


def test_bad_config_file_stops_up_with_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "onefold.yaml"
    config.write_text("telemetry:\n  log_levle: DEBUG\n")
    result = subprocess.run(
        [*ONEFOLD, "up", "--data-dir", str(tmp_path / "data"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"unknown configuration key 'telemetry.log_levle' in {config}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data" / "run" / "endpoints.json").exists()
