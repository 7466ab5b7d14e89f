"""Malformed-message fuzz of the gRPC API against a real `python -m onefold.ingest` process: random
bytes for every method and random TrackingEvents through Track/Batch/Upload. Nothing may answer
INTERNAL or UNKNOWN, and the process must keep serving."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.platform.health import health_status
from onefold.testing.processes import ServiceProcess

SERVICE = "onefold.ingest.v1.IngestService"
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["IngestService"].methods]
# UNAVAILABLE too: only a failing database may answer it, and the fuzzed server's database is fine.
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Running:
    service: ServiceProcess
    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    source_id: str

    @property
    def stub(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.channel)


@pytest.fixture
def running(tmp_path: Path, start_service: Callable[..., ServiceProcess]) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    credentials = CredentialStore(f"sqlite:///{data_dir / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    token = credentials.issue("fuzz", ["admin"]).token
    credentials.engine.dispose()
    service = start_service("ingest", data_dir=data_dir)
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(service.target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        source = stub.CreateSource(
            pb.CreateSourceRequest(name="fuzz", rate_limit_per_second=10_000_000), metadata=metadata
        ).source
        yield Running(service, channel, metadata, source.source_id)
    assert service.process is not None and service.process.poll() is None, "the service crashed"
    assert health_status(service.target) == "SERVING"


def _check(call: Callable[[], object]) -> object:
    try:
        return call()
    except grpc.RpcError as error:
        assert error.code() not in BAD_CODES, (error.code(), error.details())  # type: ignore[attr-defined]
        return None


@FUZZ
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=3000))
def test_random_bytes_for_every_method(running: Running, method: str, body: bytes) -> None:
    if method == "Upload":
        call = running.channel.stream_unary(f"/{SERVICE}/{method}")
        _check(lambda: call(iter([body, body]), metadata=running.metadata, timeout=10))
    else:
        unary = running.channel.unary_unary(f"/{SERVICE}/{method}")
        _check(lambda: unary(body, metadata=running.metadata, timeout=10))


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**60), 2**60)
    | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(_text, _json, max_size=5)


def _struct(values: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    with contextlib.suppress(ValueError, TypeError):
        out.update(values)
    return out


_timestamp = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(-(2**40), 2**40),
    nanos=st.integers(0, 999_999_999),
)


@st.composite
def tracking_events(draw: st.DrawFn) -> pb.TrackingEvent:
    msg = pb.TrackingEvent(
        type=draw(st.integers(-3, 9)),
        message_id=draw(st.one_of(st.just(""), _text, st.text(min_size=90, max_size=200))),
        anonymous_id=draw(st.one_of(st.just(""), _text)),
        user_id=draw(st.one_of(st.just(""), _text, st.text(min_size=1000, max_size=1100))),
        previous_id=draw(_text),
        group_id=draw(_text),
        event=draw(_text),
        name=draw(_text),
        category=draw(_text),
        source_id=draw(_text),
    )
    for field in ("properties", "traits", "context", "integrations", "extra"):
        if draw(st.booleans()):
            getattr(msg, field).CopyFrom(_struct(draw(_objects)))
    for field in ("timestamp", "sent_at", "received_at", "original_timestamp"):
        if draw(st.booleans()):
            getattr(msg, field).CopyFrom(draw(_timestamp))
    if draw(st.booleans()):
        msg.consent.CopyFrom(
            pb.ConsentContext(purposes_granted=draw(st.lists(_text, max_size=3)), source=draw(_text))
        )
    return msg


@FUZZ
@given(events=st.lists(tracking_events(), min_size=1, max_size=6), single=st.booleans())
def test_random_tracking_events(running: Running, events: list[pb.TrackingEvent], single: bool) -> None:
    stub = running.stub
    if single:
        answer = _check(
            lambda: stub.Track(
                pb.TrackRequest(event=events[0], source_id=running.source_id),
                metadata=running.metadata,
                timeout=10,
            )
        )
        if answer is not None:
            assert isinstance(answer, pb.EventAck) and answer.status != pb.ACK_STATUS_UNSPECIFIED
        return
    batch = pb.BatchRequest(source_id=running.source_id, events=events)
    response = _check(lambda: stub.Batch(batch, metadata=running.metadata, timeout=10))
    if response is not None:
        assert isinstance(response, pb.BatchResponse) and len(response.results) == len(events)
        assert all(r.status != pb.ACK_STATUS_UNSPECIFIED for r in response.results)
    _check(lambda: stub.Upload(iter([batch, batch]), metadata=running.metadata, timeout=10))
