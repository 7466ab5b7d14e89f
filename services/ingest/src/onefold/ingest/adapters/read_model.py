"""Read models of the ingest service, folded from its own log.

- `ingest_sources` / `ingest_write_keys`: sources by id and by the SHA-256 of their write keys
  (a rotated key keeps working until its `expires_at`).
- `ingest_dedupe`: (workspace, messageId) of every accepted event with when it was accepted; the
  unique key is what makes dedupe exact. Rows older than the dedupe window are ignored and pruned.
- `ingest_quarantine`: one row per quarantined event (where it is in the log, whether it was
  replayed), for listing and replay without scanning the log.

`Projector.record` folds the events the application appends into these in the same transaction
(with the messages as appended, so the hot path decodes nothing); a `Projector.rebuild` / catch-up
runs the same fold over the log, so a rebuilt read model equals the live one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent, to_micros

PROJECTION_NAME = "ingest"
metadata = sa.MetaData()

sources = sa.Table(
    "ingest_sources",
    metadata,
    sa.Column("source_id", sa.String(64), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("write_key_hint", sa.String(16), nullable=False),
    sa.Column("tracking_plan", sa.LargeBinary, nullable=True),  # onefold.ingest.v1.TrackingPlan bytes
    sa.Column("rate_limit_per_second", sa.Integer, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),  # microseconds since the epoch
    sa.Column("position", sa.BigInteger, nullable=False),  # last event that changed the source
)

write_keys = sa.Table(
    "ingest_write_keys",
    metadata,
    sa.Column("key_hash", sa.LargeBinary(32), primary_key=True),  # SHA-256; the key is never stored
    sa.Column("source_id", sa.String(64), nullable=False, index=True),
    sa.Column("expires_at", sa.BigInteger, nullable=True),  # NULL = current key
)

dedupe = sa.Table(
    "ingest_dedupe",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("message_id", sa.String(255), primary_key=True),
    sa.Column("accepted_at", sa.BigInteger, nullable=False, index=True),
)

quarantine = sa.Table(
    "ingest_quarantine",
    metadata,
    sa.Column("quarantine_id", sa.String(64), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False),
    sa.Column("source_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.Integer, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("subject", sa.String(255), nullable=False, index=True),
    sa.Column("message_id", sa.String(255), nullable=False),
    sa.Column("quarantined_at", sa.BigInteger, nullable=False),
    sa.Column("replay_status", sa.Integer, nullable=False, default=0),  # AckStatus of the last replay
    sa.Column("replayed", sa.Boolean, nullable=False, default=False),  # accepted (or duplicate) by a replay
    sa.Index("ix_ingest_quarantine_workspace_position", "workspace", "position"),
)

TABLES = (sources, write_keys, dedupe, quarantine)


def dedupe_upsert_sql(is_sqlite: bool, rows: int) -> str:
    """Multi-row upsert: a re-accept after the window expired refreshes the row."""
    placeholder = "(?, ?, ?)" if is_sqlite else "(%s, %s, %s)"
    return (
        "INSERT INTO ingest_dedupe (workspace, message_id, accepted_at) VALUES "
        + ", ".join([placeholder] * rows)
        + " ON CONFLICT (workspace, message_id) DO UPDATE SET accepted_at = excluded.accepted_at"
    )


def dedupe_lookup(conn: Connection, workspace: str, message_ids: Sequence[str]) -> dict[str, int]:
    """message_id -> accepted_at (µs) of those already accepted in `workspace` (any age)."""
    found: dict[str, int] = {}
    is_sqlite = conn.dialect.name == "sqlite"
    for start in range(0, len(message_ids), 5000):
        chunk = list(message_ids[start : start + 5000])
        if is_sqlite:
            rows = conn.exec_driver_sql(
                "SELECT message_id, accepted_at FROM ingest_dedupe "
                "WHERE workspace = ? AND message_id IN (SELECT value FROM json_each(?))",
                (workspace, json.dumps(chunk)),
            )
        else:
            rows = conn.execute(
                sa.select(dedupe.c.message_id, dedupe.c.accepted_at).where(
                    dedupe.c.workspace == workspace, dedupe.c.message_id.in_(chunk)
                )
            )
        found.update((str(mid), int(at)) for mid, at in rows)
    return found


def dedupe_record(conn: Connection, rows: Sequence[tuple[str, str, int]]) -> None:
    """Upsert (workspace, message_id, accepted_at) rows with as few statements as possible."""
    is_sqlite = conn.dialect.name == "sqlite"
    per = 1000
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        params = tuple(value for row in chunk for value in row)
        conn.exec_driver_sql(dedupe_upsert_sql(is_sqlite, len(chunk)), params)


class IngestProjection(Handlers):
    """The fold behind the ingest read models (see the module docstring).

    Dedupe and quarantine rows are buffered by `handle` and written by `flush`, a few multi-row
    statements per transaction: a group commit of thousands of events costs no per-event round trip.
    """

    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = TABLES

    def __init__(self) -> None:
        # Rows of the transaction on `_conn`, written by `flush`.
        self._conn: Connection | None = None
        self._accepted: dict[tuple[str, str], int] = {}  # (workspace, message id) -> accepted at µs
        self._quarantined: list[dict[str, Any]] = []

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        if conn is not self._conn:
            # Rows buffered on another transaction were rolled back with it (or already flushed).
            self._conn = conn
            self._accepted.clear()
            self._quarantined.clear()
        self.dispatch(message, conn, event, message)

    def flush(self, conn: Connection) -> None:
        accepted, self._accepted = self._accepted, {}
        quarantined, self._quarantined = self._quarantined, []
        self._conn = None
        if accepted:
            dedupe_record(conn, [(workspace, mid, at) for (workspace, mid), at in accepted.items()])
        if quarantined:
            conn.execute(quarantine.insert(), quarantined)

    def reset(self, conn: Connection) -> None:
        for table in TABLES:
            conn.execute(table.delete())

    @handles(pb.EventAccepted)
    def _accepted_event(self, conn: Connection, event: RecordedEvent, message: pb.EventAccepted) -> None:
        # Keyed: a messageId accepted again (after the window) in the same batch upserts once.
        self._accepted[(message.workspace, message.event.message_id)] = to_micros(event.recorded_at)

    @handles(pb.EventQuarantined)
    def _quarantined_event(
        self, conn: Connection, event: RecordedEvent, message: pb.EventQuarantined
    ) -> None:
        self._quarantined.append(
            {
                "quarantine_id": message.quarantine_id,
                "workspace": message.workspace,
                "source_id": message.source_id,
                "kind": int(message.kind),
                "position": event.position,
                "subject": event.subject,
                "message_id": message.event.message_id if message.HasField("event") else "",
                "quarantined_at": to_micros(event.recorded_at),
                "replay_status": 0,
                "replayed": False,
            }
        )

    @handles(pb.QuarantineReplayed)
    def _replayed(self, conn: Connection, event: RecordedEvent, message: pb.QuarantineReplayed) -> None:
        if self._quarantined:  # the replayed record may be one of them (a catch-up batch)
            conn.execute(quarantine.insert(), self._quarantined)
            self._quarantined = []
        done = message.status in (pb.ACK_STATUS_ACCEPTED, pb.ACK_STATUS_DUPLICATE)
        values: dict[str, Any] = {"replay_status": int(message.status)}
        if done:
            values["replayed"] = True
        conn.execute(
            quarantine.update().where(quarantine.c.quarantine_id == message.quarantine_id).values(**values)
        )

    @handles(pb.SourceCreated)
    def _source_created(self, conn: Connection, event: RecordedEvent, message: pb.SourceCreated) -> None:
        conn.execute(
            sources.insert().values(
                source_id=message.source_id,
                workspace=message.workspace,
                name=message.name,
                write_key_hint=message.write_key_hint,
                tracking_plan=(
                    message.tracking_plan.SerializeToString() if message.HasField("tracking_plan") else None
                ),
                rate_limit_per_second=message.rate_limit_per_second,
                disabled=False,
                created_at=to_micros(event.recorded_at),
                position=event.position,
            )
        )
        conn.execute(
            write_keys.insert().values(
                key_hash=message.write_key_hash, source_id=message.source_id, expires_at=None
            )
        )

    @handles(pb.WriteKeyRotated)
    def _key_rotated(self, conn: Connection, event: RecordedEvent, message: pb.WriteKeyRotated) -> None:
        expires = to_micros(message.previous_key_expires_at.ToDatetime(tzinfo=UTC))
        conn.execute(
            write_keys.update()
            .where(write_keys.c.source_id == message.source_id, write_keys.c.expires_at.is_(None))
            .values(expires_at=expires)
        )
        conn.execute(
            write_keys.insert().values(
                key_hash=message.write_key_hash, source_id=message.source_id, expires_at=None
            )
        )
        conn.execute(
            sources.update()
            .where(sources.c.source_id == message.source_id)
            .values(write_key_hint=message.write_key_hint, position=event.position)
        )

    @handles(pb.TrackingPlanSet)
    def _plan_set(self, conn: Connection, event: RecordedEvent, message: pb.TrackingPlanSet) -> None:
        conn.execute(
            sources.update()
            .where(sources.c.source_id == message.source_id)
            .values(tracking_plan=message.tracking_plan.SerializeToString(), position=event.position)
        )

    @handles(pb.SourceDisabled)
    def _disabled(self, conn: Connection, event: RecordedEvent, message: pb.SourceDisabled) -> None:
        conn.execute(
            sources.update()
            .where(sources.c.source_id == message.source_id)
            .values(disabled=True, position=event.position)
        )
