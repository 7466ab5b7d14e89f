"""`onefold up --workers segments=2` end to end: two real segments processes, both SERVING, both told
there are two workers, the second restarted when it dies; a bad --workers value is one sentence
before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e_up import ONEFOLD, printed, running_up, wait_for

from onefold.platform.health import health_status

WORKERS_ENV = "ONEFOLD_EVENTLOG__WORKERS"


def _endpoints(data_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((data_dir / "run" / "endpoints.json").read_text())
    return state


def _environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


@pytest.mark.slow
def test_a_service_with_two_workers_serves_from_both_and_restarts_the_second(tmp_path: Path) -> None:
    with running_up(tmp_path, "--port-base", "0", "--workers", "segments=2") as (cli, up):
        state = _endpoints(cli.data_dir)
        first, second = state["services"]["segments"], state["workers"]["segments"][0]
        assert "segments-2" not in state["services"]  # clients and peers call the first only
        assert health_status(first) == "SERVING"
        assert health_status(second) == "SERVING"
        # `onefold status` asks every process: the second worker is its own row.
        shown = cli.json("status")["endpoints"]
        assert shown["segments#2"] == {
            "label": "segments gRPC, worker 2",
            "address": second,
            "health": "SERVING",
            "nats_connection": "SERVING",
        }
        assert shown["segments"]["address"] == first and shown["segments"]["label"] == "segments gRPC"
        pids = state["pids"]
        assert _environment(pids["segments"])[WORKERS_ENV] == "2"
        assert _environment(pids["segments-2"])[WORKERS_ENV] == "2"
        assert WORKERS_ENV not in _environment(pids["identity"])  # a service not named keeps one worker
        assert (cli.data_dir / "logs" / "segments-2.log").exists()

        os.kill(pids["segments-2"], signal.SIGKILL)
        wait_for(lambda: printed(tmp_path / "up.out", up, "segments-2 exited unexpectedly"), "the report")

        def restarted_pid() -> int:
            pid: int = _endpoints(cli.data_dir)["pids"]["segments-2"]
            return pid if pid != pids["segments-2"] else 0

        restarted = wait_for(restarted_pid, "segments-2 restarted")
        assert _environment(restarted)[WORKERS_ENV] == "2"
        wait_for(lambda: health_status(second) == "SERVING", "segments-2 SERVING again on its port")
        assert _endpoints(cli.data_dir)["pids"]["segments"] == pids["segments"]  # the first kept running
        running = _endpoints(cli.data_dir)["pids"]
    assert up.returncode == 0
    assert [name for name, pid in running.items() if Path(f"/proc/{pid}").exists()] == []  # all stopped


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("billing=2", "no service 'billing'; the services are ingest, identity, consent, segments"),
        ("segments=17", "segments=17: give a whole number from 1 to 16"),
    ],
)
def test_a_bad_workers_value_is_refused_in_one_sentence(tmp_path: Path, spec: str, message: str) -> None:
    result = subprocess.run(
        [*ONEFOLD, "up", "--data-dir", str(tmp_path / "data"), "--workers", spec],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made
