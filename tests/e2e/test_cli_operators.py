"""What an operator does from the command line, against a real suite (`onefold up`: nats-server and
the seven service processes): consent grant / withdraw / check, data-subject requests, and profile
lookups of many references at once. The CLI runs as a subprocess with stdout a pipe, as in a
script: tables come out as tab-separated lines with whole ids."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ONEFOLD = [sys.executable, "-m", "onefold.cli"]
TOKEN = re.compile(r"ofk_[0-9a-f]{16}_[A-Za-z0-9_-]+")
CONSENT_MODEL = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "consent.yaml"


@dataclass
class Suite:
    data_dir: Path
    token: str

    def attempt(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ONEFOLD, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            input=stdin,
            env={**os.environ, "ONEFOLD_TOKEN": self.token},
            timeout=120,
        )

    def cli(self, *args: str, status: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = self.attempt(*args, stdin=stdin)
        assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str, status: int = 0) -> Any:
        return json.loads(self.cli(*args, "--json", status=status).stdout)

    def identify(self, write_key: str, user_id: str, email: str) -> None:
        http = json.loads((self.data_dir / "run" / "endpoints.json").read_text())["http"]["ingest"]
        response = httpx.post(
            f"{http}/v1/identify", json={"userId": user_id, "traits": {"email": email}}, auth=(write_key, "")
        )
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    root = tmp_path_factory.mktemp("operators")
    output = root / "up.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*ONEFOLD, "up", "--data-dir", str(root / "data")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in output.read_text():
            assert process.poll() is None, f"onefold up exited:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"onefold up did not start:\n{output.read_text()}"
            time.sleep(0.2)
        [token] = TOKEN.findall(output.read_text())
        suite = Suite(root / "data", token)
        assert "consent model set (version 1)" in suite.cli("apply", "-f", str(CONSENT_MODEL)).stdout
        yield suite
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _rows(stdout: str) -> list[list[str]]:
    """The tab-separated rows of a table printed to a pipe, header first (sentences and titles around
    it left out)."""
    return [line.split("\t") for line in stdout.splitlines() if "\t" in line]


def test_consent_grant_check_withdraw(suite: Suite) -> None:
    subject = "prof_operator_1"
    granted = suite.json(
        "consent", "grant", subject, "--purpose", "marketing", "--channel", "email", "--notice", "privacy",
        "--notice-version", "1",
    )  # fmt: skip
    assert granted["profile_id"] == subject and len(granted["recorded"]) == 1
    assert [(s["purpose_id"], s["channel"], s["status"]) for s in granted["states"]] == [
        ("marketing", "email", "granted")
    ]
    allowed = suite.json("consent", "check", subject, "marketing", "--channel", "email")
    assert (allowed["decision"], allowed["reason"]) == ("allow", "granted")
    assert allowed["evidence"]["event_id"] == granted["recorded"][0]["event_id"]

    table = suite.cli("consent", "withdraw", subject, "--purpose", "marketing", "--channel", "email").stdout
    assert _rows(table)[1][:3] == ["marketing", "email", "withdrawn"]
    denied = suite.cli("consent", "check", subject, "marketing", "--channel", "email", status=1).stdout
    assert denied.startswith("deny: withdrawn")
    # Before the grant, as of a time long ago, there was no consent either.
    never = suite.json("consent", "check", subject, "marketing", "--at", "2000-01-01", status=1)
    assert (never["decision"], never["reason"]) == ("deny", "no_consent")

    # What the service refuses is one sentence on stderr, exit 2.
    missing = suite.cli(
        "consent", "grant", subject, "--purpose", "marketing", "--notice", "privacy", "--notice-version", "9",
        status=2,
    )  # fmt: skip
    assert missing.stderr.startswith("error: ") and "no version '9'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_data_subject_requests_open_list_show(suite: Suite) -> None:
    opened = suite.json("consent", "requests", "open", "restriction", "prof_operator_2")
    request_id = opened["request_id"]
    assert opened["type"] == "REQUEST_TYPE_RESTRICTION" and opened["profile_id"] == "prof_operator_2"
    shown = suite.json("consent", "requests", "show", request_id)
    assert shown["request_id"] == request_id and "export" not in shown
    listed = suite.json("consent", "requests", "list")
    assert request_id in [request["request_id"] for request in listed]
    table = _rows(suite.cli("consent", "requests", "list").stdout)
    assert table[0] == ["request", "type", "state", "profile", "received", "due"]
    assert [request_id, "restriction"] in [row[:2] for row in table[1:]]

    unknown = suite.cli("consent", "requests", "show", "req_does_not_exist", status=2)
    assert unknown.stderr.startswith("error: ")
    wrong = suite.cli("consent", "requests", "open", "forget-me", "prof_operator_2", status=2)
    assert "must be one of access, erasure, rectification, restriction" in wrong.stderr


def test_profile_get_many_references_over_one_connection(suite: Suite, tmp_path: Path) -> None:
    write_key = suite.cli("sources", "create", "operators-web").stdout.strip().splitlines()[-1].strip()
    people = {"op-ann": "ann@operators.example", "op-bob": "bob@operators.example"}
    for user_id, email in people.items():
        suite.identify(write_key, user_id, email)
    deadline = time.monotonic() + 60
    while (done := suite.attempt("profile", "get", "user_id:op-ann", "user_id:op-bob")).returncode:
        assert time.monotonic() < deadline, f"identity never learnt of them: {done.stderr}"
        time.sleep(0.5)  # identity learns of them from ingest over NATS

    refs = tmp_path / "refs.txt"
    refs.write_text("# people to look up\nuser_id:op-ann\n\nemail:nobody@operators.example\n")
    looked_up = suite.json("profile", "get", "user_id:op-bob", "--file", str(refs), status=1)
    assert [item["ref"] for item in looked_up] == [
        "user_id:op-bob",
        "user_id:op-ann",
        "email:nobody@operators.example",
    ]
    bob, ann, nobody = looked_up
    assert {i["identifier"]["value"] for i in bob["profile"]["identifiers"]} == {"op-bob", people["op-bob"]}
    assert {i["identifier"]["value"] for i in ann["profile"]["identifiers"]} == {"op-ann", people["op-ann"]}
    assert "profile" not in nobody and "no profile" in nobody["error"]

    # From stdin, as a table: one row per reference, whole ids, the unknown one said so.
    piped = suite.cli("profile", "get", "--file", "-", stdin="user_id:op-ann\nuser_id:op-nobody\n", status=1)
    rows = _rows(piped.stdout)
    assert rows[0][:3] == ["reference", "profile id", "result"]
    assert rows[1][:3] == ["user_id:op-ann", ann["profile"]["profile_id"], "found"]
    assert rows[2][0] == "user_id:op-nobody" and rows[2][1] == "" and "no profile" in rows[2][2]
    assert piped.stderr.strip() == "error: 1 of 2 references matched no profile or were refused (see above)"
