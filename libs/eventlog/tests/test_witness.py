"""The independent anchor: signed chain digests on the witness stream, cross-witnessing by consumers,
the start check, the conflict alarm and the subscribers' chain-link check.

A real nats-server and real SQLite logs holding each service's real event types. Every tamper is
done to the database file the way someone with write access to it would, then the log is verified
against what the witnesses hold (exactly what `EventLogService.Verify` does for `onefold audit verify`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError
from prometheus_client import REGISTRY
from sqlalchemy.engine import Connection

from onefold.consent.domain.events import REGISTRY as CONSENT_REGISTRY
from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventRegistry, EventStore, KeyEncryptionKey, NewEvent, schema
from onefold.eventlog import service as eventlog_service
from onefold.eventlog.chain import GENESIS_HASH, canonical_metadata, envelope_hash, event_hash
from onefold.eventlog.digests import (
    CHAIN_HEALTH_NAME,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    WITNESS_STREAM_LABEL,
    ChainDiverged,
    ChainSigner,
    DigestPublisher,
    SignedDigest,
    check_start,
    read_witness,
    witnessed_hashes,
)
from onefold.eventlog.relay import OutboxRelay
from onefold.eventlog.streams import (
    DLQ_STREAM,
    WITNESS_STREAM,
    StreamSettings,
    digest_subject,
    ensure_service_stream,
    ensure_stream,
    ensure_witness_stream,
    stream_name,
)
from onefold.eventlog.subscriber import DLQ_ERROR, Subscriber, SubscriberSettings
from onefold.identity.domain.events import REGISTRY as IDENTITY_REGISTRY
from onefold.ingest.domain.events import REGISTRY as INGEST_REGISTRY
from onefold.platform.auth import CredentialStore
from onefold.platform.config import load_settings
from onefold.platform.database import create_engine
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.service import ServiceContext

REGISTRIES: dict[str, Callable[[], EventRegistry]] = {
    "ingest": lambda: INGEST_REGISTRY,
    "identity": lambda: IDENTITY_REGISTRY,
    "consent": lambda: CONSENT_REGISTRY,
}
FAST = SubscriberSettings(batch_size=100, fetch_timeout_seconds=0.3, retry_backoff_seconds=0.01)


def sample_events(registry: EventRegistry, count: int, start: int = 0) -> list[NewEvent]:
    """`count` events cycling through every appendable type of `registry`, text fields filled in."""
    types = [registry.for_name(name) for name in sorted(registry.names())]
    types = [t for t in types if t.appendable]
    events = []
    for i in range(start, start + count):
        event_type = types[i % len(types)]
        message = event_type.message_class()
        for fd in message.DESCRIPTOR.fields:
            if fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated:
                # A blind-index field holds a keyed hash (hex); any other text field, readable text.
                text = f"{fd.number:04x}{i:012x}" if fd.name in event_type.blind_index else f"{fd.name}-{i}"
                setattr(message, fd.name, text)
        subject = f"person-{i % 3}" if event_type.pii.has_pii else ""
        events.append(NewEvent(f"stream-{i % 5}", message, subject=subject, workspace="ws-1"))
    return events


async def jetstream(nats: NatsConnection) -> JetStreamContext:
    return (await nats.wait_connected()).jetstream()


# -- tampering, as someone with write access to the database file ---------------------------------

_ROW = (
    "position, stream_version, schema_version, occurred_at, recorded_at, event_id, stream_id, type, "
    "workspace, subject, metadata, payload"
)


def rechain(db: sqlite3.Connection) -> None:
    """Recompute every prev_hash and hash, and the local digest table, as a careful attacker would."""
    rows = db.execute(f"SELECT {_ROW} FROM events ORDER BY position").fetchall()
    prev = GENESIS_HASH
    hashes = {}
    for position, version, schema_version, occurred, recorded, *texts, payload in rows:
        encoded = [text.encode() for text in texts]
        digest = event_hash(prev, position, version, schema_version, occurred, recorded, *encoded, payload)
        db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE position = ?", (prev, digest, position))
        hashes[position] = digest
        prev = digest
    for (position,) in db.execute("SELECT position FROM chain_digests").fetchall():
        if position in hashes:
            db.execute("UPDATE chain_digests SET hash = ? WHERE position = ?", (hashes[position], position))
        else:
            db.execute("DELETE FROM chain_digests WHERE position = ?", (position,))


def renumber(db: sqlite3.Connection, from_position: int, shift: int) -> None:
    """Move every row at or after `from_position` by `shift` (through negatives: positions are unique)."""
    db.execute("UPDATE events SET position = -(position + ?) WHERE position >= ?", (shift, from_position))
    db.execute("UPDATE events SET position = -position WHERE position < 0")


def flip_last_byte(db: sqlite3.Connection, position: int) -> None:
    (payload,) = db.execute("SELECT payload FROM events WHERE position = ?", (position,)).fetchone()
    altered = bytes(payload[:-1]) + bytes([payload[-1] ^ 0x01])
    db.execute("UPDATE events SET payload = ? WHERE position = ?", (altered, position))


def edit_payload(db: sqlite3.Connection, at: int) -> None:
    flip_last_byte(db, at)


def delete_middle(db: sqlite3.Connection, at: int) -> None:
    db.execute("DELETE FROM events WHERE position = ?", (at,))
    renumber(db, at + 1, -1)
    rechain(db)


def delete_tail_with_its_digest(db: sqlite3.Connection, at: int) -> None:
    db.execute("DELETE FROM events WHERE position >= ?", (at,))
    db.execute("DELETE FROM chain_digests WHERE position >= ?", (at,))
    db.execute("DELETE FROM relay_positions")


def consistent_rewrite(db: sqlite3.Connection, at: int) -> None:
    flip_last_byte(db, at)
    rechain(db)


def reorder_two(db: sqlite3.Connection, at: int) -> None:
    db.execute("UPDATE events SET position = -1 WHERE position = ?", (at,))
    db.execute("UPDATE events SET position = ? WHERE position = ?", (at, at + 1))
    db.execute("UPDATE events SET position = ? WHERE position = -1", (at + 1,))
    rechain(db)


def insert_row(db: sqlite3.Connection, at: int) -> None:
    renumber(db, at, 1)
    db.execute(
        f"INSERT INTO events ({_ROW}, prev_hash, hash) "
        f"SELECT ?, stream_version + 1000, schema_version, occurred_at, recorded_at, "
        f"'00000000-0000-7000-8000-000000000001', stream_id, type, workspace, subject, metadata, payload, "
        f"prev_hash, hash FROM events WHERE position = ?",
        (at, at + 1),
    )
    rechain(db)


# (tamper, the position it starts at, the position verify must name): witnesses sit at 10, 20, 30.
TAMPERS: list[tuple[Callable[[sqlite3.Connection, int], None], int, int]] = [
    (edit_payload, 15, 15),  # the chain alone shows it
    (delete_middle, 15, 20),  # renumbered and re-hashed: only the witness at 20 shows it
    (delete_tail_with_its_digest, 26, 26),  # the witness names position 30, which is gone
    (consistent_rewrite, 15, 20),
    (reorder_two, 15, 20),
    (insert_row, 15, 20),
]


def tampered_copy(
    store: EventStore, path: Path, tamper: Callable[[sqlite3.Connection, int], None], at: int
) -> str:
    source = sqlite3.connect(str(store.engine.url.database))
    target = sqlite3.connect(str(path))
    try:
        source.backup(target)
        tamper(target, at)
        target.commit()
    finally:
        source.close()
        target.close()
    return f"sqlite:///{path}"


async def witness_log(
    store: EventStore, nats: NatsConnection, service: str, events: Sequence[NewEvent], signer: ChainSigner
) -> DigestPublisher:
    """Append `events` in three equal parts, publishing a signed digest after each."""
    publisher = DigestPublisher(store, nats, service=service, signer=signer)
    third = len(events) // 3
    for part in range(3):
        store.append(events[part * third : (part + 1) * third])
        assert await publisher.publish_now() is not None
    return publisher


@pytest.mark.parametrize("service", sorted(REGISTRIES))
async def test_every_tamper_kind_is_named_by_the_witnesses(
    service: str, nats: NatsConnection, tmp_path: Path, kek: KeyEncryptionKey
) -> None:
    registry = REGISTRIES[service]()
    store = EventStore(f"sqlite:///{tmp_path / 'honest.db'}", service=service, registry=registry, keys=kek)
    store.create_schema()
    await witness_log(
        store, nats, service, sample_events(registry, 30), ChainSigner.from_key_encryption_key(kek)
    )
    witnesses = await read_witness(await jetstream(nats), [service])
    assert witnesses[service].conflicts == []
    expected = witnessed_hashes(service, witnesses)
    assert [d.position for d in expected] == [10, 20, 30]
    assert store.verify(expected=expected).ok

    detected = []
    for tamper, at, named in TAMPERS:
        url = tampered_copy(store, tmp_path / f"{tamper.__name__}.db", tamper, at)
        tampered = EventStore(url, service=service, registry=registry, keys=kek)
        try:
            alone = tampered.verify(expected=tampered.recorded_digests())
            result = tampered.verify(expected=[*expected, *tampered.recorded_digests()])
        finally:
            tampered.close()
        assert not result.ok, tamper.__name__
        assert result.first_bad_position == named, (tamper.__name__, result.problem)
        assert f"event {named} " in result.problem
        if alone.ok:  # what only the witnesses could see: they are named
            assert result.witness == WITNESS_STREAM_LABEL, (tamper.__name__, result)
        detected.append(tamper.__name__)
    assert len(detected) == 6
    store.close()


async def test_a_consumer_witnesses_its_upstream(
    nats: NatsConnection, tmp_path: Path, open_store: Callable[..., EventStore], kek: KeyEncryptionKey
) -> None:
    """ingest published a digest only at 10; identity's digest records it applied ingest up to 25."""
    registry = INGEST_REGISTRY
    ingest = EventStore(f"sqlite:///{tmp_path / 'ingest.db'}", service="ingest", registry=registry, keys=kek)
    ingest.create_schema()
    events = sample_events(registry, 30)
    ingest.append(events[:10])
    signer = ChainSigner.from_key_encryption_key(kek)
    assert await DigestPublisher(ingest, nats, service="ingest", signer=signer).publish_now() is not None
    ingest.append(events[10:])

    identity = open_store("identity")
    with identity.transaction() as conn:
        identity.record_tracking(conn, "ingest", 25, "", ingest.hash_at(25))
    identity_signer = ChainSigner.from_key_encryption_key(KeyEncryptionKey.generate())
    consumer = DigestPublisher(
        identity, nats, service="identity", signer=identity_signer, upstreams={"ingest": "ingest"}
    )
    assert await consumer.publish_now() is not None

    witnesses = await read_witness(await jetstream(nats), ["ingest", "identity"])
    [record] = witnesses["identity"].records
    assert [(h.upstream, h.position) for h in record.digest.consumed] == [("ingest", 25)]
    expected = witnessed_hashes("ingest", witnesses)
    assert [(d.position, d.witness) for d in expected] == [
        (10, WITNESS_STREAM_LABEL),
        (25, f"identity's consumed head (witness record {record.sequence})"),
    ]
    url = tampered_copy(ingest, tmp_path / "rewritten.db", consistent_rewrite, 22)
    tampered = EventStore(url, service="ingest", registry=registry, keys=kek)
    result = tampered.verify(expected=[*expected, *tampered.recorded_digests()])
    tampered.close()
    assert not result.ok and result.first_bad_position == 25
    assert result.witness.startswith("identity's consumed head")
    ingest.close()


