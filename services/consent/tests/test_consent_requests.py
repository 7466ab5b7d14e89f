"""Data-subject requests through the application in process, on a real SQLite file and (with
ONEFOLD_TEST_POSTGRES_URL) a real PostgreSQL database, with an injectable clock: deadlines and the
extension (GDPR 12(3)), refusals with reasons (PIPL 50, GDPR 12(4)), restriction (GDPR 18, PIPL 44),
erasure's consent part and its steps for services that are not reachable (GDPR 17, PIPL 47),
retries with backoff against a real address nobody answers on, rectification (GDPR 16, PIPL 46).

The saga across real ingest, identity, segments, journeys and destinations processes is in
test_consent_requests_service.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from onefold.consent.adapters.read_model import ConsentReadModel, request_rows
from onefold.consent.application import subject_requests
from onefold.consent.application.subject_requests import SubjectRequests, Timings
from onefold.consent.domain.ledger import subject_of
from onefold.consent.domain.subject_request import (
    PEER_SERVICES,
    SERVICES,
    WAITING_FOR_IDENTIFIERS,
    StepOutcome,
    add_month,
    completion_record,
    request_stream,
    verify_signature,
)
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog import ERASED
from onefold.eventlog.projections import Projector
from onefold.platform.client import Peers
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.ports import free_port

WORKSPACE = "acme"
PENDING, DONE, FAILED, NA = (
    pb.STEP_STATE_PENDING,
    pb.STEP_STATE_DONE,
    pb.STEP_STATE_FAILED,
    pb.STEP_STATE_NOT_APPLICABLE,
)
NO_PEERS = Peers({}, "")


class RequestsInTest:
    """The request use cases for these tests: the saga's passes (`process`, `tick`) are awaited by
    the test; the others run to their end on the harness's loop."""

    def __init__(self, harness: Any, requests_: SubjectRequests) -> None:
        self.harness = harness
        self.requests = requests_
        self.process = requests_.process
        self.tick = requests_.tick

    def open(self, *args: Any, **kwargs: Any) -> pb.SubjectRequest:
        return self.harness.sync(self.requests.open(*args, **kwargs))

    def get(self, workspace: str, request_id: str) -> pb.SubjectRequest:
        return self.harness.sync(self.requests.get(workspace, request_id))

    def extend(self, *args: Any) -> pb.SubjectRequest:
        return self.harness.sync(self.requests.extend(*args))

    def refuse(self, *args: Any) -> pb.SubjectRequest:
        return self.harness.sync(self.requests.refuse(*args))

    def list_requests(self, workspace: str, **kwargs: Any) -> list[pb.SubjectRequest]:
        return self.harness.sync(self.requests.list_requests(workspace, **kwargs))


def dsr(harness: Any, peers: Peers = NO_PEERS, **timings: float) -> RequestsInTest:
    app = harness.app
    return RequestsInTest(
        harness, SubjectRequests(app.consent_log, app.ledger, app.history, peers, timings=Timings(**timings))
    )


def open_request(
    requests_: RequestsInTest, kind: int, profile_id: str = "p1", workspace: str = WORKSPACE, **fields: Any
) -> pb.SubjectRequest:
    message = pb.OpenRequestRequest(type=kind, **fields)  # type: ignore[arg-type]
    return requests_.open(workspace, profile_id, message, actor="cred-dsr")


def steps(request: pb.SubjectRequest) -> dict[str, pb.RequestStep]:
    return {step.service: step for step in request.steps}


def states(request: pb.SubjectRequest) -> dict[str, int]:
    return {step.service: step.state for step in request.steps}


def stream_version(harness: Any, request: pb.SubjectRequest) -> int:
    return harness.store.stream_version(request_stream(request.workspace, request.request_id))


def read_request_rows(harness: Any) -> list[tuple[Any, ...]]:
    with harness.store.engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(sa.select(request_rows)))


# ------------------------------------------------------------------------------------------ deadlines


def test_add_month_is_a_calendar_month() -> None:
    assert add_month(datetime(2024, 1, 31, 9, tzinfo=UTC)) == datetime(2024, 2, 29, 9, tzinfo=UTC)
    assert add_month(datetime(2023, 1, 31, 9, tzinfo=UTC)) == datetime(2023, 2, 28, 9, tzinfo=UTC)
    assert add_month(datetime(2023, 12, 15, tzinfo=UTC)) == datetime(2024, 1, 15, tzinfo=UTC)
    assert add_month(datetime(2023, 3, 31, tzinfo=UTC)) == datetime(2023, 4, 30, tzinfo=UTC)
    assert add_month(datetime(2023, 4, 30, tzinfo=UTC)) == datetime(2023, 5, 30, tzinfo=UTC)


