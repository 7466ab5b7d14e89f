"""Ingest acknowledges only what every consumer can decode.

A property test sends generated events (deep and wide JSON, odd keys and strings) through the real
HTTP and gRPC APIs of a running ingest, then reads every EventAccepted the log recorded and parses it
exactly as the consumers do: the bus envelope with `EventEnvelope.FromString`, its payload with
`EventAccepted.FromString` and the identifier extraction (identity's handler), and the event inside the deepest messages that
carry it onwards (identity's EventResolved, ListTimelineResponse, SubjectExport, and a
profile's traits). Every acknowledged event must be there and parse; nothing may fail.

Events nested deeper than MAX_NESTING_DEPTH are refused whole, 400 / INVALID_ARGUMENT, naming the
field path and the limit (they used to be acknowledged and then dead-lettered by identity).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import orjson
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ingest_grpc_harness import Harness, ingest, shared_nats  # noqa: F401

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc
from onefold.eventlog import EventStore
from onefold.identity.domain.identifiers import default_rules, extract
from onefold.ingest.domain import MAX_NESTING_DEPTH, parse_request
from onefold.ingest.entrypoints.http import HttpServer
from onefold.platform.errors import details_of

ACCEPTED = pb.EventAccepted.DESCRIPTOR.full_name
EXAMPLES = 120
IDENTITY_RULES = default_rules()

keys = st.text(max_size=12) | st.sampled_from(["a", "", "/", "~0", "a.b", "\x00", "é中😀", "0", "123"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=15,
)


@st.composite
def nested(draw: st.DrawFn, depth: int) -> Any:
    """A chain of `depth` objects/arrays (the outermost included), with random siblings on the way."""
    value: Any = draw(scalars)
    for _ in range(depth):
        if draw(st.booleans()):
            value = {draw(keys): value, **draw(st.dictionaries(keys, scalars, max_size=2))}
        else:
            value = [value, *draw(st.lists(scalars, max_size=2))]
    return value


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(["track", "identify", "page", "screen", "group"])),
        "userId": draw(st.text(min_size=1, max_size=20)),
        "event": draw(st.text(min_size=1, max_size=20)),
        "groupId": "g1",
    }
    for key in ("properties", "traits", "context"):
        if draw(st.booleans()):
            event[key] = draw(st.dictionaries(keys, json_values, max_size=4))
    # Nest one object anywhere up to a few levels past the limit: the event is level 1 and its
    # `traits` (or properties, context) level 2, so depth d here makes an event d + 1 deep.
    holder = draw(st.sampled_from(["properties", "traits", "context", "extraField"]))
    deep = draw(nested(draw(st.integers(1, MAX_NESTING_DEPTH + 3))))
    if isinstance(deep, dict):
        event[holder] = {**event.get(holder, {}), **deep} if holder != "extraField" else deep
    else:
        event[holder if holder == "extraField" else "properties"] = (
            deep if holder == "extraField" else {"list": deep}
        )
    return event


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def tracking_event(document: dict[str, Any]) -> pb.TrackingEvent | None:
    """The same event as a gRPC client sends it (None when a Struct cannot hold it)."""
    message = pb.TrackingEvent(user_id=document["userId"], event=document["event"], group_id="g1")
    message.type = pb.EventType.Value(f"EVENT_TYPE_{document['type'].upper()}")
    extra = {k: v for k, v in document.items() if k == "extraField"}
    try:
        for key in ("properties", "traits", "context"):
            if key in document:
                getattr(message, key).update(document[key])
        if extra:
            message.extra.update(extra)
    except (ValueError, TypeError):
        return None
    return message


def parse_as_every_consumer(store: EventStore, after: int) -> tuple[int, int]:
    """Every EventAccepted after `after`, parsed as each consumer parses it. (count, last position)"""
    count, last = 0, after
    for recorded in store.iter_all(after_position=after):
        last = recorded.position
        if recorded.type != ACCEPTED:
            continue
        envelope = EventEnvelope.FromString(store.to_envelope(recorded).SerializeToString())
        accepted = pb.EventAccepted.FromString(envelope.payload)  # identity's handle_accepted
        event = accepted.event
        extract(event, IDENTITY_RULES, lambda kind, value: f"{kind}:{value}")  # and its first step
        carriers = [
            identity_pb2.EventResolved(event_id=envelope.event_id, event=event),
            identity_pb2.ListTimelineResponse(entries=[identity_pb2.TimelineEntry(event=event)]),
            identity_pb2.SubjectExport(events=[identity_pb2.TimelineEntry(event=event)]),
            identity_pb2.TraitsUpdated(traits=event.traits),
            identity_pb2.SubjectExport(
                profiles=[
                    identity_pb2.Profile(
                        traits=[identity_pb2.Trait(name=k, value=v) for k, v in event.traits.fields.items()]
                    )
                ]
            ),
        ]
        for carrier in carriers:
            assert type(carrier).FromString(carrier.SerializeToString()) == carrier
        count += 1
    return count, last


def run_property(url: str, target: str, write_key: str, source_id: str, token: str, store: EventStore) -> int:
    """Blocking (hypothesis, httpx, a sync gRPC channel): runs in a thread beside the servers' loop."""
    seen = {"position": store.head_position(), "deepest": 0}
    auth = httpx.BasicAuth(write_key, "")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=st.lists(events(), min_size=1, max_size=4), via_grpc=st.booleans())
    def check(batch: list[dict[str, Any]], via_grpc: bool) -> None:
        acknowledged = 0
        messages = [tracking_event(document) for document in batch]
        if via_grpc and all(m is not None for m in messages):
            with grpc.insecure_channel(target) as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                try:
                    answer = stub.Batch(
                        pb.BatchRequest(source_id=source_id, events=messages),
                        metadata=(("authorization", f"Bearer {token}"),),
                    )
                    acknowledged = sum(r.status == pb.ACK_STATUS_ACCEPTED for r in answer.results)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()  # type: ignore[attr-defined]
                    assert max(depth_of(d) for d in batch) > MAX_NESTING_DEPTH
        else:
            response = httpx.post(f"{url}/v1/batch", json={"batch": batch}, auth=auth)
            if response.status_code == 400:
                assert max(depth_of(d) for d in batch) > MAX_NESTING_DEPTH, response.text
            else:
                assert response.status_code == 200, response.text
                acknowledged = response.json()["accepted"]
        if acknowledged:
            seen["deepest"] = max(seen["deepest"], max(depth_of(d) for d in batch))
        parsed, seen["position"] = parse_as_every_consumer(store, seen["position"])
        assert parsed == acknowledged  # every acknowledged event is recorded, and readable

    check()
    return seen["deepest"]