# -- the witness stream ---------------------------------------------------------------------------


async def test_witness_stream_keeps_everything_and_refuses_deletes_and_purges(nats: NatsConnection) -> None:
    js = await jetstream(nats)
    # A service stream made by an earlier release captured its digests too: it is narrowed to events.
    await ensure_stream(
        js,
        api.StreamConfig(name=stream_name("ingest"), subjects=["onefold.ingest.>"]),
    )
    await ensure_service_stream(js, "ingest")
    info = await ensure_witness_stream(js, StreamSettings())
    again = await ensure_witness_stream(js, StreamSettings())
    assert info.config.subjects == again.config.subjects == ["onefold.*.digest"]
    assert info.config.deny_delete and info.config.deny_purge and not info.config.max_age
    ack = await js.publish(digest_subject("ingest"), b"{}", stream=WITNESS_STREAM)
    with pytest.raises(APIError):
        await js.delete_msg(WITNESS_STREAM, ack.seq)
    with pytest.raises(APIError):
        await js.purge_stream(WITNESS_STREAM)
    assert (await js.stream_info(WITNESS_STREAM)).state.messages == 1
    # A stale publisher (it had not seen sequence 1) is refused by the server.
    with pytest.raises(BadRequestError) as refused:
        await js.publish(
            digest_subject("ingest"),
            b"{}",
            stream=WITNESS_STREAM,
            headers={EXPECTED_LAST_SUBJECT_SEQUENCE: "0"},
        )
    assert refused.value.err_code == 10071