def test_gdpr_art12_3_deadline_one_month_extension_once_and_overdue_list(
    consent_on_both_databases: Any,
) -> None:
    harness = consent_on_both_databases
    clock = harness.clock
    requests_ = dsr(harness)
    clock.freeze(datetime(2024, 1, 31, 10, tzinfo=UTC))
    first = open_request(requests_, pb.REQUEST_TYPE_ACCESS, "p1")
    second = open_request(requests_, pb.REQUEST_TYPE_ACCESS, "p2")
    assert first.state == pb.REQUEST_STATE_OPEN and not first.extended
    assert first.received_at.ToDatetime(tzinfo=UTC) == datetime(2024, 1, 31, 10, tzinfo=UTC)
    assert first.due_at.ToDatetime(tzinfo=UTC) == datetime(2024, 2, 29, 10, tzinfo=UTC)  # a calendar month

    def overdue() -> list[str]:
        return [r.request_id for r in requests_.list_requests(WORKSPACE, overdue_only=True)]

    clock.freeze(datetime(2024, 2, 29, 9, 59, tzinfo=UTC))
    assert overdue() == []

    # Extension: 1 to 60 days, with the reason the person is told.
    for days in (0, 61):
        with pytest.raises(InvalidArgument, match="1 to 60 days"):
            requests_.extend(WORKSPACE, first.request_id, days, "complex request")
    with pytest.raises(InvalidArgument, match="reason"):
        requests_.extend(WORKSPACE, first.request_id, 30, "   ")
    extended = requests_.extend(WORKSPACE, first.request_id, 60, "the export spans five systems", "cred-dsr")
    assert extended.extended and extended.extension_reason == "the export spans five systems"
    assert extended.due_at.ToDatetime(tzinfo=UTC) == datetime(2024, 4, 29, 10, tzinfo=UTC)
    with pytest.raises(FailedPrecondition, match="at most once"):
        requests_.extend(WORKSPACE, first.request_id, 1, "once more")

    # Past the first month: the unextended one is overdue and can no longer be extended.
    clock.freeze(datetime(2024, 3, 1, tzinfo=UTC))
    assert overdue() == [second.request_id]
    with pytest.raises(FailedPrecondition, match="within the first month"):
        requests_.extend(WORKSPACE, second.request_id, 10, "late")
    clock.freeze(datetime(2024, 4, 29, 10, 0, 1, tzinfo=UTC))
    assert overdue() == [second.request_id, first.request_id]  # soonest due first

    # Answered requests are not overdue, whatever their date.
    requests_.refuse(WORKSPACE, second.request_id, "the requester could not be identified")
    assert overdue() == [first.request_id]
    listed = requests_.list_requests(WORKSPACE, state=pb.REQUEST_STATE_REFUSED)
    assert [r.request_id for r in listed] == [second.request_id]
    assert listed[0].refusal_reason == "the requester could not be identified"
    # The listing comes from the read model, which equals a replay of the log.
    live = read_request_rows(harness)
    Projector(harness.store, [harness.projection]).rebuild(harness.projection)
    assert read_request_rows(harness) == live
    # Another workspace sees none of it.
    assert requests_.list_requests("globex") == []
    with pytest.raises(NotFound):
        requests_.get("globex", first.request_id)


def test_pipl_art50_refusal_requires_a_reason(consent_on_both_databases: Any) -> None:
    harness = consent_on_both_databases
    requests_ = dsr(harness)
    opened = open_request(requests_, pb.REQUEST_TYPE_ERASURE)
    for blank in ("", "  \n"):
        with pytest.raises(InvalidArgument, match=r"PIPL Art\. 50"):
            requests_.refuse(WORKSPACE, opened.request_id, blank)
    with pytest.raises(InvalidArgument, match="at most"):
        requests_.refuse(WORKSPACE, opened.request_id, "x" * 2001)
    assert requests_.get(WORKSPACE, opened.request_id).state == pb.REQUEST_STATE_OPEN

    refused = requests_.refuse(
        WORKSPACE, opened.request_id, " manifestly unfounded: a repeat of last week's "
    )
    assert refused.state == pb.REQUEST_STATE_REFUSED
    assert refused.refusal_reason == "manifestly unfounded: a repeat of last week's"
    assert refused.HasField("completed_at") and not refused.completion_record
    assert requests_.get(WORKSPACE, opened.request_id) == refused
    with pytest.raises(FailedPrecondition, match="refused"):
        requests_.refuse(WORKSPACE, opened.request_id, "again")
    with pytest.raises(FailedPrecondition, match="refused"):
        requests_.extend(WORKSPACE, opened.request_id, 10, "too late")


