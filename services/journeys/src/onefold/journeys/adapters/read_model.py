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
from typing import Any

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
InstanceKey = tuple[str, str, str, str]  # (workspace, journey, profile id, entity key)
EntryKey = tuple[str, str, str, str, int]  # (workspace, journey, profile id, entity key, entry seq)
Row = dict[str, Any]
INSTANCE_KEY = ("workspace", "journey", "profile_id", "entity_key")
ENTRY_KEY = (*INSTANCE_KEY, "entry_seq")


def _instance_key(ref: pb.InstanceRef) -> InstanceKey:
    return (ref.workspace, ref.journey, ref.profile_id, ref.entity_key)


def _entry_key(ref: pb.InstanceRef) -> EntryKey:
    return (ref.workspace, ref.journey, ref.profile_id, ref.entity_key, ref.entry_seq)


def _update_many(conn: Connection, table: sa.Table, where: Sequence[str], pending: dict[Any, Row]) -> None:
    """One executemany UPDATE per set of columns changed: `pending` maps each row's key (the values
    of the `where` columns) to the columns it sets."""
    by_columns: dict[tuple[str, ...], list[Row]] = {}
    for key, values in pending.items():
        params = {f"w_{c}": v for c, v in zip(where, key, strict=True)}
        params.update({f"v_{c}": v for c, v in values.items()})
        by_columns.setdefault(tuple(sorted(values)), []).append(params)
    for columns, rows in by_columns.items():
        conn.execute(
            table.update()
            .where(sa.and_(*(table.c[c] == sa.bindparam(f"w_{c}") for c in where)))
            .values({c: sa.bindparam(f"v_{c}") for c in columns}),
            rows,
        )