async def test_signed_digest_round_trip_and_forgery(
    kek: KeyEncryptionKey, open_store: Callable[..., EventStore]
) -> None:
    signer = ChainSigner.from_key_encryption_key(kek)
    assert ChainSigner.from_key_encryption_key(kek).public_key == signer.public_key  # stable
    store = open_store("ingest")
    store.append(counters(3))
    record = SignedDigest("ingest", store.head_digest(), datetime.now(UTC), signer.public_key).signed(signer)
    parsed = SignedDigest.from_bytes(record.to_bytes())
    assert parsed == record and parsed.signature_valid()
    forged = SignedDigest.from_bytes(record.to_bytes().replace(b'"position": 3', b'"position": 2'))
    assert forged.digest.position == 2 and not forged.signature_valid()
    with pytest.raises(ValueError, match="not a chain digest"):
        SignedDigest.from_bytes(b'{"format": 2}')


# -- the alarm --------------------------------------------------------------------------------------


def conflicts_counted(service: str) -> float:
    return REGISTRY.get_sample_value("onefold_chain_digest_conflicts_total", {"service": service}) or 0.0


async def test_a_conflicting_digest_raises_the_alarm_and_is_never_published(
    nats: NatsConnection, tmp_path: Path, kek: KeyEncryptionKey
) -> None:
    registry = CONSENT_REGISTRY
    store = EventStore(f"sqlite:///{tmp_path / 'consent.db'}", service="consent", registry=registry, keys=kek)
    store.create_schema()
    signer = ChainSigner.from_key_encryption_key(kek)
    publisher = await witness_log(store, nats, "consent", sample_events(registry, 30), signer)
    js = await jetstream(nats)
    count = (await js.stream_info(WITNESS_STREAM)).state.messages
    before = conflicts_counted("consent")

    # A restarted copy of the service on a log cut back to 25 that appended other events since.
    url = tampered_copy(store, tmp_path / "cut.db", delete_tail_with_its_digest, 26)
    cut = EventStore(url, service="consent", registry=registry, keys=kek)
    cut.append(sample_events(registry, 10, start=100))
    alarms: list[str] = []
    second = DigestPublisher(cut, nats, service="consent", signer=signer, on_alarm=alarms.append)
    assert await second.publish_now() is None
    assert second.alarm and alarms == [second.alarm]
    assert "position 30 differs from the one already witnessed" in second.alarm
    assert conflicts_counted("consent") == before + 1

    # An impostor with another key: refused by itself, and the honest publisher notices its record.
    impostor = DigestPublisher(
        store,
        nats,
        service="consent",
        signer=ChainSigner.from_key_encryption_key(KeyEncryptionKey.generate()),
    )
    assert await impostor.publish_now() is None
    assert "pins a different signing key" in impostor.alarm
    assert (await js.stream_info(WITNESS_STREAM)).state.messages == count  # nothing conflicting published

    # If one lands anyway (someone publishing by hand), the honest publisher's next digest is refused
    # by the server, it looks again, and raises the alarm; so does the audit.
    foreign = ChainSigner.from_key_encryption_key(KeyEncryptionKey.generate())
    record = SignedDigest("consent", store.head_digest(), datetime.now(UTC), foreign.public_key).signed(
        foreign
    )
    await js.publish(digest_subject("consent"), record.to_bytes(), stream=WITNESS_STREAM)
    store.append(sample_events(registry, 1, start=200))
    assert await publisher.publish_now() is None
    assert "is not signed by this service's key" in publisher.alarm
    witnessed = (await read_witness(js, ["consent"]))["consent"]
    assert any("signed by a different key than the pinned one" in c for c in witnessed.conflicts)
    cut.close()
    store.close()


