"""Two worker processes per service give the results one does: `onefold up` once as it is and once
with `--workers identity=2,segments=2`, the example segments applied, the same people's events sent
to ingest's HTTP API (anonymous visits, identify calls that join them to a user, orders), the
pipeline drained (`onefold lag` all zero), and each person's profile, segments, tags and computed
traits read back through the CLI: the same in both runs, and the second workers did part of the work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_up import Cli, running_up, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "segments.yaml"
PEOPLE = 12
APPLY_SECONDS = 300


def events() -> list[dict[str, Any]]:
    """Each person: a visit as an anonymous cookie, an identify joining it to the user, 0-3 orders."""
    batch: list[dict[str, Any]] = []
    for i in range(PEOPLE):
        user, cookie = f"person-{i}", f"cookie-{i}"
        batch.append({"type": "page", "anonymousId": cookie, "messageId": f"visit-{i}", "name": "Home"})
        batch.append(
            {
                "type": "identify",
                "anonymousId": cookie,
                "userId": user,
                "messageId": f"identify-{i}",
                "traits": {"email": f"{user}@example.com", "plan": "gold" if i % 3 == 0 else "free"},
            }
        )
        batch.extend(
            {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "messageId": f"order-{i}-{n}",
                "properties": {"revenue": 400 + 10 * i, "currency": "EUR"},
            }
            for n in range(i % 4)
        )
    return batch


def drained(cli: Cli) -> bool:
    backlogs: list[dict[str, Any]] = cli.json("lag")
    return all(
        b["unrelayed"] == 0 and all(c["pending"] == c["in_flight"] == 0 for c in b["consumers"])
        for b in backlogs
    )


def outcome(cli: Cli) -> dict[str, Any]:
    """What the services made of each person (profile ids are random: left out)."""
    found: dict[str, Any] = {}
    for i in range(PEOPLE):
        profile = cli.json("profile", "get", f"anonymous_id:cookie-{i}")
        held = cli.json("segments", "profile", profile["profile_id"])
        found[f"person-{i}"] = {
            "identifiers": sorted(
                (item["identifier"]["type"], item["identifier"]["value"]) for item in profile["identifiers"]
            ),
            "segments": sorted(s["segment"] for s in held.get("segments", [])),
            "tags": {t["tag"]: t["value"] for t in held.get("tags", [])},
            "computed": held.get("computed_traits", {}),
        }
    return found


def run(tmp_path: Path, *options: str) -> tuple[dict[str, Any], Path]:
    tmp_path.mkdir()
    with running_up(tmp_path, "--port-base", "0", *options) as (cli, _):
        cli.run("apply", "-f", str(EXAMPLE), timeout=APPLY_SECONDS)
        write_key = cli.json("sources", "create", "web")["write_key"]
        endpoints = json.loads((cli.data_dir / "run" / "endpoints.json").read_text())
        batch = events()
        for start in range(0, len(batch), 20):
            answer = httpx.post(
                f"{endpoints['http']['ingest']}/v1/batch",
                json={"batch": batch[start : start + 20]},
                auth=(write_key, ""),
            )
            assert answer.status_code == 200, answer.text
        wait_for(lambda: cli.profile_id(f"person-{PEOPLE - 1}"), "the last person's profile")
        wait_for(lambda: drained(cli), "every backlog at zero", timeout=180)
        return outcome(cli), cli.data_dir / "logs"


@pytest.mark.slow
def test_two_workers_per_service_give_the_results_of_one(tmp_path: Path) -> None:
    alone, _ = run(tmp_path / "one")
    shared, logs = run(tmp_path / "two", "--workers", "identity=2,segments=2")
    assert shared == alone
    assert all(("user_id", person) in found["identifiers"] for person, found in alone.items())
    assert any(person["segments"] for person in alone.values())  # the orders made some big spenders
    for service in ("identity", "segments"):
        for log in (logs / f"{service}.log", logs / f"{service}-2.log"):
            assert "eventlog.worker_group_taken" in log.read_text(), log  # both workers consumed
