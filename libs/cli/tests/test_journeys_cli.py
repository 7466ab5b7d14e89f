"""`onefold apply -f` and `onefold journeys …` against a stand-in JourneysService on a local port:
what the CLI sends (a file's journeys and templates in one request) and how it prints what comes
back, refusals per document included. The real service is exercised end to end in tests/e2e."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_status import rpc_status
from typer.testing import CliRunner

from onefold.cli.journeys_yaml import parse_journey_documents
from onefold.cli.main import app
from onefold.cli.sources import load_document
from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.journeys.v1 import journeys_pb2_grpc
from onefold.platform.errors import InvalidArgument, NotFound

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "journeys.yaml"


@dataclass
class StandIn(journeys_pb2_grpc.JourneysServiceServicer):
    """Keeps what it was asked; refuses what `refuse` names (field, reason) as the service does."""

    requests: list[Any] = field(default_factory=list)
    refuse: list[tuple[str, str]] = field(default_factory=list)
    stored: dict[str, pb.Journey] = field(default_factory=dict)

    def ApplyJourneys(self, request: pb.ApplyJourneysRequest, context: Any) -> pb.ApplyJourneysResponse:
        self.requests.append(request)
        if self.refuse:
            status = InvalidArgument("the journeys are not valid", violations=self.refuse).to_status()
            context.abort_with_status(rpc_status.to_status(status))
        answer = pb.ApplyJourneysResponse()
        for template in request.templates:
            answer.templates.add(template=template, changed=True).template.version = 1
        for journey in request.journeys:
            stored = answer.journeys.add(journey=journey, changed=True).journey
            stored.version = 1
            stored.status = pb.JOURNEY_STATUS_PUBLISHED if request.publish else pb.JOURNEY_STATUS_DRAFT
            if not request.dry_run:
                self.stored[journey.name] = stored
        return answer

    def GetJourney(self, request: pb.GetJourneyRequest, context: Any) -> pb.Journey:
        self.requests.append(request)
        if request.name not in self.stored:
            context.abort_with_status(rpc_status.to_status(NotFound("no journey named that").to_status()))
        return self.stored[request.name]

    def EnterJourney(self, request: pb.EnterJourneyRequest, context: Any) -> pb.EnterJourneyResponse:
        self.requests.append(request)
        return pb.EnterJourneyResponse(entered=False, refused="reentry: never")

    def InstanceHistory(self, request: pb.InstanceHistoryRequest, context: Any) -> pb.InstanceHistoryResponse:
        self.requests.append(request)
        answer = pb.InstanceHistoryResponse()
        answer.entries.add(
            entry_seq=1,
            event="MessageSuppressed",
            step="sms_reminder",
            message_id="msg_2",
            detail="consent: withdrawn",
            consent_evidence_id="evt_consent_9",
        )
        return answer

    def JourneyStats(self, request: pb.JourneyStatsRequest, context: Any) -> pb.JourneyStatsResponse:
        self.requests.append(request)
        answer = pb.JourneyStatsResponse(
            journey=request.journey, entered=40, active=3, exited=37, converted=9
        )
        answer.steps.add(step="email_reminder", entered=36, queued=36, sent=30, suppressed=6, delivered=29)
        return answer


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    journeys_pb2_grpc.add_JourneysServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("ONEFOLD_JOURNEYS_TARGET", f"127.0.0.1:{port}")
    monkeypatch.setenv("ONEFOLD_TOKEN", "ofk_test")
    try:
        yield servicer
    finally:
        server.stop(None)


def onefold(*args: str, status: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == status, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout, result.stderr


def test_a_files_journeys_and_templates_go_in_one_request_and_get_reads_back(stand_in: StandIn) -> None:
    out, _ = onefold("apply", "-f", str(EXAMPLE), "--publish")
    assert out.splitlines() == [
        "template/cart_reminder set (version 1)",
        "template/cart_sms set (version 1)",
        "journey/abandoned_cart set (version 1, published)",
    ]
    (request,) = stand_in.requests
    parsed = parse_journey_documents(load_document(EXAMPLE), str(EXAMPLE))
    assert list(request.journeys) == [spec.journey for spec in parsed.journeys]
    assert list(request.templates) == [spec.template for spec in parsed.templates]
    assert (request.publish, request.dry_run) == (True, False)

    written, _ = onefold("journeys", "get", "abandoned_cart")
    assert written.startswith("# version 1 (published, saved")
    again = parse_journey_documents(list(yaml.safe_load_all(written)), "got.yaml")
    assert [spec.journey for spec in again.journeys] == [spec.journey for spec in parsed.journeys]

    _, missing = onefold("journeys", "get", "no_such_journey", status=1)
    assert missing.startswith("error: no journey named that")


def test_a_dry_run_stores_nothing_and_says_so(stand_in: StandIn) -> None:
    out, _ = onefold("apply", "-f", str(EXAMPLE), "--dry-run")
    assert "journey/abandoned_cart valid (dry run)" in out.splitlines()
    assert stand_in.requests[0].dry_run and not stand_in.stored


def test_refusals_are_printed_under_each_document_by_yaml_path(stand_in: StandIn) -> None:
    stand_in.refuse = [
        ("journeys[0].steps[2].send.purpose", 'no consent purpose named "marketing"'),
        ("templates[1].text", "required: the message's body"),
    ]
    _, err = onefold("apply", "-f", str(EXAMPLE), status=2)
    assert err.splitlines() == [
        f"{EXAMPLE} (document 1) journey/abandoned_cart:",
        '  steps[2].send.purpose: no consent purpose named "marketing"',
        f"{EXAMPLE} (document 3) template/cart_sms:",
        "  text: required: the message's body",
        "error: 2 documents were refused, nothing was applied: the journeys are not valid",
    ]
    stand_in.refuse = [("journeys[0].steps[1].wait.local_time", 'must be a 24-hour time of day "HH:MM"')]
    _, err = onefold("apply", "-f", str(EXAMPLE), status=2)
    assert err.splitlines() == [
        '  steps[1].wait.until: must be a 24-hour time of day "HH:MM"',
        f"error: {EXAMPLE} (document 1) (journey/abandoned_cart) was refused, nothing was applied: "
        "the journeys are not valid (each field above)",
    ]


def test_enter_history_and_stats(stand_in: StandIn, tmp_path: Path) -> None:
    _, err = onefold(
        "journeys", "enter", "abandoned_cart", "p1", "--key", "c1", "--property", "total=42.5",
        "--property", "coupon=SPRING", status=1,
    )  # fmt: skip
    assert err.strip() == "not entered: reentry: never"
    entered = stand_in.requests[-1]
    assert (entered.journey, entered.profile_id, entered.entity_key) == ("abandoned_cart", "p1", "c1")
    assert dict(entered.properties) == {"total": 42.5, "coupon": "SPRING"}

    out, _ = onefold("journeys", "history", "abandoned_cart", "p1")
    assert "MessageSuppressed\tsms_reminder\tmsg_2\tconsent: withdrawn\tevt_consent_9" in out

    report = tmp_path / "report.html"
    out, _ = onefold("journeys", "stats", "abandoned_cart", "--version", "2", "--html", str(report))
    assert stand_in.requests[-1].version == 2
    assert "email_reminder\t36\t36\t30\t6\t29\t0" in out
    assert "uplift: none yet" in out
    page = report.read_text(encoding="utf-8")
    assert "Journey abandoned_cart (version 2)" in page and "<svg" in page
