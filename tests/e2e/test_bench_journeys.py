"""bench/journeys.py end to end in its quick mode, through `onefold bench journeys`: it starts a
nats-server and the consent service, composes the journeys application on a fresh database, runs
every phase and prints one JSON object. No timing checks: only that every phase ran, on the data it
says, and that every target is answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_journeys_runs_every_phase_in_quick_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "bench", "journeys", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)
    sizes = results["sizes"]

    profiles = results["profiles"]
    assert profiles["profiles"] == sizes["profiles"] and 0 < profiles["with_consent"] < sizes["profiles"]

    waiting = results["waiting"]
    assert waiting["instances"] == sizes["waiting"]
    assert waiting["floor"]["rows"] == sizes["waiting"]
    assert waiting["extrapolated"] is True  # the quick run is far below 1,000,000 instances
    assert waiting["rss_at_1m_mb"] >= waiting["rss_before_mb"] > 0

    timers = results["timers"]
    assert timers["fired"] == timers["timers"] == sizes["timers"]  # every timer fired
    assert timers["due_spread_ms"] == 0  # all due at the same moment

    latency = results["latency"]
    assert latency["path"] and latency["entries"] == int(latency["rate_per_s"] * sizes["latency_seconds"])
    assert latency["sent"] == latency["with_consent"] > 0  # every entry with consent was sent
    assert latency["sent_p50_ms"] <= latency["sent_p99_ms"]

    sends = results["sends"]
    assert sends["messages"] == sizes["sends"]
    assert sends["sent"] == sends["with_consent"] and sends["sent"] + sends["suppressed"] == sends["messages"]
    assert sends["floor"]["rows"] == 2 * sends["sent"]  # MessageSent and MessageDelivered each

    for phase, figure in (
        ("profiles", "traits_per_s"),
        ("waiting", "entries_per_s"),
        ("waiting", "service_cpu_us_per_entry"),
        ("latency", "process_cpu_us_per_entry"),
        ("sends", "sends_per_s"),
        ("sends", "service_cpu_us_per_message"),
        ("consent_floor", "checks_per_s"),
        ("sandbox_floor", "sends_per_s"),
    ):
        assert results[phase][figure] > 0, (phase, figure)
    assert results["sandbox_floor"]["delivered"] == results["sandbox_floor"]["sends"]
    assert results["waiting"]["floor"]["rows_per_s"] > 0 and sends["floor"]["rows_per_s"] > 0

    assert results["memory"]["peak_rss_mb"] >= results["memory"]["rss_mb"] > 0
    assert set(results["met"]) == set(results["targets"])
    assert all(isinstance(value, bool) for value in results["met"].values())
    assert all(isinstance(value, bool) for value in results["at_target_size"].values())
    assert "journeys benchmark" in done.stderr and "targets:" in done.stderr
