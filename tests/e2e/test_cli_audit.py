"""`onefold apply -f consent.yaml` and `onefold audit consent|history|verify|report` end to end: the
real CLI as subprocesses against `onefold up` (a real nats-server and the seven service processes),
consents granted over gRPC, the consent database tampered with by hand."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from onefold.cli.supervisor import SERVICES
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.consent.v1 import consent_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2

ONEFOLD = [sys.executable, "-m", "onefold.cli"]
TOKEN = re.compile(r"ofk_[0-9a-f]{16}_[A-Za-z0-9_-]+")
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "consent.yaml"
HOSTILE = "https://shop.example/prefs?<script>alert('x')</script>"


@dataclass
class System:
    data_dir: Path
    token: str
    process: subprocess.Popen[bytes]

    def endpoints(self) -> dict[str, str]:
        services: dict[str, str] = json.loads((self.data_dir / "run" / "endpoints.json").read_text())[
            "services"
        ]
        return services

    def http(self) -> str:
        http: dict[str, str] = json.loads((self.data_dir / "run" / "endpoints.json").read_text())["http"]
        return http["ingest"]

    def cli(self, *args: str, status: int | None = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*ONEFOLD, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "ONEFOLD_TOKEN": self.token, "COLUMNS": "250"},
            timeout=120,
        )
        if status is not None:
            assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.cli(*args, "--json").stdout)
        return document

    def consent(self) -> consent_pb2_grpc.ConsentServiceStub:
        channel = grpc.insecure_channel(self.endpoints()["consent"])
        return consent_pb2_grpc.ConsentServiceStub(channel)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("audit")
    output = root / "up.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*ONEFOLD, "up", "--data-dir", str(root / "data")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in output.read_text():
            assert process.poll() is None, f"onefold up exited:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"onefold up did not start:\n{output.read_text()}"
            time.sleep(0.2)
        [token] = TOKEN.findall(output.read_text())
        yield System(root / "data", token, process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def applied(system: System) -> System:
    first = system.cli("apply", "-f", str(EXAMPLE)).stdout
    assert "consent model set (version 1): 5 purposes, 5 channels, 4 notice versions" in first
    assert re.search(r"notice privacy v1 \(zh-CN\): text sha256 [0-9a-f]{64}", first), first
    again = system.cli("apply", "-f", str(EXAMPLE)).stdout
    assert "unchanged" in again and "set (version" not in again
    return system


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_consent_model_mistakes_are_one_sentence_before_anything_is_sent(tmp_path: Path) -> None:
    """Mistakes in the document are found by the CLI itself (in-process here: nothing is sent)."""
    from typer.testing import CliRunner

    from onefold.cli.main import app

    text = EXAMPLE.read_text()
    cases = [
        (
            text.replace("    retention_days: 395", "    retention: 395"),
            "purposes[1]: unknown key 'retention' (expected one of: id, name, kind, legal_bases,",
        ),
        (
            text.replace("GDPR: legitimate_interests}", "GDPR: legit}"),
            "purposes[1] (analytics).legal_bases.GDPR must be one of consent, contract,",
        ),
        (text.replace("    kind: analytics", "    kind: analytix"), "(got 'analytix')"),
        (text.replace("  PIPL: 14 ", "  CCPA: 14 "), "guardian_age has an unknown jurisdiction 'CCPA'"),
        (text.replace('version: "1"', "version: 1.0", 1), 'write the version in quotes ("1.0")'),
        (
            text.replace("text_file: notices/privacy-v1.zh-CN.txt", "text_file: notices/missing.txt"),
            "cannot read the notice text",
        ),
    ]
    (tmp_path / "notices").mkdir()
    (tmp_path / "notices" / "privacy-v1.zh-CN.txt").write_bytes(
        (EXAMPLE.parent / "notices" / "privacy-v1.zh-CN.txt").read_bytes()
    )
    runner = CliRunner()
    for number, (document, expected) in enumerate(cases):
        path = tmp_path / f"bad-{number}.yaml"
        path.write_text(document)
        result = runner.invoke(
            app,
            ["apply", "-f", str(path), "--consent-target", "127.0.0.1:1", "--token", "t"],
            env={"COLUMNS": "250"},
        )
        assert result.exit_code == 2, result.output
        assert expected in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.output


def test_consent_model_refused_by_the_service_is_one_sentence(applied: System, tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    (tmp_path / "notices").mkdir()
    (tmp_path / "notices" / "privacy-v1.zh-CN.txt").write_bytes(
        (EXAMPLE.parent / "notices" / "privacy-v1.zh-CN.txt").read_bytes()
    )
    # PIPL Art. 39: a cross-border recipient must be named in full.
    no_country = tmp_path / "no-country.yaml"
    no_country.write_text(text.replace("      country: DE\n", ""))
    refused = applied.cli("apply", "-f", str(no_country), status=2)
    assert "PIPL Art. 39 requires the recipient's country" in refused.stderr
    assert refused.stderr.startswith("error: ")
    # A published notice text may not change (the proof would change under existing consents).
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("analyse how you use", "analyse how YOU use"))
    refused = applied.cli("apply", "-f", str(changed), status=2)
    assert "notice privacy_en version 1 was published" in refused.stderr
    assert "unchanged" in applied.cli("apply", "-f", str(EXAMPLE)).stdout


def test_audit_of_a_subject_named_by_an_identifier(applied: System) -> None:
    created = applied.cli("sources", "create", "web").stdout
    write_key = created.strip().splitlines()[-1].strip()
    response = httpx.post(
        f"{applied.http()}/v1/identify",
        json={"userId": "u-wang", "traits": {"email": "Wang.Fang@Example.com"}},
        auth=(write_key, ""),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    email = identity_pb2.ProfileRef(
        identifier=identity_pb2.Identifier(type="email", value="wang.fang@example.com")
    )
    stub = applied.consent()
    deadline = time.monotonic() + 60
    while True:  # identity learns the email from ingest over NATS
        try:
            granted = stub.GrantConsent(
                pb.GrantConsentRequest(
                    subject=email,
                    purpose_ids=["marketing"],
                    channels=["wechat"],
                    proof=pb.Proof(notice_id="privacy", notice_version="1", source="mini_program"),
                ),
                metadata=applied.metadata,
                timeout=10,
            )
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            assert time.monotonic() < deadline, "identity never resolved the email"
            time.sleep(0.5)
    state = applied.json("audit", "consent", "email:wang.fang@example.com")
    assert state["profile_id"] == granted.profile_id
    assert [(s["purpose_id"], s["channel"], s["status"]) for s in state["states"]] == [
        ("marketing", "wechat", "granted")
    ]
    history = applied.json("audit", "history", "email:wang.fang@example.com")
    assert history["profile_id"] == granted.profile_id
    unknown = applied.cli("audit", "consent", "email:nobody@example.com", status=2)
    assert unknown.stderr.startswith("error: ") and "no profile" in unknown.stderr


def test_audit_consent_history_verify_report_and_tampering(applied: System, tmp_path: Path) -> None:
    stub = applied.consent()
    profile = identity_pb2.ProfileRef(profile_id="prof_li")
    proof = pb.Proof(
        notice_id="privacy",
        notice_version="1",
        source="preference_centre",
        collection_point=HOSTILE,
        jurisdiction=pb.JURISDICTION_PIPL,
        country="CN",
        ip_address="203.0.113.7",
    )
    june = datetime(2025, 6, 1, tzinfo=UTC)
    september = datetime(2025, 9, 1, tzinfo=UTC)
    granted = stub.GrantConsent(
        pb.GrantConsentRequest(
            subject=profile,
            purpose_ids=["marketing"],
            channels=["email", "sms"],
            proof=proof,
            occurred_at=_stamp(june),
        ),
        metadata=applied.metadata,
    )
    stub.GrantConsent(
        pb.GrantConsentRequest(subject=profile, purpose_ids=["analytics"], proof=proof),
        metadata=applied.metadata,
    )
    stub.GrantConsent(  # sensitive data: separate consent, given by a guardian for a 12-year-old
        pb.GrantConsentRequest(
            subject=profile,
            purpose_ids=["health_data"],
            proof=pb.Proof(notice_id="health", notice_version="1"),
            subject_age=12,
            guardian=pb.Guardian(name="Li Wei", relation="parent", verified_by="id_card_check"),
        ),
        metadata=applied.metadata,
    )
    withdrawn = stub.WithdrawConsent(
        pb.WithdrawConsentRequest(
            subject=profile,
            purpose_ids=["marketing"],
            channels=["sms"],
            reason="too many messages",
            occurred_at=_stamp(september),
        ),
        metadata=applied.metadata,
    )
    stub.RecordObjection(
        pb.RecordObjectionRequest(subject=profile, purpose_id="personalisation"), metadata=applied.metadata
    )

    # -- audit consent: now, as of a time in the world, as the ledger knew it
    now = applied.json("audit", "consent", "prof_li")
    states = {(s["purpose_id"], s["channel"]): s for s in now["states"]}
    assert states[("marketing", "email")]["status"] == "granted"
    assert states[("marketing", "sms")]["status"] == "withdrawn"
    assert states[("analytics", "")]["status"] == "granted"
    assert states[("health_data", "")]["guardian_given"] is True
    assert now["objections"] == ["personalisation"]
    sms = states[("marketing", "sms")]["evidence"]
    assert sms["position"] == withdrawn.recorded[0].position
    assert sms["hash"] == withdrawn.recorded[0].hash.hex()
    july = applied.json("audit", "consent", "prof_li", "--as-of", "2025-07-01")
    assert {(s["purpose_id"], s["channel"], s["status"]) for s in july["states"]} == {
        ("marketing", "email", "granted"),
        ("marketing", "sms", "granted"),
    }
    before = applied.json("audit", "consent", "prof_li", "--known-at", "2020-01-01T00:00:00Z")
    assert before["states"] == [] and before["events_replayed"] == 0
    table = applied.cli("audit", "consent", "prof_li").stdout
    assert "Direct marketing" in table and "withdrawn" in table and "privacy v1" in table
    assert f"#{withdrawn.recorded[0].position}" in table and withdrawn.recorded[0].hash.hex()[:12] in table
    assert "objections stand to: personalisation" in table
    bad_time = applied.cli("audit", "consent", "prof_li", "--as-of", "last tuesday", status=2)
    assert "--as-of must be an ISO 8601 time" in bad_time.stderr

    # -- audit history: every change with its proof
    history = applied.json("audit", "history", "prof_li")
    entries = history["entries"]
    assert isinstance(entries, list) and len(entries) == 6
    assert [e["position"] for e in entries] == sorted(e["position"] for e in entries)
    first = entries[0]
    assert first["position"] == granted.recorded[0].position
    assert first["summary"].startswith("granted marketing on email")
    assert "notice 'privacy' version 1" in first["proof"] and "preference_centre" in first["proof"]
    assert "203.0.113.7" in first["proof"] and "under PIPL (country CN)" in first["proof"]
    assert _at(first["occurred_at"]) == june and _at(first["recorded_at"]) > june
    assert first["event"]["proof"]["text_sha256"]
    assert any("guardian consented" in e["proof"] for e in entries)
    assert any(e["summary"] == "withdrew marketing on sms (via api)" for e in entries)
    listed = applied.cli("audit", "history", "prof_li").stdout
    assert "granted marketing on email" in listed and "too many messages" in listed
    assert "6 change(s)" in listed
    nobody = applied.cli("audit", "history", "prof_nobody", status=2)
    assert "no consent was ever recorded" in nobody.stderr

    # -- audit verify: every service's log is intact
    verified = applied.cli("audit", "verify").stdout
    for name in SERVICES:
        assert re.search(rf"^{name}\tok\t", verified, re.MULTILINE), verified  # piped: tab-separated
    as_json = json.loads(applied.cli("audit", "verify", "--json").stdout)
    assert [r["service"] for r in as_json] == list(SERVICES) and all(r["ok"] for r in as_json)

    # -- audit report: one self-contained HTML file for people (with the person's requests)
    opened = stub.OpenRequest(
        pb.OpenRequestRequest(type=pb.REQUEST_TYPE_ACCESS, subject=profile),
        metadata=applied.metadata,
        timeout=60,
    )
    report = tmp_path / "report.html"
    applied.cli("audit", "report", "prof_li", "--html", str(report))
    page = report.read_text(encoding="utf-8")
    for name in ("Direct marketing", "Usage analytics", "Health data for fitness coaching"):
        assert name in page
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    assert "<svg" in page and "src=" not in page and "<link" not in page
    assert "too many messages" in page and "prof_li" in page
    assert opened.request_id in page and ">access<" in page
    assert "no entry was altered" in page

    # -- tamper with one byte of one payload: verify names the position and exits 1
    tampered = granted.recorded[1].position
    database = sqlite3.connect(applied.data_dir / "consent.db")
    try:
        (payload,) = database.execute("SELECT payload FROM events WHERE position = ?", (tampered,)).fetchone()
        altered = bytearray(payload)
        altered[-1] ^= 0x01
        database.execute("UPDATE events SET payload = ? WHERE position = ?", (bytes(altered), tampered))
        database.commit()
    finally:
        database.close()
    broken = applied.cli("audit", "verify", "consent", status=1)
    assert f"not intact at position {tampered}" in broken.stderr
    assert "NOT OK" in broken.stdout and f"event {tampered} was altered" in broken.stdout
    everything = applied.cli("audit", "verify", status=1)
    assert re.search(r"^ingest\tok\t", everything.stdout, re.MULTILINE)
    flagged = tmp_path / "flagged.html"
    written = applied.cli("audit", "report", "prof_li", "--html", str(flagged))
    assert f"not intact at position {tampered}" in written.stderr
    assert f"NOT intact at entry {tampered}" in flagged.read_text(encoding="utf-8")