async def test_a_refused_request_is_not_carried_out(consent: Any) -> None:
    requests_ = dsr(consent)
    consent.grant("p1", "marketing")
    opened = open_request(requests_, pb.REQUEST_TYPE_ERASURE)
    requests_.refuse(WORKSPACE, opened.request_id, "the requester could not be identified")
    version = stream_version(consent, opened)
    after = await requests_.process(WORKSPACE, opened.request_id)
    assert after.state == pb.REQUEST_STATE_REFUSED and stream_version(consent, opened) == version
    assert consent.check("p1", "marketing").decision == pb.DECISION_ALLOW  # nothing was erased


# ------------------------------------------------------------------------------------------ restriction


def test_gdpr_art18_pipl_art44_restriction_makes_checks_deny_restricted(
    consent_on_both_databases: Any,
) -> None:
    harness = consent_on_both_databases
    requests_ = dsr(harness)
    harness.grant("p1", "marketing")
    assert harness.check("p1", "marketing").decision == pb.DECISION_ALLOW
    with pytest.raises(InvalidArgument, match="restrict is only"):
        open_request(requests_, pb.REQUEST_TYPE_ACCESS, restrict=True)

    restricted = open_request(requests_, pb.REQUEST_TYPE_RESTRICTION, restrict=True)
    # Applied and completed in the transaction that recorded it.
    assert restricted.state == pb.REQUEST_STATE_COMPLETED
    assert states(restricted) == {"consent": DONE, **{s: NA for s in SERVICES if s != "consent"}}
    assert "CheckConsent" in json.loads(steps(restricted)["segments"].confirmation)["not_applicable"]
    outcome = harness.check("p1", "marketing")
    assert (outcome.decision, outcome.reason) == (pb.DECISION_DENY, pb.DECISION_REASON_RESTRICTED)
    assert "GDPR Art. 18" in outcome.explanation
    evidence = next(e for e, m in harness.ledger("p1") if e.event_id == outcome.evidence.event_id)
    message = harness.store.decode(evidence)
    assert isinstance(message, pb.RestrictionSet) and message.request_id == restricted.request_id

    # The signed completion record names every service's confirmation.
    record = json.loads(restricted.completion_record)
    assert record["type"] == "restriction" and set(record["steps"]) == set(SERVICES)
    assert record["steps"]["consent"]["confirmation"]["restricted"] is True
    assert record["steps"]["consent"]["confirmation"]["ledger_event_id"] == evidence.event_id
    assert verify_signature(harness.kek, restricted.completion_record, restricted.completion_signature)
    tampered = restricted.completion_record.replace('"restricted":true', '"restricted":false')
    assert tampered != restricted.completion_record
    assert not verify_signature(harness.kek, tampered, restricted.completion_signature)
    assert requests_.get(WORKSPACE, restricted.request_id) == restricted

    lifted = open_request(requests_, pb.REQUEST_TYPE_RESTRICTION, restrict=False)
    assert lifted.state == pb.REQUEST_STATE_COMPLETED
    assert harness.check("p1", "marketing").decision == pb.DECISION_ALLOW


# ------------------------------------------------------------------------------------------ erasure


