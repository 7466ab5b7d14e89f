"""`onefold bench NAME --json` runs a benchmark from bench/ and prints one JSON object (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_eventlog_prints_json_with_its_baseline() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onefold.cli",
            "bench",
            "eventlog",
            "--events",
            "200",
            "--repeats",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["sqlite_append_batch100_per_s"] > 0
    assert figures["eventsourcing_append_batch100_per_s"] > 0  # the baseline is measured in the same run


def test_bench_modules_load_through_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "bench", "ingest", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    unknown = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "bench", "nothing"], capture_output=True, text=True, timeout=120
    )
    said = " ".join((unknown.stdout + unknown.stderr).replace("│", " ").split())
    assert (
        unknown.returncode != 0
        and "available: cli, consent, destinations, eventlog, identity, ingest, insights, journeys, pipeline, segments"
        in said
    )
