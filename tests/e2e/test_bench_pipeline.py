"""bench/pipeline.py end to end in its quick mode, through `onefold bench pipeline`: it starts `onefold
up` (nats-server and the seven services as processes) and a webhook receiver process, applies the
examples, loads ingest's HTTP API at 100 events/s for 8 s with probes and reads beside it, and prints
one JSON object and an HTML report. No timing checks: only that every phase ran on the sizes it
states, every probe of every stage finished, every service process was measured, and every target
is answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SERVICES = ("ingest", "identity", "consent", "segments", "journeys", "destinations")


def test_bench_pipeline_runs_every_phase_in_quick_mode(tmp_path: Path) -> None:
    page = tmp_path / "pipeline.html"
    done = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "bench", "pipeline", "--quick", "--json", "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    results = json.loads(done.stdout)
    sizes = results["sizes"]
    assert sizes["quick"] is True and sizes["events"] == int(sizes["rate_per_s"] * sizes["seconds"])

    load = results["sustained"]
    assert load["load"]["offered"] == sizes["events"] >= load["load"]["accepted"] > 0
    assert load["drain_timed_out"] is False and not results["services_restarted"]
    assert set(load["drain_s"]) == set(SERVICES)
    assert load["head_growth"]["ingest"] >= load["load"]["accepted"]  # each accepted event is in its log
    assert all(load["head_growth"][s] > 0 for s in ("identity", "segments", "journeys", "destinations"))
    assert results["producer_floor"]["events_per_s"] > 0 and results["producer_floor"]["accepted"] > 0
    # Every service answered its backlog each second; some stage had one during the load, and the
    # drain ended with every backlog at zero.
    backlogs = [sample["backlog"] for sample in load["samples"]]
    assert all(set(b) == set(SERVICES) and min(b.values()) >= 0 for b in backlogs)
    assert any(sum(b.values()) > 0 for b in backlogs) and set(backlogs[-1].values()) == {0}

    assert 0 < load["probe_rounds"] <= int(sizes["seconds"]) + 1
    for stage, probe in load["probes"].items():
        assert probe["probes"] == load["probe_rounds"], stage  # one per stage in every round
        assert probe["done"] == probe["probes"] and probe["failed"] == probe["unfinished"] == 0, stage
        assert 0 < probe["p50_ms"] <= probe["p95_ms"] <= probe["p99_ms"] <= probe["max_ms"], stage
        assert len(probe["over_time"]) == probe["done"], stage

    for phase in (results["baseline_reads"], load["reads"]):
        for kind, rate in (("get_profile", "profile_reads_per_s"), ("check_consent", "consent_reads_per_s")):
            reads = phase[kind]
            assert reads["target_per_s"] == sizes[rate] and reads["calls"] > 0 and reads["errors"] == 0
            assert reads["p50_ms"] <= reads["p99_ms"]

    for name in (*SERVICES, "nats"):
        assert load["cpu_seconds"][name] > 0, name
        assert load["memory"][name]["peak_rss_mb"] >= load["memory"][name]["rss_mb"] > 0, name
    assert load["total_service_cpu_us_per_event"] > 0 and load["bench_process_cpu_share"] > 0
    assert results["total_service_cpu_us_per_event_net_of_reads"] >= 0
    net = results["cpu_us_per_event_net_of_reads"]
    assert set(net) == set(SERVICES) and all(net[s] <= load["cpu_us_per_event"][s] for s in SERVICES)

    assert set(results["met"]) == set(results["targets"]) == set(results["figures"])
    assert all(isinstance(value, bool) for value in results["met"].values())
    assert results["met"]["sustained_events_per_s"] is False  # 100 events/s is far below 5,000
    assert results["path"]

    text = page.read_text()
    assert (
        text.count("<svg") == 3
        and "Backlog per service" in text
        and "event -&gt; MessageSent" in text
        and "<table>" in text
    )
    assert "pipeline benchmark" in done.stderr and "targets:" in done.stderr