@pytest.mark.timeout(300)
async def test_every_event_ingest_acknowledges_parses_as_every_consumer_parses_it(ingest: Harness) -> None:  # noqa: F811
    created = await ingest.create_source("limits", rate=10_000_000)
    server = ingest.http
    assert isinstance(server, HttpServer)
    deepest = await asyncio.to_thread(
        run_property,
        server.url,
        ingest.target,
        created.write_key,
        created.source.source_id,
        ingest.writer_token,
        ingest.store,
    )
    assert deepest == MAX_NESTING_DEPTH  # the limit itself was reached and acknowledged


def chain(depth: int) -> dict[str, Any]:
    """`traits` nested so that the event is `depth` levels deep (the event itself is level 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 2):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 34])
async def test_http_refuses_a_batch_with_an_event_nested_too_deep_naming_the_path(
    ingest: Harness,  # noqa: F811
    depth: int,
) -> None:
    created = await ingest.create_source("deep")
    server = ingest.http
    assert isinstance(server, HttpServer)
    good = {"type": "identify", "userId": "u1", "traits": chain(MAX_NESTING_DEPTH)}
    deep = {"type": "identify", "userId": "u2", "traits": chain(depth)}
    async with httpx.AsyncClient(base_url=server.url, auth=httpx.BasicAuth(created.write_key, "")) as client:
        refused = await client.post("/v1/batch", json={"batch": [good, deep]})
        assert refused.status_code == 400
        body = refused.json()
        path = "batch[1].traits" + ".a" * (MAX_NESTING_DEPTH - 1)
        assert body["violations"][0]["field"] == path
        assert f"more than {MAX_NESTING_DEPTH} levels deep" in body["violations"][0]["description"]
        assert body["message"].startswith(path)
        assert ingest.accepted() == []  # nothing of the batch was acknowledged
        accepted = await client.post("/v1/batch", json={"batch": [good]})
        assert accepted.status_code == 200 and accepted.json()["accepted"] == 1
    assert parse_as_every_consumer(ingest.store, 0)[0] == 1


async def test_http_refuses_a_batch_context_nested_too_deep(ingest: Harness) -> None:  # noqa: F811
    created = await ingest.create_source("deep")
    server = ingest.http
    assert isinstance(server, HttpServer)
    context = chain(MAX_NESTING_DEPTH + 1)
    async with httpx.AsyncClient(base_url=server.url, auth=httpx.BasicAuth(created.write_key, "")) as client:
        refused = await client.post(
            "/v1/batch", json={"batch": [{"type": "track", "userId": "u", "event": "e"}], "context": context}
        )
    assert refused.status_code == 400
    assert refused.json()["violations"][0]["field"] == "context" + ".a" * (MAX_NESTING_DEPTH - 1)


async def test_grpc_track_refuses_an_event_nested_too_deep_naming_the_path(ingest: Harness) -> None:  # noqa: F811
    created = await ingest.create_source("deep")
    stub = ingest.stub(ingest.writer_token)
    event = pb.TrackingEvent(user_id="u1")
    event.traits.update(chain(MAX_NESTING_DEPTH + 1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Identify(pb.IdentifyRequest(event=event, source_id=created.source.source_id))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = details_of(refused.value)
    assert violations[0][0] == "event.traits" + ".a" * (MAX_NESTING_DEPTH - 1)
    # Within the limit the same call is acknowledged, and identity can read what was recorded.
    event.traits.Clear()
    event.traits.update(chain(MAX_NESTING_DEPTH))
    answer = await stub.Identify(pb.IdentifyRequest(event=event, source_id=created.source.source_id))
    assert answer.status == pb.ACK_STATUS_ACCEPTED
    assert parse_as_every_consumer(ingest.store, 0)[0] == 1


def test_a_struct_past_protobufs_own_depth_is_still_refused_before_any_consumer_sees_it() -> None:
    """Why the limit: a Struct at the depth the audit found (33 levels) no consumer can parse."""
    record = pb.EventAccepted()
    with contextlib.suppress(ValueError):
        record.event.traits.update(chain(35))
    with pytest.raises(DecodeError):
        pb.EventAccepted.FromString(record.SerializeToString())
    ok = pb.EventAccepted()
    ok.event.traits.update(chain(MAX_NESTING_DEPTH))
    assert pb.EventAccepted.FromString(ok.SerializeToString()) == ok
    assert isinstance(ok.event.traits, struct_pb2.Struct)


@pytest.mark.parametrize("timestamp", [[], "yesterday", True])
def test_a_malformed_timestamp_beside_original_timestamp_is_quarantined_not_ignored(
    timestamp: object,
) -> None:
    """originalTimestamp wins, but a `timestamp` no reader could use is not recorded unnoticed."""
    now = datetime.now(UTC)
    event = {"type": "track", "userId": "u1", "event": "e", "originalTimestamp": now.isoformat()}
    [intake] = parse_request(
        orjson.dumps({**event, "timestamp": timestamp}), "track", received_at=now
    ).intakes
    assert intake.event is None
    assert [v.path for v in intake.verdict.violations] == ["/timestamp"]
    [same] = parse_request(
        orjson.dumps({**event, "timestamp": now.isoformat()}), "track", received_at=now
    ).intakes
    assert same.event is not None and same.event.original_timestamp == now
