"""Read models of the identity service, folded from its own log. Nothing personal is stored here:
identifiers and trait values appear only as keyed hashes; their values stay encrypted in the log.

- `identity_profiles`: every profile id ever made, where it lives now (`merged_into`), when it was
  created (log position: the older profile survives a merge), protection, erasure, first/last seen
  and event count of the live profile.
- `identity_identifiers`: keyed hash -> its type and live profile; `split` marks an identifier an
  unmerge split along (it never merges again); `retired` one of an erased profile (never resolves).
- `identity_family`: profile -> every profile id whose log streams hold part of its history (itself,
  everything merged into it, and for a part of an unmerge the family it was split from).
- `identity_trait_index`: (trait name, keyed hash of its value) -> profile, for search by trait.
- `identity_rules`: the workspace's resolution rules (protobuf bytes).

The service's one write path (`Projector.record`) folds the events it appends into them in the same
transaction (with the messages in hand); a rebuild runs the same `handle` over the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.eventlog import schema as log_schema
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent, to_micros
from onefold.eventlog.store import EventStore
from onefold.identity.domain.streams import events_stream

PROJECTION_NAME = "identity"
metadata = sa.MetaData()

profiles = sa.Table(
    "identity_profiles",
    metadata,
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False, index=True),
    sa.Column("merged_into", sa.String(64), nullable=True, index=True),
    sa.Column("created_position", sa.BigInteger, nullable=False),
    sa.Column("protected", sa.Boolean, nullable=False, default=False),
    sa.Column("erased", sa.Boolean, nullable=False, default=False),
    sa.Column("first_seen", sa.BigInteger, nullable=True),  # microseconds since the epoch
    sa.Column("last_seen", sa.BigInteger, nullable=True),
    sa.Column("event_count", sa.BigInteger, nullable=False, default=0),
)

identifiers = sa.Table(
    "identity_identifiers",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False, index=True),
    sa.Column("linked_position", sa.BigInteger, nullable=False),
    sa.Column("split", sa.Boolean, nullable=False, default=False),
    sa.Column("retired", sa.Boolean, nullable=False, default=False),
)

family = sa.Table(
    "identity_family",
    metadata,
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),
)

trait_index = sa.Table(
    "identity_trait_index",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("trait_key", sa.String(64), primary_key=True),  # keyed hash of "name=value"
    sa.Column("profile_id", sa.String(64), primary_key=True),
)

rules = sa.Table(
    "identity_rules",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("rules", sa.LargeBinary, nullable=False),  # onefold.identity.v1.IdentityRules
    sa.Column("version", sa.BigInteger, nullable=False),
)


@dataclass
class _Stats:
    first: int
    last: int
    count: int


_RESOLVED = pb.EventResolved.DESCRIPTOR.full_name


def _insert_ignore(conn: Connection, table: sa.Table, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(table).on_conflict_do_nothing(), rows)
    else:
        conn.execute(table.insert().prefix_with("OR IGNORE"), rows)


def _upsert_identifier(conn: Connection, row: dict[str, object]) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(identifiers).values(row)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[identifiers.c.workspace, identifiers.c.key],
                set_={"profile_id": statement.excluded.profile_id, "type": statement.excluded.type},
            )
        )
    else:
        conn.execute(identifiers.insert().prefix_with("OR REPLACE"), [row])


# Adds a batch's counters to the profiles (built once: it is executed on every flush).
_ADD_STATS = (
    profiles.update()
    .where(profiles.c.profile_id == sa.bindparam("pid"))
    .values(
        first_seen=sa.func.coalesce(
            sa.case(
                (profiles.c.first_seen < sa.bindparam("first"), profiles.c.first_seen),
                else_=sa.bindparam("first"),
            ),
            sa.bindparam("first"),
        ),
        last_seen=sa.func.coalesce(
            sa.case(
                (profiles.c.last_seen > sa.bindparam("last"), profiles.c.last_seen),
                else_=sa.bindparam("last"),
            ),
            sa.bindparam("last"),
        ),
        event_count=profiles.c.event_count + sa.bindparam("count"),
    )
)


class IdentityProjection(Handlers):
    """The fold of the identity log into the tables above (a BufferedProjection: the per-event
    counters of EventResolved, new profiles, identifiers and trait keys are kept in memory and
    written once per batch, in `flush`; everything that reads or moves rows flushes first)."""

    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = (profiles, identifiers, family, trait_index, rules)

    def __init__(self, store: EventStore) -> None:
        # An unmerge re-reads the parts' earlier EventResolved events from the service's own log.
        self.store = store
        self._stats: dict[str, _Stats] = {}
        self._new_identifiers: dict[tuple[str, str], dict[str, object]] = {}
        self._new_profiles: list[dict[str, object]] = []
        self._trait_rows: list[dict[str, object]] = []

    def reset(self, conn: Connection) -> None:
        for table in self.tables:
            conn.execute(table.delete())
        self._stats.clear()
        self._new_identifiers.clear()
        self._new_profiles.clear()
        self._trait_rows.clear()

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, conn, event, message)

    @handles(pb.EventResolved)
    def _resolved(self, conn: Connection, event: RecordedEvent, message: pb.EventResolved) -> None:
        if not message.profile_id:
            return
        moment = to_micros(event.occurred_at)
        stats = self._stats.get(message.profile_id)
        if stats is None:
            self._stats[message.profile_id] = _Stats(moment, moment, 1)
        else:
            stats.first = min(stats.first, moment)
            stats.last = max(stats.last, moment)
            stats.count += 1

    @handles(pb.IdentifierLinked)
    def _linked(self, conn: Connection, event: RecordedEvent, message: pb.IdentifierLinked) -> None:
        # Buffered too: a new profile's identifiers are inserted together, once per batch.
        self._new_identifiers[(message.workspace, message.key)] = {
            "workspace": message.workspace,
            "key": message.key,
            "type": message.type,
            "profile_id": message.profile_id,
            "linked_position": event.position,
            "split": False,
            "retired": False,
        }

    @handles(pb.TraitsUpdated)
    def _traits(self, conn: Connection, event: RecordedEvent, message: pb.TraitsUpdated) -> None:
        # Buffered: an identify call carries traits, so this is on the hot path.
        self._trait_rows.extend(
            {"workspace": message.workspace, "trait_key": key, "profile_id": message.profile_id}
            for key in message.trait_keys
        )

    @handles(pb.ProfileCreated)
    def _created(self, conn: Connection, event: RecordedEvent, message: pb.ProfileCreated) -> None:
        self._new_profiles.append(
            {
                "profile_id": message.profile_id,
                "workspace": message.workspace,
                "created_position": event.position,
                "protected": False,
                "erased": False,
                "event_count": 0,
            }
        )

    @handles(pb.ProfilesMerged)
    def _merged(self, conn: Connection, event: RecordedEvent, message: pb.ProfilesMerged) -> None:
        self.flush(conn)
        self._merge(conn, message.workspace, message.survivor_id, message.merged_id)

    @handles(pb.ProfileUnmerged)
    def _unmerged(self, conn: Connection, event: RecordedEvent, message: pb.ProfileUnmerged) -> None:
        self.flush(conn)
        self._unmerge(conn, event, message)

    @handles(pb.ProfileProtectionSet)
    def _protection(self, conn: Connection, event: RecordedEvent, message: pb.ProfileProtectionSet) -> None:
        self.flush(conn)
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == message.profile_id)
            .values(protected=message.protected)
        )

    @handles(pb.IdentityRulesSet)
    def _rules(self, conn: Connection, event: RecordedEvent, message: pb.IdentityRulesSet) -> None:
        conn.execute(rules.delete().where(rules.c.workspace == message.workspace))
        conn.execute(
            rules.insert(),
            [
                {
                    "workspace": message.workspace,
                    "rules": message.rules.SerializeToString(deterministic=True),
                    "version": message.rules.version,
                }
            ],
        )

    @handles(pb.ProfileErased)
    def _erased(self, conn: Connection, event: RecordedEvent, message: pb.ProfileErased) -> None:
        self.flush(conn)
        ids = list(message.profile_ids)
        conn.execute(
            profiles.update().where(profiles.c.profile_id.in_(ids)).values(erased=True, protected=False)
        )
        for chunk in _chunks(list(message.keys)):
            conn.execute(
                identifiers.update()
                .where(identifiers.c.workspace == message.workspace, identifiers.c.key.in_(chunk))
                .values(retired=True)  # the profile stays named: a repeated erasure finds it
            )
        conn.execute(trait_index.delete().where(trait_index.c.profile_id.in_(ids)))

    def flush(self, conn: Connection) -> None:
        if self._trait_rows:
            rows, self._trait_rows = self._trait_rows, []
            _insert_ignore(conn, trait_index, rows)
        if self._new_profiles:
            created = self._new_profiles
            self._new_profiles = []
            conn.execute(profiles.insert(), created)
            conn.execute(
                family.insert(),
                [{"profile_id": row["profile_id"], "member_id": row["profile_id"]} for row in created],
            )
        if self._new_identifiers:
            rows = list(self._new_identifiers.values())
            self._new_identifiers.clear()
            existing: set[tuple[str, str]] = set()
            by_workspace: dict[str, list[str]] = {}
            for row in rows:
                by_workspace.setdefault(str(row["workspace"]), []).append(str(row["key"]))
            for workspace, keys in by_workspace.items():
                for chunk in _chunks(keys):
                    found = conn.execute(
                        sa.select(identifiers.c.key).where(
                            identifiers.c.workspace == workspace, identifiers.c.key.in_(chunk)
                        )
                    )
                    existing.update((workspace, key) for (key,) in found)
            fresh = [row for row in rows if (row["workspace"], row["key"]) not in existing]
            if fresh:
                conn.execute(identifiers.insert(), fresh)
            for row in rows:
                if (row["workspace"], row["key"]) in existing:  # re-linked after an unmerge or erasure
                    _upsert_identifier(conn, row)
        if self._stats:
            stats = self._stats
            self._stats = {}
            conn.execute(
                _ADD_STATS,
                [
                    {"pid": pid, "first": s.first, "last": s.last, "count": s.count}
                    for pid, s in stats.items()
                ],
            )

    # ------------------------------------------------------------------------------ merges

    def _merge(self, conn: Connection, workspace: str, survivor: str, merged: str) -> None:
        conn.execute(
            identifiers.update()
            .where(identifiers.c.workspace == workspace, identifiers.c.profile_id == merged)
            .values(profile_id=survivor)
        )
        row = conn.execute(
            sa.select(profiles.c.first_seen, profiles.c.last_seen, profiles.c.event_count).where(
                profiles.c.profile_id == merged
            )
        ).first()
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == merged)
            .values(merged_into=survivor, protected=False)
        )
        if row is not None and row.event_count:
            self._stats[survivor] = _Stats(row.first_seen, row.last_seen, row.event_count)
            conn.execute(profiles.update().where(profiles.c.profile_id == merged).values(event_count=0))
            self.flush(conn)
        members = [
            m for (m,) in conn.execute(sa.select(family.c.member_id).where(family.c.profile_id == merged))
        ]
        _insert_ignore(conn, family, [{"profile_id": survivor, "member_id": m} for m in members])
        moved = [
            k
            for (k,) in conn.execute(
                sa.select(trait_index.c.trait_key).where(trait_index.c.profile_id == merged)
            )
        ]
        _insert_ignore(
            conn,
            trait_index,
            [{"workspace": workspace, "trait_key": k, "profile_id": survivor} for k in moved],
        )
        conn.execute(trait_index.delete().where(trait_index.c.profile_id == merged))

    def _unmerge(self, conn: Connection, event: RecordedEvent, message: pb.ProfileUnmerged) -> None:
        workspace = message.workspace
        original = message.profile_id
        members = [
            m for (m,) in conn.execute(sa.select(family.c.member_id).where(family.c.profile_id == original))
        ]
        owner_of: dict[str, str] = {}
        for part in message.parts:
            owner_of.update(dict.fromkeys(part.keys, part.profile_id))
            known = conn.execute(
                sa.select(profiles.c.profile_id).where(profiles.c.profile_id == part.profile_id)
            ).first()
            if known is None:
                conn.execute(
                    profiles.insert(),
                    [
                        {
                            "profile_id": part.profile_id,
                            "workspace": workspace,
                            "created_position": event.position,
                            "protected": False,
                            "erased": False,
                            "event_count": 0,
                        }
                    ],
                )
            conn.execute(
                profiles.update()
                .where(profiles.c.profile_id == part.profile_id)
                .values(merged_into=None, first_seen=None, last_seen=None, event_count=0)
            )
            _insert_ignore(conn, family, [{"profile_id": part.profile_id, "member_id": m} for m in members])
            for chunk in _chunks(list(part.keys)):
                conn.execute(
                    identifiers.update()
                    .where(identifiers.c.workspace == workspace, identifiers.c.key.in_(chunk))
                    .values(profile_id=part.profile_id)
                )
        if message.split_key:
            conn.execute(
                identifiers.update()
                .where(identifiers.c.workspace == workspace, identifiers.c.key == message.split_key)
                .values(split=True)
            )
        # Each event (and its counters) goes with the profile holding its first identifier that anyone
        # still holds (as the application reads it: `_belongs`); here, when that is one of the parts.
        streams = [events_stream(workspace, m) for m in members]
        found: list[tuple[pb.EventResolved, int]] = []  # (event, occurred µs)
        for chunk in _chunks(streams):
            for earlier in self.store.read_streams(
                chunk, types=[_RESOLVED], before_position=event.position, conn=conn
            ):
                # Only public fields are read (keys, profile ids): no subject key is needed.
                resolved = self.store.decode(earlier, conn=conn, decrypt=False)
                assert isinstance(resolved, pb.EventResolved)
                found.append((resolved, to_micros(earlier.occurred_at)))
        holders: dict[str, str] = {}
        for chunk in _chunks(sorted({key for resolved, _ in found for key in resolved.keys})):
            rows = conn.execute(
                sa.select(identifiers.c.key, identifiers.c.profile_id).where(
                    identifiers.c.workspace == workspace,
                    identifiers.c.key.in_(chunk),
                    identifiers.c.retired.is_(False),
                )
            )
            holders.update((key, profile_id) for key, profile_id in rows)
        parts = set(owner_of.values())
        for resolved, occurred in found:
            part_id = next((holders[k] for k in resolved.keys if k in holders), "")
            if part_id not in parts:
                continue
            stats = self._stats.get(part_id)
            if stats is None:
                self._stats[part_id] = _Stats(occurred, occurred, 1)
            else:
                stats.first, stats.last, stats.count = (
                    min(stats.first, occurred),
                    max(stats.last, occurred),
                    stats.count + 1,
                )
        self.flush(conn)


class Located(NamedTuple):
    """A profile reference looked up in one statement (one snapshot), with the log's state then:
    its head position and erasure epoch (what a cache of profiles follows). Without a match,
    everything but `head` and `erasure_epoch` is None."""

    head: int
    erasure_epoch: int
    profile_id: str | None
    retired: bool | None  # of the identifier looked up (False for a lookup by profile id)
    merged_into: str | None
    workspace: str | None
    protected: bool | None
    erased: bool | None
    first_seen: int | None
    last_seen: int | None
    event_count: int | None


# Plain SQL (the same on both databases but for the placeholder), written once: these lookups
# answer every GetProfile, and Core's per-call statement building cost more than the query.
_LOG_STATE = (
    f"(SELECT max(position) FROM {log_schema.events.name}), "
    f"(SELECT value FROM {log_schema.eventlog_state.name} WHERE name = '{log_schema.ERASURE_EPOCH}')"
)
_PROFILE_COLUMNS = (
    "p.merged_into, p.workspace, p.protected, p.erased, p.first_seen, p.last_seen, p.event_count"
)
_BY_KEY = (
    f"SELECT {_LOG_STATE}, i.profile_id, i.retired, {_PROFILE_COLUMNS} FROM (SELECT 1 AS one) AS one "
    f"LEFT JOIN {identifiers.name} AS i ON i.workspace = :workspace AND i.key = :key "
    f"LEFT JOIN {profiles.name} AS p ON p.profile_id = i.profile_id"
)
_BY_ID = (
    f"SELECT {_LOG_STATE}, p.profile_id, 0, {_PROFILE_COLUMNS} FROM (SELECT 1 AS one) AS one "
    f"LEFT JOIN {profiles.name} AS p ON p.profile_id = :profile_id"
)
_PARAMETERS = ("workspace", "key", "profile_id")


def _for_driver(sql: str, paramstyle: str) -> str:
    for name in _PARAMETERS:
        sql = sql.replace(f":{name}", "?" if paramstyle == "qmark" else f"%({name})s")
    return sql


_SQL = {
    (style, by_key): _for_driver(_BY_KEY if by_key else _BY_ID, style)
    for style in ("qmark", "pyformat")
    for by_key in (True, False)
}


def locate(conn: Connection, workspace: str, *, key: str = "", profile_id: str = "") -> Located:
    """The profile holding the identifier `key` (in `workspace`), or else the profile `profile_id`."""
    style = conn.dialect.paramstyle
    params = {"workspace": workspace, "key": key} if key else {"profile_id": profile_id}
    row = conn.exec_driver_sql(
        _SQL[style, bool(key)], tuple(params.values()) if style == "qmark" else params
    ).one()
    head, epoch, found, retired, merged_into, owner, protected, erased, first, last, count = row
    if found is None:
        return Located(int(head or 0), int(epoch or 0), None, None, None, None, None, None, None, None, None)
    return Located(
        int(head or 0),
        int(epoch or 0),
        found,
        bool(retired),
        merged_into,
        owner,
        bool(protected),
        bool(erased),
        first,
        last,
        count,
    )


def _chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
