"""bench/identity.py on a small data set: the generator is deterministic and noisy as described,
Splink's deterministic clusters equal the union-find reference, the metrics count right, the events
are published sealed as ingest's relay publishes them, and a real identity service (nats-server +
`python -m onefold.identity`, asking the bench's key server for subject keys) resolves them into
exactly the connected components with unlimited rules and into a refinement of them with the
default limits. No timing checks."""

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


def test_envelopes_are_sealed_as_ingests_relay_publishes_them(
    bench: ModuleType, dataset: Any, tmp_path: Path
) -> None:
    """The bench publishes what ingest's relay publishes: its event store's rows as stored (personal
    data sealed with the subject's key), partitioned on the person; the subject's key opens them."""
    import asyncio

    from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
    from onefold.contracts.ingest.v1 import ingest_pb2
    from onefold.eventlog.keyaccess import LocalSubjectKeys, Unsealer, is_sealed
    from onefold.eventlog.streams import StreamSettings, partition_of

    records = dataset.records[:300]
    ingest = bench.IngestLog(tmp_path / "ingest")
    try:
        outgoing = ingest.append(records)
        assert [out.position for out in outgoing] == list(range(1, len(records) + 1))
        envelopes = [EventEnvelope.FromString(out.body) for out in outgoing]
        for record, out, envelope in zip(records, outgoing, envelopes, strict=True):
            assert envelope.type == bench.ACCEPTED and is_sealed(envelope)
            assert out.event_id == envelope.event_id and ingest.record_of[out.event_id] == record.event_id
            assert envelope.subject.startswith(("bench:u:", "bench:a:"))
            partition = partition_of(envelope.subject, StreamSettings().partitions)
            assert out.subject == f"onefold.ingest.EventAccepted.bench.{partition}"
            for _, value in record.identifiers:
                assert value.encode() not in out.body
        # one person, one subject: every event of a user_id is sealed for the same subject
        by_user: dict[str, set[str]] = defaultdict(set)
        for record, envelope in zip(records, envelopes, strict=True):
            user_id = dict(record.identifiers).get("user_id")
            if user_id:
                by_user[user_id].add(envelope.subject)
        assert by_user and all(len(subjects) == 1 for subjects in by_user.values())
        assert len(ingest.subjects) == len({envelope.subject for envelope in envelopes})

        unsealer = Unsealer(LocalSubjectKeys(ingest.store))
        ciphers = asyncio.run(unsealer.ciphers_for(envelopes))
        for record, envelope in zip(records, envelopes, strict=True):
            accepted = ingest_pb2.EventAccepted.FromString(unsealer.open(envelope, ciphers).payload)
            ids = dict(record.identifiers)
            assert accepted.event.message_id == record.event_id
            assert accepted.event.user_id == ids.get("user_id", "")
            assert accepted.event.anonymous_id == ids.get("anonymous_id", "")
            if "email" in ids:
                assert accepted.event.traits.fields["email"].string_value == ids["email"]
    finally:
        ingest.close()


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
    # every subject's key asked for and served once (the service caches them), none for the paced
    # events of the same people
    keys = run["key_server"]
    assert keys["calls"] > 0 and keys["keys_served"] == keys["subjects_asked"] == run["subjects"] > 0
    assert keys["keys_served_total"] == keys["keys_served"]
    assert run["service_cpu_us_per_event"] > 0 and keys["cpu_seconds"] > 0
    assert figures["rebuild_ratio_vs_splink"] > 0 and "met" in figures


def test_onefold_bench_identity_with_two_workers_compares_with_one() -> None:
    """`--workers 2`: the catch-up by two identity processes on one database, then by one on a fresh
    one in the same run; with unlimited rules both must give the connected components, so the
    clusters are identical whatever order the two workers applied the partitions in."""
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
            "--skip-splink",
            "--latency-seconds",
            "0",
            "--workers",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    onefold = figures["onefold"]
    assert onefold["workers"] == 2
    assert onefold["workers_speedup"] > 0 and onefold["workers_identical"] is True
    assert onefold["equals_connected_components"] is True
    run = onefold["modes"]["unlimited"]
    assert run["workers_speedup"] == onefold["workers_speedup"]
    both = run["with_workers"]
    assert both["workers"] == 2 and both["events_resolved"] == run["events_resolved"] == 2000
    assert both["rebuild_equals_live"] is True and both["link_refusals"] == 0
    assert both["live_profiles"] == run["live_profiles"]
    assert both["service_cpu_us_per_event"] > 0
    assert len(both["service_cpu_seconds_per_process"]) == 2
    assert both["service_cpu_seconds"] == pytest.approx(
        sum(both["service_cpu_seconds_per_process"]), abs=0.02
    )
    assert len(both["rss_peak_mb_per_process"]) == 2 and all(mb > 0 for mb in both["rss_peak_mb_per_process"])
    assert "clusters" not in both and "rss_peak_mb_per_process" not in run
    assert "workers_speedup" in figures["met"] and figures["met"]["workers_identical"] is True
    assert figures["targets"]["workers_speedup"] == 1.6


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
    assert run["key_server"]["keys_served"] == run["subjects"] > 0
    assert not bench.same_partition(clusters, reference)
    assert "get_profile" not in run
