"""Destinations end to end, from the outside: `onefold up` (real nats-server, the seven services), the
consent model and a destinations file applied with the CLI — a signed webhook to a real receiver on
this machine and a table in a SQLite database — people's events sent to ingest's HTTP API, and what
arrived read back: the consented person's order and traits delivered and signed, the other's
suppressed, the status table, then an erasure request sending a deletion to both destinations and
nothing personal left in clear in the destinations log."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_up import Cli, wait_for

from onefold.testing.webhooks import WebhookReceiver

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def _send(cli: Cli, write_key: str, *messages: dict[str, Any]) -> None:
    endpoints = json.loads((cli.data_dir / "run" / "endpoints.json").read_text())
    batch = [{"messageId": uuid.uuid4().hex, **m} for m in messages]
    answer = httpx.post(
        f"{endpoints['http']['ingest']}/v1/batch", json={"batch": batch}, auth=(write_key, "")
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text


def _destinations_file(path: Path, receiver_url: str, database: Path) -> Path:
    path.write_text(
        f"""
kind: Destination
name: crm
purpose: marketing
webhook: {{url: "{receiver_url}"}}
events:
  - type: track
    name: Order Completed
    where: [{{field: properties.total, op: gte, value: 100}}]
    mapping: {{order_id: properties.order_id, total: properties.total}}
traits: [email]
---
kind: Destination
name: warehouse
purpose: marketing
table: {{url: "sqlite:///{database}", table: shop}}
events:
  - type: track
    name: Order Completed
