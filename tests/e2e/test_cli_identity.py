"""`onefold profile ...` and `onefold apply -f identity-rules.yaml` as real subprocesses, against real
ingest and identity service processes and a real nats-server: events go in through ingest's gRPC API
and the CLI reads the profiles the identity service made of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from onefold.cli.main import app
from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.testing.processes import ServiceProcess

ONEFOLD = [sys.executable, "-m", "onefold.cli"]
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "identity-rules.yaml"


@dataclass
class Cli:
    data_dir: Path
    token: str

    def run(self, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*ONEFOLD, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "ONEFOLD_TOKEN": self.token, "COLUMNS": "250"},
            timeout=60,
        )
        assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def one_sentence(self, *args: str, status: int, expected: str) -> None:
        done = self.run(*args, status=status)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, (
            done.stderr
        )
        assert expected in lines[0], lines[0]


def _event(kind: ingest_pb2.EventType.ValueType, **fields: Any) -> ingest_pb2.TrackingEvent:
    traits = fields.pop("traits", None)
    event = ingest_pb2.TrackingEvent(type=kind, message_id=uuid.uuid4().hex, **fields)
    if kind == ingest_pb2.EVENT_TYPE_TRACK:
        event.event = event.event or "Viewed"
    if traits:
        event.traits.update(traits)
    return event


def _wait_for(probe: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_profile_commands_and_identity_rules_against_real_services(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    credentials = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    ingest = start_service("ingest", data_dir=data, onefold_auth__bootstrap_admin="false")
    identity = start_service("identity", data_dir=data, onefold_auth__bootstrap_admin="false")
    admin = credentials.issue("acme", ["admin"], "cli test").token
    # The CLI finds both services in the data dir's run/endpoints.json, as after `onefold up`.
    cli_dir = tmp_path / "cli"
    (cli_dir / "run").mkdir(parents=True)
    endpoints = {"services": {"ingest": ingest.target, "identity": identity.target}}
    (cli_dir / "run" / "endpoints.json").write_text(json.dumps(endpoints))
    cli = Cli(cli_dir, admin)

    # Identity rules and a source in one file; the example's rules as they ship.
    setup = tmp_path / "setup.yaml"
    setup.write_text("kind: Source\nname: web\n---\n" + EXAMPLE.read_text())
    applied = cli.run("apply", "-f", str(setup)).stdout
    assert "source/web created: src_" in applied and "identity rules set (version 1)" in applied
    source_id = applied.split("created: ")[1].split()[0]
    again = cli.run("apply", "-f", str(EXAMPLE)).stdout
    assert "identity rules unchanged (version 1)" in again and "source/" not in again
    auth = (("authorization", f"Bearer {admin}"),)
    with grpc.insecure_channel(identity.target) as channel:
        rules = identity_pb2_grpc.IdentityServiceStub(channel).GetRules(
            identity_pb2.GetRulesRequest(), metadata=auth
        )
    by_type = {rule.type: rule for rule in rules.identifiers}
    assert list(by_type["phone"].blocked_values) == ["+862168888888"]
    assert (by_type["member_card"].limit, by_type["store_customer_no"].normalise) == (1, "lower")
    assert list(rules.trait_source_precedence) == ["crm", "pos"]

    # Events through ingest: Ann browses, logs in; a second cookie of hers is seen later; two other
    # people give the blocked test address and stay apart.
    track, identify = ingest_pb2.EVENT_TYPE_TRACK, ingest_pb2.EVENT_TYPE_IDENTIFY
    events = [
        _event(track, anonymous_id="c-1", event="Viewed"),
        _event(
            identify, anonymous_id="c-1", user_id="ann", traits={"email": "Ann@Example.com", "plan": "pro"}
        ),
        _event(track, anonymous_id="c-2", event="Opened"),
        _event(identify, user_id="bob", traits={"email": "test@example.com"}),
        _event(identify, user_id="cy", traits={"email": "test@example.com"}),
    ]
    with grpc.insecure_channel(ingest.target) as channel:
        sent = ingest_pb2_grpc.IngestServiceStub(channel).Batch(
            ingest_pb2.BatchRequest(source_id=source_id, events=events), metadata=auth
        )
    assert sent.accepted == len(events)
    with grpc.insecure_channel(identity.target) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)

        def profile(type_name: str, value: str) -> identity_pb2.Profile | None:
            identifier = identity_pb2.Identifier(type=type_name, value=value)
            if not stub.Resolve(identity_pb2.ResolveRequest(identifier=identifier), metadata=auth).found:
                return None
            ref = identity_pb2.ProfileRef(identifier=identifier)
            return stub.GetProfile(identity_pb2.GetProfileRequest(profile=ref), metadata=auth)

        _wait_for(lambda: bool(profile("user_id", "cy") and profile("anonymous_id", "c-2")), "the profiles")
        bob, cy = profile("user_id", "bob"), profile("user_id", "cy")
        assert bob is not None and cy is not None and bob.profile_id != cy.profile_id
        # The blocked address linked nobody.
        assert [i.identifier.type for i in bob.identifiers] == ["user_id"]

    # profile get: by identifier (any spelling), as a table, and as JSON as of a later time.
    table = cli.run("profile", "get", "email:ANN@example.com").stdout
    ann = cli.json("profile", "get", "user_id:ann", "--as-of", "2100-01-01T00:00:00Z", "--axis", "recorded")
    assert ann["profile_id"] in table and "ann@example.com" in table and '"pro"' in table
    assert {(i["identifier"]["type"], i["identifier"]["value"]) for i in ann["identifiers"]} == {
        ("user_id", "ann"),
        ("email", "ann@example.com"),
        ("anonymous_id", "c-1"),
    }
    assert ann["event_count"] == "2"  # uint64 in JSON is a string
    # As of a time before anything happened: no such profile yet, exit status 1.
    cli.one_sentence(
        "profile",
        "get",
        ann["profile_id"],
        "--as-of",
        "2000-01-01T00:00:00Z",
        "--axis",
        "occurred",
        status=1,
        expected="did not exist yet",
    )

    # A manual merge of the second cookie's profile, its history, the timeline, and the unmerge.
    merged = cli.run("profile", "merge", "user_id:ann", "anonymous_id:c-2", "--reason", "same laptop").stdout
    assert f"merged into {ann['profile_id']}" in merged and "c-2" in merged
    timeline = cli.json("profile", "timeline", "user_id:ann")
    assert [e["event"]["message_id"] for e in timeline] == [
        events[2].message_id,
        events[1].message_id,
        events[0].message_id,
    ]
    history = cli.run("profile", "history", "anonymous_id:c-2").stdout
    assert "merged" in history and "manual" in history and "same laptop" in history
    parts = cli.json(
        "profile", "unmerge", "user_id:ann", "--identifier", "anonymous_id:c-2", "--reason", "not hers"
    )
    assert len(parts) == 2 and parts[0]["profile_id"] == ann["profile_id"]
    assert [i["identifier"]["value"] for i in parts[1]["identifiers"]] == ["c-2"]

    # Errors: one sentence; 1 when nothing matches, 2 for what the service or the CLI refuses.
    cli.one_sentence(
        "profile", "get", "email:nobody@example.com", status=1, expected="no profile has that email"
    )
    cli.one_sentence(
        "profile", "get", "shoe_size:42", status=2, expected="unknown identifier type 'shoe_size'"
    )
    bad = tmp_path / "bad-rules.yaml"
    bad.write_text("kind: IdentityRules\ndefault_phone_region: Atlantis\n")
    cli.one_sentence("apply", "-f", str(bad), status=2, expected="default_phone_region")  # the service says


USAGE_ERRORS = [
    (["profile", "get", "email:"], "TYPE:VALUE"),
    (["profile", "get", "Email Address:x"], "TYPE:VALUE"),
    (["profile", "get", "u1", "--as-of", "yesterday"], "--as-of must be an ISO 8601 time"),
    (
        ["profile", "get", "u1", "--as-of", "2026-01-01", "--axis", "sideways"],
        "--axis must be recorded or occurred",
    ),
    (["profile", "timeline", "u1", "--type", "click"], "--type must be one of track, identify"),
    (["profile", "unmerge", "u1", "--reason", "r"], "--identifier TYPE:VALUE or --event ID"),
    (
        ["profile", "unmerge", "u1", "--reason", "r", "--event", "e", "--identifier", "user_id:u"],
        "one of them",
    ),
    (["profile", "unmerge", "u1", "--reason", " ", "--event", "e"], "--reason must say why"),
    (["profile", "merge", "u1", "u2", "--reason", ""], "--reason must say why"),
    (["profile", "history", "u1"], "onefold up"),  # no endpoints.json: nothing is running
]


@pytest.mark.parametrize(("args", "expected"), USAGE_ERRORS)
def test_usage_errors_are_one_sentence_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    # In process (the CLI's own code, no service needed): these fail before any call is made.
    result = CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path)], env={"ONEFOLD_TOKEN": "ofk_x_y"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("kind: IdentityRules\nidentifiers:\n  - type: email\n    blocked: [x]\n", "unknown key 'blocked'"),
        ("kind: IdentityRules\nidentifiers: {type: email}\n", "identifiers must be a list"),
        ("kind: IdentityRules\nidentifiers:\n  - {type: email, limit: 0}\n", "identifiers[0].limit must be"),
        ("kind: IdentityRules\nidentifiers:\n  - {priority: 2}\n", "identifiers[0]: type is required"),
        ("kind: IdentityRules\ndefaultPhoneRegion: CN\ndefault_phone_region: DE\n", "given twice"),
        (
            "kind: IdentityRules\n---\nkind: IdentityRules\n",
            "(document 2): a workspace has one set of identity",
        ),
        ("kind: IdentityRule\n", "'IdentityRules'"),  # the kinds apply knows, and what was given
    ],
)
def test_bad_identity_rules_documents_are_one_sentence(tmp_path: Path, document: str, expected: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(document)
    result = CliRunner().invoke(
        app, ["apply", "-f", str(path), "--data-dir", str(tmp_path)], env={"ONEFOLD_TOKEN": "t"}
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.stderr
