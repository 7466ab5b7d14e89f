"""Data-subject requests across real processes: a nats-server, ingest, identity, segments, journeys,
destinations, insights and consent (`python -m onefold.<name>`), one data dir and credential store as
`onefold up` makes them, consent calling the others' DataSubjectService with a service credential
(ONEFOLD_PEERS__*, ONEFOLD_AUTH__SERVICE_TOKEN).

A request completes only when all seven services answered: a service with no address configured, or
one that does not serve DataSubjectService (UNIMPLEMENTED; here consent's own port stands for such a
service), keeps its step PENDING and the request IN_PROGRESS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
import pytest

from onefold.consent.domain.subject_request import SERVICES, verify_signature
from onefold.contracts.common.v1 import data_subject_pb2, data_subject_pb2_grpc
from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.consent.v1 import consent_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from onefold.eventlog import KeyEncryptionKey
from onefold.platform.auth import CredentialStore
from onefold.platform.bus_permissions import ADMIN
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.processes import ServiceProcess, peer_env

T = TypeVar("T")
DEADLINE_SECONDS = 60.0
RPC_TIMEOUT = 60.0
PENDING, DONE, FAILED = pb.STEP_STATE_PENDING, pb.STEP_STATE_DONE, pb.STEP_STATE_FAILED


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = DEADLINE_SECONDS) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Stack:
    data: Path
    nats: NatsServerProcess
    ingest: ServiceProcess
    identity: ServiceProcess
    segments: ServiceProcess
    journeys: ServiceProcess
    destinations: ServiceProcess
    insights: ServiceProcess
    credentials: CredentialStore
    service_token: str
    consent: ServiceProcess | None = None
    channels: list[grpc.Channel] = field(default_factory=list)

    def start_consent(self, **peers: str) -> ServiceProcess:
        """(Re)start consent with these peers (name -> host:port), on the same port and data."""
        if self.consent is not None:
            self.consent.stop()
        env = {f"ONEFOLD_PEERS__{name.upper()}": target for name, target in peers.items()}
        env.update(
            {"ONEFOLD_AUTH__SERVICE_TOKEN": self.service_token, "ONEFOLD_AUTH__BOOTSTRAP_ADMIN": "false"}
        )
        port = self.consent.port if self.consent is not None else 0
        self.consent = ServiceProcess("consent", self.data, self.nats, port=port, extra_env=env)
        self.consent.start()
        return self.consent

    def channel(self, service: ServiceProcess) -> grpc.Channel:
        channel = grpc.insecure_channel(service.target)
        self.channels.append(channel)
        return channel


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("consent-requests")
    data = root / "data"
    data.mkdir()
    credentials = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    nats_server = NatsServerProcess(root / "nats")
    nats_server.start()
    quiet = {"ONEFOLD_AUTH__BOOTSTRAP_ADMIN": "false"}
    processes = [
        ServiceProcess(name, data, nats_server, extra_env=quiet)
        for name in ("ingest", "identity", "segments", "journeys", "destinations", "insights")
    ]
    started: list[ServiceProcess] = []
    built: Stack | None = None
    try:
        for process in processes:
            if process.name == "identity":  # it asks ingest for the keys of the events it consumes
                process.extra_env.update(peer_env(data, started[:1]))
            if process.name == "insights":  # it asks its upstreams for the keys of their events
                upstreams = [p for p in started if p.name in ("identity", "segments", "journeys")]
                process.extra_env.update(peer_env(data, upstreams))
            process.start()
            started.append(process)
        service_token = credentials.issue("*", ["service"], name="onefold services").token
        ingest, identity, segments, journeys, destinations, insights = processes
        built = Stack(
            data,
            nats_server,
            ingest,
            identity,
            segments,
            journeys,
            destinations,
            insights,
            credentials,
            service_token,
        )
        yield built
    finally:
        if built is not None:
            for channel in built.channels:
                channel.close()
            if built.consent is not None:
                built.consent.stop()
        for process in reversed(started):
            process.stop()
        nats_server.stop()
        credentials.engine.dispose()


@dataclass
class Workspace:
    name: str
    stack: Stack
    source_id: str
    tokens: dict[str, str]

    def ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.stack.channel(self.stack.ingest))

    def data_subject(self, service: ServiceProcess) -> data_subject_pb2_grpc.DataSubjectServiceStub:
        return data_subject_pb2_grpc.DataSubjectServiceStub(self.stack.channel(service))

    def identity(self) -> identity_pb2_grpc.IdentityServiceStub:
        return identity_pb2_grpc.IdentityServiceStub(self.stack.channel(self.stack.identity))

    def consent(self) -> consent_pb2_grpc.ConsentServiceStub:
        assert self.stack.consent is not None
        return consent_pb2_grpc.ConsentServiceStub(self.stack.channel(self.stack.consent))

    def call(self, stub: Any, method: str, request: Any, scope: str = "dsr:write") -> Any:
        return getattr(stub, method)(request, metadata=auth(self.tokens[scope]), timeout=RPC_TIMEOUT)

    def send_person(self, user_id: str, anonymous_id: str, email: str) -> str:
        """Identify + track through ingest; wait until identity made the profile; its id."""
        identify = ingest_pb2.TrackingEvent(
            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
            message_id=uuid.uuid4().hex,
            user_id=user_id,
            anonymous_id=anonymous_id,
        )
        identify.traits.update({"email": email, "name": f"{user_id} example"})
        track = ingest_pb2.TrackingEvent(
            type=ingest_pb2.EVENT_TYPE_TRACK,
            message_id=uuid.uuid4().hex,
            user_id=user_id,
            event="Order Completed",
        )
        track.properties.update({"total": 42})
        answer = self.call(
            self.ingest(),
            "Batch",
            ingest_pb2.BatchRequest(source_id=self.source_id, events=[identify, track]),
            "ingest:write",
        )
        assert answer.accepted == 2, answer
        lookup = identity_pb2.ResolveRequest(
            identifier=identity_pb2.Identifier(type="user_id", value=user_id)
        )

        def resolved() -> str | None:
            found = self.call(self.identity(), "Resolve", lookup, "profiles:read")
            if not found.found:
                return None
            profile = self.call(
                self.identity(),
                "GetProfile",
                identity_pb2.GetProfileRequest(profile=identity_pb2.ProfileRef(profile_id=found.profile_id)),
                "profiles:read",
            )
            return found.profile_id if profile.event_count >= 2 else None

        return wait_for(resolved, f"identity's profile of {user_id}")

    def set_model_and_grant(self, profile_id: str) -> None:
        published = datetime.now(UTC) - timedelta(days=1)
        model = pb.ConsentModel(
            purposes=[
                pb.Purpose(
                    purpose_id="marketing",
                    name="Marketing",
                    kind=pb.PURPOSE_KIND_MARKETING,
                    legal_bases={"PIPL": pb.LEGAL_BASIS_CONSENT, "GDPR": pb.LEGAL_BASIS_CONSENT},
                )
            ],
            channels=["email"],
            notices=[
                pb.Notice(
                    notice_id="privacy",
                    version="1",
                    language="zh-CN",
                    text_sha256=hashlib.sha256(b"privacy notice v1").hexdigest(),
                    purpose_ids=["marketing"],
                )
            ],
        )
        model.notices[0].published_at.FromDatetime(published)
        self.call(self.consent(), "SetModel", pb.SetModelRequest(model=model), "admin")
        proof = pb.Proof(
            notice_id="privacy",
            notice_version="1",
            jurisdiction=pb.JURISDICTION_PIPL,
            ip_address="198.51.100.4",
        )
        grant = pb.GrantConsentRequest(
            subject=identity_pb2.ProfileRef(profile_id=profile_id), purpose_ids=["marketing"], proof=proof
        )
        self.call(self.consent(), "GrantConsent", grant, "consent:write")

    def check(self, profile_id: str) -> pb.CheckConsentResponse:
        request = pb.CheckConsentRequest(
            subject=identity_pb2.ProfileRef(profile_id=profile_id), purpose_id="marketing", channel="email"
        )
        return self.call(self.consent(), "CheckConsent", request, "consent:read")


def make_workspace(stack: Stack) -> Workspace:
    name = f"ws-{uuid.uuid4().hex[:8]}"
    scopes = (
        "admin",
        "ingest:write",
        "profiles:read",
        "consent:read",
        "consent:write",
        "dsr:write",
        "audit:read",
    )
    tokens = {scope: stack.credentials.issue(name, [scope]).token for scope in scopes}
    created = ingest_pb2_grpc.IngestServiceStub(stack.channel(stack.ingest)).CreateSource(
        ingest_pb2.CreateSourceRequest(name="web"), metadata=auth(tokens["admin"]), timeout=RPC_TIMEOUT
    )
    return Workspace(name, stack, created.source.source_id, tokens)


def steps(request: pb.SubjectRequest) -> dict[str, pb.RequestStep]:
    return {step.service: step for step in request.steps}


def bus_erasure(nats_server: NatsServerProcess, workspace: str) -> tuple[bytes, pb.ErasureRequested] | None:
    """The ErasureRequested consent's relay published on the bus for `workspace` (the message as
    stored in the stream, and its payload as parsed without any key), if any yet."""

    async def fetch() -> tuple[bytes, pb.ErasureRequested] | None:
        client = await nats.connect(nats_server.url, **nats_server.connect_options(ADMIN))
        try:
            stream = client.jetstream()
            subscription = await stream.pull_subscribe(
                f"onefold.consent.ErasureRequested.{workspace}.>", stream="ONEFOLD_CONSENT"
            )
            try:
                messages = await subscription.fetch(1, timeout=1)
            except nats.errors.TimeoutError:
                return None
            envelope = EventEnvelope.FromString(messages[0].data)
            return messages[0].data, pb.ErasureRequested.FromString(envelope.payload)
        finally:
            await client.close()

    return asyncio.run(fetch())


def test_gdpr_art17_pipl_art47_erasure_saga_identity_down_then_back_journeys_pending_then_complete(
    stack: Stack,
) -> None:
    stack.start_consent(
        ingest=stack.ingest.target, identity=stack.identity.target, segments=stack.segments.target
    )
    ws = make_workspace(stack)
    profile_id = ws.send_person("lee", "cookie-lee", "lee@example.com")
    ws.set_model_and_grant(profile_id)
    assert ws.check(profile_id).decision == pb.DECISION_ALLOW

    # Identity is down when the request arrives.
    stack.identity.stop()
    try:
        opened = ws.call(
            ws.consent(),
            "OpenRequest",
            pb.OpenRequestRequest(
                type=pb.REQUEST_TYPE_ERASURE, subject=identity_pb2.ProfileRef(profile_id=profile_id)
            ),
        )
        by_service = steps(opened)
        assert opened.state == pb.REQUEST_STATE_IN_PROGRESS
        assert by_service["consent"].state == DONE  # consent's own part does not wait
        identity = by_service["identity"]
        assert identity.state == FAILED and identity.attempts >= 1 and "UNAVAILABLE" in identity.last_error
        for service in ("ingest", "segments"):  # they wait for the identifiers identity holds
            assert by_service[service].state == PENDING and by_service[service].attempts == 0
            assert "waiting for the subject's identifiers" in by_service[service].last_error
        for service in ("journeys", "destinations"):  # no address
            assert (
                by_service[service].state == PENDING and f"peers.{service}" in by_service[service].last_error
            )
        assert not opened.completion_record
        denied = ws.check(profile_id)
        assert (denied.decision, denied.reason) == (pb.DECISION_DENY, pb.DECISION_REASON_ERASED)
    finally:
        stack.identity.start()

    # Identity is back: a retry carries on (the background loop would too, after its backoff). The
    # first retries may still meet consent's channel in gRPC's reconnect backoff (UNAVAILABLE): retry
    # until identity answered, as an operator would.
    errors: list[str] = []

    def retry_until_identity_answers() -> pb.SubjectRequest | None:
        answer = ws.call(ws.consent(), "RetryRequest", pb.RetryRequestRequest(request_id=opened.request_id))
        if steps(answer)["identity"].state == DONE:
            return answer
        errors.append(steps(answer)["identity"].last_error)
        time.sleep(0.5)
        return None

    retried = wait_for(retry_until_identity_answers, "identity's step done after identity restarted")
    assert all("UNAVAILABLE" in error for error in errors), errors
    by_service = steps(retried)
    assert retried.request_id == opened.request_id and retried.received_at == opened.received_at
    answered = ("ingest", "identity", "consent", "segments")
    assert {s: by_service[s].state for s in answered} == dict.fromkeys(answered, DONE)
    assert by_service["consent"].attempts == 1  # done once, not redone
    assert json.loads(by_service["identity"].confirmation)["profile_ids"] == [profile_id]
    ingest_confirmation = json.loads(by_service["ingest"].confirmation)
    assert ingest_confirmation["identifiers_erased"] == 2 and ingest_confirmation["events_affected"] >= 2
    # No definitions: nothing to withdraw, but whatever it kept of the person (state, history) is gone.
    assert json.loads(by_service["segments"].confirmation) == {"outputs_withdrawn": 0, "profiles_erased": 1}
    # Journeys and destinations have no address: pending, never done, so the request is not complete.
    for service in ("journeys", "destinations"):
        assert by_service[service].state == PENDING and f"peers.{service}" in by_service[service].last_error
    assert retried.state == pb.REQUEST_STATE_IN_PROGRESS and not retried.completion_record
    assert [
        r.request_id for r in ws.call(ws.consent(), "ListRequests", pb.ListRequestsRequest()).requests
    ] == [opened.request_id]

    # The erasure happened in each service that answered.
    exported = ws.call(
        ws.data_subject(stack.ingest),
        "ExportSubject",
        data_subject_pb2.ExportSubjectRequest(
            identifiers=[data_subject_pb2.SubjectIdentifier(type="user_id", value="lee")]
        ),
    )
    assert exported.counts["erased_identifiers"] == 1
    assert b"lee@example.com" not in exported.SerializeToString()
    lookup = identity_pb2.ResolveRequest(identifier=identity_pb2.Identifier(type="user_id", value="lee"))
    assert not ws.call(ws.identity(), "Resolve", lookup, "profiles:read").found
    # ErasureRequested went out on the bus for every listening service: the identifiers sealed (a
    # service reads them with consent's key for the request), their keyed hashes in clear.
    raw, announced = wait_for(lambda: bus_erasure(stack.nats, ws.name), "ErasureRequested on the bus")
    assert announced.request_id == opened.request_id and announced.profile_id == profile_id
    assert not announced.identifiers and b"lee" not in raw
    assert len(announced.identifier_hashes) >= 2

    # Journeys' address now leads to a server that does not serve DataSubjectService (consent's own
    # port): UNIMPLEMENTED keeps the step pending. Destinations is reachable and answers meanwhile.
    assert stack.consent is not None
    not_serving = stack.consent.target
    stack.start_consent(
        ingest=stack.ingest.target,
        identity=stack.identity.target,
        segments=stack.segments.target,
        journeys=not_serving,
        destinations=stack.destinations.target,
        insights=stack.insights.target,
    )
    unanswered = ws.call(ws.consent(), "RetryRequest", pb.RetryRequestRequest(request_id=opened.request_id))
    journeys = steps(unanswered)["journeys"]
    assert journeys.state == PENDING and "UNIMPLEMENTED" in journeys.last_error
    assert steps(unanswered)["destinations"].state == DONE
    assert unanswered.state == pb.REQUEST_STATE_IN_PROGRESS

    # Journeys reachable: the retry completes the request.
    stack.start_consent(
        ingest=stack.ingest.target,
        identity=stack.identity.target,
        segments=stack.segments.target,
        journeys=stack.journeys.target,
        destinations=stack.destinations.target,
        insights=stack.insights.target,
    )
    completed = ws.call(ws.consent(), "RetryRequest", pb.RetryRequestRequest(request_id=opened.request_id))
    assert completed.state == pb.REQUEST_STATE_COMPLETED
    assert all(step.state == DONE for step in completed.steps)
    record = json.loads(completed.completion_record)
    assert record["type"] == "erasure" and record["profile_id"] == profile_id
    assert set(record["steps"]) == set(SERVICES)
    assert record["steps"]["ingest"]["confirmation"] == ingest_confirmation
    assert record["steps"]["identity"]["confirmation"]["profile_ids"] == [profile_id]
    assert record["steps"]["consent"]["confirmation"]["profiles_erased"] == [profile_id]
    assert record["steps"]["segments"]["confirmation"] == {"outputs_withdrawn": 0, "profiles_erased": 1}
    assert record["steps"]["journeys"]["confirmation"] == {
        "instances_stopped": 0,
        "sandbox_sends_erased": 0,
        "profiles_erased": 1,
    }
    assert record["steps"]["identity"]["attempts"] >= 2
    kek = KeyEncryptionKey.from_base64((stack.data / "keys" / "consent.kek").read_text())
    assert verify_signature(kek, completed.completion_record, completed.completion_signature)
    assert record["identifier_hashes"] == sorted(announced.identifier_hashes)
    # The request's own key is shredded with the person: the proof stays, the identifiers do not.
    kept = ws.call(ws.consent(), "GetRequest", pb.GetRequestRequest(request_id=opened.request_id))
    assert not kept.identifiers and kept.identifier_hashes == completed.identifier_hashes
    assert (kept.request_id, kept.type, kept.profile_id, kept.received_at, kept.due_at) == (
        completed.request_id,
        completed.type,
        completed.profile_id,
        completed.received_at,
        completed.due_at,
    )
    assert kept.completion_record == completed.completion_record and kept.steps == completed.steps
    assert verify_signature(kek, kept.completion_record, kept.completion_signature)
    with pytest.raises(grpc.RpcError) as caught:
        ws.call(ws.consent(), "RetryRequest", pb.RetryRequestRequest(request_id=opened.request_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_gdpr_art15_20_pipl_art45_access_export_assembled_from_every_service(stack: Stack) -> None:
    stack.start_consent(
        ingest=stack.ingest.target,
        identity=stack.identity.target,
        segments=stack.segments.target,
        journeys=stack.journeys.target,
        destinations=stack.destinations.target,
        insights=stack.insights.target,
    )
    ws = make_workspace(stack)
    profile_id = ws.send_person("kim", "cookie-kim", "kim@example.com")
    ws.set_model_and_grant(profile_id)
    by_identifier = identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type="user_id", value="kim"))
    request = pb.OpenRequestRequest(type=pb.REQUEST_TYPE_ACCESS, subject=by_identifier)

    # Scopes and workspaces: a consent reader may not, another workspace sees nothing.
    with pytest.raises(grpc.RpcError) as caught:
        ws.call(ws.consent(), "OpenRequest", request, "consent:read")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    completed = ws.call(ws.consent(), "OpenRequest", request)
    assert completed.state == pb.REQUEST_STATE_COMPLETED and completed.profile_id == profile_id
    document = json.loads(completed.export)
    assert document["format"] == "onefold.dsr.export/v1" and document["profile_id"] == profile_id
    services = document["services"]
    assert set(services) == set(SERVICES)
    names = {e["payload"]["event"].get("event") for e in services["ingest"]["events"]}
    assert "Order Completed" in names  # payloads decoded, not base64
    assert "kim@example.com" in json.dumps(services["ingest"])
    assert [p["profile_id"] for p in services["identity"]["records"]["profiles"]] == [profile_id]
    assert services["identity"]["counts"]["profiles"] == 1
    assert [s["purpose_id"] for s in services["consent"]["consents"]["states"]] == ["marketing"]
    assert services["consent"]["history"][0]["event"]["proof"]["ip_address"] == "198.51.100.4"
    # The person entered no journey here: journeys answers with each kind it holds, all none.
    assert services["journeys"] == {
        "counts": {"journey_instances": 0, "messages": 0, "profile_facts": 0, "sandbox_sends": 0}
    }
    # No destination is defined here: nothing was delivered of the person, so destinations holds none.
    assert not any(services["destinations"]["counts"].values())
    # Segments has no definitions here: no memberships, tags or values; only what it keeps to compute them.
    held = services["segments"]["counts"]
    assert {k: held.get(k, 0) for k in ("segments", "tags", "computed_traits")} == dict.fromkeys(
        ("segments", "tags", "computed_traits"), 0
    )
    assert set(held) <= {"segments", "tags", "computed_traits", "profile_states", "history_records"}
    record = json.loads(completed.completion_record)
    assert record["export_sha256"] == hashlib.sha256(completed.export).hexdigest()
    kek = KeyEncryptionKey.from_base64((stack.data / "keys" / "consent.kek").read_text())
    assert verify_signature(kek, completed.completion_record, completed.completion_signature)
    again = ws.call(ws.consent(), "GetRequest", pb.GetRequestRequest(request_id=completed.request_id))
    assert again.export == completed.export
    # The export is personal data: encrypted in consent's log.
    for file in stack.data.glob("consent.db*"):
        assert b"kim@example.com" not in file.read_bytes()

    # The audit history of the subject lists its requests beside its ledger.
    assert stack.consent is not None
    audit = consent_pb2_grpc.AuditServiceStub(stack.channel(stack.consent))
    history = ws.call(audit, "History", pb.HistoryRequest(subject=by_identifier), "audit:read")
    assert [r.request_id for r in history.requests] == [completed.request_id]
    assert not history.requests[0].export  # the listing holds no personal data

    other = make_workspace(stack)
    with pytest.raises(grpc.RpcError) as caught:
        other.call(other.consent(), "GetRequest", pb.GetRequestRequest(request_id=completed.request_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_gdpr_art16_pipl_art46_rectification_corrects_identity_traits(stack: Stack) -> None:
    """GDPR Art. 16 / PIPL Art. 46: the corrections reach identity, whose profile then shows them
    (identity is the only service holding traits; the others' steps are not applicable)."""
    stack.start_consent(ingest=stack.ingest.target, identity=stack.identity.target)
    ws = make_workspace(stack)
    profile_id = ws.send_person("lin", "cookie-lin", "lin@example.com")
    request = pb.OpenRequestRequest(
        type=pb.REQUEST_TYPE_RECTIFICATION,
        subject=identity_pb2.ProfileRef(profile_id=profile_id),
        rectification=json.dumps({"name": "Lin Corrected", "city": "Wuxi"}),
    )
    completed = ws.call(ws.consent(), "OpenRequest", request)
    assert completed.state == pb.REQUEST_STATE_COMPLETED, str(completed.steps)
    identity_step = steps(completed)["identity"]
    assert identity_step.state == pb.STEP_STATE_DONE
    assert json.loads(identity_step.confirmation)["traits_corrected"] == ["city", "name"]
    profile = ws.call(
        ws.identity(),
        "GetProfile",
        identity_pb2.GetProfileRequest(profile=identity_pb2.ProfileRef(profile_id=profile_id)),
        "profiles:read",
    )
    traits = {t.name: (t.value.string_value, t.source_id) for t in profile.traits}
    assert traits["name"] == ("Lin Corrected", f"rectification:{completed.request_id}")
    assert traits["city"][0] == "Wuxi"
    assert traits["email"][0] == "lin@example.com"  # what was not corrected stays


def plaintext_hits(root: Path, needles: Sequence[bytes]) -> list[str]:
    """Every file under `root` holding one of `needles` (as bytes, any case variant given)."""
    hits = []
    # os.walk, not Path.rglob: a running nats-server removes directories (compaction batches) while
    # they are listed, and os.walk passes over a vanished directory where rglob raises
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            path = Path(directory) / name
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed meanwhile, like the directories above
                continue
            hits.extend(f"{path.relative_to(root)}: {needle!r}" for needle in needles if needle in data)
    return hits


def copy_live(source: Path, target: Path) -> None:
    """A backup of a running installation: every file that exists while it is copied (temporary
    files and directories the servers remove meanwhile are skipped, as a backup tool would: os.walk
    passes over a directory that vanished while it was listed, where Path.rglob raises)."""
    for directory, _, names in os.walk(source):
        for name in names:
            path = Path(directory) / name
            copied = target / path.relative_to(source)
            copied.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(path, copied)


def stream_hits(nats_server: NatsServerProcess, needles: Sequence[bytes]) -> tuple[int, list[str]]:
    """(messages read, hits) over every message of every JetStream stream, headers included."""

    async def scan() -> tuple[int, list[str]]:
        client = await nats.connect(nats_server.url, **nats_server.connect_options(ADMIN))
        try:
            js = client.jetstream()
            read, hits = 0, []
            for stream in await js.streams_info():
                name = stream.config.name
                for sequence in range(max(stream.state.first_seq, 1), stream.state.last_seq + 1):
                    try:
                        msg = await js.get_msg(name, sequence)
                    except nats.js.errors.NotFoundError:
                        continue
                    read += 1
                    blob = (msg.data or b"") + json.dumps(msg.headers or {}).encode() + msg.subject.encode()
                    hits.extend(f"{name}#{sequence}: {needle!r}" for needle in needles if needle in blob)
            return read, hits
        finally:
            await client.close()

    return asyncio.run(scan())


def test_after_an_erasure_no_plaintext_of_the_person_is_left_in_any_file_or_stream(
    stack: Stack, tmp_path: Path
) -> None:
    """GDPR 17 / PIPL 47 end to end: the person's email, phone, name, ids and IP address, in every case
    variant, are nowhere in the data dir, the NATS store or any stream message once the erasure
    completed; and a copy of the data dir taken before the erasure holds none in clear either."""
    stack.start_consent(
        ingest=stack.ingest.target,
        identity=stack.identity.target,
        segments=stack.segments.target,
        journeys=stack.journeys.target,
        destinations=stack.destinations.target,
        insights=stack.insights.target,
    )
    ws = make_workspace(stack)
    person = {
        "email": "Scan.Person-7731@Example.com",
        "phone": "+8613800137731",
        "name": "Zhang Scanperson",
        "user_id": "scan-user-7731",
        "anonymous_id": "scan-cookie-7731",
        "ip": "203.0.113.177",
    }
    identify = ingest_pb2.TrackingEvent(
        type=ingest_pb2.EVENT_TYPE_IDENTIFY,
        message_id=uuid.uuid4().hex,
        user_id=person["user_id"],
        anonymous_id=person["anonymous_id"],
    )
    identify.traits.update({"email": person["email"], "phone": person["phone"], "name": person["name"]})
    identify.context.update({"ip": person["ip"]})
    answer = ws.call(
        ws.ingest(),
        "Batch",
        ingest_pb2.BatchRequest(source_id=ws.source_id, events=[identify]),
        "ingest:write",
    )
    assert answer.accepted == 1
    profile_id = ws.send_person(person["user_id"], person["anonymous_id"], person["email"])
    ws.set_model_and_grant(profile_id)
    needles = sorted(
        {variant.encode() for value in person.values() for variant in (value, value.lower(), value.upper())}
    )
    # Before: the person is in the system (identity resolves them), but nothing is at rest in clear.
    before = tmp_path / "copy-before-erasure"
    copy_live(stack.data.parent, before)
    assert plaintext_hits(before, needles) == []
    assert plaintext_hits(before, [ws.name.encode()])  # the scan does find what is stored in clear

    opened = ws.call(
        ws.consent(),
        "OpenRequest",
        pb.OpenRequestRequest(
            type=pb.REQUEST_TYPE_ERASURE, subject=identity_pb2.ProfileRef(profile_id=profile_id)
        ),
    )

    def completed() -> pb.SubjectRequest | None:
        answer = ws.call(ws.consent(), "RetryRequest", pb.RetryRequestRequest(request_id=opened.request_id))
        return answer if answer.state == pb.REQUEST_STATE_COMPLETED else None

    done = (
        opened if opened.state == pb.REQUEST_STATE_COMPLETED else wait_for(completed, "the erasure completed")
    )
    assert len(done.identifier_hashes) >= 2 and not done.identifiers

    assert plaintext_hits(stack.data.parent, needles) == []
    read, hits = stream_hits(stack.nats, needles)
    assert read > 0 and hits == []
