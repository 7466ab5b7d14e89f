"""The official Segment and RudderStack Python SDKs, unchanged, pointed at a real ingest service's
HTTP tracking API, with a real identity service and a real nats-server behind it.

segment-analytics-python sends identify traits as the top-level `traits`; rudder-sdk-python sends
them only in `context.traits`. Both must give a profile with every trait sent, normalised the same
way, and a tracking plan that requires `email` must judge both alike (docs/collection.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
import rudderstack.analytics as rudderstack_sdk
import segment.analytics as segment_sdk
from google.protobuf.json_format import MessageToDict

from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.platform.ports import free_port
from onefold.testing.processes import ServiceProcess

REQUIRES_EMAIL = '{"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}}'
# Reserved traits spelled as apps often send them, a nested one, and custom ones of several types.
# Each SDK's Ann has her own e-mail and phone: one shared would (rightly) link both to one profile.
SENT_TRAITS = {
    "first_name": "Ann",
    "lastName": "Lee",
    "address": {"city": "Berlin", "country": "DE"},
    "plan": "pro",
    "logins": 5,
    "beta": True,
}
STORED_TRAITS = {
    "firstName": "Ann",
    "lastName": "Lee",
    "address": {"city": "Berlin", "country": "DE"},
    "plan": "pro",
    "logins": 5,
    "beta": True,
}
SENT_CONTACT = {
    "segment": {"email": " Ann.Segment@Example.COM ", "phone": "+49 30 901820"},
    "rudderstack": {"email": " Ann.Rudder@Example.COM ", "phone": "+49 30 901821"},
}
STORED_CONTACT = {
    "segment": {"email": "ann.segment@example.com", "phone": "+4930901820"},
    "rudderstack": {"email": "ann.rudder@example.com", "phone": "+4930901821"},
}


class Sdk(Protocol):
    def identify(self, user_id: str | None = None, traits: dict[str, Any] | None = None) -> Any: ...

    def track(
        self, user_id: str | None = None, event: str | None = None, context: dict[str, Any] | None = None
    ) -> Any: ...


def _wait_for(probe: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_both_sdk_families_give_profiles_with_every_identify_trait(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    credentials = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    http_port = free_port()
    ingest = start_service(
        "ingest", data_dir=data, onefold_auth__bootstrap_admin="false", onefold_http__port=str(http_port)
    )
    identity = start_service("identity", data_dir=data, onefold_auth__bootstrap_admin="false")
    auth = (("authorization", f"Bearer {credentials.issue('acme', ['admin'], 'sdk test').token}"),)
    plan = ingest_pb2.TrackingPlan(mode=ingest_pb2.PLAN_MODE_BLOCK, identify_traits_schema=REQUIRES_EMAIL)
    with grpc.insecure_channel(ingest.target) as channel:
        created = ingest_pb2_grpc.IngestServiceStub(channel).CreateSource(
            ingest_pb2.CreateSourceRequest(name="apps", tracking_plan=plan), metadata=auth
        )

    # Both SDKs exactly as an app would configure them, but for the host; sync_mode posts each call
    # at once (to /v1/batch, as their background threads do) and raises unless the answer is 200.
    host = f"http://127.0.0.1:{http_port}"
    sdks: dict[str, Sdk] = {
        "segment": segment_sdk.Client(created.write_key, host=host, sync_mode=True, max_retries=0),
        "rudderstack": rudderstack_sdk.Client(created.write_key, host=host, sync_mode=True, max_retries=0),
    }
    for family, sdk in sdks.items():
        sdk.identify(f"{family}-ann", traits={**SENT_TRAITS, **SENT_CONTACT[family]})
        # context.traits on a track call describe the user then; they do not update the profile.
        sdk.track(f"{family}-ann", event="Plan Viewed", context={"traits": {"plan": "enterprise"}})
        sdk.identify(f"{family}-bob", traits={"plan": "free"})  # no email: the plan quarantines it

    with grpc.insecure_channel(identity.target) as channel:
        profiles = identity_pb2_grpc.IdentityServiceStub(channel)

        def profile(user_id: str) -> identity_pb2.Profile | None:
            identifier = identity_pb2.Identifier(type="user_id", value=user_id)
            if not profiles.Resolve(identity_pb2.ResolveRequest(identifier=identifier), metadata=auth).found:
                return None
            ref = identity_pb2.ProfileRef(identifier=identifier)
            return profiles.GetProfile(identity_pb2.GetProfileRequest(profile=ref), metadata=auth)

        def both_events_resolved(user_id: str) -> bool:
            found = profile(user_id)
            return found is not None and found.event_count == 2

        for family in sdks:
            _wait_for(lambda family=family: both_events_resolved(f"{family}-ann"), f"{family}'s profile")
            ann = profile(f"{family}-ann")
            assert ann is not None
            stored = {**STORED_TRAITS, **STORED_CONTACT[family]}
            assert {t.name: MessageToDict(t.value) for t in ann.traits} == stored, family
            assert {t.source_id for t in ann.traits} == {created.source.source_id}
            identifiers = {(i.identifier.type, i.identifier.value) for i in ann.identifiers}
            assert identifiers == {("user_id", f"{family}-ann"), *STORED_CONTACT[family].items()}

    # The plan refused the same call from both SDKs for the same reason, and nothing else.
    with grpc.insecure_channel(ingest.target) as channel:
        quarantined = ingest_pb2_grpc.IngestServiceStub(channel).ListQuarantined(
            ingest_pb2.ListQuarantinedRequest(source_id=created.source.source_id), metadata=auth
        )
    refusals = {
        item.record.event.user_id: [(r.path, r.rule) for r in item.record.reasons]
        for item in quarantined.events
    }
    assert refusals == {
        "segment-bob": [("/traits", "required")],
        "rudderstack-bob": [("/traits", "required")],
    }
