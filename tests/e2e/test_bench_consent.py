"""bench/consent.py end to end with tiny sizes, through `onefold bench consent`: it starts its own
nats-server and consent service, seeds, measures every phase and prints one JSON object.
No timing checks: only that every phase ran, on the data it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SUBJECTS = 12
HEAVY_EVENTS = 60


def test_bench_consent_runs_every_phase_on_tiny_sizes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "onefold.cli",
            "bench",
            "consent",
            "--json",
            "--subjects",
            str(SUBJECTS),
            "--events",
            str(HEAVY_EVENTS),
            "--seconds",
            "0.2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)

    # 9 grants per subject (3 purposes x 3 channels), and a withdrawal for one subject in ten.
    withdrawals = len(range(0, SUBJECTS, 10))
    assert results["seed"]["subject_events"] == 9 * SUBJECTS + withdrawals
    assert results["seed"]["heavy_events"] >= HEAVY_EVENTS and results["seed"]["heavy_events"] % 15 == 0

    for phase in ("bare_grpc_latency", "who_am_i_latency", "check_latency", "batch_latency"):
        figures = results[phase]
        assert figures["requests"] > 0 and figures["failures"] == 0 and figures["errors"] == {}, figures
        assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert results["capacity"]["who_am_i_per_s"] > 0 and results["capacity"]["check_per_s"] > 0
    # The service's CPU time per call beside each rate (clock ticks are coarse: a tiny run may show 0).
    cpu = [
        results["bare_grpc_latency"]["service_cpu_us_per_call"],
        results["who_am_i_latency"]["service_cpu_us_per_call"],
        results["check_latency"]["service_cpu_us_per_check"],
        results["batch_latency"]["service_cpu_us_per_check"],
        *results["capacity"]["service_cpu_us_per_call"].values(),
    ]
    assert len(cpu) == 6 and all(isinstance(figure, float) and figure >= 0 for figure in cpu), cpu
    assert (
        results["ratios"]["check_cpu_vs_who_am_i"] >= 0 and results["ratios"]["check_cpu_vs_bare_grpc"] >= 0
    )
    check = results["check_latency"]
    assert 0 < check["allowed"] < check["requests"]  # some checks allowed, some denied (push, phone)

    assert results["as_of"]["events_replayed"] == results["seed"]["heavy_events"]
    assert results["as_of_raw_read"]["rows"] == results["seed"]["heavy_events"]

    replay = results["replay"]
    model_events = 1
    ledger_events = results["seed"]["subject_events"] + results["seed"]["heavy_events"]
    assert replay["events_in_log"] == ledger_events + model_events
    assert replay["ledger_events_folded"] == ledger_events
    assert replay["subjects_folded"] == SUBJECTS + 1
    assert replay["rebuild_events"] == replay["events_in_log"]
    for figure in ("raw_sqlite_rows_per_s", "fold_events_per_s", "rebuild_events_per_s"):
        assert replay[figure] > 0

    assert set(results["met"]) == set(results["targets"])
    assert all(isinstance(value, bool) for value in results["met"].values())
    assert "consent benchmark" in done.stderr and "targets:" in done.stderr
