"""`onefold up`'s endpoints end to end: fixed ports from a port base, shown by `onefold status --json`,
the same after a clean stop and a new start; a clean stop warns about nothing; a port in use stops the
start before anything runs. Real processes: the CLI, nats-server and the seven services."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onefold.cli.supervisor import SERVICES
from onefold.platform.config import PORT_OFFSETS
from onefold.testing.ports import free_port_range

ONEFOLD = [sys.executable, "-m", "onefold.cli"]
EXAMPLE_SETTINGS = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "onefold.yaml"
READY = "Ctrl-C stops everything"


class Up:
    """One `onefold up` process, its stdout and stderr kept apart."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        run = time.monotonic_ns()
        self.stdout_path = data_dir.parent / f"up-{run}.out"
        self.stderr_path = data_dir.parent / f"up-{run}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*ONEFOLD, "up", "--data-dir", str(data_dir), *args],
                stdout=out,
                stderr=err,
                env={**os.environ, "COLUMNS": "200"},
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.stdout_path.read_text():
            if self.process.poll() is not None:
                raise AssertionError(f"onefold up exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"onefold up not ready within {timeout:.0f}s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        if up.process.poll() is None:
            up.process.kill()
            up.process.wait(10)


def status_json(data_dir: Path) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [*ONEFOLD, "status", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def warnings_while_stopping(data_dir: Path) -> list[str]:
    """Warning-or-worse log lines each service wrote after its last `service.stopping`."""
    found = []
    for log in sorted((data_dir / "logs").glob("*.log")):
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        stopping = max(i for i, entry in enumerate(entries) if entry["event"] == "service.stopping")
        found += [
            f"{log.name}: {entry}"
            for entry in entries[stopping:]
            if entry["level"] in {"warning", "error", "critical"}
        ]
    return found


@pytest.mark.slow
def test_endpoints_stay_put_across_a_clean_restart_and_the_stop_is_quiet(
    tmp_path: Path, ups: list[Up]
) -> None:
    base = free_port_range(len(PORT_OFFSETS))
    data_dir = tmp_path / "data"
    # The example settings file says base 7460: the flag beats it (and the suite's ONEFOLD_PORTS__BASE=0).
    args = ("--config", str(EXAMPLE_SETTINGS), "--port-base", str(base))

    first = Up(data_dir, *args)
    ups.append(first)
    first.wait_ready()
    code, status = status_json(data_dir)
    assert code == 0, status
    assert status["all_serving"] is True
    addresses = {key: endpoint["address"] for key, endpoint in status["endpoints"].items()}
    assert addresses == {
        "ingest_http": f"http://127.0.0.1:{base}",
        "ingest_grpc": f"127.0.0.1:{base + 1}",
        "identity": f"127.0.0.1:{base + 2}",
        "consent": f"127.0.0.1:{base + 3}",
        "segments": f"127.0.0.1:{base + 4}",
        "journeys": f"127.0.0.1:{base + 5}",
        "nats": f"nats://127.0.0.1:{base + 6}",
        "destinations": f"127.0.0.1:{base + 7}",
        "insights": f"127.0.0.1:{base + 8}",
    }
    for key in ("ingest_grpc", "identity", "consent", "segments", "journeys", "destinations", "insights"):
        assert status["endpoints"][key]["nats_connection"] == "SERVING", status
    table = subprocess.run(
        [*ONEFOLD, "status", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert table.returncode == 0
    assert f"http://127.0.0.1:{base}" in table.stdout and "ingest HTTP" in table.stdout

    assert first.stop() == 0
    assert "stopped." in first.output()
    assert "nats.disconnected" not in first.stderr_path.read_text()
    assert warnings_while_stopping(data_dir) == []
    closed = [name for name in SERVICES if "nats.closed" in (data_dir / "logs" / f"{name}.log").read_text()]
    assert closed == list(SERVICES)
    stopped = subprocess.run(
        [*ONEFOLD, "status", "--data-dir", str(data_dir)], capture_output=True, text=True
    )
    assert stopped.returncode == 1
    assert "nothing is running" in stopped.stderr

    again = Up(data_dir, *args)
    ups.append(again)
    again.wait_ready()
    code, status = status_json(data_dir)
    assert code == 0, status
    assert {key: endpoint["address"] for key, endpoint in status["endpoints"].items()} == addresses
    assert again.stop() == 0
    assert warnings_while_stopping(data_dir) == []


def test_a_port_in_use_stops_the_start_naming_the_endpoint_and_the_setting(tmp_path: Path) -> None:
    base = free_port_range(len(PORT_OFFSETS))
    data_dir = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        result = subprocess.run(
            [*ONEFOLD, "up", "--data-dir", str(data_dir), "--port-base", str(base)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "400"},
        )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert f"port {base} (ingest HTTP) is already in use" in message
    assert "`onefold up --port-base N`" in message
    assert "ports.ingest_http (ONEFOLD_PORTS__INGEST_HTTP)" in message
    assert "Traceback" not in result.stderr + result.stdout
    # Refused before anything started: no nats-server store, no service logs, no endpoints file.
    assert not (data_dir / "nats").exists()
    assert list((data_dir / "logs").glob("*.log")) == []
    assert not (data_dir / "run" / "endpoints.json").exists()


def test_one_endpoint_moved_alone_by_its_setting(tmp_path: Path) -> None:
    base = free_port_range(len(PORT_OFFSETS))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + PORT_OFFSETS["nats"]))
        busy.listen()
        result = subprocess.run(
            [*ONEFOLD, "up", "--data-dir", str(tmp_path / "data"), "--port-base", str(base)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "400", "ONEFOLD_PORTS__NATS": str(busy.getsockname()[1])},
        )
    assert result.returncode == 2
    assert "(NATS) is already in use" in result.stderr
    assert "ports.nats (ONEFOLD_PORTS__NATS)" in " ".join(result.stderr.split())