async def test_gdpr_art17_erasure_consent_part_at_once_unreachable_services_pending(
    consent_on_both_databases: Any,
) -> None:
    harness = consent_on_both_databases
    requests_ = dsr(harness)
    harness.grant("p1", "marketing", proof=harness.proof(ip_address="203.0.113.7", user_agent="Firefox"))
    opened = open_request(requests_, pb.REQUEST_TYPE_ERASURE)
    assert opened.state == pb.REQUEST_STATE_OPEN
    for service in PEER_SERVICES:
        assert "not reachable" in steps(opened)[service].last_error

    processed = await requests_.process(WORKSPACE, opened.request_id)
    by_service = steps(processed)
    assert by_service["consent"].state == DONE and by_service["consent"].attempts == 1
    assert json.loads(by_service["consent"].confirmation) == {"profiles_erased": ["p1"]}
    # Services nobody can reach here are pending, never done, so the request is not complete.
    for service in PEER_SERVICES:
        step = by_service[service]
        assert (step.state, step.attempts) == (PENDING, 0)
        assert f"peers.{service}" in step.last_error
    assert processed.state == pb.REQUEST_STATE_IN_PROGRESS and not processed.completion_record

    # Consent's part took effect: checks deny with ERASED, the proof is unreadable.
    outcome = harness.check("p1", "marketing")
    assert (outcome.decision, outcome.reason) == (pb.DECISION_DENY, pb.DECISION_REASON_ERASED)
    assert harness.store.is_erased(subject_of(WORKSPACE, "p1"))
    grant = next(m for _, m in harness.ledger("p1") if isinstance(m, pb.ConsentGranted))
    assert grant.proof.ip_address in ("", ERASED) and grant.proof.ip_address != "203.0.113.7"
    with pytest.raises(FailedPrecondition, match="erased"):
        harness.grant("p1", "analytics")

    # A retry changes nothing that cannot change: no new events, still in progress.
    version = stream_version(harness, opened)
    again = await requests_.process(WORKSPACE, opened.request_id)
    assert again == processed and stream_version(harness, opened) == version
    assert await requests_.tick() == []  # nothing due for the background loop either
    live = read_request_rows(harness)
    Projector(harness.store, [ConsentReadModel()]).rebuild(harness.projection)
    assert read_request_rows(harness) == live


async def test_erasure_retries_an_unreachable_identity_with_backoff(consent: Any) -> None:
    """A configured identity at an address nobody answers on: FAILED with UNAVAILABLE; the other
    services wait for its identifiers; the loop retries after the backoff, RetryRequest at once."""
    dead = f"127.0.0.1:{free_port()}"
    peers = Peers({"identity": dead, "ingest": dead}, "ofk_service_token")
    requests_ = dsr(consent, peers, retry_base_seconds=60, call_timeout_seconds=5)
    start = consent.clock.freeze(datetime(2025, 3, 3, 8, tzinfo=UTC))
    opened = open_request(requests_, pb.REQUEST_TYPE_ERASURE)
    assert steps(opened)["identity"].last_error == "" and steps(opened)["ingest"].last_error == ""

    first = await requests_.process(WORKSPACE, opened.request_id)
    identity, ingest = steps(first)["identity"], steps(first)["ingest"]
    assert (identity.state, identity.attempts) == (FAILED, 1)
    assert "UNAVAILABLE" in identity.last_error and "GetProfile" in identity.last_error
    assert (ingest.state, ingest.attempts) == (PENDING, 0)
    assert ingest.last_error.startswith(WAITING_FOR_IDENTIFIERS) and "UNAVAILABLE" in ingest.last_error
    assert steps(first)["consent"].state == DONE
    assert first.state == pb.REQUEST_STATE_IN_PROGRESS
    # No ErasureRequested yet: the identifiers are not known.
    types = [e.type for e in consent.store.read_stream(request_stream(WORKSPACE, opened.request_id))]
    assert pb.ErasureRequested.DESCRIPTOR.full_name not in types

    def attempts() -> int:
        return steps(requests_.get(WORKSPACE, opened.request_id))["identity"].attempts

    consent.clock.freeze(start + timedelta(seconds=59))
    assert await requests_.tick() == [] and attempts() == 1  # backoff 60 s: not yet
    consent.clock.freeze(start + timedelta(seconds=61))
    assert await requests_.tick() == [opened.request_id] and attempts() == 2
    consent.clock.freeze(start + timedelta(seconds=61 + 119))
    assert await requests_.tick() == [] and attempts() == 2  # doubled: 120 s
    consent.clock.freeze(start + timedelta(seconds=61 + 121))
    assert await requests_.tick() == [opened.request_id] and attempts() == 3
    # RetryRequest does not wait for the backoff, and never restarts the request.
    retried = await requests_.process(WORKSPACE, opened.request_id)
    assert steps(retried)["identity"].attempts == 4 and steps(retried)["consent"].attempts == 1
    assert retried.received_at == opened.received_at and retried.state == pb.REQUEST_STATE_IN_PROGRESS


