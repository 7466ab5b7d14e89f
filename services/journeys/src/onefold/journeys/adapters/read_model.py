"""The read model of the journeys service (its projection), folded from its own log.

- `journeys_catalog`: each journey's lifecycle (status, latest and published version) and
  `journeys_versions` every version's code (protobuf bytes), immutable once saved;
- `journeys_templates`: each template's latest version;
- `journeys_instances`: each (journey, profile, entity key)'s latest entry — where it stands and
  when its timer fires (the timer loop's index), whether a split held it out;
- `journeys_outbox`: every message queued, with its status and the moment it may be tried (the
  sender's index); ids, channel and template only — what it said is rendered at send time;
- `journeys_tally`: counters per (journey, version, step) — entries, exits by reason, per step what
  was entered, queued, sent, suppressed, delivered, failed; conversions and revenue (a sum over
  people is not a person's); `journeys_entries` per entry whether it was treated or held out and
  whether it converted, for the uplift.

Nothing here is personal beyond ids: entry properties, trait values, addresses and revenue per
person stay sealed in the events (and the facts table, adapters/profile_facts.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent, to_micros
from onefold.journeys.domain.instance import MESSAGE_OUTCOME

PROJECTION_NAME = "journeys"
JOURNEY_LEVEL = ""  # the tally's step for counters of the whole journey
metadata = sa.MetaData()

catalog = sa.Table(
    "journeys_catalog",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latest", sa.Integer, nullable=False),
    sa.Column("published", sa.Integer, nullable=False),  # 0: never published
    sa.Column("paused", sa.Boolean, nullable=False),
)

versions = sa.Table(
    "journeys_versions",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("journey", sa.LargeBinary, nullable=False),
)

schedules = sa.Table(
    "journeys_schedules",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    # The schedule's last moment that ran (or the first publish): the next run is its next moment.
    sa.Column("after_us", sa.BigInteger, nullable=False),
)

templates = sa.Table(
    "journeys_templates",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("channel", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("template", sa.LargeBinary, nullable=False),
)

instances = sa.Table(
    "journeys_instances",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("entity_key", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("entry_seq", sa.Integer, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("fires_at_us", sa.BigInteger, nullable=True),  # null: not waiting on time
    sa.Column("entered_at_us", sa.BigInteger, nullable=False),
    sa.Index("journeys_instances_due", "fires_at_us"),
    sa.Index("journeys_instances_by_profile", "workspace", "profile_id"),
)

outbox = sa.Table(
    "journeys_outbox",
    metadata,
    sa.Column("message_id", sa.String(80), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False),
    sa.Column("journey", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),
    sa.Column("entity_key", sa.String(200), nullable=False),
    sa.Column("entry_seq", sa.Integer, nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("channel", sa.Integer, nullable=False),
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("template", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # queued, sent, suppressed, delivered, failed
    sa.Column("queued_at_us", sa.BigInteger, nullable=False),
    sa.Column("try_at_us", sa.BigInteger, nullable=False),  # when a queued message may be tried
    sa.Column("sent_at_us", sa.BigInteger, nullable=True),
    sa.Index("journeys_outbox_queued", "status", "try_at_us"),
    sa.Index("journeys_outbox_by_profile", "workspace", "profile_id", "channel"),
)

tally = sa.Table(
    "journeys_tally",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("step", sa.String(64), primary_key=True),
    sa.Column("counter", sa.String(120), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)

entries = sa.Table(
    "journeys_entries",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("entity_key", sa.String(200), primary_key=True),
    sa.Column("entry_seq", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("held_out", sa.Boolean, nullable=True),  # null: no split reached
    sa.Column("converted", sa.Boolean, nullable=False),
)

TallyKey = tuple[str, str, int, str, str]  # (workspace, journey, version, step, counter)


def _ref_where(table: sa.Table, ref: pb.InstanceRef) -> sa.ColumnElement[bool]:
    return sa.and_(
        table.c.workspace == ref.workspace,
        table.c.journey == ref.journey,
        table.c.profile_id == ref.profile_id,
        table.c.entity_key == ref.entity_key,
    )


class JourneysReadModel(Handlers):
    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = (catalog, versions, schedules, templates, instances, outbox, tally, entries)

    def __init__(self) -> None:
        # Counters are summed per batch and written once in `flush` (one upsert per counter).
        self._tally: dict[TallyKey, float] = {}

    def reset(self, conn: Connection) -> None:
        self._tally.clear()
        for table in self.tables:
            conn.execute(table.delete())

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, conn, message, event)

    def flush(self, conn: Connection) -> None:
        pending, self._tally = self._tally, {}
        if not pending:
            return
        insert = (pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect).insert(tally)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["workspace", "journey", "version", "step", "counter"],
                set_={"value": tally.c.value + insert.excluded.value},
            ),
            [
                {"workspace": w, "journey": j, "version": v, "step": s, "counter": c, "value": n}
                for (w, j, v, s, c), n in pending.items()
            ],
        )

    def _count(self, ref: pb.InstanceRef, step: str, counter: str, by: float = 1.0) -> None:
        key = (ref.workspace, ref.journey, ref.version, step, counter)
        self._tally[key] = self._tally.get(key, 0.0) + by

    # -------------------------------------------------------------------------- definitions

    @handles(pb.JourneyDraftSaved)
    def _saved(self, conn: Connection, message: pb.JourneyDraftSaved, event: RecordedEvent) -> None:
        j = message.journey
        conn.execute(
            versions.insert().values(
                workspace=message.workspace,
                name=j.name,
                version=j.version,
                journey=j.SerializeToString(deterministic=True),
            )
        )
        where = (catalog.c.workspace == message.workspace) & (catalog.c.name == j.name)
        if conn.execute(sa.select(catalog.c.name).where(where)).first() is None:
            conn.execute(
                catalog.insert().values(
                    workspace=message.workspace,
                    name=j.name,
                    status=pb.JOURNEY_STATUS_DRAFT,
                    latest=j.version,
                    published=0,
                    paused=False,
                )
            )
        else:
            conn.execute(catalog.update().where(where).values(latest=j.version))

    @handles(pb.JourneyPublished)
    def _published(self, conn: Connection, message: pb.JourneyPublished, event: RecordedEvent) -> None:
        self._set_status(
            conn, message.workspace, message.name, pb.JOURNEY_STATUS_PUBLISHED, published=message.version
        )
        where = (schedules.c.workspace == message.workspace) & (schedules.c.name == message.name)
        if conn.execute(sa.select(schedules.c.name).where(where)).first() is None:
            # A schedule runs from its first publish on: moments before it are not made up for.
            conn.execute(
                schedules.insert().values(
                    workspace=message.workspace, name=message.name, after_us=to_micros(event.occurred_at)
                )
            )

    @handles(pb.ScheduledEntryRan)
    def _schedule_ran(self, conn: Connection, message: pb.ScheduledEntryRan, event: RecordedEvent) -> None:
        fired = message.fire_at.seconds * 1_000_000 + message.fire_at.nanos // 1000
        conn.execute(
            schedules.update()
            .where((schedules.c.workspace == message.workspace) & (schedules.c.name == message.name))
            .values(after_us=fired)
        )
        self._count(
            pb.InstanceRef(workspace=message.workspace, journey=message.name, version=message.version),
            JOURNEY_LEVEL,
            "scheduled_runs",
        )

    @handles(pb.JourneyPaused)
    def _paused(self, conn: Connection, message: pb.JourneyPaused, event: RecordedEvent) -> None:
        self._set_status(conn, message.workspace, message.name, pb.JOURNEY_STATUS_PAUSED)

    @handles(pb.JourneyArchived)
    def _archived(self, conn: Connection, message: pb.JourneyArchived, event: RecordedEvent) -> None:
        self._set_status(conn, message.workspace, message.name, pb.JOURNEY_STATUS_ARCHIVED)

    def _set_status(
        self, conn: Connection, workspace: str, name: str, status: int, *, published: int | None = None
    ) -> None:
        values: dict[str, object] = {"status": status, "paused": status == pb.JOURNEY_STATUS_PAUSED}
        if published is not None:
            values["published"] = published
        conn.execute(
            catalog.update()
            .where((catalog.c.workspace == workspace) & (catalog.c.name == name))
            .values(**values)
        )

    @handles(pb.TemplateSaved)
    def _template(self, conn: Connection, message: pb.TemplateSaved, event: RecordedEvent) -> None:
        t = message.template
        conn.execute(
            templates.delete().where(
                (templates.c.workspace == message.workspace) & (templates.c.name == t.name)
            )
        )
        conn.execute(
            templates.insert().values(
                workspace=message.workspace,
                name=t.name,
                channel=t.channel,
                version=t.version,
                template=t.SerializeToString(deterministic=True),
            )
        )

    # -------------------------------------------------------------------------- instances

    @handles(pb.JourneyEntered)
    def _entered(self, conn: Connection, message: pb.JourneyEntered, event: RecordedEvent) -> None:
        ref = message.instance
        row = {
            "version": ref.version,
            "entry_seq": ref.entry_seq,
            "active": True,
            "step": "",
            "fires_at_us": None,
            "entered_at_us": to_micros(event.occurred_at),
        }
        updated = conn.execute(instances.update().where(_ref_where(instances, ref)).values(**row))
        if updated.rowcount == 0:
            conn.execute(
                instances.insert().values(
                    workspace=ref.workspace,
                    journey=ref.journey,
                    profile_id=ref.profile_id,
                    entity_key=ref.entity_key,
                    **row,
                )
            )
        conn.execute(
            entries.insert().values(
                workspace=ref.workspace,
                journey=ref.journey,
                profile_id=ref.profile_id,
                entity_key=ref.entity_key,
                entry_seq=ref.entry_seq,
                version=ref.version,
                held_out=None,
                converted=False,
            )
        )
        self._count(ref, JOURNEY_LEVEL, "entered")

    def _current(self, ref: pb.InstanceRef) -> sa.ColumnElement[bool]:
        # Events of an earlier entry (a late provider answer) leave the current entry's row alone.
        return _ref_where(instances, ref) & (instances.c.entry_seq == ref.entry_seq)

    @handles(pb.StepEntered)
    def _step(self, conn: Connection, message: pb.StepEntered, event: RecordedEvent) -> None:
        conn.execute(
            instances.update()
            .where(self._current(message.instance))
            .values(step=message.step, fires_at_us=None)
        )
        self._count(message.instance, message.step, "entered")

    @handles(pb.WaitScheduled)
    def _wait(self, conn: Connection, message: pb.WaitScheduled, event: RecordedEvent) -> None:
        fires = message.fires_at.seconds * 1_000_000 + message.fires_at.nanos // 1000
        conn.execute(instances.update().where(self._current(message.instance)).values(fires_at_us=fires))

    @handles(pb.SplitAssigned)
    def _split(self, conn: Connection, message: pb.SplitAssigned, event: RecordedEvent) -> None:
        ref = message.instance
        conn.execute(
            entries.update()
            .where(_ref_where(entries, ref) & (entries.c.entry_seq == ref.entry_seq))
            .values(held_out=message.control)
        )

    @handles(pb.JourneyExited)
    def _exited(self, conn: Connection, message: pb.JourneyExited, event: RecordedEvent) -> None:
        conn.execute(
            instances.update().where(self._current(message.instance)).values(active=False, fires_at_us=None)
        )
        self._count(message.instance, JOURNEY_LEVEL, f"exit:{message.reason}"[:120])

    @handles(pb.GoalReached)
    def _goal(self, conn: Connection, message: pb.GoalReached, event: RecordedEvent) -> None:
        ref = message.instance
        where = _ref_where(entries, ref) & (entries.c.entry_seq == ref.entry_seq)
        first = conn.execute(sa.select(entries.c.converted).where(where)).scalar()
        if first is False:  # an entry converts once, however many goals it reaches
            conn.execute(entries.update().where(where).values(converted=True))
            self._count(ref, JOURNEY_LEVEL, "converted")
        self._count(ref, JOURNEY_LEVEL, "revenue", message.revenue)

    @handles(pb.TraitUpdateRequested)
    def _trait(self, conn: Connection, message: pb.TraitUpdateRequested, event: RecordedEvent) -> None:
        self._count(message.instance, message.step, "traits_requested")

    # -------------------------------------------------------------------------- messages

    @handles(pb.MessageQueued)
    def _queued(self, conn: Connection, message: pb.MessageQueued, event: RecordedEvent) -> None:
        ref = message.instance
        at = to_micros(event.occurred_at)
        conn.execute(
            outbox.insert().values(
                message_id=message.message_id,
                workspace=ref.workspace,
                journey=ref.journey,
                version=ref.version,
                profile_id=ref.profile_id,
                entity_key=ref.entity_key,
                entry_seq=ref.entry_seq,
                step=message.step,
                channel=message.channel,
                purpose=message.purpose,
                template=message.template,
                status="queued",
                queued_at_us=at,
                try_at_us=at,
                sent_at_us=None,
            )
        )
        self._count(ref, message.step, "queued")

    @handles(pb.MessageDeferred)
    def _deferred(self, conn: Connection, message: pb.MessageDeferred, event: RecordedEvent) -> None:
        until = message.until.seconds * 1_000_000 + message.until.nanos // 1000
        conn.execute(outbox.update().where(outbox.c.message_id == message.message_id).values(try_at_us=until))

    @handles(pb.MessageSent, pb.MessageSuppressed, pb.MessageDelivered, pb.MessageFailed)
    def _outcome(
        self,
        conn: Connection,
        message: pb.MessageSent | pb.MessageSuppressed | pb.MessageDelivered | pb.MessageFailed,
        event: RecordedEvent,
    ) -> None:
        status = MESSAGE_OUTCOME[type(message)]
        values: dict[str, object] = {"status": status}
        if isinstance(message, pb.MessageSent):
            values["sent_at_us"] = to_micros(event.occurred_at)
        step = conn.execute(
            outbox.update()
            .where(outbox.c.message_id == message.message_id)
            .values(**values)
            .returning(outbox.c.step)
        ).scalar()
        if step is not None:
            self._count(message.instance, step, status)
