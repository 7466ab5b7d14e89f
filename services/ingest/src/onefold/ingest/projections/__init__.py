"""Read models of the ingest service, folded from its own log.

- `ingest_sources` / `ingest_write_keys`: sources by id and by the SHA-256 of their write keys
  (a rotated key keeps working until its `expires_at`).
- `ingest_dedupe`: (workspace, messageId) of every accepted event with when it was accepted; the
  unique key is what makes dedupe exact. Rows older than the dedupe window are ignored and pruned.
- `ingest_quarantine`: one row per quarantined event (where it is in the log, whether it was
  replayed), for listing and replay without scanning the log.

The application writes these in the same transaction as the events (with the messages it just
appended, so the hot path decodes nothing); `IngestProjection.handle` is the same fold for a
`Projector.rebuild` / catch-up from the log, so a rebuilt read model equals the live one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
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


class IngestProjection:
    """The fold behind the ingest read models (see the module docstring)."""

    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = TABLES

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        if isinstance(message, pb.EventAccepted):
            dedupe_record(conn, [(message.workspace, message.event.message_id, to_micros(event.recorded_at))])
        elif isinstance(message, pb.EventQuarantined):
            self.quarantined(conn, [(event, message)])
        elif isinstance(message, pb.QuarantineReplayed):
            self.replayed(conn, message)
        elif isinstance(message, pb.SourceCreated):
            self.source_created(conn, event, message)
        elif isinstance(message, pb.WriteKeyRotated):
            self.key_rotated(conn, event, message)
        elif isinstance(message, pb.TrackingPlanSet):
            conn.execute(
                sources.update()
                .where(sources.c.source_id == message.source_id)
                .values(tracking_plan=message.tracking_plan.SerializeToString(), position=event.position)
            )
        elif isinstance(message, pb.SourceDisabled):
            conn.execute(
                sources.update()
                .where(sources.c.source_id == message.source_id)
                .values(disabled=True, position=event.position)
            )

    def reset(self, conn: Connection) -> None:
        for table in TABLES:
            conn.execute(table.delete())

    # -- the live path calls these directly with the messages it appended ---------------------

    def quarantined(
        self, conn: Connection, events: Iterable[tuple[RecordedEvent, pb.EventQuarantined]]
    ) -> None:
        rows: list[dict[str, Any]] = [
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
            for event, message in events
        ]
        if rows:
            conn.execute(quarantine.insert(), rows)

    def replayed(self, conn: Connection, message: pb.QuarantineReplayed) -> None:
        done = message.status in (pb.ACK_STATUS_ACCEPTED, pb.ACK_STATUS_DUPLICATE)
        values: dict[str, Any] = {"replay_status": int(message.status)}
        if done:
            values["replayed"] = True
        conn.execute(
            quarantine.update().where(quarantine.c.quarantine_id == message.quarantine_id).values(**values)
        )

    def source_created(self, conn: Connection, event: RecordedEvent, message: pb.SourceCreated) -> None:
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

    def key_rotated(self, conn: Connection, event: RecordedEvent, message: pb.WriteKeyRotated) -> None:
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
