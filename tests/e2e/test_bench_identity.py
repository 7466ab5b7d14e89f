"""bench/identity.py on a small data set: the generator is deterministic and noisy as described,
Splink's deterministic clusters equal the union-find reference, the metrics count right, and a real
identity service (nats-server + `python -m onefold.identity`) resolves the events into exactly the
connected components with unlimited rules and into a refinement of them with the default limits.
No timing checks."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "identity.py"
EVENTS = 3000


def load_bench() -> ModuleType:
    """Load bench/identity.py the way `onefold bench identity` does (a file, not a package)."""
    spec = importlib.util.spec_from_file_location("onefold_bench_identity", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


@pytest.fixture(scope="module")
def dataset(bench: ModuleType) -> Any:
    # more sharing and typos than the defaults so that a small data set surely has both
    return bench.generate(EVENTS, seed=7, shared_device_rate=0.05, typo_rate=0.03)


def test_generation_is_deterministic_with_three_identifiers_per_event(
    bench: ModuleType, dataset: Any
) -> None:
    again = bench.generate(EVENTS, seed=7, shared_device_rate=0.05, typo_rate=0.03)
    assert again.records == dataset.records
    assert bench.generate(EVENTS, seed=8).records != dataset.records
    assert len(dataset.records) == EVENTS and dataset.identifiers == 3 * EVENTS
    assert len({r.event_id for r in dataset.records}) == EVENTS
    for record in dataset.records:
        assert len(record.identifiers) == 3
        assert len({kind for kind, _ in record.identifiers}) == 3  # one of each type it carries
        assert all(kind in bench.IDENTIFIER_TYPES for kind, _ in record.identifiers)
        assert 0 <= record.person < dataset.people
    # some events are anonymous (no user_id), and anonymous-only people exist
    assert any(all(kind != "user_id" for kind, _ in r.identifiers) for r in dataset.records)
    assert dataset.anonymous_only_people > 0
    phones = {v for r in dataset.records for k, v in r.identifiers if k == "phone"}
    assert phones and all(p.startswith("+") and p[1:].isdigit() for p in phones)


def test_shared_devices_and_typos_are_present(dataset: Any) -> None:
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for record in dataset.records:
        for pair in record.identifiers:
            owners[pair].add(record.person)
    shared = {value for (kind, value), people in owners.items() if kind == "device_id" and len(people) > 1}
    assert shared and shared <= set(dataset.shared_device_ids)
    # no identifier other than a shared device belongs to two people
    assert all(len(people) == 1 for (kind, _), people in owners.items() if kind != "device_id")
    emails = {value for kind, value in owners if kind == "email"}
    assert dataset.typo_emails and dataset.typo_emails <= emails
    # a typo is its own identifier: the same person also uses a real (different) email
    real_by_person: dict[int, set[str]] = defaultdict(set)
    for (kind, value), people in owners.items():
        if kind == "email" and value not in dataset.typo_emails:
            real_by_person[next(iter(people))].add(value)
    for typo in dataset.typo_emails:
        (person,) = owners[("email", typo)]
        assert typo not in real_by_person[person]


def test_splink_equals_the_union_find_reference(bench: ModuleType, dataset: Any) -> None:
    reference = bench.connected_components(dataset.records, bench.IDENTIFIER_TYPES)
    clusters, seconds = bench.splink_clusters(dataset.records, bench.IDENTIFIER_TYPES)
    assert seconds > 0
    assert set(clusters) == {r.event_id for r in dataset.records}
    assert bench.same_partition(clusters, reference)
    # and the shared devices did merge people, so this is not the truth
    assert not bench.same_partition(reference, dataset.truth())
    # fewer rules, another partition, still equal between the two
    fewer = ("user_id", "email")
    assert bench.same_partition(
        bench.splink_clusters(dataset.records, fewer)[0], bench.connected_components(dataset.records, fewer)
    )


def test_cluster_metrics_count_pairs(bench: ModuleType, dataset: Any) -> None:
    truth = dataset.truth()
    perfect = bench.cluster_metrics(truth, truth)
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    assert perfect["clusters"] == perfect["people"] == len(set(truth.values()))

    relabelled = {event: f"c{person * 7}" for event, person in truth.items()}
    assert bench.same_partition(relabelled, truth)
    assert bench.cluster_metrics(relabelled, truth)["precision"] == 1.0

    merged = {event: person // 2 for event, person in truth.items()}  # two people per cluster
    metrics = bench.cluster_metrics(merged, truth)
    assert metrics["precision"] < 1.0 and metrics["recall"] == 1.0
    assert not bench.same_partition(merged, truth)

    split = {event: event for event in truth}  # every event alone
    assert bench.cluster_metrics(split, truth)["recall"] == 0.0

    # a hand-checked case: truth {a,b,c} {d}; predicted {a,b} {c,d}
    small_truth = {"a": 1, "b": 1, "c": 1, "d": 2}
    small = bench.cluster_metrics({"a": "x", "b": "x", "c": "y", "d": "y"}, small_truth)
    assert small["precision"] == 0.5 and small["recall"] == pytest.approx(1 / 3)


def test_generated_phones_are_valid_e164(dataset: Any) -> None:
    # the identity service links only phones libphonenumber accepts; an invalid one would be dropped
    import phonenumbers

    phones = {v for r in dataset.records for k, v in r.identifiers if k == "phone"}
    for phone in phones:
        number = phonenumbers.parse(phone, "CN")
        assert phonenumbers.is_valid_number(number), phone
        assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == phone


def test_onefold_bench_identity_prints_json() -> None:
    """The whole bench through the CLI, Onefold with unlimited rules: a real nats-server and identity
    service resolve 2,000 events into exactly the connected components (and Splink's clusters)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onefold.cli",
            "bench",
            "identity",
            "--events",
            "2000",
            "--rules",
            "unlimited",
            "--latency-seconds",
            "1",
            "--get-profile-rate",
            "100",
            "--paced-rate",
            "50",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["identifiers"] == 6000
    assert figures["splink"]["events"] == 2000
    assert figures["splink"]["equals_connected_components"] is True
    assert 0 < figures["cc"]["precision"] <= 1.0 and 0 < figures["cc"]["recall"] <= 1.0
    onefold = figures["onefold"]
    assert onefold["rules"] == "unlimited" and list(onefold["modes"]) == ["unlimited"]
    assert onefold["equals_connected_components"] is True
    assert onefold["equals_splink"] is True
    run = onefold["modes"]["unlimited"]
    assert run["events_resolved"] == 2000 and run["link_refusals"] == 0
    assert run["metrics"] == {key: figures["cc"][key] for key in run["metrics"]}
    assert run["rebuild_equals_live"] is True and run["rebuild_events_folded"] > 0
    assert run["get_profile"]["failures"] == 0 and run["get_profile"]["requests"] == 100
    assert run["resolve_latency"]["resolved"] == run["resolve_latency"]["events"] == 50
    assert run["rss_peak_mb"] > 0
    assert figures["rebuild_ratio_vs_splink"] > 0 and "met" in figures


def test_default_rules_refine_connected_components(bench: ModuleType, dataset: Any) -> None:
    """With the workspace's default limits the service refuses links (shared devices, heavy users'
    cookies): its clusters split connected components, never merge across them."""
    result = bench.run_onefold(dataset, argparse.Namespace(rules="default", latency_seconds=0))
    run = result["modes"]["default"]
    clusters = result["clusters"]
    assert set(clusters) == {r.event_id for r in dataset.records}
    assert run["events_resolved"] == EVENTS and run["rebuild_equals_live"] is True
    reference = bench.connected_components(dataset.records, bench.IDENTIFIER_TYPES)
    assert len({(clusters[e], reference[e]) for e in clusters}) == len(set(clusters.values()))
    assert run["link_refusals"] > 0
    assert not bench.same_partition(clusters, reference)
    assert "get_profile" not in run