def test_timings_backoff_doubles_up_to_the_cap() -> None:
    timings = Timings(retry_base_seconds=5, retry_max_seconds=60)
    assert [timings.backoff(n).total_seconds() for n in range(6)] == [0, 5, 10, 20, 40, 60]
    assert timings.backoff(500).total_seconds() == 60


# ------------------------------------------------------------------------------------------ access


async def test_gdpr_art15_access_consent_part_done_others_pending(consent: Any) -> None:
    requests_ = dsr(consent)
    consent.grant("p1", "marketing", channels=["email"])
    consent.withdraw("p1", "marketing", channels=["email"])
    opened = open_request(requests_, pb.REQUEST_TYPE_ACCESS)
    processed = await requests_.process(WORKSPACE, opened.request_id)
    assert json.loads(steps(processed)["consent"].confirmation) == {"consent_states": 1, "ledger_events": 2}
    assert {s: st for s, st in states(processed).items() if s != "consent"} == dict.fromkeys(
        PEER_SERVICES, PENDING
    )
    assert processed.state == pb.REQUEST_STATE_IN_PROGRESS and not processed.export
    # The consent part is held for the export, in memory only: nothing personal in the step.
    assert "203.0.113" not in steps(processed)["consent"].confirmation


class EveryPeerAnswers:
    """Stands in for PeerSteps: every service is reachable and holds nothing of the person."""

    def unreachable(self, service: str) -> str:
        return ""

    async def profile_identifiers(self, request: pb.SubjectRequest) -> list[Any]:
        return []

    async def call(self, service: str, request: pb.SubjectRequest, identifiers: Any) -> StepOutcome:
        return StepOutcome(DONE, {"held": 0}, part={"counts": {"held": 0}})


