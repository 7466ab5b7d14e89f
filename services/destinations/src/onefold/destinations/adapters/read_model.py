"""The read model of the destinations service (its projection), folded from its own log.

- `destinations_catalog`: each destination's latest version (protobuf bytes: what routing reads),
  its status, and when it last delivered or failed (with the error);
- `destinations_outbox`: every delivery queued — its position in the log (the order deliveries
  are made in, per person), status (queued, delivered, suppressed, dead, dropped), attempts, when
  it may next be tried (the deliverer's index) and its last error. Ids only: what is sent stays
  sealed in its DeliveryQueued event;
- `destinations_recipients`: which destinations a person was queued for — where an erasure sends
  its deletions;
- `destinations_backfills`: per (destination, segment) newly named, how far its current members
  have been queued (the next page's token, done).

Deliveries queued in a batch are buffered and inserted in `flush` with one executemany; outcomes
(a batch of ids each) are one executemany update, after the buffered inserts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.domain.definitions import target_kind
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent, to_micros

PROJECTION_NAME = "destinations"
QUEUED, DELIVERED, SUPPRESSED, DEAD, DROPPED = "queued", "delivered", "suppressed", "dead", "dropped"
metadata = sa.MetaData()

catalog = sa.Table(
    "destinations_catalog",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("latest", sa.Integer, nullable=False),
    sa.Column("destination", sa.LargeBinary, nullable=False),  # the latest version
    sa.Column("last_error", sa.String(200), nullable=False, default=""),
    sa.Column("last_error_at_us", sa.BigInteger, nullable=True),
    sa.Column("last_delivered_at_us", sa.BigInteger, nullable=True),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),  # its definition or status last changed
)

outbox = sa.Table(
    "destinations_outbox",
    metadata,
    sa.Column("delivery_id", sa.String(32), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False),
    sa.Column("destination", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.Integer, nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),  # of its DeliveryQueued
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("queued_at_us", sa.BigInteger, nullable=False),
    sa.Column("try_at_us", sa.BigInteger, nullable=False),
    sa.Column("delivered_at_us", sa.BigInteger, nullable=True),
    sa.Column("last_error", sa.String(200), nullable=False),
    # The person was erased: what was sent about them is never replayed (it could not be opened).
    sa.Column("erased", sa.Boolean, nullable=False),
    sa.Index("destinations_outbox_due", "status", "try_at_us"),
    # The deliverer's batch: a destination's queued rows in log order, read until the batch is full
    # (with only the index above, every queued row was read and sorted each round).
    sa.Index("destinations_outbox_in_order", "status", "workspace", "destination", "position"),
    sa.Index("destinations_outbox_person", "workspace", "destination", "profile_id", "position"),
    sa.Index("destinations_outbox_by_destination", "workspace", "destination", "status", "queued_at_us"),
)

recipients = sa.Table(
    "destinations_recipients",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("destination", sa.String(64), primary_key=True),
)

backfills = sa.Table(
    "destinations_backfills",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("destination", sa.String(64), primary_key=True),
    sa.Column("segment", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("page_token", sa.String(200), nullable=False),  # where the next page starts
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("members", sa.BigInteger, nullable=False),  # queued so far
)

Row = dict[str, Any]


def _micros(stamp: Any) -> int:
    return int(stamp.seconds) * 1_000_000 + int(stamp.nanos) // 1000


class DestinationsReadModel(Handlers):
    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = (catalog, outbox, recipients, backfills)

    def __init__(self) -> None:
        self._queued: list[Row] = []
        self._recipients: dict[tuple[str, str, str], Row] = {}

    def reset(self, conn: Connection) -> None:
        self._queued.clear()
        self._recipients.clear()
        for table in self.tables:
            conn.execute(table.delete())

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, conn, message, event)

    def flush(self, conn: Connection) -> None:
        try:
            self._write_queued(conn)
        finally:  # a failed flush rolls its transaction back: nothing of it is written later
            self._queued.clear()
            self._recipients.clear()

    def _write_queued(self, conn: Connection) -> None:
        dialect = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
        if self._queued:
            conn.execute(
                dialect.insert(outbox).on_conflict_do_nothing(index_elements=["delivery_id"]), self._queued
            )
            self._queued.clear()
        if self._recipients:
            conn.execute(
                dialect.insert(recipients).on_conflict_do_nothing(
                    index_elements=["workspace", "profile_id", "destination"]
                ),
                list(self._recipients.values()),
            )
            self._recipients.clear()

    # ------------------------------------------------------------------ definitions

    @handles(pb.DestinationSet)
    def _set(self, conn: Connection, message: pb.DestinationSet, event: RecordedEvent) -> None:
        d = message.destination
        values = {
            "kind": target_kind(d),
            "latest": d.version,
            "destination": d.SerializeToString(deterministic=True),
            "updated_at_us": to_micros(event.occurred_at),
        }
        where = (catalog.c.workspace == message.workspace) & (catalog.c.name == d.name)
        if conn.execute(sa.select(catalog.c.name).where(where)).first() is None:
            conn.execute(
                catalog.insert().values(
                    workspace=message.workspace,
                    name=d.name,
                    status=pb.DESTINATION_STATUS_ACTIVE,
                    last_error="",
                    **values,
                )
            )
        else:
            conn.execute(catalog.update().where(where).values(**values))

    @handles(pb.DestinationStatusChanged)
    def _status(self, conn: Connection, message: pb.DestinationStatusChanged, event: RecordedEvent) -> None:
        self._write_queued(conn)
        conn.execute(
            catalog.update()
            .where((catalog.c.workspace == message.workspace) & (catalog.c.name == message.name))
            .values(status=message.status, updated_at_us=to_micros(event.occurred_at))
        )
        if message.status == pb.DESTINATION_STATUS_ARCHIVED:
            conn.execute(
                outbox.update()
                .where(
                    (outbox.c.workspace == message.workspace)
                    & (outbox.c.destination == message.name)
                    & (outbox.c.status == QUEUED)
                )
                .values(status=DROPPED, last_error="archived")
            )

    @handles(pb.SigningSecretIssued)
    def _secret(self, conn: Connection, message: pb.SigningSecretIssued, event: RecordedEvent) -> None:
        return None  # nothing of a secret is kept in the read model

    # ------------------------------------------------------------------ deliveries

    @handles(pb.DeliveryQueued)
    def _queued_one(self, conn: Connection, message: pb.DeliveryQueued, event: RecordedEvent) -> None:
        at = to_micros(event.occurred_at)
        self._queued.append(
            {
                "delivery_id": message.delivery_id,
                "workspace": message.workspace,
                "destination": message.destination,
                "profile_id": message.profile_id,
                "kind": message.kind,
                "name": message.name[:200],
                "position": event.position,
                "status": QUEUED,
                "attempts": 0,
                "queued_at_us": at,
                "try_at_us": at,
                "delivered_at_us": None,
                "last_error": "",
                "erased": False,
            }
        )
        if message.kind != pb.DELIVERY_KIND_DELETION:
            key = (message.workspace, message.profile_id, message.destination)
            self._recipients[key] = dict(zip(("workspace", "profile_id", "destination"), key, strict=True))

    def _update(self, conn: Connection, delivery_ids: Sequence[str], values: dict[str, Any]) -> None:
        self._write_queued(conn)
        ids = list(delivery_ids)
        for start in range(0, len(ids), 500):
            conn.execute(
                outbox.update().where(outbox.c.delivery_id.in_(ids[start : start + 500])).values(**values)
            )

    def _destination_row(self, conn: Connection, workspace: str, name: str, **values: Any) -> None:
        conn.execute(
            catalog.update()
            .where((catalog.c.workspace == workspace) & (catalog.c.name == name))
            .values(**values)
        )

    @handles(pb.DeliveriesDelivered)
    def _delivered(self, conn: Connection, message: pb.DeliveriesDelivered, event: RecordedEvent) -> None:
        at = to_micros(event.occurred_at)
        self._update(
            conn,
            message.delivery_ids,
            {"status": DELIVERED, "delivered_at_us": at, "attempts": outbox.c.attempts + 1, "last_error": ""},
        )
        self._destination_row(conn, message.workspace, message.destination, last_delivered_at_us=at)

    @handles(pb.DeliveriesFailed)
    def _failed(self, conn: Connection, message: pb.DeliveriesFailed, event: RecordedEvent) -> None:
        self._update(
            conn,
            message.delivery_ids,
            {
                "attempts": outbox.c.attempts + 1,
                "try_at_us": _micros(message.retry_at),
                "last_error": message.error[:200],
            },
        )
        self._destination_row(
            conn,
            message.workspace,
            message.destination,
            last_error=message.error[:200],
            last_error_at_us=to_micros(event.occurred_at),
        )

    @handles(pb.DeliveriesDeadLettered)
    def _dead(self, conn: Connection, message: pb.DeliveriesDeadLettered, event: RecordedEvent) -> None:
        self._update(
            conn,
            message.delivery_ids,
            {"status": DEAD, "attempts": outbox.c.attempts + 1, "last_error": message.error[:200]},
        )
        self._destination_row(
            conn,
            message.workspace,
            message.destination,
            last_error=message.error[:200],
            last_error_at_us=to_micros(event.occurred_at),
        )

    @handles(pb.DeliveriesSuppressed)
    def _suppressed(self, conn: Connection, message: pb.DeliveriesSuppressed, event: RecordedEvent) -> None:
        by_reason: dict[str, list[str]] = {}
        for s in message.suppressions:
            by_reason.setdefault(s.reason[:200], []).append(s.delivery_id)
        for reason, ids in by_reason.items():
            self._update(conn, ids, {"status": SUPPRESSED, "last_error": reason})

    @handles(pb.DeliveriesReplayed)
    def _replayed(self, conn: Connection, message: pb.DeliveriesReplayed, event: RecordedEvent) -> None:
        self._write_queued(conn)
        conn.execute(
            outbox.update()
            .where(replayable(message))
            .values(status=QUEUED, attempts=0, try_at_us=to_micros(event.occurred_at), last_error="")
        )

    @handles(pb.RecipientErased)
    def _erased(self, conn: Connection, message: pb.RecipientErased, event: RecordedEvent) -> None:
        self._write_queued(conn)
        # A person is erased more than once (the data-subject request, then identity's
        # ProfileErased): the deletions an earlier erasure queued must still go.
        not_a_deletion = outbox.c.kind != pb.DELIVERY_KIND_DELETION
        conn.execute(
            outbox.update()
            .where(
                (outbox.c.workspace == message.workspace)
                & (outbox.c.profile_id == message.profile_id)
                & (outbox.c.status == QUEUED)
                & not_a_deletion
            )
            .values(status=DROPPED, last_error="erased")
        )
        conn.execute(
            outbox.update()
            .where(
                (outbox.c.workspace == message.workspace)
                & (outbox.c.profile_id == message.profile_id)
                & not_a_deletion
            )
            .values(erased=True)
        )
        conn.execute(
            recipients.delete().where(
                (recipients.c.workspace == message.workspace)
                & (recipients.c.profile_id == message.profile_id)
            )
        )

    # ------------------------------------------------------------------ audience backfills

    @handles(pb.AudienceBackfillRequested)
    def _backfill(
        self, conn: Connection, message: pb.AudienceBackfillRequested, event: RecordedEvent
    ) -> None:
        for segment in message.segments:
            key = (
                (backfills.c.workspace == message.workspace)
                & (backfills.c.destination == message.destination)
                & (backfills.c.segment == segment)
            )
            conn.execute(backfills.delete().where(key))  # named again: from its first page again
            conn.execute(
                backfills.insert().values(
                    workspace=message.workspace,
                    destination=message.destination,
                    segment=segment,
                    version=message.version,
                    page_token="",
                    done=False,
                    members=0,
                )
            )

    @handles(pb.AudienceBackfillPage)
    def _backfill_page(
        self, conn: Connection, message: pb.AudienceBackfillPage, event: RecordedEvent
    ) -> None:
        self._write_queued(conn)
        conn.execute(
            backfills.update()
            .where(
                (backfills.c.workspace == message.workspace)
                & (backfills.c.destination == message.destination)
                & (backfills.c.segment == message.segment)
            )
            .values(
                page_token=message.next_page_token,
                done=message.done,
                members=backfills.c.members + message.members,
            )
        )


def replayable(replay: pb.DeliveriesReplayed) -> sa.ColumnElement[bool]:
    """The outbox rows a replay queues again: its destination's dead letters, or what was delivered
    or dead-lettered within its time range; never what is waiting already, what was dropped
    (archived), what consent refused when it was due (a consent given later does not reach back;
    version 1 replays did queue it: `suppressed_too`), or what is about a person erased since (a deletion is not about anyone's data, so it is replayed)."""
    mine = (
        (outbox.c.workspace == replay.workspace)
        & (outbox.c.destination == replay.destination)
        & outbox.c.erased.is_(False)
    )
    if replay.dead_letters:
        return mine & (outbox.c.status == DEAD)
    chosen = mine & outbox.c.status.in_(
        [DELIVERED, DEAD, SUPPRESSED] if replay.suppressed_too else [DELIVERED, DEAD]
    )
    chosen = chosen & (outbox.c.queued_at_us >= _micros(replay.since))
    if replay.HasField("until"):
        chosen = chosen & (outbox.c.queued_at_us < _micros(replay.until))
    return chosen
