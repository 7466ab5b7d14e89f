"""The consent service as a real process (`python -m onefold.consent`, a real nats-server, SQLite in a
data directory), over gRPC: authentication, workspace isolation, scopes, malformed requests with
field details, batch checks, the audit service (as-of, history with evidence) and the event log's
Verify. One process serves the whole module; each test uses its own subjects."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.consent.v1 import consent_pb2_grpc
from onefold.contracts.eventlog.v1 import eventlog_pb2, eventlog_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.platform.auth import CredentialStore
from onefold.platform.errors import details_of
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.processes import ServiceProcess

ACME, GLOBEX = "acme", "globex"
NOTICE_TEXT = "privacy notice v1: marketing by email and sms"


def model(published: datetime) -> pb.ConsentModel:
    consent = {"PIPL": pb.LEGAL_BASIS_CONSENT, "GDPR": pb.LEGAL_BASIS_CONSENT}
    message = pb.ConsentModel(
        purposes=[
            pb.Purpose(purpose_id="marketing", kind=pb.PURPOSE_KIND_MARKETING, legal_bases=consent),
            pb.Purpose(purpose_id="analytics", kind=pb.PURPOSE_KIND_ANALYTICS, legal_bases=consent),
            pb.Purpose(purpose_id="health", kind=pb.PURPOSE_KIND_SENSITIVE, legal_bases={"PIPL": 1}),
        ],
        channels=["email", "sms"],
    )
    for notice_id, purposes in (("privacy", ["marketing", "analytics"]), ("sensitive", ["health"])):
        notice = message.notices.add(
            notice_id=notice_id,
            version="1",
            language="zh-CN",
            text_sha256=hashlib.sha256(NOTICE_TEXT.encode()).hexdigest(),
            purpose_ids=purposes,
        )
        notice.published_at.FromDatetime(published)
    return message


def subject(profile_id: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(profile_id=profile_id)


def stamp(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


@dataclass
class Running:
    service: ServiceProcess
    channel: grpc.Channel
    tokens: dict[str, str]

    def md(self, who: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.tokens[who]}")]

    def consent(self) -> consent_pb2_grpc.ConsentServiceStub:
        return consent_pb2_grpc.ConsentServiceStub(self.channel)

    def audit(self) -> consent_pb2_grpc.AuditServiceStub:
        return consent_pb2_grpc.AuditServiceStub(self.channel)

    def eventlog(self) -> eventlog_pb2_grpc.EventLogServiceStub:
        return eventlog_pb2_grpc.EventLogServiceStub(self.channel)

    def grant(self, who: str, profile_id: str, *purposes: str, channels: tuple[str, ...] = ("email",)):
        request = pb.GrantConsentRequest(
            subject=subject(profile_id),
            purpose_ids=list(purposes),
            channels=list(channels),
            proof=pb.Proof(
                notice_id="privacy",
                notice_version="1",
                jurisdiction=pb.JURISDICTION_PIPL,
                collection_point="app:settings",
                ip_address="198.51.100.23",
            ),
        )
        return self.consent().GrantConsent(request, metadata=self.md(who))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    nats = NatsServerProcess(tmp_path_factory.mktemp("nats"))
    nats.start()
    data = tmp_path_factory.mktemp("consent-data")
    service = ServiceProcess("consent", data, nats)
    try:
        service.start()
        store = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
        scopes = {
            "admin": (ACME, ["admin"]),
            "reader": (ACME, ["consent:read"]),
            "writer": (ACME, ["consent:read", "consent:write"]),
            "auditor": (ACME, ["audit:read"]),
            "globex_admin": (GLOBEX, ["admin"]),
            "globex": (GLOBEX, ["consent:read", "consent:write", "audit:read"]),
            "installation": ("default", ["admin", "installation:admin"]),  # as `onefold up`'s bootstrap admin
        }
        tokens = {
            name: store.issue(workspace, granted).token for name, (workspace, granted) in scopes.items()
        }
        store.engine.dispose()
        with grpc.insecure_channel(service.target) as channel:
            running = Running(service, channel, tokens)
            published = datetime.now(UTC) - timedelta(days=30)
            for who in ("admin", "globex_admin"):
                stored = running.consent().SetModel(
                    pb.SetModelRequest(model=model(published)), metadata=running.md(who)
                )
                assert stored.version >= 1
            yield running
    finally:
        service.stop()
        nats.stop()


def _fails(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def _profile() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def test_forged_or_missing_credentials_are_unauthenticated(running: Running) -> None:
    check = pb.CheckConsentRequest(subject=subject("p1"), purpose_id="marketing", channel="email")
    real = running.tokens["admin"]
    forged = [
        "ofk_0123456789abcdef_" + "x" * 43,  # well-formed, unknown
        real[: real.rindex("_") + 1]
        + "A" * (len(real) - real.rindex("_") - 1),  # a real id, a made-up secret
        "not-a-credential",
    ]
    calls = [
        (running.consent().CheckConsent, check),
        (
            running.consent().GrantConsent,
            pb.GrantConsentRequest(subject=subject("p1"), purpose_ids=["marketing"]),
        ),
        (running.audit().History, pb.HistoryRequest(subject=subject("p1"))),
        (running.eventlog().Verify, eventlog_pb2.VerifyRequest()),
    ]
    for call, request in calls:
        assert _fails(call, request).code() == grpc.StatusCode.UNAUTHENTICATED
        for token in forged:
            error = _fails(call, request, metadata=[("authorization", f"Bearer {token}")])
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert token not in (error.details() or "")


def test_another_workspace_never_sees_this_workspaces_consents(running: Running) -> None:
    profile = _profile()
    running.grant("writer", profile, "marketing")
    consent, audit = running.consent(), running.audit()
    check = pb.CheckConsentRequest(subject=subject(profile), purpose_id="marketing", channel="email")
    assert consent.CheckConsent(check, metadata=running.md("writer")).decision == pb.DECISION_ALLOW

    # The same profile id in globex: globex's own (empty) ledger answers.
    answer = consent.CheckConsent(check, metadata=running.md("globex"))
    assert (answer.decision, answer.reason) == (pb.DECISION_DENY, pb.DECISION_REASON_NO_CONSENT)
    assert not answer.HasField("evidence")
    batch = consent.CheckConsentBatch(
        pb.CheckConsentBatchRequest(checks=[check]), metadata=running.md("globex")
    )
    assert batch.results[0].reason == pb.DECISION_REASON_NO_CONSENT
    seen = consent.GetConsents(pb.GetConsentsRequest(subject=subject(profile)), metadata=running.md("globex"))
    assert (list(seen.states), list(seen.objections), seen.restricted) == ([], [], False)
    as_of = audit.ConsentAsOf(pb.ConsentAsOfRequest(subject=subject(profile)), metadata=running.md("globex"))
    assert (list(as_of.states), as_of.events_replayed) == ([], 0)
    error = _fails(audit.History, pb.HistoryRequest(subject=subject(profile)), metadata=running.md("globex"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Even globex's admin: admin reaches every scope of its own workspace only.
    assert consent.CheckConsent(check, metadata=running.md("globex_admin")).decision == pb.DECISION_DENY
    # Acme still sees its own.
    mine = consent.GetConsents(pb.GetConsentsRequest(subject=subject(profile)), metadata=running.md("reader"))
    assert [(s.purpose_id, s.channel, s.status) for s in mine.states] == [
        ("marketing", "email", pb.CONSENT_STATUS_GRANTED)
    ]


def test_scopes_are_enforced(running: Running) -> None:
    consent, audit, eventlog = running.consent(), running.audit(), running.eventlog()
    grant = pb.GrantConsentRequest(subject=subject("p1"), purpose_ids=["marketing"])
    denied = [
        ("reader", consent.GrantConsent, grant),
        (
            "reader",
            consent.WithdrawConsent,
            pb.WithdrawConsentRequest(subject=subject("p1"), purpose_ids=["x"]),
        ),
        ("reader", consent.RecordObjection, pb.RecordObjectionRequest(subject=subject("p1"), purpose_id="x")),
        ("writer", consent.SetModel, pb.SetModelRequest(model=model(datetime.now(UTC)))),
        (
            "auditor",
            consent.CheckConsent,
            pb.CheckConsentRequest(subject=subject("p1"), purpose_id="marketing"),
        ),
        ("writer", audit.ConsentAsOf, pb.ConsentAsOfRequest(subject=subject("p1"))),
        ("writer", audit.History, pb.HistoryRequest(subject=subject("p1"))),
        ("writer", eventlog.Verify, eventlog_pb2.VerifyRequest()),
    ]
    for who, call, request in denied:
        error = _fails(call, request, metadata=running.md(who))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (who, call)
    # SetModel needs admin: the admin may (the same model again is a new version).
    before = consent.GetModel(pb.GetModelRequest(), metadata=running.md("reader"))
    stored = consent.SetModel(pb.SetModelRequest(model=before), metadata=running.md("admin"))
    assert stored.version == before.version + 1
    assert [p.purpose_id for p in stored.purposes] == ["marketing", "analytics", "health"]


def test_malformed_requests_are_invalid_argument_with_field_details(running: Running) -> None:
    consent = running.consent()
    md = running.md("writer")
    # Bytes that are not a CheckConsentRequest.
    raw = running.channel.unary_unary("/onefold.consent.v1.ConsentService/CheckConsent")
    error = _fails(raw, b"\xff\xff\xff\xff\x0f garbage", metadata=md)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    def violations(call, request) -> list[tuple[str, str]]:
        error = _fails(call, request, metadata=md)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        return details_of(error)[1]

    unknown = pb.CheckConsentRequest(subject=subject("p1"), purpose_id="lottery", channel="email")
    assert violations(consent.CheckConsent, unknown) == [("purpose_id", "unknown purpose")]
    error = _fails(consent.CheckConsent, unknown, metadata=md)
    assert "lottery" in (error.details() or "") and details_of(error)[0] == "VALIDATION_FAILED"
    grant = pb.GrantConsentRequest(subject=subject("p1"), purpose_ids=["lottery"])
    assert violations(consent.GrantConsent, grant) == [("purpose_ids", "unknown purpose")]
    fax = pb.CheckConsentRequest(subject=subject("p1"), purpose_id="marketing", channel="fax")
    assert violations(consent.CheckConsent, fax) == [("channel", "unknown channel")]
    no_subject = pb.CheckConsentRequest(purpose_id="marketing")
    assert violations(consent.CheckConsent, no_subject) == [("subject", "required")]
    future = pb.CheckConsentRequest(
        subject=subject("p1"), purpose_id="marketing", at=stamp(datetime.now(UTC) + timedelta(days=1))
    )
    assert violations(consent.CheckConsent, future) == [("at", "in the future")]
    as_of = pb.ConsentAsOfRequest(subject=subject("p1"), as_of=stamp(datetime.now(UTC) + timedelta(days=1)))
    error = _fails(running.audit().ConsentAsOf, as_of, metadata=running.md("auditor"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and details_of(error)[1] == [
        ("as_of", "in the future")
    ]
    too_many = pb.CheckConsentBatchRequest(checks=[pb.CheckConsentRequest()] * 1001)
    assert violations(consent.CheckConsentBatch, too_many)[0][0] == "checks"
    bad_model = model(datetime.now(UTC))
    bad_model.guardian_age["GDPR"] = 12
    error = _fails(consent.SetModel, pb.SetModelRequest(model=bad_model), metadata=running.md("admin"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and details_of(error)[1][0][0] == "guardian_age"
    # A rule of the law, not a malformed request: FAILED_PRECONDITION, with the field.
    bundled = pb.GrantConsentRequest(
        subject=subject("p1"),
        purpose_ids=["health", "marketing"],
        proof=pb.Proof(notice_id="sensitive", notice_version="1"),
    )
    error = _fails(consent.GrantConsent, bundled, metadata=md)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(error)[1] == [("purpose_ids", "separate consent required")]


def test_check_consent_batch_of_100(running: Running) -> None:
    profiles = [_profile() for _ in range(100)]
    for profile in profiles[::2]:
        running.grant("writer", profile, "marketing")
    checks = [
        pb.CheckConsentRequest(subject=subject(p), purpose_id="marketing", channel="email") for p in profiles
    ]
    answer = running.consent().CheckConsentBatch(
        pb.CheckConsentBatchRequest(checks=checks), metadata=running.md("reader")
    )
    assert [r.profile_id for r in answer.results] == profiles
    assert [r.decision for r in answer.results] == [pb.DECISION_ALLOW, pb.DECISION_DENY] * 50
    assert all(r.evidence.event_type == "onefold.consent.v1.ConsentGranted" for r in answer.results[::2])
    assert {r.reason for r in answer.results[1::2]} == {pb.DECISION_REASON_NO_CONSENT}


def test_audit_as_of_and_history_answer_with_evidence(running: Running) -> None:
    profile = _profile()
    consent, audit = running.consent(), running.audit()
    granted = running.grant("writer", profile, "marketing")
    withdrawn = consent.WithdrawConsent(
        pb.WithdrawConsentRequest(subject=subject(profile), purpose_ids=["marketing"], channels=["email"]),
        metadata=running.md("writer"),
    )
    grant_evidence, withdraw_evidence = granted.recorded[0], withdrawn.recorded[0]
    assert granted.states[0].evidence == grant_evidence

    # Just before the withdrawal happened: granted, resting on the grant event.
    before = grant_evidence.occurred_at.ToDatetime(tzinfo=UTC)
    then = audit.ConsentAsOf(
        pb.ConsentAsOfRequest(subject=subject(profile), as_of=stamp(before)), metadata=running.md("auditor")
    )
    assert [(s.status, s.evidence.event_id) for s in then.states] == [
        (pb.CONSENT_STATUS_GRANTED, grant_evidence.event_id)
    ]
    assert then.events_replayed == 1 and then.states[0].evidence.hash == grant_evidence.hash
    # What the ledger knew when the grant was recorded, and now.
    known = audit.ConsentAsOf(
        pb.ConsentAsOfRequest(subject=subject(profile), known_at=grant_evidence.recorded_at),
        metadata=running.md("auditor"),
    )
    assert [s.status for s in known.states] == [pb.CONSENT_STATUS_GRANTED]
    now = audit.ConsentAsOf(pb.ConsentAsOfRequest(subject=subject(profile)), metadata=running.md("auditor"))
    assert [(s.status, s.evidence.event_id) for s in now.states] == [
        (pb.CONSENT_STATUS_WITHDRAWN, withdraw_evidence.event_id)
    ]
    # A check at that time agrees and names its evidence.
    check = pb.CheckConsentRequest(
        subject=subject(profile), purpose_id="marketing", channel="email", at=stamp(before)
    )
    assert running.consent().CheckConsent(check, metadata=running.md("reader")).evidence == grant_evidence

    history = audit.History(pb.HistoryRequest(subject=subject(profile)), metadata=running.md("auditor"))
    assert history.profile_id == profile
    assert [e.evidence.event_id for e in history.entries] == [
        grant_evidence.event_id,
        withdraw_evidence.event_id,
    ]
    assert history.entries[0].summary.startswith("granted marketing on email (notice privacy v1")
    assert history.entries[1].summary.startswith("withdrew marketing on email")
    event = history.entries[0].event
    assert event.type == "onefold.consent.v1.ConsentGranted" and event.hash == grant_evidence.hash
    decrypted = pb.ConsentGranted.FromString(event.payload)
    assert decrypted.proof.collection_point == "app:settings"
    assert decrypted.proof.ip_address == "198.51.100.23"  # auditors see the proof, decrypted
    assert decrypted.proof.text_sha256 == hashlib.sha256(NOTICE_TEXT.encode()).hexdigest()
    assert event.actor.id  # the credential that recorded it


def test_event_log_verify_reports_ok(running: Running) -> None:
    running.grant("writer", _profile(), "marketing", "analytics", channels=("email", "sms"))
    eventlog = running.eventlog()
    # The whole installation's log: a workspace's auditor or admin may not see it.
    for who in ("auditor", "admin"):
        for call, request in (
            (eventlog.Verify, eventlog_pb2.VerifyRequest()),
            (eventlog.Head, eventlog_pb2.HeadRequest()),
        ):
            error = _fails(call, request, metadata=running.md(who))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "installation:admin" in (error.details() or "")
    verified = eventlog.Verify(eventlog_pb2.VerifyRequest(), metadata=running.md("installation"))
    head = eventlog.Head(eventlog_pb2.HeadRequest(), metadata=running.md("installation"))
    assert verified.ok and verified.service == "consent" and not verified.problem
    assert verified.first_bad_position == 0
    assert verified.events_checked == verified.head_position >= 4
    assert (head.service, head.position, head.hash) == ("consent", verified.head_position, verified.head_hash)