# -- the start check ----------------------------------------------------------------------------------


async def test_start_refuses_a_log_behind_or_beside_what_it_published(
    nats: NatsConnection, tmp_path: Path, kek: KeyEncryptionKey
) -> None:
    registry = IDENTITY_REGISTRY
    store = EventStore(
        f"sqlite:///{tmp_path / 'identity.db'}", service="identity", registry=registry, keys=kek
    )
    store.create_schema()
    signer = ChainSigner.from_key_encryption_key(kek)
    await witness_log(store, nats, "identity", sample_events(registry, 30), signer)
    js = await jetstream(nats)
    await check_start(store, js, "identity", signer)  # honest: no complaint

    truncated = EventStore(
        tampered_copy(store, tmp_path / "cut.db", delete_tail_with_its_digest, 26),
        service="identity",
        registry=registry,
        keys=kek,
    )
    with pytest.raises(ChainDiverged) as behind:
        await check_start(truncated, js, "identity", signer)
    assert "ends at position 25 but position 30 was already witnessed" in str(behind.value)
    assert "onefold audit verify identity" in str(behind.value)

    rewritten = EventStore(
        tampered_copy(store, tmp_path / "rewritten.db", consistent_rewrite, 12),
        service="identity",
        registry=registry,
        keys=kek,
    )
    with pytest.raises(ChainDiverged, match="event at position 30 differs"):
        await check_start(rewritten, js, "identity", signer)

    # Without NATS: the relay's own record of what it published is enough to refuse a cut log.
    await OutboxRelay(store, nats, service="identity").publish_available()
    cut_after_relay = EventStore(
        tampered_copy(
            store,
            tmp_path / "cut2.db",
            lambda db, at: db.execute("DELETE FROM events WHERE position >= ?", (at,)),
            21,
        ),
        service="identity",
        registry=registry,
        keys=kek,
    )
    with pytest.raises(
        ChainDiverged, match="ends at position 20 but events up to position 30 were already published"
    ):
        await check_start(cut_after_relay, None, "identity", signer)
    for opened in (truncated, rewritten, cut_after_relay, store):
        opened.close()


