"""The identity service as a real process behind a real ingest process and a real nats-server: events
sent to ingest's gRPC API travel through ingest's log, its relay and JetStream to identity's
subscriber, and come back out of identity's gRPC API. Each test works in a workspace of its own."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2

from onefold.contracts.common.v1 import data_subject_pb2 as ds
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.contracts.common.v1.pagination_pb2 import PageRequest
from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from onefold.eventlog import schema as eventlog_schema
from onefold.platform.auth import CredentialStore
from onefold.platform.database import create_engine
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.processes import ServiceProcess, peer_env

T = TypeVar("T")
RESOLVED = pb.EventResolved.DESCRIPTOR.full_name
DEADLINE_SECONDS = 60.0


@dataclass
class Services:
    data_dir: Path
    nats: NatsServerProcess
    ingest: ServiceProcess
    identity: ServiceProcess
    credentials: CredentialStore
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, name: str) -> grpc.Channel:
        if name not in self.channels:
            self.channels[name] = grpc.insecure_channel(getattr(self, name).target)
        return self.channels[name]

    def close_channels(self) -> None:
        """Before starting a process: forking while gRPC channels are active can hang the child."""
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()

    def token(self, workspace: str, *scopes: str) -> str:
        return self.credentials.issue(workspace, list(scopes)).token

    def identity_stub(self) -> identity_pb2_grpc.IdentityServiceStub:
        return identity_pb2_grpc.IdentityServiceStub(self.channel("identity"))

    def data_subject_stub(self) -> data_subject_pb2_grpc.DataSubjectServiceStub:
        return data_subject_pb2_grpc.DataSubjectServiceStub(self.channel("identity"))

    def ingest_stub(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.channel("ingest"))

    def resolved_event_ids(self) -> list[str]:
        """Ingest event ids of every EventResolved in identity's log (read as another process would;
        the ids are public fields, no key needed)."""
        engine = create_engine(f"sqlite:///{self.data_dir / 'identity.db'}")
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(eventlog_schema.events.c.payload).where(
                        eventlog_schema.events.c.type == RESOLVED
                    )
                )
                return [pb.EventResolved.FromString(bytes(payload)).event_id for (payload,) in rows]
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("identity-service")
    data = root / "data"
    data.mkdir()
    credentials = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    nats = NatsServerProcess(root / "nats")
    nats.start()
    quiet = {"ONEFOLD_AUTH__BOOTSTRAP_ADMIN": "false"}
    # One data dir, like `onefold up`: one credential store, a database and key file per service.
    ingest = ServiceProcess("ingest", data, nats, extra_env=quiet)
    identity = ServiceProcess("identity", data, nats, extra_env=quiet)
    started: list[ServiceProcess] = []
    services = Services(data, nats, ingest, identity, credentials)
    try:
        ingest.start()
        started.append(ingest)
        identity.extra_env.update(peer_env(data, [ingest]))
        identity.start()
        started.append(identity)
        yield services
    finally:
        services.close_channels()
        for service in reversed(started):
            service.stop()
        nats.stop()
        credentials.engine.dispose()


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = DEADLINE_SECONDS) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    return error.code(), error.details() or ""


@dataclass
class Workspace:
    """A workspace with an ingest source, and credentials to write events and read profiles."""

    name: str
    services: Services
    source_id: str
    writer: str
    reader: str
    admin: str

    def send(self, *events: ingest_pb2.TrackingEvent) -> list[str]:
        """Send a batch through ingest; every event must be accepted. Returns the message ids."""
        answer = self.services.ingest_stub().Batch(
            ingest_pb2.BatchRequest(source_id=self.source_id, events=list(events)), metadata=auth(self.writer)
        )
        assert answer.accepted == len(events), answer
        return [event.message_id for event in events]

    def identity(self, method: str, request: Any, token: str | None = None) -> Any:
        call = getattr(self.services.identity_stub(), method)
        return call(request, metadata=auth(token or self.reader), timeout=30)

    def profile(self, type_name: str, value: str, token: str | None = None) -> pb.Profile:
        request = pb.GetProfileRequest(profile=ref(type_name, value))
        return self.identity("GetProfile", request, token)

    def resolve(self, type_name: str, value: str) -> pb.ResolveResponse:
        identifier = pb.Identifier(type=type_name, value=value)
        return self.identity("Resolve", pb.ResolveRequest(identifier=identifier))

    def wait_profile(self, type_name: str, value: str, predicate: Callable[[pb.Profile], bool]) -> pb.Profile:
        def probe() -> pb.Profile | None:
            if not self.resolve(type_name, value).found:
                return None
            profile = self.profile(type_name, value)
            return profile if predicate(profile) else None

        return wait_for(probe, f"the profile of {type_name} {value}")


def ref(type_name: str, value: str) -> pb.ProfileRef:
    return pb.ProfileRef(identifier=pb.Identifier(type=type_name, value=value))


def track(**fields: Any) -> ingest_pb2.TrackingEvent:
    event = ingest_pb2.TrackingEvent(
        type=ingest_pb2.EVENT_TYPE_TRACK, message_id=uuid.uuid4().hex, event="Viewed"
    )
    context = fields.pop("context", None)
    for name, value in fields.items():
        setattr(event, name, value)
    if context:
        event.context.update(context)
    return event


def identify(traits: dict[str, Any], **fields: Any) -> ingest_pb2.TrackingEvent:
    event = ingest_pb2.TrackingEvent(
        type=ingest_pb2.EVENT_TYPE_IDENTIFY, message_id=uuid.uuid4().hex, **fields
    )
    event.traits.update(traits)
    return event


@pytest.fixture
def workspace(services: Services) -> Workspace:
    name = f"ws-{uuid.uuid4().hex[:8]}"
    admin = services.token(name, "admin")
    created = services.ingest_stub().CreateSource(
        ingest_pb2.CreateSourceRequest(name="web"), metadata=auth(admin)
    )
    return Workspace(
        name=name,
        services=services,
        source_id=created.source.source_id,
        writer=services.token(name, "ingest:write"),
        reader=services.token(name, "profiles:read"),
        admin=admin,
    )


# ------------------------------------------------------------------------------------------ tests


def test_events_sent_to_ingest_are_stitched_into_one_profile(workspace: Workspace) -> None:
    first = workspace.send(
        track(anonymous_id="cookie-1", context={"device": {"id": "laptop"}}),
        identify({"email": " Kim@Example.com ", "name": "Kim"}, anonymous_id="cookie-1", user_id="kim"),
    )
    second = workspace.send(
        track(anonymous_id="cookie-2", context={"device": {"id": "phone"}}),
        track(anonymous_id="cookie-2", user_id="kim", event="Logged In"),
    )
    profile = workspace.wait_profile("email", "kim@example.com", lambda p: p.event_count == 4)
    assert {(i.identifier.type, i.identifier.value) for i in profile.identifiers} == {
        ("user_id", "kim"),
        ("email", "kim@example.com"),
        ("device_id", "laptop"),
        ("device_id", "phone"),
        ("anonymous_id", "cookie-1"),
        ("anonymous_id", "cookie-2"),
    }
    assert len(profile.merged_profile_ids) == 1
    assert {t.name: t.value.string_value for t in profile.traits}["name"] == "Kim"
    assert all(t.source_id == workspace.source_id for t in profile.traits)
    by_cookie = workspace.profile("anonymous_id", "cookie-2")
    assert by_cookie.profile_id == profile.profile_id
    merged = workspace.identity(
        "GetProfile", pb.GetProfileRequest(profile=pb.ProfileRef(profile_id=profile.merged_profile_ids[0]))
    )
    assert (merged.profile_id, merged.redirected_from) == (profile.profile_id, profile.merged_profile_ids[0])
    timeline = workspace.identity(
        "ListTimeline", pb.ListTimelineRequest(profile=ref("user_id", "kim"), page=PageRequest(page_size=10))
    )
    assert [e.event.message_id for e in timeline.entries] == list(reversed(first + second))
    history = workspace.identity("GetMergeHistory", pb.GetMergeHistoryRequest(profile=ref("user_id", "kim")))
    assert [r.kind for r in history.records] == [pb.MergeRecord.KIND_MERGED]
    resolved = workspace.resolve("phone", "+86 138 0013 8000")
    assert not resolved.found and resolved.normalised.value == "+8613800138000"


def test_credentials_see_only_their_own_workspace_and_scope(services: Services, workspace: Workspace) -> None:
    workspace.send(identify({"email": "lee@example.com"}, user_id="lee"))
    mine = workspace.wait_profile("user_id", "lee", lambda p: p.event_count == 1)
    stub = services.identity_stub()
    request = pb.GetProfileRequest(profile=ref("user_id", "lee"))

    # No credential, or one that does not exist.
    assert code_of(lambda: stub.GetProfile(request))[0] == grpc.StatusCode.UNAUTHENTICATED
    bogus = auth("ofk_0123456789abcdef_" + "x" * 30)
    assert code_of(lambda: stub.GetProfile(request, metadata=bogus))[0] == grpc.StatusCode.UNAUTHENTICATED

    # Another workspace's credentials, even admin ones, never reach this workspace's profiles.
    other = f"other-{uuid.uuid4().hex[:6]}"
    outsider = auth(services.token(other, "admin"))
    by_id = pb.ProfileRef(profile_id=mine.profile_id)
    assert code_of(lambda: stub.GetProfile(request, metadata=outsider))[0] == grpc.StatusCode.NOT_FOUND
    code = code_of(lambda: stub.GetProfile(pb.GetProfileRequest(profile=by_id), metadata=outsider))[0]
    assert code == grpc.StatusCode.NOT_FOUND
    assert not stub.Resolve(
        pb.ResolveRequest(identifier=pb.Identifier(type="user_id", value="lee")), metadata=outsider
    ).found
    for call in (
        lambda: stub.ListTimeline(pb.ListTimelineRequest(profile=by_id), metadata=outsider),
        lambda: stub.GetMergeHistory(pb.GetMergeHistoryRequest(profile=by_id), metadata=outsider),
        lambda: stub.SetProtection(pb.SetProtectionRequest(profile=by_id, protected=True), metadata=outsider),
        lambda: stub.UnmergeProfile(
            pb.UnmergeProfileRequest(profile=by_id, event_id="x", reason="r"), metadata=outsider
        ),
    ):
        assert code_of(call)[0] == grpc.StatusCode.NOT_FOUND
    found = stub.SearchProfiles(
        pb.SearchProfilesRequest(trait="email", value=struct_pb2.Value(string_value="lee@example.com")),
        metadata=outsider,
    )
    assert list(found.profile_ids) == []
    data_subject = services.data_subject_stub()
    lee = [ds.SubjectIdentifier(type="user_id", value="lee")]
    exported = data_subject.ExportSubject(ds.ExportSubjectRequest(identifiers=lee), metadata=outsider)
    assert dict(exported.counts) == {"profiles": 0, "timeline": 0, "merges": 0}
    erased = data_subject.EraseSubject(ds.EraseSubjectRequest(identifiers=lee), metadata=outsider)
    assert list(erased.profile_ids) == [] and dict(erased.counts) == {"identifiers_unlinked": 0}
    assert workspace.profile("user_id", "lee") == mine  # untouched

    # The right workspace with the wrong scope.
    writer, reader = auth(workspace.writer), auth(workspace.reader)
    assert code_of(lambda: stub.GetProfile(request, metadata=writer))[0] == grpc.StatusCode.PERMISSION_DENIED
    for call in (
        lambda: stub.SetRules(pb.SetRulesRequest(rules=pb.IdentityRules()), metadata=reader),
        lambda: stub.MergeProfiles(
            pb.MergeProfilesRequest(survivor=by_id, merged=by_id, reason="r"), metadata=reader
        ),
        lambda: data_subject.EraseSubject(ds.EraseSubjectRequest(identifiers=lee), metadata=reader),
        lambda: data_subject.ExportSubject(ds.ExportSubjectRequest(identifiers=lee), metadata=reader),
    ):
        assert code_of(call)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert workspace.profile("user_id", "lee") == mine


def test_malformed_requests_are_invalid_argument_with_a_sentence(
    services: Services, workspace: Workspace
) -> None:
    stub = services.identity_stub()
    reader, admin = auth(workspace.reader), auth(workspace.admin)

    def resolve(type_name: str, value: str) -> Callable[[], Any]:
        identifier = pb.Identifier(type=type_name, value=value)
        return lambda: stub.Resolve(pb.ResolveRequest(identifier=identifier), metadata=reader)

    code, message = code_of(resolve("shoe_size", "42"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown identifier type 'shoe_size'" in message
    code, message = code_of(resolve("phone", "12"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "phone" in message and "12" not in message
    code, message = code_of(resolve("email", "   "))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no value" in message
    code, message = code_of(lambda: stub.GetProfile(pb.GetProfileRequest(), metadata=reader))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "profile_id or identifier" in message
    code, message = code_of(
        lambda: stub.ListTimeline(
            pb.ListTimelineRequest(
                profile=pb.ProfileRef(profile_id="p"), page=PageRequest(page_token="bogus")
            ),
            metadata=reader,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in message
    code, message = code_of(
        lambda: stub.SetRules(
            pb.SetRulesRequest(rules=pb.IdentityRules(default_phone_region="Mars")), metadata=admin
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "default_phone_region" in message
    code, message = code_of(
        lambda: stub.SetRules(
            pb.SetRulesRequest(rules=pb.IdentityRules(identifiers=[pb.IdentifierRule(type="Bad Type!")])),
            metadata=admin,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "identifiers[0].type" in message
    code, message = code_of(
        lambda: stub.MergeProfiles(
            pb.MergeProfilesRequest(
                survivor=pb.ProfileRef(profile_id="a"), merged=pb.ProfileRef(profile_id="b")
            ),
            metadata=admin,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in message
    # Bytes that are no protobuf message at all.
    channel = services.channel("identity")
    for method in (
        "onefold.identity.v1.IdentityService/GetProfile",
        "onefold.identity.v1.IdentityService/SetRules",
        "onefold.common.v1.DataSubjectService/EraseSubject",
    ):
        raw = channel.unary_unary(f"/{method}")
        code, message = code_of(
            functools.partial(raw, b"\xff\xff\xff\xff garbage", metadata=admin, timeout=10)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, message)
        assert message
    # The service is still fine afterwards.
    assert stub.GetRules(pb.GetRulesRequest(), metadata=reader).identifiers


def test_killed_mid_load_every_event_is_resolved_exactly_once(
    services: Services, workspace: Workspace
) -> None:
    users = 20
    batches = 12
    sent: list[str] = []

    def batch(number: int) -> list[ingest_pb2.TrackingEvent]:
        return [
            track(user_id=f"user-{i % users}", anonymous_id=f"cookie-{number}-{i}", event=f"Step {number}")
            for i in range(50)
        ]

    before = set(services.resolved_event_ids())
    for number in range(batches // 2):
        sent += workspace.send(*batch(number))
    # Identity is busy with the backlog: kill it without warning as soon as it has resolved some.
    wait_for(lambda: len(services.resolved_event_ids()) > len(before), "identity to resolve something")
    services.identity.kill()
    for number in range(batches // 2, batches):
        sent += workspace.send(*batch(number))  # ingest keeps accepting while identity is down
    services.close_channels()
    services.identity.start()
    total = len(sent)

    def all_resolved() -> list[str] | None:
        ids = [event_id for event_id in services.resolved_event_ids() if event_id not in before]
        return ids if len(ids) >= total else None

    resolved = wait_for(all_resolved, f"{total} events to be resolved")
    assert len(resolved) == total and len(set(resolved)) == total  # every event, each exactly once
    counts = [workspace.profile("user_id", f"user-{u}").event_count for u in range(users)]
    assert sum(counts) == total
    cookies = workspace.profile("user_id", "user-0")
    assert len(cookies.identifiers) == 1 + 5  # its user id and (the anonymous_id limit) five cookies