async def test_an_access_request_opened_before_a_service_was_added_completes_with_its_own_steps(
    consent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request in flight across an upgrade keeps the steps it was opened with: its export has a
    part per step, none for the service added since (which never held its data)."""
    before_destinations = tuple(s for s in SERVICES if s != "destinations")
    requests_ = dsr(consent)
    with monkeypatch.context() as older:
        older.setattr(subject_requests, "SERVICES", before_destinations)
        opened = open_request(requests_, pb.REQUEST_TYPE_ACCESS)
    requests_.requests.peer_steps = EveryPeerAnswers()  # type: ignore[assignment]
    completed = await requests_.process(WORKSPACE, opened.request_id)
    assert completed.state == pb.REQUEST_STATE_COMPLETED
    assert [step.service for step in completed.steps] == list(before_destinations)
    assert list(json.loads(completed.export)["services"]) == sorted(before_destinations)


def test_completion_record_is_canonical_json() -> None:
    request = pb.SubjectRequest(
        request_id="r1", workspace="acme", type=pb.REQUEST_TYPE_ERASURE, profile_id="p1"
    )
    request.received_at.FromDatetime(datetime(2025, 1, 1, tzinfo=UTC))
    request.due_at.FromDatetime(datetime(2025, 2, 1, tzinfo=UTC))
    step = request.steps.add(service="ingest", state=DONE, attempts=2, confirmation='{"events_affected": 3}')
    step.updated_at.FromDatetime(datetime(2025, 1, 2, tzinfo=UTC))
    record = completion_record(request, datetime(2025, 1, 2, tzinfo=UTC), b"{}")
    assert record == json.dumps(json.loads(record), sort_keys=True, separators=(",", ":"))
    parsed = json.loads(record)
    assert parsed["steps"]["ingest"] == {
        "state": "done",
        "attempts": 2,
        "updated_at": "2025-01-02T00:00:00+00:00",
        "confirmation": {"events_affected": 3},
    }
    assert parsed["export_sha256"] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


# ------------------------------------------------------------------------------------------ rectification


async def test_gdpr_art16_pipl_art46_rectification_is_recorded_and_waits_for_identity(consent: Any) -> None:
    requests_ = dsr(consent)
    for text, why in (
        ("", "names the corrections"),
        ("{not json", "not JSON"),
        ('["email"]', "JSON object"),
        ("{}", "at least one trait"),
    ):
        with pytest.raises(InvalidArgument, match=why):
            open_request(requests_, pb.REQUEST_TYPE_RECTIFICATION, rectification=text)
    with pytest.raises(InvalidArgument, match="only for rectification"):
        open_request(requests_, pb.REQUEST_TYPE_ERASURE, rectification='{"email": "x"}')

    opened = open_request(
        requests_,
        pb.REQUEST_TYPE_RECTIFICATION,
        rectification='{"email": "lee.new@example.com", "city": "Wuxi"}',
    )
    identity = steps(opened)["identity"]
    assert identity.state == PENDING and "not reachable" in identity.last_error
    assert all(st == NA for s, st in states(opened).items() if s != "identity")
    # Identity is not reachable from here: a pass and the loop leave it as it is — pending, never done.
    version = stream_version(consent, opened)
    assert (await requests_.process(WORKSPACE, opened.request_id)) == opened
    assert await requests_.tick() == [] and stream_version(consent, opened) == version
    got = requests_.get(WORKSPACE, opened.request_id)
    assert json.loads(got.rectification) == {"city": "Wuxi", "email": "lee.new@example.com"}
    # The corrections are personal data: encrypted in the log, absent from the read model.
    (event,) = consent.store.read_stream(request_stream(WORKSPACE, opened.request_id))
    assert b"lee.new@example.com" not in event.payload
    assert not any("lee.new" in str(value) for row in read_request_rows(consent) for value in row)


# ------------------------------------------------------------------------------------------ input


def test_requests_refuse_bad_input(consent: Any) -> None:
    requests_ = dsr(consent)
    with pytest.raises(InvalidArgument, match="type must be"):
        open_request(requests_, pb.REQUEST_TYPE_UNSPECIFIED)
    with pytest.raises(InvalidArgument, match="profile id"):
        open_request(requests_, pb.REQUEST_TYPE_ACCESS, "has space")
    for bad in ("", "a:b", "x" * 65):
        with pytest.raises(InvalidArgument, match="request id"):
            requests_.get(WORKSPACE, bad)
    with pytest.raises(NotFound):
        requests_.get(WORKSPACE, "0" * 32)


# ------------------------------------------------------------------------------------------ bootstrap


async def test_bootstrap_runs_the_retry_loop_while_started(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    """The composition `python -m onefold.consent` runs: start() starts the loop (on the leader),
    which retries a failed step by itself; stop() cancels it."""
    from onefold.consent.bootstrap import compose
    from onefold.eventlog.service import Loop
    from onefold.platform.auth import CredentialStore
    from onefold.platform.config import load_settings
    from onefold.platform.database import create_engine
    from onefold.platform.nats import NatsConnection
    from onefold.platform.service import ServiceContext

    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings(
        "consent",
        env={},
        data_dir=str(data),
        nats={**nats_server.client_settings("consent").model_dump(), "reconnect_wait_seconds": 0.1},
        auth={"cache_seconds": 0, "bootstrap_admin": False, "service_token": "ofk_service_token"},
        eventlog={"key_file": str(data / "keys" / "consent.kek")},
        peers={"identity": f"127.0.0.1:{free_port()}"},  # nobody answers there
        telemetry={"log_level": "WARNING"},
    )
    credentials = CredentialStore(settings.auth_database_url(), cache_seconds=0)
    credentials.create_schema()
    engine = create_engine(settings.database_url())
    nats_connection = NatsConnection(settings.nats, "consent-test")
    composition = compose(ServiceContext(settings, engine, credentials, nats_connection))
    composition.application.requests.timings = Timings(
        loop_interval_seconds=0.05, retry_base_seconds=0.1, retry_max_seconds=0.2
    )
    nats_connection.start()
    await composition.start()
    try:
        requests_ = composition.application.requests
        opened = await requests_.open(
            WORKSPACE, "p1", pb.OpenRequestRequest(type=pb.REQUEST_TYPE_ERASURE), actor="cred-dsr"
        )
        first = await requests_.process(WORKSPACE, opened.request_id)
        assert steps(first)["identity"].attempts == 1

        async def retried_by_the_loop() -> pb.RequestStep:
            while True:
                identity = steps(await requests_.get(WORKSPACE, opened.request_id))["identity"]
                if identity.attempts >= 3:
                    return identity
                await asyncio.sleep(0.05)

        async with asyncio.timeout(30):
            identity = await retried_by_the_loop()
        assert identity.state == FAILED and "UNAVAILABLE" in identity.last_error
        tasks = [loop.task for loop in composition.components if isinstance(loop, Loop)]
        assert len(tasks) == 2  # the request loop and the PIPL 47 duties
        assert all(task is not None and not task.done() for task in tasks)
    finally:
        await composition.stop()
        await nats_connection.close()
        engine.dispose()
        credentials.engine.dispose()
    assert all(task is not None and task.done() for task in tasks)
