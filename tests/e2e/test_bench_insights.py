"""bench/insights.py end to end in its quick mode, through `onefold bench insights`: it fills a DuckDB
store with a synthetic history, runs every analysis and prints one JSON object.
No timing checks: only that every phase ran, on the data it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_insights_runs_every_phase_in_quick_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "bench", "insights", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)

    sizes = results["sizes"]
    assert results["generate"]["events"] == sizes["events"] == 200_000
    assert results["threads"] == 2 and results["store"] == "file"
    for phase in ("generate", "floor", "funnel_sequential", "funnel_strict", "funnel_any", "attribution_floor",
                  "attribution", "cohorts", "roi"):  # fmt: skip
        assert results[phase]["seconds"] >= 0 and results[phase]["cpu_seconds"] >= 0, phase
    for order in ("sequential", "strict", "any"):
        entered = results[f"funnel_{order}"]["entered"]
        assert len(entered) == 4 and entered == sorted(entered, reverse=True) and entered[0] > 0, order
    assert results["funnel_strict"]["entered"][-1] <= results["funnel_sequential"]["entered"][-1]
    assert results["funnel_sequential"]["entered"][-1] <= results["funnel_any"]["entered"][-1]
    attribution = results["attribution"]
    assert attribution["conversions"] > attribution["direct"] > 0 and len(attribution["models"]) == 5
    assert results["cohorts"]["cohorts"] > 0 and results["cohorts"]["periods"] == 12
    assert set(results["roi"]["uplift"]) == {"welcome", "winback", "cart_reminder"}
    assert results["memory"]["peak_rss_mb"] >= results["memory"]["rss_mb"] > 0

    churn = results["models"]["churn"]
    assert 0 <= churn["auc_baseline"] <= 1 and 0 <= churn["auc_model"] <= 1 and churn["holdout_profiles"] > 0
    assert results["models"]["clusters"]["clusters"] and results["models"]["model_tags"] > 0
    assert set(results["met"]) == set(results["targets"])
    assert all(isinstance(value, bool) for value in results["met"].values())
    assert results["at_target_size"] == {"events": False, "conversions": False}  # quick sizes are below them
    assert "insights benchmark" in done.stderr and "targets:" in done.stderr
