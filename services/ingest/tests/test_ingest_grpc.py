"""IngestService through the real gRPC server: every call type, batches, dedupe, tracking-plan modes,
quarantine and replay, upload, rate limits, and the relay to JetStream. Dedupe, quarantine and replay
run on SQLite and on PostgreSQL (@ON_BOTH_DATABASES)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import nats
import pytest
import test_ingest_grpc_harness as harness
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_ingest_grpc_harness import ON_BOTH_DATABASES, PRICE_SCHEMA, Harness, event, plan

from onefold.contracts.common.v1 import envelope_pb2
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.eventlog.keyaccess import LocalSubjectKeys, Unsealer
from onefold.eventlog.streams import stream_name
from onefold.platform.bus_permissions import ADMIN
from onefold.platform.errors import details_of
from onefold.platform.nats_server import NatsServerProcess

CALLS = [
    ("Track", pb.TrackRequest, pb.EVENT_TYPE_TRACK),
    ("Identify", pb.IdentifyRequest, pb.EVENT_TYPE_IDENTIFY),
    ("Page", pb.PageRequest, pb.EVENT_TYPE_PAGE),
    ("Screen", pb.ScreenRequest, pb.EVENT_TYPE_SCREEN),
    ("Group", pb.GroupRequest, pb.EVENT_TYPE_GROUP),
    ("Alias", pb.AliasRequest, pb.EVENT_TYPE_ALIAS),
]


# The harness's fixtures, used by name below.
ingest = harness.ingest
shared_nats = harness.shared_nats


async def test_each_call_type_is_accepted_and_recorded_per_person(ingest: Harness) -> None:
    source = (await ingest.create_source()).source
    stub = ingest.stub(ingest.writer_token)
    for method, request_class, kind in CALLS:
        extra = {"group_id": "acme-inc"} if kind == pb.EVENT_TYPE_GROUP else {}
        if kind == pb.EVENT_TYPE_ALIAS:
            extra = {"previous_id": "anon-old"}
        msg = event(
            kind,
            user_id="user-1",
            traits={"plan": "pro"} if kind == pb.EVENT_TYPE_IDENTIFY else None,
            **extra,
        )
        answer = await getattr(stub, method)(request_class(event=msg, source_id=source.source_id))
        assert answer.status == pb.ACK_STATUS_ACCEPTED, (method, answer)
        assert answer.message_id == msg.message_id
    accepted = ingest.accepted()
    assert [a.event.type for a in accepted] == [kind for _, _, kind in CALLS]
    assert {a.workspace for a in accepted} == {ingest.workspace}
    assert {a.source_id for a in accepted} == {source.source_id}
    assert all(a.event.received_at.seconds > 0 and a.user_id_index for a in accepted)
    # One stream per person; the identifier is never in clear outside the encrypted payload.
    events = [e for e in ingest.store.iter_all() if e.type.endswith("EventAccepted")]
    assert len({e.stream_id for e in events}) == 1
    assert events[0].stream_id == f"ingest:{events[0].subject}"
    assert events[0].metadata["partition_key"] == events[0].subject
    assert "user-1" not in events[0].stream_id and b"user-1" not in events[0].payload


@ON_BOTH_DATABASES
async def test_batch_answers_per_event_and_dedupes_within_and_across_batches(ingest: Harness) -> None:
    source = (await ingest.create_source()).source
    stub = ingest.stub(ingest.writer_token)
    repeated = event(user_id="u1")
    bad = pb.TrackingEvent(type=pb.EVENT_TYPE_TRACK, message_id="m-bad", event="x")  # no user/anonymous id
    batch = pb.BatchRequest(source_id=source.source_id, events=[repeated, event(user_id="u2"), repeated, bad])
    first = await stub.Batch(batch)
    assert [r.status for r in first.results] == [
        pb.ACK_STATUS_ACCEPTED,
        pb.ACK_STATUS_ACCEPTED,
        pb.ACK_STATUS_DUPLICATE,
        pb.ACK_STATUS_QUARANTINED,
    ]
    assert [r.index for r in first.results] == [0, 1, 2, 3]
    assert (first.accepted, first.duplicates, first.quarantined) == (2, 1, 1)
    assert first.results[3].kind == pb.FAILURE_KIND_PROTOCOL_VIOLATION and first.results[3].quarantine_id
    assert first.results[3].reasons and first.results[3].message_id == "m-bad"
    again = await stub.Batch(
        pb.BatchRequest(source_id=source.source_id, events=[repeated, event(user_id="u3")])
    )
    assert [r.status for r in again.results] == [pb.ACK_STATUS_DUPLICATE, pb.ACK_STATUS_ACCEPTED]
    ids = [a.event.message_id for a in ingest.accepted()]
    assert len(ids) == 3 and ids.count(repeated.message_id) == 1


@ON_BOTH_DATABASES
async def test_concurrent_duplicates_in_one_group_commit_are_accepted_once(ingest: Harness) -> None:
    source = (await ingest.create_source()).source
    stub = ingest.stub(ingest.writer_token)
    same = event(user_id="racer")
    answers = await asyncio.gather(
        *(stub.Track(pb.TrackRequest(event=same, source_id=source.source_id)) for _ in range(30))
    )
    statuses = [a.status for a in answers]
    assert statuses.count(pb.ACK_STATUS_ACCEPTED) == 1
    assert statuses.count(pb.ACK_STATUS_DUPLICATE) == 29
    assert [a.event.message_id for a in ingest.accepted()] == [same.message_id]
    # Many callers shared few transactions.
    assert ingest.app.group_commit.groups_committed < 30


@ON_BOTH_DATABASES
async def test_dedupe_window_expires(ingest: Harness) -> None:
    source = (await ingest.create_source()).source
    stub = ingest.stub(ingest.writer_token)
    msg = event(user_id="u1")
    request = pb.TrackRequest(event=msg, source_id=source.source_id)
    assert (await stub.Track(request)).status == pb.ACK_STATUS_ACCEPTED
    assert (await stub.Track(request)).status == pb.ACK_STATUS_DUPLICATE
    ingest.app.dedupe_window = __import__("datetime").timedelta(microseconds=1)
    await asyncio.sleep(0.01)
    assert (await stub.Track(request)).status == pb.ACK_STATUS_ACCEPTED


async def test_tracking_plan_modes(ingest: Harness) -> None:
    admin = ingest.stub(ingest.admin_token)
    stub = ingest.stub(ingest.writer_token)
    flagged = (
        await ingest.create_source("flag", plan(pb.PLAN_MODE_FLAG, **{"Order Completed": PRICE_SCHEMA}))
    ).source
    blocked = (
        await ingest.create_source(
            "block", plan(pb.PLAN_MODE_BLOCK, pb.PLAN_MODE_BLOCK, **{"Order Completed": PRICE_SCHEMA})
        )
    ).source
    allowed = (
        await ingest.create_source("allow", plan(pb.PLAN_MODE_ALLOW, **{"Order Completed": PRICE_SCHEMA}))
    ).source
    assert (
        blocked.tracking_plan.version == 1
        and blocked.tracking_plan.event_schemas["Order Completed"] == PRICE_SCHEMA
    )

    def order(price: object) -> pb.TrackingEvent:
        return event(user_id="u", name="Order Completed", properties={"price": price})

    async def track(source: pb.Source, msg: pb.TrackingEvent) -> pb.EventAck:
        return await stub.Track(pb.TrackRequest(event=msg, source_id=source.source_id))

    ok = await track(blocked, order(10))
    assert ok.status == pb.ACK_STATUS_ACCEPTED and not ok.reasons
    wrong = await track(blocked, order("ten"))
    assert wrong.status == pb.ACK_STATUS_QUARANTINED and wrong.kind == pb.FAILURE_KIND_SCHEMA_VIOLATION
    assert wrong.reasons[0].path == "/properties/price" and "ten" not in wrong.reasons[0].message
    unplanned = await track(blocked, event(user_id="u", name="Mystery"))
    assert unplanned.status == pb.ACK_STATUS_QUARANTINED and unplanned.kind == pb.FAILURE_KIND_UNPLANNED_EVENT
    flag = await track(flagged, order("ten"))
    assert flag.status == pb.ACK_STATUS_ACCEPTED and flag.reasons[0].rule == "type"
    assert (await track(allowed, order("ten"))).status == pb.ACK_STATUS_ACCEPTED
    stored = [a for a in ingest.accepted() if a.source_id == flagged.source_id]
    assert stored[0].violations[0].path == "/properties/price"
    # A plan whose schema is not JSON is refused with the schema named.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetTrackingPlan(
            pb.SetTrackingPlanRequest(source_id=allowed.source_id, tracking_plan=plan(**{"A": "{nope"}))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(caught.value)[1][0][0] == 'event_schemas["A"]'


@ON_BOTH_DATABASES
async def test_quarantine_list_pages_and_replay_after_fixing_the_plan(ingest: Harness) -> None:
    admin = ingest.stub(ingest.admin_token)
    stub = ingest.stub(ingest.writer_token)
    reader = ingest.stub(ingest.token(["audit:read"]))
    source = (await ingest.create_source("shop", plan(**{"Order Completed": PRICE_SCHEMA}))).source
    orders = [event(user_id=f"u{i}", name="Order Completed", properties={"price": "free"}) for i in range(5)]
    broken = pb.TrackingEvent(type=pb.EVENT_TYPE_TRACK, message_id="no-ids", event="Order Completed")
    result = await stub.Batch(pb.BatchRequest(source_id=source.source_id, events=[*orders, broken]))
    assert result.quarantined == 6

    listed: list[pb.QuarantinedEvent] = []
    token = ""
    while True:
        page = await reader.ListQuarantined(
            pb.ListQuarantinedRequest(page={"page_size": 4, "page_token": token})
        )
        listed.extend(page.events)
        token = page.page.next_page_token
        if not token:
            break
    assert len(listed) == 6 and len({q.quarantine_id for q in listed}) == 6
    assert listed[0].record.event.properties["price"] == "free"  # the record, decrypted for the reader
    assert listed[0].record.reasons[0].path == "/properties/price"
    schema_only = await reader.ListQuarantined(
        pb.ListQuarantinedRequest(kind=pb.FAILURE_KIND_SCHEMA_VIOLATION)
    )
    assert len(schema_only.events) == 5

    # Dry run changes nothing.
    dry = await stub.ReplayQuarantined(pb.ReplayQuarantinedRequest(source_id=source.source_id, dry_run=True))
    assert [r.status for r in dry.results].count(pb.ACK_STATUS_QUARANTINED) == 6
    # Fix the plan (price may be a string too), then replay everything.
    fixed = '{"type": "object", "required": ["price"]}'
    updated = await admin.SetTrackingPlan(
        pb.SetTrackingPlanRequest(
            source_id=source.source_id, tracking_plan=plan(**{"Order Completed": fixed})
        )
    )
    assert updated.tracking_plan.version == 2
    replay = await stub.ReplayQuarantined(pb.ReplayQuarantinedRequest(source_id=source.source_id))
    statuses = [r.status for r in replay.results]
    assert statuses.count(pb.ACK_STATUS_ACCEPTED) == 5 and statuses.count(pb.ACK_STATUS_QUARANTINED) == 1
    assert all(r.quarantine_id for r in replay.results)
    assert sorted(a.event.message_id for a in ingest.accepted()) == sorted(o.message_id for o in orders)
    # Idempotent: replaying again appends nothing, the broken one is still listed.
    again = await stub.ReplayQuarantined(
        pb.ReplayQuarantinedRequest(quarantine_ids=[q.quarantine_id for q in listed])
    )
    assert [r.status for r in again.results].count(pb.ACK_STATUS_ACCEPTED) == 5
    assert len(ingest.accepted()) == 5
    remaining = await reader.ListQuarantined(pb.ListQuarantinedRequest())
    assert len(remaining.events) == 1 and b"no-ids" in remaining.events[0].record.raw_json
    replayed_events = [e for e in ingest.store.iter_all() if e.type.endswith("QuarantineReplayed")]
    assert len(replayed_events) == 5 + 1 + 1  # five accepted once; the broken one tried twice
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayQuarantined(pb.ReplayQuarantinedRequest(quarantine_ids=["q_unknown"]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_upload_stream_counts_every_batch(ingest: Harness) -> None:
    source = (await ingest.create_source()).source
    stub = ingest.stub(ingest.writer_token)
    dup = event(user_id="u1")

    async def batches():  # type: ignore[no-untyped-def]
        yield pb.BatchRequest(source_id=source.source_id, events=[dup, event(user_id="u2")])
        yield pb.BatchRequest(events=[dup, pb.TrackingEvent(type=pb.EVENT_TYPE_TRACK, event="x")])
        yield pb.BatchRequest(events=[event(user_id=f"u{i}") for i in range(10)])

    response = await stub.Upload(batches())
    assert (response.accepted, response.duplicates, response.quarantined) == (12, 1, 1)
    assert sorted(a.index for a in response.not_accepted) == [2, 3]
    assert len(ingest.accepted()) == 12


async def test_rate_limit_answers_resource_exhausted_with_retry_info(ingest: Harness) -> None:
    source = (await ingest.create_source(rate=1)).source
    stub = ingest.stub(ingest.writer_token)
    still = ingest.app.clock()
    ingest.app.clock = lambda: still  # no refill while the burst is sent, however slow the machine
    events = [event(user_id=f"u{i}") for i in range(500)]
    for _ in range(5):  # a burst of one maximal batch (2,500 events) is allowed
        await stub.Batch(pb.BatchRequest(source_id=source.source_id, events=events))
        events = [event(user_id=f"u{i}") for i in range(500)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Track(pb.TrackRequest(event=event(user_id="late"), source_id=source.source_id))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "RetryInfo detail is present"
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert 0 < info.retry_delay.ToMilliseconds() <= 2000
    # Another source of the workspace has its own bucket.
    other = (await ingest.create_source("other")).source
    ok = await stub.Track(pb.TrackRequest(event=event(user_id="x"), source_id=other.source_id))
    assert ok.status == pb.ACK_STATUS_ACCEPTED


async def test_accepted_events_reach_jetstream_partitioned_by_person(
    ingest: Harness, shared_nats: NatsServerProcess
) -> None:
    source = (await ingest.create_source()).source
    stub = ingest.stub(ingest.writer_token)
    sent = [event(user_id=f"person-{i % 3}", properties={"n": i}) for i in range(30)]
    await stub.Batch(pb.BatchRequest(source_id=source.source_id, events=sent))
    client = await nats.connect(shared_nats.url, **shared_nats.connect_options(ADMIN))
    try:
        js = client.jetstream()
        subject = f"onefold.ingest.EventAccepted.{ingest.workspace}.>"
        received: list[tuple[str, envelope_pb2.EventEnvelope]] = []
        deadline = asyncio.get_running_loop().time() + 15
        subscription = await js.subscribe(subject, stream=stream_name("ingest"), ordered_consumer=True)
        while len(received) < 30 and asyncio.get_running_loop().time() < deadline:
            try:
                msg = await subscription.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                continue
            received.append((msg.subject, envelope_pb2.EventEnvelope.FromString(msg.data)))
        await subscription.unsubscribe()
    finally:
        await client.close()
    assert len(received) == 30
    # The bus carries the events sealed, as stored; a consumer opens them with ingest's keys.
    assert not any(b"person-" in envelope.payload for _subject, envelope in received)
    unsealer = Unsealer(LocalSubjectKeys(ingest.store))
    ciphers = await unsealer.ciphers_for([envelope for _subject, envelope in received])
    by_person: dict[str, set[str]] = {}
    order: dict[str, list[int]] = {}
    for subject, envelope in received:
        accepted = pb.EventAccepted.FromString(unsealer.open(envelope, ciphers).payload)
        person = accepted.event.user_id
        by_person.setdefault(person, set()).add(subject.rsplit(".", 1)[-1])
        order.setdefault(person, []).append(int(accepted.event.properties["n"]))
    assert all(len(partitions) == 1 for partitions in by_person.values())
    assert all(values == sorted(values) for values in order.values())


@ON_BOTH_DATABASES
async def test_ids_are_unique_per_workspace_not_global(ingest: Harness) -> None:
    """Dedupe is on (workspace, messageId): another workspace may reuse a messageId."""
    source = (await ingest.create_source()).source
    other_ws = f"other-{uuid.uuid4().hex[:6]}"
    other_admin = ingest.stub(ingest.token(["admin"], other_ws))
    other_source = (await other_admin.CreateSource(pb.CreateSourceRequest(name="web"))).source
    msg = event(user_id="u1")
    mine = await ingest.stub(ingest.writer_token).Track(
        pb.TrackRequest(event=msg, source_id=source.source_id)
    )
    theirs = await ingest.stub(ingest.token(["ingest:write"], other_ws)).Track(
        pb.TrackRequest(event=msg, source_id=other_source.source_id)
    )
    assert mine.status == theirs.status == pb.ACK_STATUS_ACCEPTED


@ON_BOTH_DATABASES
async def test_text_postgresql_cannot_hold_is_answered_alike_on_both_databases(ingest: Harness) -> None:
    """NUL (U+0000) cannot be stored in, or compared with, PostgreSQL text. A messageId holding it is
    a protocol violation (quarantined with the reason, not a retry-forever UNAVAILABLE), and ids or
    names holding it are refused or not found, as on SQLite."""
    admin = ingest.stub(ingest.admin_token)
    stub = ingest.stub(ingest.writer_token)
    source = (await ingest.create_source("shop", plan(**{"Order Completed": PRICE_SCHEMA}))).source
    blocked = event(user_id="u", message_id="m\x00", name="Order Completed", properties={"price": "x"})
    result = await stub.Batch(
        pb.BatchRequest(source_id=source.source_id, events=[event(user_id="a", message_id="a\x00b"), blocked])
    )
    assert [r.status for r in result.results] == [pb.ACK_STATUS_QUARANTINED] * 2
    assert {r.reasons[0].path for r in result.results} == {"/messageId"}
    assert all(r.kind == pb.FAILURE_KIND_PROTOCOL_VIOLATION for r in result.results)
    listed = await admin.ListQuarantined(pb.ListQuarantinedRequest(source_id=source.source_id))
    assert len(listed.events) == 2
    replayed = await stub.ReplayQuarantined(pb.ReplayQuarantinedRequest(source_id=source.source_id))
    assert [r.status for r in replayed.results] == [pb.ACK_STATUS_QUARANTINED] * 2

    async def code(call: object) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        return caught.value.code()

    missing = "src_\x00"
    assert await code(stub.Track(pb.TrackRequest(event=event(user_id="u"), source_id=missing))) == (
        grpc.StatusCode.NOT_FOUND
    )
    for call in (
        admin.GetSource(pb.GetSourceRequest(source_id=missing)),
        admin.RotateWriteKey(pb.RotateWriteKeyRequest(source_id=missing)),
        admin.DisableSource(pb.DisableSourceRequest(source_id=missing)),
        admin.SetTrackingPlan(pb.SetTrackingPlanRequest(source_id=missing, tracking_plan={})),
        stub.ReplayQuarantined(pb.ReplayQuarantinedRequest(quarantine_ids=["q_\x00"])),
    ):
        assert await code(call) == grpc.StatusCode.NOT_FOUND
    assert (await admin.ListQuarantined(pb.ListQuarantinedRequest(source_id=missing))).events == []
    assert (await stub.ReplayQuarantined(pb.ReplayQuarantinedRequest(source_id=missing))).results == []
    invalid = (
        admin.ListSources(pb.ListSourcesRequest(page={"page_token": "\x00"})),
        admin.CreateSource(pb.CreateSourceRequest(name="tab\x00name")),
    )
    for call in invalid:
        assert await code(call) == grpc.StatusCode.INVALID_ARGUMENT