class JourneysReadModel(Handlers):
    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = (catalog, versions, schedules, templates, instances, outbox, tally, entries)

    def __init__(self) -> None:
        # An entry or a message changes its rows several times in one batch (entered, its first step,
        # its wait; queued, sent, delivered), so instances, entries and the outbox are kept here per
        # batch and written once in `flush`, each table in a few executemany statements; counters
        # are summed and written as one upsert each. Definitions, templates and schedules (rare)
        # are written as they come.
        self._tally: dict[TallyKey, float] = {}
        # Instances entered in the batch, whole rows (an entry rewrites every column), and the
        # changes to rows entered before it, by (instance, entry seq): an event of another entry
        # than the row's changes nothing.
        self._instances: dict[InstanceKey, Row] = {}
        self._instance_changes: dict[InstanceKey, dict[int, Row]] = {}
        # Entries made in the batch; splits of earlier ones; earlier ones reaching a goal, with the
        # tally key their first conversion counts under (decided in `flush`, against the table).
        self._entries: dict[EntryKey, Row] = {}
        self._entry_splits: dict[EntryKey, bool] = {}
        self._conversions: dict[EntryKey, TallyKey] = {}
        # Messages queued in the batch; changes to earlier ones; outcomes of earlier ones as
        # (workspace, journey, version, status), counted in `flush` under the step the row holds.
        self._messages: dict[str, Row] = {}
        self._message_changes: dict[str, Row] = {}
        self._outcomes: dict[str, list[tuple[str, str, int, str]]] = {}

    def reset(self, conn: Connection) -> None:
        self._clear()
        for table in self.tables:
            conn.execute(table.delete())

    def _clear(self) -> None:
        for buffer in (
            self._tally,
            self._instances,
            self._instance_changes,
            self._entries,
            self._entry_splits,
            self._conversions,
            self._messages,
            self._message_changes,
            self._outcomes,
        ):
            buffer.clear()

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, conn, message, event)

    def flush(self, conn: Connection) -> None:
        dialect = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
        try:
            self._flush_instances(conn, dialect)
            self._flush_entries(conn)
            self._flush_outbox(conn)
            self._flush_tally(conn, dialect)
        finally:  # a failed flush rolls its transaction back: nothing of it is written later
            self._clear()

    def _flush_instances(self, conn: Connection, dialect: Any) -> None:
        if self._instances:
            insert = dialect.insert(instances)
            columns = [c.name for c in instances.columns if c.name not in INSTANCE_KEY]
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=list(INSTANCE_KEY), set_={c: insert.excluded[c] for c in columns}
                ),
                list(self._instances.values()),
            )
        if self._instance_changes:
            _update_many(
                conn,
                instances,
                ENTRY_KEY,
                {
                    (*key, seq): values
                    for key, by_seq in self._instance_changes.items()
                    for seq, values in by_seq.items()
                },
            )

    def _flush_entries(self, conn: Connection) -> None:
        if self._conversions:
            # Read before this batch's entries are written: an entry made after its goal (in the
            # batch's order) did not convert, as the goal found no row.
            key_columns = [entries.c[c] for c in ENTRY_KEY]
            not_yet: list[EntryKey] = [
                (str(w), str(j), str(p), str(e), int(seq))
                for w, j, p, e, seq in conn.execute(
                    sa.select(*key_columns).where(
                        sa.tuple_(*key_columns).in_(list(self._conversions)) & entries.c.converted.is_(False)
                    )
                )
            ]
            for key in not_yet:
                self._add(self._conversions[key], 1.0)
            _update_many(conn, entries, ENTRY_KEY, {key: {"converted": True} for key in not_yet})
        if self._entries:
            conn.execute(entries.insert(), list(self._entries.values()))
        if self._entry_splits:
            _update_many(
                conn, entries, ENTRY_KEY, {key: {"held_out": c} for key, c in self._entry_splits.items()}
            )

    def _flush_outbox(self, conn: Connection) -> None:
        if self._outcomes:
            # Read before this batch's messages are written: an outcome of a message queued after it
            # (in the batch's order) found no row, so counted nowhere.
            steps = {
                str(message_id): str(step)
                for message_id, step in conn.execute(
                    sa.select(outbox.c.message_id, outbox.c.step).where(
                        outbox.c.message_id.in_(list(self._outcomes))
                    )
                )
            }
            for message_id, outcomes in self._outcomes.items():
                step = steps.get(message_id)
                if step is not None:
                    for workspace, journey, version, status in outcomes:
                        self._add((workspace, journey, version, step, status), 1.0)
        if self._messages:
            conn.execute(outbox.insert(), list(self._messages.values()))
        if self._message_changes:
            _update_many(conn, outbox, ("message_id",), {(k,): v for k, v in self._message_changes.items()})

    def _flush_tally(self, conn: Connection, dialect: Any) -> None:
        if not self._tally:
            return
        insert = dialect.insert(tally)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["workspace", "journey", "version", "step", "counter"],
                set_={"value": tally.c.value + insert.excluded.value},
            ),
            [
                {"workspace": w, "journey": j, "version": v, "step": s, "counter": c, "value": n}
                for (w, j, v, s, c), n in self._tally.items()
            ],
        )

    def _count(self, ref: pb.InstanceRef, step: str, counter: str, by: float = 1.0) -> None:
        self._add((ref.workspace, ref.journey, ref.version, step, counter), by)

    def _add(self, key: TallyKey, by: float) -> None:
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
        key = _instance_key(ref)
        # The whole row is rewritten: changes held for the instance's earlier entries are moot.
        self._instance_changes.pop(key, None)
        self._instances[key] = {
            **dict(zip(INSTANCE_KEY, key, strict=True)),
            "version": ref.version,
            "entry_seq": ref.entry_seq,
            "active": True,
            "step": "",
            "fires_at_us": None,
            "entered_at_us": to_micros(event.occurred_at),
        }
        entry = _entry_key(ref)
        # A split of this entry held before it was made found no row: it changes nothing.
        self._entry_splits.pop(entry, None)
        self._entries[entry] = {
            **dict(zip(ENTRY_KEY, entry, strict=True)),
            "version": ref.version,
            "held_out": None,
            "converted": False,
        }
        self._count(ref, JOURNEY_LEVEL, "entered")

    def _change_current(self, ref: pb.InstanceRef, **values: object) -> None:
        """Change the instance's row if it is still at this entry: events of an earlier entry (a late
        provider answer) leave the current entry's row alone."""
        key = _instance_key(ref)
        row = self._instances.get(key)
        if row is not None:
            if row["entry_seq"] == ref.entry_seq:
                row.update(values)
        else:
            self._instance_changes.setdefault(key, {}).setdefault(ref.entry_seq, {}).update(values)

    @handles(pb.StepEntered)
    def _step(self, conn: Connection, message: pb.StepEntered, event: RecordedEvent) -> None:
        self._change_current(message.instance, step=message.step, fires_at_us=None)
        self._count(message.instance, message.step, "entered")

    @handles(pb.WaitScheduled)
    def _wait(self, conn: Connection, message: pb.WaitScheduled, event: RecordedEvent) -> None:
        fires = message.fires_at.seconds * 1_000_000 + message.fires_at.nanos // 1000
        self._change_current(message.instance, fires_at_us=fires)

    @handles(pb.SplitAssigned)
    def _split(self, conn: Connection, message: pb.SplitAssigned, event: RecordedEvent) -> None:
        entry = _entry_key(message.instance)
        row = self._entries.get(entry)
        if row is not None:
            row["held_out"] = message.control
        else:
            self._entry_splits[entry] = message.control

    @handles(pb.JourneyExited)
    def _exited(self, conn: Connection, message: pb.JourneyExited, event: RecordedEvent) -> None:
        self._change_current(message.instance, active=False, fires_at_us=None)
        self._count(message.instance, JOURNEY_LEVEL, f"exit:{message.reason}"[:120])

    @handles(pb.GoalReached)
    def _goal(self, conn: Connection, message: pb.GoalReached, event: RecordedEvent) -> None:
        ref = message.instance
        entry = _entry_key(ref)
        row = self._entries.get(entry)
        if row is None:  # an earlier entry: its first conversion is counted in `flush`
            self._conversions.setdefault(
                entry, (ref.workspace, ref.journey, ref.version, JOURNEY_LEVEL, "converted")
            )
        elif not row["converted"]:  # an entry converts once, however many goals it reaches
            row["converted"] = True
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
        # A deferral of this id held before it was queued found no row: it changes nothing.
        self._message_changes.pop(message.message_id, None)
        self._messages[message.message_id] = {
            "message_id": message.message_id,
            "workspace": ref.workspace,
            "journey": ref.journey,
            "version": ref.version,
            "profile_id": ref.profile_id,
            "entity_key": ref.entity_key,
            "entry_seq": ref.entry_seq,
            "step": message.step,
            "channel": message.channel,
            "purpose": message.purpose,
            "template": message.template,
            "status": "queued",
            "queued_at_us": at,
            "try_at_us": at,
            "sent_at_us": None,
        }
        self._count(ref, message.step, "queued")

    def _change_message(self, message_id: str, **values: object) -> Row | None:
        """Change the message's row; returns it when it was queued in this batch."""
        row = self._messages.get(message_id)
        if row is not None:
            row.update(values)
        else:
            self._message_changes.setdefault(message_id, {}).update(values)
        return row

    @handles(pb.MessageDeferred)
    def _deferred(self, conn: Connection, message: pb.MessageDeferred, event: RecordedEvent) -> None:
        until = message.until.seconds * 1_000_000 + message.until.nanos // 1000
        self._change_message(message.message_id, try_at_us=until)

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
        ref = message.instance
        row = self._change_message(message.message_id, **values)
        if row is not None:
            self._count(ref, row["step"], status)
        else:  # counted in `flush` under the step of the row, if there is one
            self._outcomes.setdefault(message.message_id, []).append(
                (ref.workspace, ref.journey, ref.version, status)
            )