traits: ["*"]
"""
    )
    return path


def _rows(database: Path, table: str) -> list[str]:
    with sqlite3.connect(database) as conn:
        try:
            return [str(p) for (p,) in conn.execute(f"select profile_id from {table}")]
        except sqlite3.OperationalError:
            return []  # not created yet


@pytest.mark.slow
def test_deliveries_are_signed_consented_observable_and_erased(up: tuple[Cli, Any], tmp_path: Path) -> None:
    cli, _ = up
    database = tmp_path / "warehouse.db"
    cli.run("apply", "-f", str(EXAMPLES / "consent.yaml"))
    with WebhookReceiver("") as receiver:
        applied = cli.run(
            "apply", "-f", str(_destinations_file(tmp_path / "d.yaml", receiver.url, database))
        ).stdout
        assert "crm" in applied and "whsec_" in applied, applied
        receiver.secret = cli.json("destinations", "secret", "crm")["secret"]
        assert receiver.secret in applied
        again = cli.run("apply", "-f", str(tmp_path / "d.yaml")).stdout
        assert "unchanged" in again and "whsec_" not in again, again
        # Refused with the field's path; nothing stored.
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            "kind: Destination\nname: ads\npurpose: no_such_purpose\nwebhook: {url: 'https://x.example'}\nsegments: [nope]\n"
        )
        refused = cli.run("apply", "-f", str(bad), status=2)
        assert "no_such_purpose" in refused.stdout + refused.stderr
        assert [d["name"] for d in cli.json("destinations", "list")] == ["crm", "warehouse"]

        write_key = cli.json("sources", "create", "web")["write_key"]
        ann, bob = f"ann-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
        for user in (ann, bob):
            _send(
                cli,
                write_key,
                {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}},
            )
        ann_id = wait_for(lambda: cli.profile_id(ann), "Ann's profile")
        bob_id = wait_for(lambda: cli.profile_id(bob), "Bob's profile")
        cli.run(
            "consent",
            "grant",
            ann_id,
            "--purpose",
            "marketing",
            "--notice",
            "privacy_en",
            "--notice-version",
            "1",
        )
        for user, order in ((ann, "A-1"), (bob, "B-1")):
            _send(
                cli,
                write_key,
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "properties": {"order_id": order, "total": 150},
                },
            )

        def crm_status() -> dict[str, Any] | None:
            [crm] = [h for h in cli.json("destinations", "status") if h["name"] == "crm"]
            settled = int(crm.get("delivered", 0)) >= 1 and int(crm.get("suppressed", 0)) >= 2
            return crm if settled else None

        # Ann's order reaches the CRM, signed; Bob's (and both traits before Ann's grant) are suppressed.
        crm = wait_for(crm_status, "the CRM's deliveries")
        orders = [r for r in receiver.received if r["type"] == "event"]
        assert [(r["profileId"], r["data"]) for r in orders] == [(ann_id, {"order_id": "A-1", "total": 150})]
        assert receiver.bad_signatures == 0 and crm["circuit"] == "closed"
        assert wait_for(lambda: _rows(database, "shop_events") == [ann_id], "the warehouse row")
        table = cli.run("destinations", "status").stdout
        assert "crm" in table and "warehouse" in table and "webhook" in table, table

        # After an outage, a replay sends the last hour again under the same ids: the receiver,
        # idempotent, keeps one of each (what consent suppressed then is asked again).
        replayed = cli.json("destinations", "replay", "crm", "--since", "1h")
        assert replayed["queued"] >= 1, replayed
        wait_for(lambda: receiver.duplicates >= 1, "the replayed deliveries")
        assert [r for r in receiver.received if r["type"] == "event"] == orders

        # Ann asks to be erased: both destinations that received her get a deletion.
        opened = cli.json("consent", "requests", "open", "erasure", ann_id)

        def completed() -> dict[str, Any] | None:
            shown: dict[str, Any] = cli.json("consent", "requests", "show", opened["request_id"])
            return shown if shown["state"] == "REQUEST_STATE_COMPLETED" else None

        request = wait_for(completed, "the erasure request")
        [step] = [s for s in request["steps"] if s["service"] == "destinations"]
        confirmation = json.loads(step["confirmation"])
        assert "crm" in json.dumps(confirmation) and "warehouse" in json.dumps(confirmation), confirmation
        wait_for(
            lambda: any(r["type"] == "deletion" and r["profileId"] == ann_id for r in receiver.received),
            "the CRM's deletion",
        )
        wait_for(lambda: _rows(database, "shop_events") == [], "the warehouse's rows deleted")
        assert _rows(database, "shop_traits") == []
    assert bob_id not in [r["profileId"] for r in receiver.received]
    # Nothing personal in clear in the destinations log (the addresses were delivered sealed).
    for path in (cli.data_dir).rglob("destinations.db*"):
        data = path.read_bytes()
        assert f"{ann}@example.com".encode() not in data and b"A-1" not in data, path


@pytest.mark.slow
def test_a_destination_naming_a_segment_gets_its_current_members(up: tuple[Cli, Any], tmp_path: Path) -> None:
    cli, _ = up
    cli.run("apply", "-f", str(EXAMPLES / "consent.yaml"))
    cli.run("apply", "-f", str(EXAMPLES / "segments.yaml"))
    write_key = cli.json("sources", "create", "web")["write_key"]
    ann = f"ann-{uuid.uuid4().hex[:8]}"
    _send(
        cli,
        write_key,
        {"type": "track", "userId": ann, "event": "Order Completed", "properties": {"revenue": 1500}},
    )
    ann_id = wait_for(lambda: cli.profile_id(ann), "Ann's profile")
    wait_for(
        lambda: ann_id in cli.run("segments", "members", "big_spenders_90d").stdout,
        "Ann among the big spenders",
    )
    cli.run(
        "consent",
        "grant",
        ann_id,
        "--purpose",
        "marketing",
        "--notice",
        "privacy_en",
        "--notice-version",
        "1",
    )
    with WebhookReceiver("") as receiver:
        audience = tmp_path / "audience.yaml"
        audience.write_text(
            f"kind: Destination\nname: ads\npurpose: marketing\nwebhook: {{url: '{receiver.url}'}}\n"
            "segments: [big_spenders_90d]\n"
        )
        receiver.fail(503)  # until it knows the secret the service issues: retried, not refused
        cli.run("apply", "-f", str(audience))
        receiver.secret = cli.json("destinations", "secret", "ads")["secret"]
        receiver.recover()
        # Ann was in the segment before the destination existed: she is delivered all the same.
        wait_for(
            lambda: (
                [(r["profileId"], r["type"], r["name"]) for r in receiver.received]
                == [(ann_id, "segment_entered", "big_spenders_90d")]
            ),
            "Ann's membership, backfilled",
        )
        assert receiver.bad_signatures == 0
    [ads] = cli.json("destinations", "status", "ads")
    assert ads["backfilling"] == [] and ads["delivered"] == 1, ads
