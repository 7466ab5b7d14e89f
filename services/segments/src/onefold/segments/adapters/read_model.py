"""The read model of the segments service (its projection), folded from its own log.

- `segments_definitions`: each workspace's definitions as last set (protobuf bytes), archived or not,
  with the log position that set them (a workspace's compiled definitions are cached by the
  highest of those positions).
- `segments_members`: who holds what now — one row per (workspace, definition, profile) for a
  segment's member, a profile with a tag or a computed trait's value. Values are personal and are
  not here: they stay sealed in the profile's state (adapters/profile_states.py) and its events.
  ListMembers pages over this table; a profile's current outputs are one indexed query.
- `segments_merges`: each profile's merges into another and separations from it, with their moment:
  which profile an id stood for at a past moment (`holder_at`), for as-of reads.

Membership rows are buffered per batch and written in `flush` (one executemany delete and one
executemany upsert for the whole batch), so a batch that moves many profiles costs two statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent, to_micros

PROJECTION_NAME = "segments"
metadata = sa.MetaData()

definitions = sa.Table(
    "segments_definitions",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False),
    sa.Column("definition", sa.LargeBinary, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
)

members = sa.Table(
    "segments_members",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("since_us", sa.BigInteger, nullable=False),
    sa.Column("definition_version", sa.Integer, nullable=False),
    sa.Index("segments_members_by_profile", "workspace", "profile_id"),
)

merges = sa.Table(
    "segments_merges",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True),
    sa.Column("at_us", sa.BigInteger, nullable=False),
    sa.Column("survivor_id", sa.String(64), nullable=False),  # "" = separated: itself again
)

MemberKey = tuple[str, str, str]  # (workspace, definition name, profile id)


class SegmentsReadModel(Handlers):
    """The projection: definitions into `segments_definitions`, change events into `segments_members`,
    merges and separations into `segments_merges`."""

    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = (definitions, members, merges)

    def __init__(self) -> None:
        # Per batch: the membership rows to write (None = the row goes), written once in `flush`.
        self._pending: dict[MemberKey, dict[str, Any] | None] = {}

    def reset(self, conn: Connection) -> None:
        self._pending.clear()
        for table in self.tables:
            conn.execute(table.delete())

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, conn, message, event)

    def flush(self, conn: Connection) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        gone = [{"w": k[0], "n": k[1], "p": k[2]} for k, row in pending.items() if row is None]
        if gone:
            conn.execute(
                members.delete().where(
                    members.c.workspace == sa.bindparam("w"),
                    members.c.name == sa.bindparam("n"),
                    members.c.profile_id == sa.bindparam("p"),
                ),
                gone,
            )
        rows = [row for row in pending.values() if row is not None]
        if rows:
            insert = (pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect).insert(members)
            updates = {c: insert.excluded[c] for c in ("kind", "since_us", "definition_version")}
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["workspace", "name", "profile_id"], set_=updates
                ),
                rows,
            )

    @handles(pb.DefinitionSet)
    def _definition_set(self, conn: Connection, message: pb.DefinitionSet, event: RecordedEvent) -> None:
        d = message.definition
        conn.execute(
            definitions.delete().where(
                definitions.c.workspace == message.workspace, definitions.c.name == d.name
            )
        )
        conn.execute(
            definitions.insert().values(
                workspace=message.workspace,
                name=d.name,
                kind=d.WhichOneof("kind") or "",
                version=d.version,
                archived=False,
                definition=d.SerializeToString(deterministic=True),
                position=event.position,
            )
        )

    @handles(pb.DefinitionArchived)
    def _definition_archived(
        self, conn: Connection, message: pb.DefinitionArchived, event: RecordedEvent
    ) -> None:
        row = conn.execute(
            sa.select(definitions.c.definition).where(
                definitions.c.workspace == message.workspace, definitions.c.name == message.name
            )
        ).first()
        if row is None:
            return
        definition = pb.Definition.FromString(bytes(row[0]))
        definition.archived = True
        definition.version = message.version
        definition.updated_by = message.actor
        definition.updated_at.FromMicroseconds(to_micros(event.recorded_at))
        conn.execute(
            definitions.update()
            .where(definitions.c.workspace == message.workspace, definitions.c.name == message.name)
            .values(
                archived=True,
                version=message.version,
                definition=definition.SerializeToString(deterministic=True),
                position=event.position,
            )
        )

    @handles(pb.SegmentEntered)
    def _entered(self, conn: Connection, message: pb.SegmentEntered, event: RecordedEvent) -> None:
        self._hold(message.workspace, message.segment, message.profile_id, "segment", message, event)

    @handles(pb.SegmentExited)
    def _exited(self, conn: Connection, message: pb.SegmentExited, event: RecordedEvent) -> None:
        self._pending[(message.workspace, message.segment, message.profile_id)] = None

    @handles(pb.TagChanged)
    def _tag(self, conn: Connection, message: pb.TagChanged, event: RecordedEvent) -> None:
        key = (message.workspace, message.tag, message.profile_id)
        if message.value:
            self._hold(*key, "model_tag" if message.model else "tag", message, event)
        else:
            self._pending[key] = None

    @handles(pb.ComputedTraitChanged)
    def _computed(self, conn: Connection, message: pb.ComputedTraitChanged, event: RecordedEvent) -> None:
        key = (message.workspace, message.name, message.profile_id)
        if message.value.WhichOneof("kind") in (None, "null_value"):
            self._pending[key] = None
        else:
            self._hold(*key, "computed_trait", message, event)

    @handles(pb.ProfileMerged)
    def _merged(self, conn: Connection, message: pb.ProfileMerged, event: RecordedEvent) -> None:
        self._link(conn, message.workspace, message.profile_id, message.survivor_id, event)

    @handles(pb.ProfileSeparated)
    def _separated(self, conn: Connection, message: pb.ProfileSeparated, event: RecordedEvent) -> None:
        self._link(conn, message.workspace, message.profile_id, "", event)

    def _link(
        self, conn: Connection, workspace: str, profile_id: str, survivor_id: str, event: RecordedEvent
    ) -> None:
        conn.execute(
            merges.insert().values(
                workspace=workspace,
                profile_id=profile_id,
                position=event.position,
                at_us=to_micros(event.occurred_at),
                survivor_id=survivor_id,
            )
        )

    def _hold(
        self, workspace: str, name: str, profile_id: str, kind: str, message: Any, event: RecordedEvent
    ) -> None:
        self._pending[(workspace, name, profile_id)] = {
            "workspace": workspace,
            "name": name,
            "profile_id": profile_id,
            "kind": kind,
            "since_us": to_micros(event.occurred_at),
            "definition_version": message.definition_version,
        }


def workspace_definitions(conn: Connection, workspace: str) -> tuple[int, list[pb.Definition]]:
    """(the highest position that set one, every definition of the workspace, archived included)."""
    rows = conn.execute(
        sa.select(definitions.c.definition, definitions.c.position)
        .where(definitions.c.workspace == workspace)
        .order_by(definitions.c.name)
    ).all()
    return max((int(r[1]) for r in rows), default=0), [pb.Definition.FromString(bytes(r[0])) for r in rows]


def definitions_position(conn: Connection, workspace: str) -> int:
    """The position of the workspace's latest definition change (0 = none): the cache key of its
    compiled definitions."""
    value = conn.execute(
        sa.select(sa.func.max(definitions.c.position)).where(definitions.c.workspace == workspace)
    ).scalar()
    return int(value or 0)


def held_by(conn: Connection, workspace: str, profile_ids: Sequence[str]) -> list[tuple[str, str, str]]:
    """(profile id, definition name, kind) of everything these profiles hold now."""
    return [
        (str(r[0]), str(r[1]), str(r[2]))
        for r in conn.execute(
            sa.select(members.c.profile_id, members.c.name, members.c.kind).where(
                members.c.workspace == workspace, members.c.profile_id.in_(list(profile_ids))
            )
        )
    ]


def holder_at(conn: Connection, workspace: str, profile_id: str, at: int) -> str:
    """The profile `profile_id` stood for at `at` (microseconds, inclusive): itself, or the profile it
    had been merged into by then and not separated from again, followed through merges of merges."""
    holder, seen = profile_id, {profile_id}
    while True:
        latest = conn.execute(
            sa.select(merges.c.survivor_id)
            .where(merges.c.workspace == workspace, merges.c.profile_id == holder, merges.c.at_us <= at)
            .order_by(merges.c.at_us.desc(), merges.c.position.desc())
            .limit(1)
        ).scalar()
        # `seen`: a merge chain never loops back, unless clocks of successive leaders disagreed.
        if not latest or latest in seen:
            return holder
        holder = str(latest)
        seen.add(holder)


def workspaces_with_definitions(conn: Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute(sa.select(definitions.c.workspace).distinct())]