async def test_a_service_with_an_empty_log_pins_its_key_and_starts_again(
    nats: NatsConnection, open_store: Callable[..., EventStore], kek: KeyEncryptionKey
) -> None:
    store = open_store("segments")
    signer = ChainSigner.from_key_encryption_key(kek)
    published = await DigestPublisher(store, nats, service="segments", signer=signer).publish_now()
    assert published is not None and published.position == 0
    js = await jetstream(nats)
    await check_start(store, js, "segments", signer)  # a restart on the same empty log
    again = DigestPublisher(store, nats, service="segments", signer=signer)
    store.append(counters(2))
    assert await again.publish_now() == store.head_digest() and not again.alarm
    witnessed = (await read_witness(js, ["segments"]))["segments"]
    assert witnessed.pinned_key == signer.public_key and [
        r.digest.digest.position for r in witnessed.records
    ] == [0, 2]


# -- the chain-link check of consumers ---------------------------------------------------------------


@given(st.dictionaries(st.text(), st.text(), max_size=6))
def test_canonical_metadata_is_exactly_the_stored_json(metadata: dict[str, str]) -> None:
    assert canonical_metadata(metadata) == json.dumps(
        metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_an_envelope_as_published_hashes_to_its_stored_hash(open_store: Callable[..., EventStore]) -> None:
    store = open_store("ingest")
    contact = events_pb2.ContactCaptured(profile_id="p1", email="a@example.com", name="A")
    store.append([*counters(2), NewEvent("contact:p1", contact, subject="p1", metadata={"actor": "é\u2028"})])
    for event in store.read(limit=3):
        envelope = store.to_envelope(event, decrypt=False)  # what the relay publishes
        assert envelope_hash(envelope) == event.hash
        envelope.stream_version += 1
        assert envelope_hash(envelope) != event.hash


def counters(count: int) -> list[NewEvent]:
    return [
        NewEvent(f"counter:{i % 4}", events_pb2.CounterChanged(counter=f"c{i % 4}", delta=1))
        for i in range(count)
    ]


async def test_a_message_with_a_broken_link_is_refused_and_dead_lettered(
    nats: NatsConnection, open_store: Callable[..., EventStore]
) -> None:
    upstream = open_store("ingest")
    upstream.append(counters(5))
    await OutboxRelay(upstream, nats, service="ingest").publish_available()
    downstream = open_store("segments")
    applied: list[int] = []

    def handler(conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        applied.extend(e.position for e in envelopes)

    subscriber = Subscriber(
        downstream, nats, service="segments", upstream="ingest", handler=handler, settings=FAST
    )
    await subscriber.run_until_idle()
    assert applied == [1, 2, 3, 4, 5]
    assert downstream.tracked_head("ingest") == upstream.head_digest()

    js = await jetstream(nats)
    [last] = upstream.read(after_position=4, limit=1)
    # Forged position 6: self-consistent hash, but it does not link to event 5.
    forged = upstream.to_envelope(last)
    forged.position = 6
    forged.event_id = "00000000-0000-7000-8000-0000000000f6"
    forged.prev_hash = b"\x07" * 32
    forged.hash = envelope_hash(forged)
    # A copy of event 5 whose payload was altered on the way: its hash no longer matches.
    altered = upstream.to_envelope(last)
    altered.payload = events_pb2.CounterChanged(counter="c0", delta=1000).SerializeToString()
    for envelope in (forged, altered):
        await js.publish("onefold.ingest.CounterChanged.ws.0", envelope.SerializeToString())
    await subscriber.run_until_idle()

    assert applied == [1, 2, 3, 4, 5]  # neither reached the handler
    assert subscriber.stats.refused == 2
    assert downstream.tracked_head("ingest") == upstream.head_digest()  # tracking did not move
    dlq = await js.pull_subscribe("onefold.dlq.segments.ingest", stream=DLQ_STREAM)
    errors = sorted((m.headers or {})[DLQ_ERROR] for m in await dlq.fetch(2, timeout=2))
    assert errors == [
        "refused: event 5 does not match its hash: altered or forged",
        "refused: event 6 does not link to event 5",
    ]
    # The real event 6 still links and is applied.
    upstream.append(counters(1))
    await OutboxRelay(upstream, nats, service="ingest").publish_available()
    await subscriber.run_until_idle()
    assert applied == [1, 2, 3, 4, 5, 6]


def test_tracking_table_of_an_older_release_gains_the_hash_column(
    database_url: str, registry: EventRegistry, kek: KeyEncryptionKey
) -> None:
    url = database_url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE tracking (upstream VARCHAR(255) PRIMARY KEY, position BIGINT NOT NULL, "
            "event_id VARCHAR(36) NOT NULL, updated_at BIGINT NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO tracking VALUES ('ingest', 7, '', 0)")
    engine.dispose()
    store = EventStore(url, service="segments", registry=registry, keys=kek)
    store.create_schema()
    store.create_schema()  # idempotent
    assert store.tracked_head("ingest").position == 7 and store.tracked_head("ingest").hash == b""
    with store.transaction() as conn:
        store.record_tracking(conn, "ingest", 8, "", b"\x01" * 32)
    assert store.tracked_heads() == {"ingest": store.tracked_head("ingest")}
    assert store.tracked_head("ingest").hash == b"\x01" * 32
    assert "hash" in {c["name"] for c in sa.inspect(store.engine).get_columns(schema.tracking.name)}
    store.close()


async def test_a_consistent_rewrite_is_named_on_each_database(
    nats: NatsConnection, make_store: Callable[..., EventStore], kek: KeyEncryptionKey
) -> None:
    store = make_store()
    signer = ChainSigner.from_key_encryption_key(kek)
    await witness_log(store, nats, "test", counters(30), signer)
    witnesses = await read_witness(await jetstream(nats), ["test"])
    # Rewrite event 12 and re-hash everything after it, local digests included (SQL on either database).
    events = schema.events
    with store.engine.begin() as conn:
        rows = conn.execute(
            sa.select(events).where(events.c.position >= 12).order_by(events.c.position)
        ).all()
        prev = store.hash_at(11) or b""
        for row in rows:
            payload = row.payload + b"\x00" if row.position == 12 else row.payload
            digest = event_hash(
                prev, row.position, row.stream_version, row.schema_version, row.occurred_at, row.recorded_at,
                row.event_id.encode(), row.stream_id.encode(), row.type.encode(), row.workspace.encode(),
                row.subject.encode(), row.metadata.encode(), payload,
            )  # fmt: skip
            conn.execute(
                events.update()
                .where(events.c.position == row.position)
                .values(payload=payload, prev_hash=prev, hash=digest)
            )
            conn.execute(
                schema.chain_digests.update()
                .where(schema.chain_digests.c.position == row.position)
                .values(hash=digest)
            )
            prev = digest
    assert store.verify(expected=store.recorded_digests()).ok  # the database alone agrees with itself
    result = store.verify(expected=[*witnessed_hashes("test", witnesses), *store.recorded_digests()])
    assert not result.ok and result.first_bad_position == 20 and result.witness == WITNESS_STREAM_LABEL
    with pytest.raises(ChainDiverged, match="event at position 30 differs"):
        await check_start(store, await jetstream(nats), "test", signer)


# -- the service: a check deferred while NATS is down still runs before the relay ---------------------


@dataclass
class RunningService:
    service: eventlog_service.EventSourcedService
    connection: NatsConnection
    health: list[tuple[bool, str]]


@pytest.fixture
async def segments_service(
    nats_server: NatsServerProcess, registry: EventRegistry, tmp_path: Path
) -> AsyncIterator[RunningService]:
    """An EventSourcedService named segments (the test event types), not started; stopped after."""
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings(
        "segments",
        env={},
        data_dir=str(data),
        nats=nats_server.client_settings("segments", reconnect_wait_seconds=0.1).model_dump(),
        auth={"bootstrap_admin": False},
        eventlog={"key_file": str(data / "keys" / "segments.kek")},
        telemetry={"log_level": "WARNING"},
    )
    credentials = CredentialStore(settings.auth_database_url(), cache_seconds=0)
    credentials.create_schema()
    engine = create_engine(settings.database_url())
    connection = NatsConnection(settings.nats, "segments-test")
    health: list[tuple[bool, str]] = []

    async def set_health(serving: bool, name: str) -> None:
        health.append((serving, name))

    ctx = ServiceContext(settings, engine, credentials, connection, set_health=set_health)
    running = RunningService(
        eventlog_service.EventSourcedService(
            ctx, eventlog_service.ServiceLog(eventlog_service.open_event_store(ctx, registry)), None
        ),
        connection,
        health,
    )
    yield running
    await running.service.stop()
    await connection.close()
    engine.dispose()


def cut_the_last_event(store: EventStore) -> None:
    with store.engine.begin() as conn:
        head = conn.execute(sa.select(sa.func.max(schema.events.c.position))).scalar()
        conn.execute(sa.delete(schema.events).where(schema.events.c.position == head))
        conn.execute(sa.delete(schema.chain_digests))


async def test_with_nats_down_at_start_the_log_is_checked_before_anything_is_relayed(
    nats_server: NatsServerProcess,
    nats: NatsConnection,
    segments_service: RunningService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eventlog_service, "START_CHECK_SECONDS", 0.2)
    service, health = segments_service.service, segments_service.health
    # Its earlier life: 5 events, witnessed.
    service.store.append(counters(5))
    assert await DigestPublisher(service.store, nats, service="segments", signer=service.signer).publish_now()
    # Then, with NATS down, someone removes event 5 and its local digest; the service starts.
    nats_server.kill()
    cut_the_last_event(service.store)
    segments_service.connection.start()
    await service.start()  # nothing local contradicts it: serving, the witness check deferred
    assert health == [(True, CHAIN_HEALTH_NAME)]
    nats_server.start()
    async with asyncio.timeout(30):
        while (False, CHAIN_HEALTH_NAME) not in health:
            await asyncio.sleep(0.05)
    assert not service.leading.is_set()
    assert service.store.published_position(stream_name("segments")) == 0  # nothing relayed
    witnessed = (await read_witness(await jetstream(nats), ["segments"]))["segments"]
    assert [r.digest.digest.position for r in witnessed.records] == [5]  # nothing new witnessed


async def test_a_log_cut_while_running_stops_the_relay_at_the_next_digest(
    nats: NatsConnection, segments_service: RunningService
) -> None:
    service, health = segments_service.service, segments_service.health
    service.store.append(counters(5))
    segments_service.connection.start()
    await service.start()
    async with asyncio.timeout(30):  # leading: relayed and witnessed
        while (
            service.store.published_position(stream_name("segments")) != 5
            or not service.digests.last_published
        ):
            await asyncio.sleep(0.05)
    cut_the_last_event(service.store)
    service.store.append(counters(1))  # position 5 again, another event: never to reach the bus
    assert await service.digests.publish_now() is None
    assert service.digests.diverged and "differs from the one already witnessed" in service.digests.alarm
    async with asyncio.timeout(30):
        while service.leading.is_set():
            await asyncio.sleep(0.05)
    assert (False, CHAIN_HEALTH_NAME) in health
    # The relay (woken by the append, it found nothing after its position 5) is stopped; nothing
    # of the reused position reached the bus.
    assert service.relay._task is None and all(s._task is None for s in service.subscribers)
    assert service.store.published_position(stream_name("segments")) == 5


async def test_the_leader_reports_its_backlog_as_the_lag_rpc_and_the_prometheus_gauge_do(
    segments_service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog_service, "BACKLOG_REPORT_SECONDS", 0.05)
    service = segments_service.service
    service.store.append(counters(5))
    before = await service.backlog()  # not leading yet: nothing relayed
    assert (before.head_position, before.published_position, before.leading) == (5, 0, False)
    segments_service.connection.start()
    await service.start()

    def relay_gauge() -> float | None:
        return REGISTRY.get_sample_value(
            "onefold_backlog_events", {"service": "segments", "upstream": "relay"}
        )

    async with asyncio.timeout(30):
        while service.store.published_position(stream_name("segments")) != 5 or relay_gauge() != 0:
            await asyncio.sleep(0.05)
    after = await service.backlog()
    assert (after.head_position, after.published_position, after.leading) == (5, 5, True)
    assert list(after.consumers) == []  # this test service consumes no upstream
