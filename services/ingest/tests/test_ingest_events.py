"""Every event ingest declares is folded by its read model, and the read model folded from the log
in one catch-up batch equals the one written live (buffered rows are flushed in log order)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.eventlog import EventStore, NewEvent
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.projections import Projector
from onefold.ingest.adapters.read_model import IngestProjection, dedupe, quarantine
from onefold.ingest.domain.events import REGISTRY
from onefold.testing.events import assert_events_handled


def test_every_ingest_event_is_folded_by_the_read_model() -> None:
    assert_events_handled(REGISTRY, IngestProjection, not_folded={})


def test_one_catch_up_batch_folds_a_quarantine_its_replay_and_a_repeated_message_id(tmp_path: Path) -> None:
    store = EventStore(
        f"sqlite:///{tmp_path / 'ingest.db'}",
        service="ingest",
        registry=REGISTRY,
        keys=KeyEncryptionKey.generate(),
    )
    store.create_schema()
    live = Projector(store, [IngestProjection()])
    live.create_tables()

    def accepted(message_id: str) -> NewEvent:
        record = pb.EventAccepted(workspace="w", event=pb.TrackingEvent(message_id=message_id, user_id="u"))
        return NewEvent(stream_id="ingest:w:u:1", message=record, subject="w:u:1", workspace="w")

    quarantined = pb.EventQuarantined(quarantine_id="q_1", workspace="w", source_id="src_1", kind=1)
    replayed = pb.QuarantineReplayed(quarantine_id="q_1", workspace="w", status=pb.ACK_STATUS_ACCEPTED)
    events = [
        accepted("m-1"),
        NewEvent(stream_id="ingest-quarantine:w", message=quarantined, subject="w:q:q_1", workspace="w"),
        NewEvent(stream_id="ingest-quarantine:w", message=replayed, workspace="w"),
        accepted("m-1"),  # accepted again (the window had passed): one dedupe row, the latest
    ]
    live.write(lambda conn: live.record(conn, events))

    def read_model() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        with store.engine.connect() as conn:
            rows = [tuple(row) for row in conn.execute(sa.select(quarantine))]
            return rows, [tuple(row) for row in conn.execute(sa.select(dedupe))]

    written = read_model()
    assert [row[-1] for row in written[0]] == [True]  # replayed
    assert len(written[1]) == 1
    rebuilt = IngestProjection()
    assert Projector(store, [rebuilt]).rebuild(rebuilt) == len(events)
    assert read_model() == written
