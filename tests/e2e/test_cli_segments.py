"""Segments from the operator's side, end to end: `onefold up` (real nats-server and the seven service
processes), `onefold apply -f deploy/examples/segments.yaml`, one person's identify and orders sent
to ingest's HTTP API with a source's write key, and `onefold segments ...` reading what the segments
service made of them: membership and tags with their reasons, members, history, as-of and errors."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e_up import Cli, wait_for

from onefold.cli.segments_yaml import definition_document, parse_definition_documents
from onefold.cli.sources import load_document
from onefold.cli.supervisor import SERVICES

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "segments.yaml"
# A changed definition's backfill is followed to its end; a slow machine may need a while.
APPLY_SECONDS = 300


@pytest.mark.slow
def test_apply_the_examples_then_one_persons_orders_make_a_big_spender_with_reasons(
    up: tuple[Cli, subprocess.Popen[bytes]],
) -> None:
    cli, _ = up
    specs = parse_definition_documents(load_document(EXAMPLE), str(EXAMPLE))
    names = [spec.definition.name for spec in specs]

    # A dry run on the empty workspace checks what it can and stores nothing.
    dry = cli.run("apply", "-f", str(EXAMPLE), "--dry-run").stdout
    assert "computed_trait/spend_90d valid; would hold 0 profiles now (dry run)" in dry
    # The file's definitions are checked together: one reading another of the file is previewed too.
    assert "segment/big_spenders_90d valid; would hold 0 profiles now (dry run)" in dry
    previewed = cli.json("segments", "preview", "-f", str(EXAMPLE))
    assert previewed["spend_90d"] == {"size": 0, "sample_profile_ids": []}
    assert previewed["big_spenders_90d"] is None  # it reads spend_90d, not applied yet
    assert cli.json("segments", "list") == []

    # The example file applies cleanly, each definition after those it reads, backfills followed.
    applied = cli.run("apply", "-f", str(EXAMPLE), timeout=APPLY_SECONDS).stdout
    for name in names:
        assert re.search(rf"/{name} set \(version 1\)", applied), applied
        assert f"backfill of {name} (version 1) finished" in applied, applied
    again = cli.run("apply", "-f", str(EXAMPLE), "--no-wait").stdout
    assert again.count("unchanged (version 1)") == len(names) and "backfill" not in again
    listed = cli.json("segments", "list")
    assert sorted(d["name"] for d in listed) == sorted(names)
    # What `segments get` prints is what the file says.
    shown = yaml.safe_load(cli.run("segments", "get", "customer_tier").stdout)
    by_name = {spec.definition.name: spec.definition for spec in specs}
    assert shown == definition_document(by_name["customer_tier"])

    # One person: an identify with traits and two orders, through ingest's HTTP API.
    write_key = cli.json("sources", "create", "web")["write_key"]
    endpoints = json.loads((cli.data_dir / "run" / "endpoints.json").read_text())
    user = f"ann-{uuid.uuid4().hex[:8]}"
    batch = [
        {
            "type": "identify",
            "userId": user,
            "messageId": uuid.uuid4().hex,
            "traits": {"email": "ann@example.com", "plan": "gold", "address": {"city": "Berlin"}},
        },
        *(
            {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "messageId": uuid.uuid4().hex,
                "properties": {"revenue": revenue, "currency": "EUR"},
            }
            for revenue in (700, 450.5)
        ),
    ]
    answer = httpx.post(
        f"{endpoints['http']['ingest']}/v1/batch", json={"batch": batch}, auth=(write_key, "")
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == 3, answer.text

    person = wait_for(lambda: cli.profile_id(user), "identity's profile")

    def in_the_segment() -> dict[str, Any] | None:
        found: dict[str, Any] = cli.json("segments", "profile", person)
        tags = {t["tag"]: t["value"] for t in found.get("tags", [])}
        segments = {s["segment"] for s in found.get("segments", [])}
        return found if "big_spenders_90d" in segments and tags.get("customer_tier") == "vip" else None

    held = wait_for(in_the_segment, "the spend segment and the vip tag")

    # Drained, `onefold lag` shows every stage at zero and how far each consumer has applied.
    def drained() -> list[dict[str, Any]] | None:
        backlogs: list[dict[str, Any]] = cli.json("lag")
        quiet = all(
            b["unrelayed"] == 0 and all(c["pending"] == c["in_flight"] == 0 for c in b["consumers"])
            for b in backlogs
        )
        return backlogs if quiet else None

    backlogs = {b["service"]: b for b in wait_for(drained, "every backlog at zero")}
    assert set(backlogs) == set(SERVICES) and all(b["leading"] for b in backlogs.values())
    consumers = {c["upstream"]: c for c in backlogs["identity"]["consumers"]}
    assert set(consumers) == {"ingest", "journeys"}
    assert consumers["ingest"]["applied"] == {"ingest": backlogs["ingest"]["head_position"]}
    assert backlogs["ingest"]["consumers"] == [] and backlogs["ingest"]["head_position"] >= 3
    table = cli.run("lag").stdout
    assert "backlog, in events" in table and "identity" in table
    (membership,) = held["segments"]
    assert membership["reasons"] == [{"condition": "computed_trait spend_90d GE 1000", "observed": 1150.5}]
    tags = {t["tag"]: t for t in held["tags"]}
    assert tags["city"]["value"] == "Berlin"
    assert tags["city"]["reasons"] == [{"condition": "trait address.city", "observed": "Berlin"}]
    assert tags["customer_tier"]["reasons"] == [
        {"condition": "in_segment big_spenders_90d", "observed": True}
    ]
    assert tags["lifecycle_stage"]["value"] == "active"
    # Two purchases today: recency 5, frequency 2 (the cut-offs' first boundary reached).
    assert tags["rfm"]["value"] == "Potential Loyalists"
    assert held["computed_traits"] == {"spend_90d": 1150.5, "orders_all_time": 2}
    table = cli.run("segments", "profile", person).stdout
    assert "big_spenders_90d" in table and "computed_trait spend_90d GE 1000 (saw 1150.5)" in table

    members = cli.json("segments", "members", "big_spenders_90d", "--limit", "10")
    assert members == {"profile_ids": [person], "total": 1, "next_page_token": ""}
    assert cli.json("segments", "members", "cart_abandoned")["profile_ids"] == []

    # History: the tier went loyal (the plan trait) then vip (the segment); one entry into the segment.
    tier = cli.json("segments", "history", person, "--segment", "customer_tier")
    assert [(c["change"], c["value"]) for c in tier] == [("tag", "loyal"), ("tag", "vip")]
    assert {c["profile_id"] for c in tier} == {person}  # each change names the profile it was recorded under
    entered = cli.json("segments", "history", person, "--segment", "big_spenders_90d")
    assert [(c["change"], c["definition_version"]) for c in entered] == [("entered", 1)]
    assert entered[0]["reasons"][0]["condition"] == "computed_trait spend_90d GE 1000"
    everything = cli.run("segments", "history", person).stdout
    assert "entered" in everything and "spend_90d" in everything and "lifecycle_stage" in everything

    # As of a moment before anything happened: nothing held.
    before = cli.json("segments", "profile", person, "--as-of", "2000-01-01T00:00:00Z")
    assert not before.get("segments") and not before.get("tags")

    # What the service refuses is printed per field, by YAML path, then one sentence.
    bad = cli.data_dir.parent / "bad.yaml"
    bad.write_text(
        "kind: Segment\nname: odd\ncondition:\n  all_of:\n"
        "    - performed: {event: Order Completed, min_count: 5, max_count: 2}\n"
        "    - in_segment: no_such_segment\n"
    )
    lines = cli.run("apply", "-f", str(bad), status=2).stderr.splitlines()
    assert lines == [
        "  condition.all_of[0].performed.max_count: must not be below min_count",
        "  condition.all_of[1].in_segment: no segment of the workspace has this name",
        f"error: {bad} (odd) was refused: the definition is not valid (each field above)",
    ]
    assert "odd" not in {d["name"] for d in cli.json("segments", "list")}

    # A file is applied all or none: every document's problems are printed (a cycle between two
    # documents of the file named as one), and a valid document beside them is not stored either.
    several = cli.data_dir.parent / "several.yaml"
    several.write_text(
        "kind: Segment\nname: ping\ncondition: {in_segment: pong}\n---\n"
        "kind: Segment\nname: pong\ncondition: {in_segment: ping}\n---\n"
        "kind: Segment\nname: fine\ncondition: {trait: email, exists: true}\n"
    )
    lines = cli.run("apply", "-f", str(several), status=2).stderr.splitlines()
    assert lines[0] == f"{several} (document 1) segment/ping:", lines
    assert lines[1] == "  condition.in_segment: forms a cycle: ping -> pong -> ping", lines
    assert lines[2] == f"{several} (document 2) segment/pong:", lines
    assert lines[3] == "  condition.in_segment: forms a cycle: pong -> ping -> pong", lines
    assert lines[4].startswith("error: 2 documents were refused, nothing was applied"), lines
    assert not {"ping", "pong", "fine"} & {d["name"] for d in cli.json("segments", "list")}

    # Errors are one sentence: unknown names exit 1; a definition another one reads is not archived.
    missing = cli.run("segments", "get", "no_such_thing", status=1)
    assert missing.stderr.startswith("error: no definition named 'no_such_thing'")
    refused = cli.run("segments", "archive", "big_spenders_90d", status=2)
    assert "still read by other definitions" in refused.stderr
    archived = cli.json("segments", "archive", "cart_abandoned")
    assert archived["archived"] is True
    assert "cart_abandoned" not in {d["name"] for d in cli.json("segments", "list")}
    assert "cart_abandoned" in {d["name"] for d in cli.json("segments", "list", "--archived")}
