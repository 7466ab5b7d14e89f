"""bench/destinations.py end to end in its quick mode, through `onefold bench destinations`: it starts
a nats-server, the consent service and a webhook receiver process, creates a PostgreSQL database,
composes the destinations application on a fresh database, runs every phase and prints one JSON
object. No timing checks: only that every phase ran, on the sizes it says, every delivery arrived
exactly once, and that every target is answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_destinations_runs_every_phase_in_quick_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "bench", "destinations", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)
    sizes = results["sizes"]

    routing = results["routing"]
    assert routing["events"] == routing["queued"] == sizes["routed"]
    assert routing["floor"]["rows"] == sizes["routed"]  # one DeliveryQueued per event

    for batch_size in (1, 100):
        hook = results[f"webhook_batch{batch_size}"]
        assert hook["batch_size"] == batch_size and hook["deliveries"] == sizes["webhook"]
        assert hook["exactly_once"] is True
        assert hook["received_unique"] == hook["delivered"] == hook["tried"] == sizes["webhook"]
        assert hook["received_duplicates"] == 0 and hook["unsigned_requests"] == 0
        # At most batch_size a request (the deliverer's round is split into lanes first).
        assert -(-sizes["webhook"] // batch_size) <= hook["requests"] <= sizes["webhook"]
    assert results["http_floor"]["requests"] == min(sizes["webhook"], 10_000)

    for batch_size in (1, 100):
        latency = results[f"latency_batch{batch_size}"]
        assert latency["batch_size"] == batch_size
        assert latency["path"] and latency["events"] == int(latency["rate_per_s"] * sizes["latency_seconds"])
        assert latency["arrived"] == latency["events"] and latency["duplicates"] == 0
        assert latency["delivered_p50_ms"] <= latency["delivered_p95_ms"] <= latency["delivered_p99_ms"]

    audience = results["audience"]
    assert audience["memberships"] == audience["delivered"] == audience["table_rows"] == sizes["memberships"]
    assert audience["floor"]["rows"] == sizes["memberships"]
    assert audience["extrapolated"] is True  # the quick run is far below 1,000,000 memberships
    assert audience["seconds_at_1m"] > audience["end_to_end_seconds"] > 0

    for phase, figure in (
        ("routing", "events_per_s"),
        ("routing", "service_cpu_us_per_event"),
        ("webhook_batch1", "deliveries_per_s"),
        ("webhook_batch1", "service_cpu_us_per_delivery"),
        ("webhook_batch100", "deliveries_per_s"),
        ("latency_batch1", "process_cpu_us_per_event"),
        ("latency_batch100", "process_cpu_us_per_event"),
        ("audience", "routing_per_s"),
        ("audience", "delivery_per_s"),
        ("consent_floor", "checks_per_s"),
        ("http_floor", "requests_per_s"),
    ):
        assert results[phase][figure] > 0, (phase, figure)
    assert routing["floor"]["rows_per_s"] > 0
    assert audience["floor"]["executemany_per_s"] > 0 and audience["floor"]["copy_per_s"] > 0

    for phase in (
        "routing",
        "webhook_batch1",
        "webhook_batch100",
        "latency_batch1",
        "latency_batch100",
        "audience",
    ):
        assert results[phase]["memory"]["rss_mb"] > 0, phase
    assert results["memory"]["peak_rss_mb"] >= results["memory"]["rss_mb"] > 0
    assert results["consent_rss_mb"] > 0 and results["receiver_rss_mb"] > 0
    assert set(results["met"]) == set(results["targets"])
    assert all(isinstance(value, bool) for value in results["met"].values())
    assert all(isinstance(value, bool) for value in results["at_target_size"].values())
    assert results["met"]["audience_sync_s"] is False  # measured below the target's size: not met
    assert "destinations benchmark" in done.stderr and "targets:" in done.stderr
