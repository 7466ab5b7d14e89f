"""Journeys end to end, from the outside: `onefold up` (real nats-server, the seven services), the
consent model and the example journeys file applied with the CLI, a second journey over gRPC
sending the example's templates, people's events sent to ingest's HTTP API — and what happened read back: the consented person's email sent through the
sandbox with the consent evidence, the person without consent suppressed with the reason, an order
ending the cart's instance by its exit rule, the results, and nothing personal in clear on disk."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from e2e_up import ONEFOLD, Cli, wait_for
from google.protobuf.json_format import ParseDict

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.journeys.v1 import journeys_pb2_grpc

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

CART_JOURNEY = {
    "name": "cart_rescue",
    "entry": {
        "event": {"event": {"event": "Product Added"}, "entity_key": "cart_id"},
        "reentry": "REENTRY_AFTER_EXIT",
    },
    "steps": [
        {
            "name": "remind",
            "send": {
                "channel": "CHANNEL_EMAIL",
                "template": "cart_reminder",
                "purpose": "marketing",
                "next": "mark",
            },
        },
        {"name": "mark", "update_trait": {"trait": "cart_reminded", "value": True, "next": "hold"}},
        {"name": "hold", "wait": {"duration": "86400s", "next": "nudge"}},
        {"name": "nudge", "send": {"channel": "CHANNEL_SMS", "template": "cart_sms", "purpose": "marketing"}},
    ],
    "exit_rules": [{"event": {"event": "Order Completed"}, "reason": "ordered"}],
    "goals": [
        {
            "name": "purchase",
            "event": {"event": "Order Completed"},
            "conversion_window": "604800s",
            "revenue_property": "total",
        }
    ],
}


def _journeys(
    cli: Cli,
) -> tuple[journeys_pb2_grpc.JourneysServiceStub, tuple[tuple[str, str], ...], grpc.Channel]:
    endpoints = json.loads((cli.data_dir / "run" / "endpoints.json").read_text())
    channel = grpc.insecure_channel(endpoints["services"]["journeys"])
    return (
        journeys_pb2_grpc.JourneysServiceStub(channel),
        (("authorization", f"Bearer {cli.token}"),),
        channel,
    )


def _send(cli: Cli, write_key: str, *messages: dict[str, Any]) -> None:
    endpoints = json.loads((cli.data_dir / "run" / "endpoints.json").read_text())
    batch = [{"messageId": uuid.uuid4().hex, **m} for m in messages]
    answer = httpx.post(
        f"{endpoints['http']['ingest']}/v1/batch", json={"batch": batch}, auth=(write_key, "")
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text


@pytest.mark.slow
def test_a_cart_journey_sends_only_with_consent_and_an_order_ends_it(
    up: tuple[Cli, subprocess.Popen[bytes]],
) -> None:
    cli, _ = up
    cli.run("apply", "-f", str(EXAMPLES / "consent.yaml"))
    # The example journey and its templates, from the operator's side: applied together and
    # published, listed, read back as the YAML that was applied, its templates listed.
    applied_example = cli.run("apply", "-f", str(EXAMPLES / "journeys.yaml"), "--publish").stdout
    assert "abandoned_cart" in applied_example and "cart_reminder" in applied_example, applied_example
    listed = cli.json("journeys", "list")
    assert [(j["name"], j["version"], j["status"]) for j in listed] == [
        ("abandoned_cart", 1, "JOURNEY_STATUS_PUBLISHED")
    ]
    shown = yaml.safe_load(cli.run("journeys", "get", "abandoned_cart").stdout)
    (written,) = [
        d for d in yaml.safe_load_all((EXAMPLES / "journeys.yaml").read_text()) if d["kind"] == "Journey"
    ]
    assert shown["steps"] == written["steps"] and shown["entry"] == written["entry"]
    again_example = cli.run("apply", "-f", str(EXAMPLES / "journeys.yaml"), "--publish").stdout
    assert "unchanged" in again_example and "version 2" not in again_example, again_example
    assert {t["name"] for t in cli.json("journeys", "templates")} == {"cart_reminder", "cart_sms"}
    write_key = cli.json("sources", "create", "web")["write_key"]
    stub, auth, channel = _journeys(cli)
    with channel:
        # A journey naming a template that does not exist is refused, naming the field; nothing stored.
        broken = ParseDict({**CART_JOURNEY, "name": "broken"}, pb.Journey())
        broken.steps[0].send.template = "no_such_template"
        with pytest.raises(grpc.RpcError) as refused:
            stub.ApplyJourneys(pb.ApplyJourneysRequest(journeys=[broken], publish=True), metadata=auth)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            'journeys[0].steps[0].send.template: no template named "no_such_template"'
            in refused.value.details()
        )
        names = [j.name for j in stub.ListJourneys(pb.ListJourneysRequest(), metadata=auth).journeys]
        assert names == ["abandoned_cart"]

        request = pb.ApplyJourneysRequest(
            journeys=[ParseDict(CART_JOURNEY, pb.Journey())],
            publish=True,
        )
        applied = stub.ApplyJourneys(request, metadata=auth)
        assert [a.journey.status for a in applied.journeys] == [pb.JOURNEY_STATUS_PUBLISHED]
        again = stub.ApplyJourneys(request, metadata=auth)  # the same file again changes nothing
        assert not any(a.changed for a in again.journeys)

        # Two people known by their email; only Ann consents to marketing by email.
        ann, bob = f"ann-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
        for user, name in ((ann, "Ann"), (bob, "Bob")):
            _send(
                cli,
                write_key,
                {
                    "type": "identify",
                    "userId": user,
                    "traits": {"email": f"{user}@example.com", "first_name": name},
                },
            )
        ann_id = wait_for(lambda: cli.profile_id(ann), "Ann's profile")
        bob_id = wait_for(lambda: cli.profile_id(bob), "Bob's profile")
        cli.run(
            "consent",
            "grant",
            ann_id,
            "--purpose",
            "marketing",
            "--channel",
            "email",
            "--notice",
            "privacy_en",
            "--notice-version",
            "1",
        )

        carts = {ann: f"cart-{uuid.uuid4().hex[:8]}", bob: f"cart-{uuid.uuid4().hex[:8]}"}
        for user in (ann, bob):
            _send(
                cli,
                write_key,
                {
                    "type": "track",
                    "userId": user,
                    "event": "Product Added",
                    "properties": {"cart_id": carts[user], "sku": "A1"},
                },
            )

        def settled(profile_id: str, user: str) -> pb.Instance | None:
            try:
                found = stub.GetInstance(
                    pb.GetInstanceRequest(
                        journey="cart_rescue", profile_id=profile_id, entity_key=carts[user]
                    ),
                    metadata=auth,
                )
            except grpc.RpcError:
                return None
            return found if found.messages and found.messages[0].status not in ("queued",) else None

        ann_instance = wait_for(lambda: settled(ann_id, ann), "Ann's reminder")
        bob_instance = wait_for(lambda: settled(bob_id, bob), "Bob's reminder")
        ann_history = stub.InstanceHistory(
            pb.InstanceHistoryRequest(journey="cart_rescue", profile_id=ann_id, entity_key=carts[ann]),
            metadata=auth,
        )
        assert [(m.step, m.status) for m in ann_instance.messages] == [("remind", "delivered")], ann_history
        assert ann_instance.step == "hold" and ann_instance.HasField("fires_at")
        assert [(m.step, m.status) for m in bob_instance.messages] == [("remind", "suppressed")]

        # Why: Ann's send rests on her consent (the ledger event's id); Bob's suppression says why.
        ann_history = stub.InstanceHistory(
            pb.InstanceHistoryRequest(journey="cart_rescue", profile_id=ann_id, entity_key=carts[ann]),
            metadata=auth,
        )
        sent = [e for e in ann_history.entries if e.event == "MessageSent"]
        assert (
            len(sent) == 1
            and sent[0].consent_evidence_id
            and sent[0].message_id == ann_instance.messages[0].message_id
        )
        bob_history = stub.InstanceHistory(
            pb.InstanceHistoryRequest(journey="cart_rescue", profile_id=bob_id, entity_key=carts[bob]),
            metadata=auth,
        )
        (suppressed,) = [e for e in bob_history.entries if e.event == "MessageSuppressed"]
        assert suppressed.detail == "suppressed: consent: no_consent"

        # Ann orders: the exit rule ends her cart's instance, and the goal counts the purchase.
        _send(
            cli,
            write_key,
            {
                "type": "track",
                "userId": ann,
                "event": "Order Completed",
                "properties": {"cart_id": carts[ann], "total": 80},
            },
        )

        def exited() -> pb.Instance | None:
            found = stub.GetInstance(
                pb.GetInstanceRequest(journey="cart_rescue", profile_id=ann_id, entity_key=carts[ann]),
                metadata=auth,
            )
            return found if found.status == pb.INSTANCE_STATUS_EXITED else None

        ended = wait_for(exited, "Ann's exit")
        assert ended.exit_reason == "exit_rule: ordered" and list(ended.goals) == ["purchase"]
        stats = stub.JourneyStats(pb.JourneyStatsRequest(journey="cart_rescue"), metadata=auth)
        assert (stats.entered, stats.exited, stats.active, stats.converted) == (2, 1, 1, 1)
        assert stats.revenue == 80 and dict(stats.exits_by_reason) == {"exit_rule: ordered": 1}
        remind = {s.step: s for s in stats.steps}["remind"]
        assert (remind.queued, remind.sent, remind.delivered, remind.suppressed) == (2, 1, 1, 1)

    # The journey's trait step reached identity: Ann's profile holds it, from the journey as source.
    def marked() -> dict[str, Any] | None:
        done = subprocess.run(
            [*ONEFOLD, "profile", "get", ann_id, "--json", "--data-dir", str(cli.data_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "ONEFOLD_TOKEN": cli.token},
            timeout=60,
        )
        profile: dict[str, Any] = json.loads(done.stdout)
        return profile if "cart_reminded" in json.dumps(profile) else None

    profile = wait_for(marked, "the trait set by the journey")
    assert "journey:cart_rescue" in json.dumps(profile), profile

    # A journey scheduled once, a moment from now, without a segment: everyone journeys has heard
    # of (Ann and Bob) enters when the moment comes, and its trait step marks them.
    once_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    welcome = {
        "name": "welcome_once",
        "entry": {"schedule": {"once_at": once_at}},
        "steps": [{"name": "mark", "update_trait": {"trait": "welcomed", "value": True}}],
    }
    stub, auth, channel = _journeys(cli)
    with channel:
        stub.ApplyJourneys(
            pb.ApplyJourneysRequest(journeys=[ParseDict(welcome, pb.Journey())], publish=True), metadata=auth
        )

        def scheduled() -> pb.JourneyStatsResponse | None:
            found = stub.JourneyStats(pb.JourneyStatsRequest(journey="welcome_once"), metadata=auth)
            return found if found.entered >= 2 else None

        ran = wait_for(scheduled, "the scheduled entry")
        assert (ran.entered, dict(ran.exits_by_reason)) == (2, {"completed": 2})

    # The same, as the operator reads it: the history table names Bob's reason; the report a file.
    why = cli.run("journeys", "history", "cart_rescue", bob_id, "--key", carts[bob]).stdout
    assert "suppressed: consent: no_consent" in why
    report = cli.data_dir.parent / "cart_rescue.html"
    cli.run("journeys", "stats", "cart_rescue", "--html", str(report))
    page = report.read_text()
    assert "cart_rescue" in page and "<svg" in page and "exit_rule: ordered" in page

    # Nothing of Ann's in clear in the journeys database or the sandbox's.
    for name in ("journeys.db", "journeys-sandbox.db"):
        for path in cli.data_dir.glob(f"{name}*"):
            data = path.read_bytes()
            assert f"{ann}@example.com".encode() not in data and b"Ann, your cart" not in data, path
