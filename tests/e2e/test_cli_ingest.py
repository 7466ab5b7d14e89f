"""The ingest CLI end to end: `onefold sources|apply|import|quarantine` as real subprocesses against a
real ingest service process and a real nats-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from onefold.platform.auth import CredentialStore
from onefold.testing.processes import ServiceProcess

ONEFOLD = [sys.executable, "-m", "onefold.cli"]


@dataclass
class Cli:
    target: str
    token: str
    data_dir: Path

    def run(
        self, *args: str, token: str | None = None, check: bool = True, status: int = 0
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ONEFOLD_TOKEN": self.token if token is None else token, "COLUMNS": "200"}
        done = subprocess.run(
            [*ONEFOLD, *args, *self.where()],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if check:
            assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def where(self) -> list[str]:
        return ["--target", self.target, "--data-dir", str(self.data_dir)]

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--json").stdout)

    def create_source(self, name: str, *extra: str) -> str:
        out = self.run("sources", "create", name, *extra).stdout
        source_id = out.split()[1]
        assert source_id.startswith("src_"), out
        return source_id

    def import_report(
        self, file: Path, source_id: str, *extra: str, status: int = 0
    ) -> tuple[dict[str, object], str]:
        """Run an import with a JSON report; `status` is the exit status it must end with (1 when
        any row was quarantined or rejected)."""
        report = file.with_suffix(f".report-{time.monotonic_ns()}.json")
        done = self.run(
            "import", str(file), "--source", source_id, "--report", str(report), *extra, status=status
        )
        return json.loads(report.read_text()), done.stdout


@pytest.fixture
def cli(tmp_path: Path, start_service: Callable[..., ServiceProcess]) -> Cli:
    service = start_service("ingest", data_dir=tmp_path / "data")
    store = CredentialStore(f"sqlite:///{tmp_path / 'data' / 'auth.db'}")
    token = store.issue("acme", ["admin"], "cli test").token
    return Cli(target=service.target, token=token, data_dir=tmp_path / "cli")


def _problem_lines(report: dict[str, object], status: str) -> list[int]:
    problems = report["problems"]
    assert isinstance(problems, list)
    return [p["line"] for p in problems if p["status"] == status]


ORDER_PLAN = {
    "mode": "block",
    "unplannedMode": "block",
    "events": {
        "Order Completed": {
            "type": "object",
            "required": ["orderId"],
            "properties": {"orderId": {"type": "string"}},
        }
    },
}


def test_sources_create_list_rotate_disable_and_apply_idempotently(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(ORDER_PLAN))
    created = cli.run("sources", "create", "web", "--plan", str(plan), "--rate", "250").stdout
    assert "write key (shown once" in created
    web = created.split()[1]
    listed = cli.json("sources", "list")
    assert isinstance(listed, list)
    [entry] = [s for s in listed if s["sourceId"] == web]
    assert entry["name"] == "web" and entry["rateLimitPerSecond"] == 250
    assert entry["trackingPlan"]["mode"] == "PLAN_MODE_BLOCK"

    source_yaml = tmp_path / "source.yaml"
    source_yaml.write_text(
        "kind: Source\nname: shop\ntrackingPlan:\n  mode: flag\n  events:\n"
        "    Viewed: {type: object, required: [sku]}\n"
    )
    first = cli.run("apply", "-f", str(source_yaml)).stdout
    assert "source/shop created: src_" in first and "write key" in first
    again = cli.run("apply", "-f", str(source_yaml)).stdout
    assert "unchanged" in again and "created" not in again
    shops = [s for s in cli.json("sources", "list") if s["name"] == "shop"]  # type: ignore[union-attr]
    assert len(shops) == 1  # applying twice created nothing twice
    # A changed plan is set (a new version); applying that again changes nothing.
    source_yaml.write_text(source_yaml.read_text().replace("mode: flag", "mode: block"))
    assert "tracking plan set (version 2)" in cli.run("apply", "-f", str(source_yaml)).stdout
    assert "unchanged" in cli.run("apply", "-f", str(source_yaml)).stdout

    # Unknown keys are one clear sentence, not a traceback, and change nothing.
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Source\nname: shop\ntrackingPlan:\n  mode: block\n  evnts: {}\n")
    refused = cli.run("apply", "-f", str(bad), check=False)
    assert refused.returncode == 2
    assert "unknown key 'evnts'" in refused.stderr and "Traceback" not in refused.stderr
    assert "expected one of: mode, unplannedMode, events, identifyTraits" in refused.stderr

    rotated = cli.run("sources", "rotate-key", web, "--grace", "24h").stdout
    assert "86400 s more" in rotated
    assert rotated.splitlines()[-1].strip() not in created  # a new key, printed once
    assert "is disabled" in cli.run("sources", "disable", web).stdout
    [entry] = [s for s in cli.json("sources", "list") if s["sourceId"] == web]  # type: ignore[union-attr]
    assert entry["disabled"] is True


EXAMPLE_SOURCE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "source.yaml"


def test_the_example_source_yaml_applies_and_ingest_keeps_its_plan(cli: Cli) -> None:
    first = cli.run("apply", "-f", str(EXAMPLE_SOURCE)).stdout
    assert "source/website created: src_" in first
    [website] = [s for s in cli.json("sources", "list") if s["name"] == "website"]  # type: ignore[union-attr]
    assert website["rateLimitPerSecond"] == 5000
    plan = website["trackingPlan"]
    assert plan["mode"] == "PLAN_MODE_BLOCK" and plan["unplannedMode"] == "PLAN_MODE_FLAG"
    assert set(json.loads(plan["eventSchemas"]["Order Completed"])["required"]) == {
        "orderId",
        "revenue",
        "currency",
    }
    assert json.loads(plan["identifyTraitsSchema"])["required"] == ["email"]
    assert "unchanged" in cli.run("apply", "-f", str(EXAMPLE_SOURCE)).stdout


CSV = """userId,email,plan,traits.company.name,context.ip,timestamp
u1,a@example.com,pro,Acme,10.0.0.1,2024-01-02T03:04:05Z
u2,b@example.com,free
u3,c@example.com,free,Initech,,2024-01-02T03:04:05Z
u4,"d@example.com",pro,"Multi
Line Inc",,2024-01-02T03:04:05Z
u5,e@example.com,pro,Umbrella,,yesterday
u6,f@example.com,pro,Hooli,,2024-01-02T03:04:05Z
"""


def test_import_csv_reports_bad_lines_and_rerunning_imports_nothing_twice(cli: Cli, tmp_path: Path) -> None:
    source = cli.create_source("crm")
    data = tmp_path / "customers.csv"
    data.write_text(CSV)
    # Two bad lines: exit status 1, after the full report.
    report, out = cli.import_report(data, source, "--type", "identify", status=1)
    # line 3: too few fields; line 7: an unparseable timestamp (lines 5-6 are one quoted record)
    assert _problem_lines(report, "rejected") == [3, 7]
    reasons = {p["line"]: p["reasons"][0]["message"] for p in report["problems"]}  # type: ignore[attr-defined]
    assert "has 3 fields; the header has 6" in reasons[3]
    assert "timestamp" in reasons[7]
    assert (report["accepted"], report["duplicates"], report["quarantined"], report["rejected"]) == (
        4,
        0,
        0,
        2,
    )
    assert "rows not simply accepted" in out

    # Re-running: the saved progress says it is done; the status is still the file's.
    again = cli.run("import", str(data), "--source", source, "--type", "identify", status=1)
    assert "already imported" in again.stdout and "has 3 fields" in again.stdout
    assert "not every row was imported: 0 quarantined, 2 rejected" in again.stderr
    # Sending every line again (--restart): the deterministic messageIds make all of them duplicates.
    resent, _ = cli.import_report(data, source, "--type", "identify", "--restart", status=1)
    assert (resent["accepted"], resent["duplicates"], resent["rejected"]) == (0, 4, 2)

    # Only the good lines: accepted or duplicates is exit status 0, however often it runs.
    good = tmp_path / "good.csv"
    good.write_text("".join(line for i, line in enumerate(CSV.splitlines(True), 1) if i in (1, 2, 4)))
    clean, _ = cli.import_report(good, source, "--type", "identify")
    assert (clean["accepted"], clean["duplicates"], clean["problems"]) == (2, 0, [])
    clean, _ = cli.import_report(good, source, "--type", "identify", "--restart")
    assert (clean["accepted"], clean["duplicates"], clean["problems"]) == (0, 2, [])


def _ndjson_lines(count: int, bad: set[int]) -> str:
    lines = []
    for number in range(1, count + 1):
        if number in bad:
            lines.append('{"type": "track", "userId": "broken' if number % 2 else "[1, 2, 3]")
        else:
            lines.append(
                json.dumps(
                    {
                        "type": "track",
                        "userId": f"user-{number % 50}",
                        "event": "Viewed",
                        "properties": {"n": number},
                        "context": {"library": {"name": "test"}},
                        "channel": "server",
                    }
                )
            )
    return "\n".join(lines) + "\n"


def test_import_ndjson_stopped_midway_resumes_after_the_last_acknowledged_line(
    cli: Cli, tmp_path: Path
) -> None:
    source = cli.create_source("offline")
    bad = {7, 250, 901}
    data = tmp_path / "events.ndjson"
    data.write_text(_ndjson_lines(1200, bad))
    stopped = cli.run(
        "import", str(data), "--source", source, "--batch", "100", "--stop-after", "300", check=False
    )
    assert stopped.returncode == 3, stopped.stderr
    [state_file] = (cli.data_dir / "imports").glob("*.json")
    state = json.loads(state_file.read_text())
    assert 300 <= state["last_line"] < 1200 and not state["complete"]
    first_part = state["accepted"]

    report, out = cli.import_report(data, source, "--batch", "100", status=1)
    assert f"resuming {data} after line {state['last_line']}" in out
    assert report["complete"] and report["rejected"] == len(bad)
    # Lines acknowledged before the stop are not sent again; batches that were in flight when it
    # stopped may have been taken by the service, and come back as duplicates: never twice.
    assert report["accepted"] + report["duplicates"] == 1200 - len(bad)
    assert report["duplicates"] <= 2 * 100  # at most the other batches in flight
    assert report["accepted"] > first_part
    assert _problem_lines(report, "rejected") == sorted(bad)

    resent, _ = cli.import_report(data, source, "--restart", status=1)
    assert (resent["accepted"], resent["duplicates"]) == (0, 1200 - len(bad))


def test_import_killed_with_sigkill_resumes_and_nothing_is_imported_twice(cli: Cli, tmp_path: Path) -> None:
    # 1000 events/s (a two-second burst): the import of 6000 lines takes several seconds, as the
    # importer waits out the rate limit, so it is still running when it is killed.
    source = cli.create_source("bulk", "--rate", "1000")
    data = tmp_path / "bulk.ndjson"
    total = 6000
    data.write_text(_ndjson_lines(total, set()))
    env = {**os.environ, "ONEFOLD_TOKEN": cli.token}
    process = subprocess.Popen(
        [*ONEFOLD, "import", str(data), "--source", source, "--batch", "50", *cli.where()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    last_line = 0
    while time.monotonic() < deadline and process.poll() is None:
        states = list((cli.data_dir / "imports").glob("*.json"))
        if states:
            try:
                last_line = json.loads(states[0].read_text())["last_line"]
            except ValueError:
                last_line = 0
            if last_line >= 500:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    if process.returncode == 0:
        pytest.fail("the import finished before it could be killed")
    assert 0 < last_line < total
    report, out = cli.import_report(data, source, "--batch", "50")
    assert "resuming" in out
    # Batches answered but not yet recorded when it died come back as duplicates: never twice.
    assert report["accepted"] + report["duplicates"] == total
    resent, _ = cli.import_report(data, source, "--restart")
    assert (resent["accepted"], resent["duplicates"]) == (0, total)


def test_quarantine_list_and_replay_after_fixing_the_plan_with_apply(cli: Cli, tmp_path: Path) -> None:
    source_yaml = tmp_path / "source.yaml"
    strict = {"kind": "Source", "name": "checkout", "trackingPlan": ORDER_PLAN}
    source_yaml.write_text(json.dumps(strict))  # JSON is YAML
    created = cli.run("apply", "-f", str(source_yaml)).stdout
    source = created.split("created: ")[1].split()[0]
    events = [
        {"type": "track", "userId": "a", "event": "Order Completed", "properties": {"orderId": "o1"}},
        {"type": "track", "userId": "b", "event": "Order Completed", "properties": {"orderId": 42}},
        {"type": "track", "userId": "c", "event": "Order Completed", "properties": {}},
        {"type": "track", "userId": "d", "event": "Cart Viewed"},
    ]
    data = tmp_path / "orders.ndjson"
    data.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    report, out = cli.import_report(data, source, status=1)
    assert (report["accepted"], report["quarantined"]) == (1, 3)
    assert _problem_lines(report, "quarantined") == [2, 3, 4]
    kinds = {p["line"]: p["kind"] for p in report["problems"]}  # type: ignore[attr-defined]
    assert kinds == {2: "schema_violation", 3: "schema_violation", 4: "unplanned_event"}
    assert "orderId" in out

    listed = cli.json("quarantine", "list", "--source", source)
    assert isinstance(listed, list) and len(listed) == 3
    unplanned = cli.json("quarantine", "list", "--kind", "unplanned_event")
    assert isinstance(unplanned, list) and len(unplanned) == 1
    table = cli.run("quarantine", "list").stdout
    assert "schema_violation" in table and "3 quarantined" in table

    dry = cli.json("quarantine", "replay", "--all", "--dry-run")
    assert isinstance(dry, dict) and (dry["accepted"], dry["quarantined"]) == (0, 3)

    # Fix the plan declaratively: orderId may be a number, and unplanned events are allowed.
    relaxed = json.loads(json.dumps(ORDER_PLAN))
    relaxed["unplannedMode"] = "allow"
    relaxed["events"]["Order Completed"]["properties"]["orderId"] = {"type": ["string", "integer"]}
    source_yaml.write_text(json.dumps({**strict, "trackingPlan": relaxed}))
    assert "tracking plan set" in cli.run("apply", "-f", str(source_yaml)).stdout

    replay_one = cli.json("quarantine", "replay", "--id", unplanned[0]["quarantine_id"])
    assert isinstance(replay_one, dict) and replay_one["accepted"] == 1
    replayed = cli.run("quarantine", "replay", "--all", "--source", source).stdout
    assert "1 were accepted" in replayed and "1 still quarantined" in replayed  # line 3 lacks orderId
    remaining = cli.json("quarantine", "list")
    assert isinstance(remaining, list) and len(remaining) == 1
    assert remaining[0]["record"]["event"]["user_id"] == "c"


def test_errors_are_one_sentence_without_a_traceback(cli: Cli, tmp_path: Path) -> None:
    def one_sentence(done: subprocess.CompletedProcess[str], *expected: str) -> None:
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        for text in expected:
            assert text in lines[0], lines[0]

    one_sentence(cli.run("sources", "list", token="ofk_0000000000000000_nope", check=False), "credential")
    one_sentence(cli.run("sources", "list", token="", check=False), "--token", "ONEFOLD_TOKEN")
    store = CredentialStore(f"sqlite:///{tmp_path / 'data' / 'auth.db'}")
    writer = store.issue("acme", ["ingest:write"], "writer").token
    one_sentence(cli.run("sources", "create", "x", token=writer, check=False), "permission denied", "admin")
    data = tmp_path / "one.ndjson"
    data.write_text('{"type": "track", "userId": "u", "event": "E"}\n')
    one_sentence(cli.run("import", str(data), "--source", "src_missing", check=False), "src_missing")
    # Usage errors are exit status 2 as well (1 means rows were quarantined or rejected).
    assert cli.run("import", str(data), check=False).returncode == 2  # no --source
    assert cli.run("import", str(data), "--source", "src_x", "--batch", "0", check=False).returncode == 2

    # Without --target, the ingest endpoint comes from the data dir's run/endpoints.json.
    unreachable = subprocess.run(
        [*ONEFOLD, "sources", "list", "--data-dir", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        env={**os.environ, "ONEFOLD_TOKEN": cli.token},
        timeout=60,
    )
    one_sentence(unreachable, "onefold up")
    (tmp_path / "up" / "run").mkdir(parents=True)
    (tmp_path / "up" / "run" / "endpoints.json").write_text(json.dumps({"services": {"ingest": cli.target}}))
    listed = subprocess.run(
        [*ONEFOLD, "sources", "list", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "ONEFOLD_TOKEN": cli.token, "ONEFOLD_DATA_DIR": str(tmp_path / "up")},
        timeout=60,
    )
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
