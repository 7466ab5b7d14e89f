"""Insights from the operator's side, end to end: `onefold up` (seven service processes), people's
events sent to ingest's HTTP API, and `onefold insights …` answering from the analytical copy the
insights service keeps of them — the status of the copy, a funnel, attribution to the campaign that
earned an order, cohorts, ROI with an HTML report — and an erasure that removes the person from the
copy, whose files never hold an identifier or a trait in clear."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_up import Cli, wait_for


def _send(cli: Cli, write_key: str, messages: list[dict[str, Any]]) -> None:
    endpoints = json.loads((cli.data_dir / "run" / "endpoints.json").read_text())
    batch = [{"messageId": uuid.uuid4().hex, **m} for m in messages]
    answer = httpx.post(
        f"{endpoints['http']['ingest']}/v1/batch", json={"batch": batch}, auth=(write_key, "")
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text


def _events(people: list[str], began: datetime) -> list[dict[str, Any]]:
    """Ann views from the spring e-mail, adds and orders (100); Bob views from an ad and adds; Cy only
    views; Dee orders (50) with no campaign before."""
    ann, bob, cy, dee = people

    def at(minutes: int) -> str:
        return (began + timedelta(minutes=minutes)).isoformat()

    spring = {"campaign": {"source": "newsletter", "medium": "email", "name": "spring"}}
    ads = {"campaign": {"source": "ads", "medium": "cpc", "name": "search"}}
    return [
        *(
            {
                "type": "identify",
                "userId": user,
                "traits": {"email": f"{user}@example.com"},
                "timestamp": at(0),
            }
            for user in people
        ),
        {"type": "track", "userId": ann, "event": "Product Viewed", "context": spring, "timestamp": at(1)},
        {"type": "track", "userId": ann, "event": "Product Added", "timestamp": at(2)},
        {
            "type": "track",
            "userId": ann,
            "event": "Order Completed",
            "properties": {"revenue": 100},
            "timestamp": at(3),
        },
        {"type": "track", "userId": bob, "event": "Product Viewed", "context": ads, "timestamp": at(1)},
        {"type": "track", "userId": bob, "event": "Product Added", "timestamp": at(5)},
        {"type": "track", "userId": cy, "event": "Product Viewed", "timestamp": at(2)},
        {
            "type": "track",
            "userId": dee,
            "event": "Order Completed",
            "properties": {"revenue": 50},
            "timestamp": at(4),
        },
    ]


def _rows(cli: Cli) -> dict[str, int]:
    return {t["table"]: int(t["rows"]) for t in cli.json("insights", "status")["tables"]}


@pytest.mark.slow
def test_funnel_attribution_cohorts_and_roi_from_the_copy_and_an_erasure_leaves_nothing(
    up: tuple[Cli, Any], tmp_path: Path
) -> None:
    cli, _ = up
    write_key = cli.json("sources", "create", "web")["write_key"]
    tag = uuid.uuid4().hex[:6]
    people = [f"{name}-{tag}" for name in ("ann", "bob", "cy", "dee")]
    events = _events(people, datetime.now(UTC) - timedelta(hours=2))
    _send(cli, write_key, events)
    copied = wait_for(
        lambda: (rows := _rows(cli))["events"] == len(events) and rows, "the copy of every event"
    )
    assert copied["costs"] == 0

    funnel = cli.json(
        "insights",
        "funnel",
        "Product Viewed",
        "Product Added",
        "Order Completed",
        "--since",
        "1d",
        "--window",
        "1d",
    )
    assert [s["entered"] for s in funnel["total"]["steps"]] == ["3", "2", "1"]  # uint64 as JSON strings
    assert funnel["total"]["steps"][2]["median_seconds"] == 120.0  # Ann: viewed at 1, ordered at 3 minutes
    table = cli.run("insights", "funnel", "Product Viewed", "Product Added", "--since", "1d").stdout
    assert "Product Added" in table and "66.7%" in table  # 2 of the 3 viewers added

    credited = cli.json(
        "insights", "attribution", "Order Completed", "--since", "1d", "--model", "last_touch"
    )
    assert credited["conversions"] == "2" and credited["revenue"] == 150.0
    assert credited["direct"] == {"conversions": 1.0, "revenue": 50.0}  # Dee: no touch before
    [spring] = credited["rows"]
    assert spring["value"] == "spring" and spring["credit"]["last_touch"] == {
        "conversions": 1.0,
        "revenue": 100.0,
    }

    retention = cli.json("insights", "cohorts", "--since", "30d", "--periods", "2")
    assert sum(int(c["size"]) for c in retention["cohorts"]) == 4

    page = tmp_path / "roi.html"
    roi = cli.run("insights", "roi", "Order Completed", "--since", "1d", "--html", str(page)).stdout
    assert "2 conversions, revenue 150.00" in roi and "spring" in roi
    assert "<table>" in page.read_text() and "spring" in page.read_text()

    # What the spring e-mail cost: ROI sets the revenue it earned against it (the cost's period is
    # the analysis's range, so all of it counts).
    now = datetime.now(UTC)
    start, end = (now - timedelta(days=1)).isoformat(), (now + timedelta(hours=1)).isoformat()
    cli.run(
        "insights",
        "costs",
        "set",
        "spring",
        "--amount",
        "40",
        "--currency",
        "EUR",
        "--from",
        start,
        "--until",
        end,
    )
    assert [c["campaign"] for c in cli.json("insights", "costs", "list")] == ["spring"]
    answered = cli.json("insights", "roi", "Order Completed", "--since", start, "--until", end)
    [spring_roi] = [c for c in answered["campaigns"] if c.get("campaign") == "spring"]
    assert spring_roi["cost"] == 40.0 and spring_roi["revenue"] == 100.0 and spring_roi["roi"] == 1.5
    refused = cli.run(
        "insights", "costs", "set", "spring", "--amount", "1", "--currency", "euro", "--from", "1d", status=2
    )
    assert "cost.currency" in refused.stdout + refused.stderr

    bad = cli.run("insights", "funnel", "Product Viewed", "--since", "1d", status=2)
    said = " ".join((bad.stdout + bad.stderr).split())
    assert "funnel.steps: steps must number 2 to 10" in said, said

    # Ann asks to be erased: her rows leave the copy (the request's insights step confirms it).
    ann = wait_for(lambda: cli.profile_id(people[0]), "Ann's profile")
    opened = cli.json("consent", "requests", "open", "erasure", ann)

    def completed() -> dict[str, Any] | None:
        shown: dict[str, Any] = cli.json("consent", "requests", "show", opened["request_id"])
        return shown if shown["state"] == "REQUEST_STATE_COMPLETED" else None

    request = wait_for(completed, "the erasure request")
    [step] = [s for s in request["steps"] if s["service"] == "insights"]
    # Her identify, view, add and order leave the copy. The step removes them, or finds none: identity's
    # ProfileErased, published as identity's step runs beside this one, may reach the copy first.
    assert json.loads(step["confirmation"])["events"] in (4, 0)
    assert _rows(cli)["events"] == len(events) - 4
    after = cli.json("insights", "funnel", "Product Viewed", "Product Added", "--since", "1d")
    assert [s["entered"] for s in after["total"]["steps"]] == ["2", "1"]

    for path in cli.data_dir.glob("insights.duckdb*"):
        data = path.read_bytes()
        for person in people:
            assert person.encode() not in data and f"{person}@example.com".encode() not in data, path
