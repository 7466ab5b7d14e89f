"""The supervisor's restart backoff: doubling for a child that dies right after each start, back to
1 s for a child that had been running healthily. Real child processes; the clock is the supervisor's
own injected one, so nothing sleeps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from onefold.cli.supervisor import HEALTHY_RUN_SECONDS, Child, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CrashingSupervisor(Supervisor):
    """Each (re)start runs a real process that exits with code 3 at once, instead of a service."""

    def _spawn(self, child: Child, nats_url: str) -> None:
        child.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        child.process.wait()


def _supervisor(tmp_path: Path) -> tuple[CrashingSupervisor, Clock, list[str]]:
    clock, reports = Clock(), []
    supervisor = CrashingSupervisor(data_dir=tmp_path, report=reports.append, services=(), clock=clock)
    child = Child("ingest", port=1)
    supervisor.children["ingest"] = child
    supervisor._spawn(child, "nats://unused")
    return supervisor, clock, reports


def _crash_and_restart(supervisor: Supervisor, clock: Clock, reports: list[str]) -> int:
    """One watch sees the crash and schedules the restart; a second, once due, restarts. The delay."""
    supervisor.watch_once("nats://unused")
    delay = int(reports[-1].rsplit("restarting in ", 1)[1].removesuffix("s"))
    clock.now += delay
    supervisor.watch_once("nats://unused")
    return delay


def test_backoff_doubles_for_a_crash_loop_and_caps(tmp_path: Path) -> None:
    supervisor, clock, reports = _supervisor(tmp_path)
    delays = [_crash_and_restart(supervisor, clock, reports) for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert all("exited unexpectedly (code 3)" in line for line in reports)


def test_backoff_resets_after_a_healthy_run(tmp_path: Path) -> None:
    supervisor, clock, reports = _supervisor(tmp_path)
    assert [_crash_and_restart(supervisor, clock, reports) for _ in range(4)] == [1, 2, 4, 8]
    clock.now += HEALTHY_RUN_SECONDS  # the last restart ran a healthy minute before it died
    assert [_crash_and_restart(supervisor, clock, reports) for _ in range(3)] == [1, 2, 4]
    clock.now += HEALTHY_RUN_SECONDS - 1  # not quite: the loop goes on
    assert _crash_and_restart(supervisor, clock, reports) == 8


def test_a_child_seen_alive_counts_its_healthy_run_from_then(tmp_path: Path) -> None:
    """A child started before the watch began (the first start) is timed from its first sighting."""
    clock, reports = Clock(), []
    supervisor = CrashingSupervisor(data_dir=tmp_path, report=reports.append, services=(), clock=clock)
    child = Child("ingest", port=1, restarts=4)
    supervisor.children["ingest"] = child
    child.process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        supervisor.watch_once("nats://unused")  # alive: its run is timed from now
        assert not reports
    finally:
        assert child.process.stdin is not None
        child.process.stdin.close()
        child.process.wait()
    clock.now += HEALTHY_RUN_SECONDS
    assert _crash_and_restart(supervisor, clock, reports) == 1
