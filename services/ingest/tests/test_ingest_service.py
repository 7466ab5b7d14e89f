"""Sources, write keys, workspace isolation, scopes and data-subject requests, through the real gRPC
server (and the application the HTTP API uses for write keys); the `ingest` settings section, through a
real `python -m onefold.ingest` process."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import test_ingest_grpc_harness as harness
from test_ingest_grpc_harness import ON_BOTH_DATABASES, Harness, event

from onefold.contracts.common.v1 import data_subject_pb2 as ds
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc
from onefold.eventlog import ERASED
from onefold.eventlog.projections import Projector
from onefold.ingest.adapters.read_model import IngestProjection
from onefold.ingest.application import IngestApplication
from onefold.ingest.settings import IngestSettings
from onefold.platform.auth import CredentialStore
from onefold.platform.errors import FailedPrecondition, Unauthenticated
from onefold.testing.processes import ServiceProcess

# The harness's fixtures, used by name below.
ingest = harness.ingest
shared_nats = harness.shared_nats


def export(*, user_ids: Sequence[str] = (), anonymous_ids: Sequence[str] = ()) -> ds.ExportSubjectRequest:
    return ds.ExportSubjectRequest(request_id="r-1", identifiers=named(user_ids, anonymous_ids))


def erase(*, user_ids: Sequence[str] = (), anonymous_ids: Sequence[str] = ()) -> ds.EraseSubjectRequest:
    return ds.EraseSubjectRequest(request_id="r-1", identifiers=named(user_ids, anonymous_ids))


def named(user_ids: Sequence[str], anonymous_ids: Sequence[str]) -> list[ds.SubjectIdentifier]:
    """The person as a data-subject request names them: typed (type, value) pairs."""
    return [ds.SubjectIdentifier(type="user_id", value=v) for v in user_ids] + [
        ds.SubjectIdentifier(type="anonymous_id", value=v) for v in anonymous_ids
    ]


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_sources_and_write_keys_are_events_and_keys_are_stored_hashed(ingest: Harness) -> None:
    admin = ingest.stub(ingest.admin_token)
    created = await admin.CreateSource(pb.CreateSourceRequest(name="Website", rate_limit_per_second=50))
    key, source = created.write_key, created.source
    assert key.startswith("ofw_") and source.write_key_hint == key[-4:] and source.rate_limit_per_second == 50
    assert source.workspace == ingest.workspace and source.created_at.seconds > 0
    assert ingest.app.source_for_write_key(key).source_id == source.source_id
    assert (await admin.GetSource(pb.GetSourceRequest(source_id=source.source_id))) == source
    for i in range(3):
        await admin.CreateSource(pb.CreateSourceRequest(name=f"app {i}"))
    first = await admin.ListSources(pb.ListSourcesRequest(page={"page_size": 3}))
    rest = await admin.ListSources(pb.ListSourcesRequest(page={"page_token": first.page.next_page_token}))
    assert len(first.sources) == 3 and len(rest.sources) == 1 and not rest.page.next_page_token

    # Rotation with a grace period: both keys work, then only the new one.
    rotated = await admin.RotateWriteKey(
        pb.RotateWriteKeyRequest(source_id=source.source_id, grace_seconds=3600)
    )
    new_key = rotated.write_key
    assert new_key != key and rotated.source.write_key_hint == new_key[-4:]
    assert ingest.app.source_for_write_key(key).source_id == source.source_id
    assert ingest.app.source_for_write_key(new_key).source_id == source.source_id
    real_clock = ingest.app.clock
    ingest.app.clock = lambda: real_clock() + timedelta(hours=2)
    try:
        with pytest.raises(Unauthenticated):
            ingest.app.source_for_write_key(key)
        assert ingest.app.source_for_write_key(new_key).source_id == source.source_id
    finally:
        ingest.app.clock = real_clock
    # Rotation without grace: the old key stops at once.
    third = (await admin.RotateWriteKey(pb.RotateWriteKeyRequest(source_id=source.source_id))).write_key
    with pytest.raises(Unauthenticated):
        ingest.app.source_for_write_key(new_key)
    with pytest.raises(Unauthenticated):
        ingest.app.source_for_write_key("ofw_" + "x" * 32)

    # Disable: write keys and gRPC collection are refused; disabling again is a no-op.
    disabled = await admin.DisableSource(pb.DisableSourceRequest(source_id=source.source_id))
    assert disabled.disabled
    assert (await admin.DisableSource(pb.DisableSourceRequest(source_id=source.source_id))).disabled
    with pytest.raises(FailedPrecondition):
        ingest.app.source_for_write_key(third)
    writer = ingest.stub(ingest.writer_token)
    code = await _code(writer.Track(pb.TrackRequest(event=event(user_id="u"), source_id=source.source_id)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION

    # The log holds the source's history; no key appears in clear anywhere in the database.
    types = [
        e.type.rsplit(".", 1)[-1]
        for e in ingest.store.iter_all()
        if e.stream_id == f"ingest-source:{source.source_id}"
    ]
    assert types == ["SourceCreated", "WriteKeyRotated", "WriteKeyRotated", "SourceDisabled"]
    ingest.store.checkpoint_wal()
    raw = (ingest.settings.data_dir / "ingest.db").read_bytes()
    for secret in (key, new_key, third):
        assert secret.encode() not in raw

    # The read model rebuilt from the log equals the live one.
    live = sorted(map(str, (ingest.app._sources[s].__dict__ for s in ingest.app._sources)))
    Projector(ingest.store, [IngestProjection()]).rebuild(IngestProjection())
    ingest.app._load_sources()
    rebuilt = sorted(map(str, (ingest.app._sources[s].__dict__ for s in ingest.app._sources)))
    assert rebuilt == live


async def test_auth_missing_wrong_scope_and_other_workspace(ingest: Harness) -> None:
    source = (await ingest.create_source()).source
    request = pb.TrackRequest(event=event(user_id="u"), source_id=source.source_id)
    assert await _code(ingest.stub().Track(request)) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await _code(ingest.stub("ofk_0123456789abcdef_" + "x" * 30).Track(request))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    reader = ingest.stub(ingest.token(["profiles:read"]))
    assert await _code(reader.Track(request)) == grpc.StatusCode.PERMISSION_DENIED
    writer = ingest.stub(ingest.writer_token)
    # Collection credentials cannot administer sources or read quarantine.
    assert (
        await _code(writer.CreateSource(pb.CreateSourceRequest(name="x")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await _code(writer.ListQuarantined(pb.ListQuarantinedRequest())) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await _code(ingest.data_subject(ingest.writer_token).EraseSubject(erase(user_ids=["u"])))
        == grpc.StatusCode.PERMISSION_DENIED
    )

    other = f"other-{uuid.uuid4().hex[:6]}"
    other_admin = ingest.stub(ingest.token(["admin"], other))
    other_writer = ingest.stub(ingest.token(["ingest:write"], other))
    # Another workspace's credential sees none of this workspace's sources.
    assert await _code(other_writer.Track(request)) == grpc.StatusCode.NOT_FOUND
    assert (
        await _code(other_admin.GetSource(pb.GetSourceRequest(source_id=source.source_id)))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (await other_admin.ListSources(pb.ListSourcesRequest())).sources == []
    for call in (
        other_admin.RotateWriteKey(pb.RotateWriteKeyRequest(source_id=source.source_id)),
        other_admin.DisableSource(pb.DisableSourceRequest(source_id=source.source_id)),
        other_admin.SetTrackingPlan(pb.SetTrackingPlanRequest(source_id=source.source_id, tracking_plan={})),
    ):
        assert await _code(call) == grpc.StatusCode.NOT_FOUND
    # Naming another workspace in the body is refused, not silently redirected.
    denied = other_admin.ListSources(pb.ListSourcesRequest(workspace=ingest.workspace))
    assert await _code(denied) == grpc.StatusCode.PERMISSION_DENIED
    denied = other_admin.CreateSource(pb.CreateSourceRequest(workspace=ingest.workspace, name="x"))
    assert await _code(denied) == grpc.StatusCode.PERMISSION_DENIED
    # Quarantine and DSR are scoped to the caller's workspace too.
    await ingest.stub(ingest.writer_token).Batch(
        pb.BatchRequest(
            source_id=source.source_id, events=[pb.TrackingEvent(type=pb.EVENT_TYPE_TRACK, event="x")]
        )
    )
    assert (
        len((await ingest.stub(ingest.admin_token).ListQuarantined(pb.ListQuarantinedRequest())).events) == 1
    )
    assert (await other_admin.ListQuarantined(pb.ListQuarantinedRequest())).events == []
    other_dsr = ingest.data_subject(ingest.token(["dsr:write"], other))
    exported = await other_dsr.ExportSubject(export(user_ids=["u"]))
    assert list(exported.events) == []
    # Missing source id is a clear INVALID_ARGUMENT.
    missing = writer.Track(pb.TrackRequest(event=event(user_id="u")))
    assert await _code(missing) == grpc.StatusCode.INVALID_ARGUMENT


@ON_BOTH_DATABASES
async def test_export_and_erase_a_data_subject(ingest: Harness) -> None:
    source = (await ingest.create_source()).source
    writer = ingest.stub(ingest.writer_token)
    dsr = ingest.data_subject(ingest.token(["dsr:write"]))
    mine = [
        event(anonymous_id="cookie-1", properties={"page": 1}),
        event(user_id="ada", anonymous_id="cookie-1", properties={"email": "ada@example.com"}),
        event(pb.EVENT_TYPE_IDENTIFY, user_id="ada", traits={"email": "ada@example.com"}),
    ]
    bad = pb.TrackingEvent(type=pb.EVENT_TYPE_TRACK, user_id="ada", message_id="m-bad")  # no event name
    others = [event(user_id="bob", properties={"email": "bob@example.com"})]
    result = await writer.Batch(pb.BatchRequest(source_id=source.source_id, events=[*mine, bad, *others]))
    assert (result.accepted, result.quarantined) == (4, 1)

    exported = await dsr.ExportSubject(export(user_ids=["ada"], anonymous_ids=["cookie-1"]))
    kinds = [e.type.rsplit(".", 1)[-1] for e in exported.events]
    assert kinds.count("EventAccepted") == 3 and kinds.count("EventQuarantined") == 1
    payloads = [
        pb.EventAccepted.FromString(e.payload) for e in exported.events if e.type.endswith("EventAccepted")
    ]
    assert {p.event.message_id for p in payloads} == {m.message_id for m in mine}
    assert any(dict(p.event.properties).get("email") == "ada@example.com" for p in payloads)
    assert dict(exported.counts) == {"events": 4, "erased_identifiers": 0}

    erasure = erase(user_ids=["ada"], anonymous_ids=["cookie-1"])
    erased = await dsr.EraseSubject(erasure)
    assert dict(erased.counts) == {"identifiers_erased": 2, "events_affected": 4}
    after = await dsr.ExportSubject(export(user_ids=["ada"], anonymous_ids=["cookie-1"]))
    assert after.counts["erased_identifiers"] == 2 and len(after.events) == 4
    for envelope in after.events:
        if envelope.type.endswith("EventAccepted"):
            accepted = pb.EventAccepted.FromString(envelope.payload)
            assert accepted.event.user_id in ("", ERASED) and accepted.event.anonymous_id in ("", ERASED)
            assert "email" not in accepted.event.properties or accepted.event.properties["email"] == ERASED
            assert accepted.event.message_id  # what happened stays; who it was is gone
    # Bob is untouched; the chain still verifies.
    bob = await dsr.ExportSubject(export(user_ids=["bob"]))
    assert pb.EventAccepted.FromString(bob.events[0].payload).event.properties["email"] == "bob@example.com"
    assert ingest.store.verify().ok

    # New events about an erased identifier are refused with a content-free quarantine record;
    # the other events of the same batch are accepted.
    again = await writer.Batch(
        pb.BatchRequest(source_id=source.source_id, events=[event(user_id="ada"), event(user_id="carol")])
    )
    assert [r.status for r in again.results] == [pb.ACK_STATUS_QUARANTINED, pb.ACK_STATUS_ACCEPTED]
    assert again.results[0].kind == pb.FAILURE_KIND_SUBJECT_ERASED
    # A request naming nobody is the caller's mistake; one naming the person only by identifiers
    # ingest does not file events under holds nothing here.
    assert await _code(dsr.ExportSubject(ds.ExportSubjectRequest())) == grpc.StatusCode.INVALID_ARGUMENT
    by_email = await dsr.ExportSubject(
        ds.ExportSubjectRequest(identifiers=[ds.SubjectIdentifier(type="email", value="ada@example.com")])
    )
    assert dict(by_email.counts) == {"events": 0, "erased_identifiers": 0} and not by_email.events


def test_the_ingest_settings_section_reaches_the_running_service(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    """`ONEFOLD_INGEST__*` in the environment of `python -m onefold.ingest`: a source created without
    its own rate gets the configured default, and the configured dedupe window is the one used."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    credentials = CredentialStore(f"sqlite:///{data_dir / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    metadata = (("authorization", f"Bearer {credentials.issue('tuned', ['admin']).token}"),)
    credentials.engine.dispose()
    service = start_service(
        "ingest",
        data_dir=data_dir,
        # A refill of one event per 1000 s: after the burst, the next event is over the limit.
        onefold_ingest__default_rate_limit_per_second="0.001",
        onefold_ingest__dedupe_window_seconds="0.001",
        onefold_ingest__linger_seconds="0",
    )
    with grpc.insecure_channel(service.target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        default = stub.CreateSource(pb.CreateSourceRequest(name="default rate"), metadata=metadata).source
        assert default.rate_limit_per_second == 0  # 0.001 per second, shown as "the service default"
        burst = [event(user_id=f"u{i % 10}") for i in range(2500)]  # the bucket's minimum: one full batch
        answer = stub.Batch(pb.BatchRequest(source_id=default.source_id, events=burst), metadata=metadata)
        assert answer.accepted == 2500
        with pytest.raises(grpc.RpcError) as caught:
            stub.Track(
                pb.TrackRequest(event=event(user_id="late"), source_id=default.source_id), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "rate limit of 0.001 events per second" in caught.value.details()  # type: ignore[attr-defined]

        # A source with its own rate is not limited by the default; its repeats are duplicates only
        # within the configured window of a millisecond.
        own = stub.CreateSource(
            pb.CreateSourceRequest(name="own rate", rate_limit_per_second=100_000), metadata=metadata
        ).source
        request = pb.TrackRequest(event=event(user_id="u"), source_id=own.source_id)
        assert stub.Track(request, metadata=metadata).status == pb.ACK_STATUS_ACCEPTED
        time.sleep(0.01)  # ten windows pass
        assert stub.Track(request, metadata=metadata).status == pb.ACK_STATUS_ACCEPTED
    assert service.stop() == 0

    # A bad value stops the service before it serves, with one sentence naming the key.
    bad = {**service.env(), "ONEFOLD_INGEST__DEDUPE_WINDOW_SECONDS": "0"}
    refused = subprocess.run(
        [sys.executable, "-m", "onefold.ingest"], env=bad, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "onefold-ingest: invalid configuration value for 'ingest.dedupe_window_seconds' in defaults "
        "and environment: Input should be greater than 0"
    ]


def test_the_settings_defaults_are_the_applications_defaults() -> None:
    """Composed without an `ingest` section, the service behaves as IngestApplication's defaults say."""
    defaults = IngestSettings()
    parameters = inspect.signature(IngestApplication).parameters
    assert timedelta(seconds=defaults.dedupe_window_seconds) == parameters["dedupe_window"].default
    assert defaults.default_rate_limit_per_second == parameters["default_rate_limit_per_second"].default
    assert defaults.max_group_events == parameters["max_group_events"].default
    assert defaults.linger_seconds == parameters["linger_seconds"].default
