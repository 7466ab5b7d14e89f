"""bench/segments.py end to end in its quick mode, through `onefold bench segments`: it builds the
segments application on a fresh database, runs every phase and prints one JSON object.
No timing checks: only that every phase ran, on the data it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_segments_runs_every_phase_in_quick_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "bench", "segments", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)

    sizes = results["sizes"]
    assert results["definitions"]["definitions"] == 100
    assert results["build"]["profiles"] == sizes["profiles"]
    assert results["build"]["events"] == sizes["profiles"] + sizes["history_events"]
    assert results["throughput"]["events"] == sizes["events"]
    assert results["throughput_floor"]["rows"] == sizes["events"]
    for phase, figure in (
        ("build", "events_per_s"),
        ("throughput", "events_per_s"),
        ("throughput", "service_cpu_us_per_event"),
        ("throughput_floor", "rows_per_s"),
    ):
        assert results[phase][figure] > 0, (phase, figure)

    latency = results["latency"]
    assert latency["path"] and latency["events"] == int(latency["rate_per_s"] * sizes["latency_seconds"])
    assert latency["segment_entered"] > 0 and latency["entered_p50_ms"] <= latency["entered_p99_ms"]

    timer = results["timer"]
    assert timer["exited"] == timer["profiles"] > 0  # every window expired into an exit

    backfill = results["backfill"]
    assert backfill["history_records"] >= sizes["backfill_events"]
    assert backfill["history_records"] == backfill["history_from_handler"] + backfill["history_added"]
    assert backfill["raw_read"]["records"] == backfill["history_records"]
    assert backfill["pages"] > 0 and backfill["records_per_s"] > 0

    assert results["memory"]["peak_rss_mb"] >= results["memory"]["rss_mb"] > 0
    assert set(results["met"]) == set(results["targets"])
    assert all(isinstance(value, bool) for value in results["met"].values())
    assert all(isinstance(value, bool) for value in results["at_target_size"].values())
    assert "segments benchmark" in done.stderr and "targets:" in done.stderr
