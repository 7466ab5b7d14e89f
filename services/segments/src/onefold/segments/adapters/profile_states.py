"""What the segments service keeps per profile besides its log, in its own database.

- `segments_profile_states`: each profile's `ProfileState` (domain/fold.py) — accumulators, traits,
  the outputs last emitted, timers — sealed whole under the profile's data key, with its earliest
  timer in the clear (indexed), so the timer loop finds what is due without opening anything.
- `segments_history`: what identity sent about each profile (events and traits, with their
  identifier keys), one sealed `HistoryBlock` per profile per consumed batch: a new definition is
  backfilled from it and an unmerged profile's parts are rebuilt from it.
- `segments_aliases`: a profile merged into another -> the survivor that now holds its state.
- `segments_backfills`: passes over every profile of a workspace (a definition set or archived, a
  scheduled BATCH run), with the cursor they reached, so a restart resumes them.
- `segments_schedules`: when each scheduled definition (BATCH, RFM by quintiles) last ran, and the
  RFM quintile boundaries that run computed.

These are written in the same transaction as the change events and the subscriber's tracking row
(they are what the events were decided from). Nothing personal is readable without the profile's
key: shredding it (an erasure) leaves the sealed rows unreadable, and erasure deletes them too.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.cipher import DataKeyCipher
from onefold.eventlog.mapper import associated_data
from onefold.eventlog.store import EventStore
from onefold.segments.domain.definitions import CutOffs
from onefold.segments.domain.fold import ProfileState
from onefold.segments.domain.streams import subject_of

metadata = sa.MetaData()
_IN_CHUNK = 500
KEPT_STATES = 10_000  # states kept in memory between batches (a few KB each)

profile_states = sa.Table(
    "segments_profile_states",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(160), nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("next_timer_us", sa.BigInteger, nullable=True),
    sa.Index("segments_profile_states_due", "next_timer_us"),
)

history = sa.Table(
    "segments_history",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workspace", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),  # the profile that holds it now
    sa.Column("subject", sa.String(160), nullable=False),  # whose key sealed it
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("block", sa.LargeBinary, nullable=False),
    sa.Index("segments_history_by_profile", "workspace", "profile_id"),
)

aliases = sa.Table(
    "segments_aliases",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("survivor_id", sa.String(64), nullable=False, index=True),
)

backfills = sa.Table(
    "segments_backfills",
    metadata,
    sa.Column("backfill_id", sa.String(64), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False),
    sa.Column("definition", sa.String(64), nullable=False),
    sa.Column("definition_version", sa.Integer, nullable=False),
    sa.Column("features", sa.Text, nullable=False),  # JSON: the feature keys to rebuild from history
    sa.Column("recompute", sa.Text, nullable=False),  # JSON: the definitions to evaluate
    sa.Column("cursor", sa.String(64), nullable=False),  # profiles up to this id are done
    sa.Column("events_done", sa.BigInteger, nullable=False),
    sa.Column("events_total", sa.BigInteger, nullable=False),
    sa.Column("finished", sa.Boolean, nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
)

schedules = sa.Table(
    "segments_schedules",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("last_run_us", sa.BigInteger, nullable=False),
    # RFM by quintiles: the workspace's boundaries from that run (JSON), used until the next run.
    sa.Column("boundaries", sa.Text, nullable=True),
)

_STATE_TYPE = pb.ProfileState.DESCRIPTOR.full_name
_HISTORY_TYPE = pb.HistoryBlock.DESCRIPTOR.full_name


@dataclass
class Backfill:
    backfill_id: str
    workspace: str
    definition: str
    definition_version: int
    features: list[str]
    recompute: list[str]
    cursor: str
    events_done: int
    events_total: int
    finished: bool

    def to_proto(self) -> pb.Backfill:
        return pb.Backfill(
            backfill_id=self.backfill_id,
            definition=self.definition,
            definition_version=self.definition_version,
            events_done=self.events_done,
            events_total=self.events_total,
            finished=self.finished,
        )


def _backfill(row: sa.Row[tuple[object, ...]]) -> Backfill:
    m = row._mapping
    return Backfill(
        str(m["backfill_id"]),
        str(m["workspace"]),
        str(m["definition"]),
        int(m["definition_version"]),
        json.loads(str(m["features"])),
        json.loads(str(m["recompute"])),
        str(m["cursor"]),
        int(m["events_done"]),
        int(m["events_total"]),
        bool(m["finished"]),
    )


def _upsert(conn: Connection, table: sa.Table, key: tuple[str, ...]) -> sa.Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE, executed with many rows at once (one statement)."""
    insert = (pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect).insert(table)
    updates = {c.name: insert.excluded[c.name] for c in table.columns if c.name not in key}
    return insert.on_conflict_do_update(index_elements=list(key), set_=updates)


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield list(items[start : start + _IN_CHUNK])


class ProfileStates:
    """The per-profile tables, sealed with the log's subject keys (`EventStore.data_ciphers`).

    Opening and decoding a state is much of an event's cost, so the states this process saved are
    kept in memory with the sealed bytes they were saved as: a load whose row holds exactly those
    bytes takes the kept state instead of opening the row. A kept state is handed out once (taken
    out on load, put back on save with its new bytes), so one that a caller changed and did not save
    is never handed out again; one saved by a transaction that rolled back no longer matches its row.
    """

    def __init__(self, store: EventStore, *, kept_states: int = KEPT_STATES) -> None:
        self.store = store
        self.kept_states = kept_states
        self._kept: OrderedDict[tuple[str, str], tuple[bytes, ProfileState]] = OrderedDict()
        self._kept_lock = threading.Lock()  # the writer saves; readers (queries) load too
        store.create_tables(metadata)

    # -------------------------------------------------------------------------- sealing

    def _ciphers(
        self, conn: Connection, subjects: Iterable[str], create: bool
    ) -> dict[str, DataKeyCipher | None]:
        return self.store.data_ciphers(conn, set(subjects), create=create)

    # -------------------------------------------------------------------------- states

    def load(self, conn: Connection, workspace: str, profile_ids: Iterable[str]) -> dict[str, ProfileState]:
        """The states of these profiles that exist (an erased or unknown profile has none)."""
        wanted = sorted(set(profile_ids))
        rows: list[tuple[str, str, bytes]] = []
        for chunk in _chunks(wanted):
            rows.extend(
                (str(r[0]), str(r[1]), bytes(r[2]))
                for r in conn.execute(
                    sa.select(
                        profile_states.c.profile_id, profile_states.c.subject, profile_states.c.state
                    ).where(profile_states.c.workspace == workspace, profile_states.c.profile_id.in_(chunk))
                )
            )
        ciphers = self._ciphers(conn, (r[1] for r in rows), create=False)
        out: dict[str, ProfileState] = {}
        for profile_id, subject, sealed in rows:
            with self._kept_lock:
                kept = self._kept.pop((workspace, profile_id), None)
            cipher = ciphers.get(subject)
            if cipher is None:
                continue  # shredded: the profile was erased
            if kept is not None and kept[0] == sealed:
                out[profile_id] = kept[1]
                continue
            plain = cipher.open(sealed, associated_data(_STATE_TYPE, subject))
            out[profile_id] = ProfileState.from_proto(pb.ProfileState.FromString(plain))
        return out

    def save(self, conn: Connection, workspace: str, states: Sequence[ProfileState]) -> None:
        if not states:
            return
        subjects = {s.profile_id: subject_of(workspace, s.profile_id) for s in states}
        ciphers = self._ciphers(conn, subjects.values(), create=True)
        rows = []
        for state in states:
            subject = subjects[state.profile_id]
            cipher = ciphers.get(subject)
            if cipher is None:
                continue  # erased meanwhile: nothing personal is written again
            sealed = cipher.seal(state.to_proto().SerializeToString(), associated_data(_STATE_TYPE, subject))
            rows.append(
                {
                    "workspace": workspace,
                    "profile_id": state.profile_id,
                    "subject": subject,
                    "state": sealed,
                    "next_timer_us": state.next_timer(),
                }
            )
            self._keep(workspace, state, sealed)
        if rows:
            conn.execute(_upsert(conn, profile_states, ("workspace", "profile_id")), rows)

    def _keep(self, workspace: str, state: ProfileState, sealed: bytes) -> None:
        key = (workspace, state.profile_id)
        with self._kept_lock:
            self._kept[key] = (sealed, state)
            self._kept.move_to_end(key)
            while len(self._kept) > self.kept_states:
                self._kept.popitem(last=False)

    def delete(self, conn: Connection, workspace: str, profile_ids: Sequence[str]) -> None:
        with self._kept_lock:
            for profile_id in profile_ids:
                self._kept.pop((workspace, profile_id), None)  # merged or erased: nothing of it is kept
        for chunk in _chunks(profile_ids):
            conn.execute(
                profile_states.delete().where(
                    profile_states.c.workspace == workspace, profile_states.c.profile_id.in_(chunk)
                )
            )

    def page(self, conn: Connection, workspace: str, after: str, limit: int) -> list[str]:
        """Profile ids with a state, in order, after `after`."""
        return [
            str(r[0])
            for r in conn.execute(
                sa.select(profile_states.c.profile_id)
                .where(profile_states.c.workspace == workspace, profile_states.c.profile_id > after)
                .order_by(profile_states.c.profile_id)
                .limit(limit)
            )
        ]

    def count(self, conn: Connection, workspace: str) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(profile_states)
                .where(profile_states.c.workspace == workspace)
            ).scalar()
            or 0
        )

    # -------------------------------------------------------------------------- timers

    def due(self, conn: Connection, now: int, limit: int) -> dict[str, list[str]]:
        """Profiles with a timer at or before `now`, earliest first: workspace -> profile ids."""
        out: dict[str, list[str]] = {}
        for workspace, profile_id in conn.execute(
            sa.select(profile_states.c.workspace, profile_states.c.profile_id)
            .where(profile_states.c.next_timer_us <= now)
            .order_by(profile_states.c.next_timer_us)
            .limit(limit)
        ):
            out.setdefault(str(workspace), []).append(str(profile_id))
        return out

    def earliest_timer(self, conn: Connection) -> int | None:
        value = conn.execute(sa.select(sa.func.min(profile_states.c.next_timer_us))).scalar()
        return None if value is None else int(value)

    # -------------------------------------------------------------------------- aliases

    def live(self, conn: Connection, workspace: str, profile_ids: Iterable[str]) -> dict[str, str]:
        """Each profile id -> the profile that holds its state now (itself unless merged away)."""
        wanted = sorted(set(profile_ids))
        out = {p: p for p in wanted}
        for chunk in _chunks(wanted):
            for profile_id, survivor in conn.execute(
                sa.select(aliases.c.profile_id, aliases.c.survivor_id).where(
                    aliases.c.workspace == workspace, aliases.c.profile_id.in_(chunk)
                )
            ):
                out[str(profile_id)] = str(survivor)
        return out

    def family(self, conn: Connection, workspace: str, profile_ids: Sequence[str]) -> list[str]:
        """These profiles and every profile merged into them (`alias` keeps merges flat, but a
        chain is followed anyway): what a data-subject request about them covers."""
        ids = list(dict.fromkeys(profile_ids))
        for profile_id in ids:  # grows as merged profiles are found
            ids.extend(p for p in self._merged_into(conn, workspace, profile_id) if p not in ids)
        return ids

    def _merged_into(self, conn: Connection, workspace: str, profile_id: str) -> list[str]:
        return [
            str(r[0])
            for r in conn.execute(
                sa.select(aliases.c.profile_id).where(
                    aliases.c.workspace == workspace, aliases.c.survivor_id == profile_id
                )
            )
        ]

    def alias(self, conn: Connection, workspace: str, merged_id: str, survivor_id: str) -> None:
        """`merged_id` (and whatever had been merged into it) now lives on as `survivor_id`."""
        conn.execute(
            aliases.delete().where(aliases.c.workspace == workspace, aliases.c.profile_id == merged_id)
        )
        conn.execute(
            aliases.insert().values(workspace=workspace, profile_id=merged_id, survivor_id=survivor_id)
        )
        conn.execute(
            aliases.update()
            .where(aliases.c.workspace == workspace, aliases.c.survivor_id == merged_id)
            .values(survivor_id=survivor_id)
        )

    def unalias(self, conn: Connection, workspace: str, profile_ids: Sequence[str]) -> None:
        for chunk in _chunks(profile_ids):
            conn.execute(
                aliases.delete().where(aliases.c.workspace == workspace, aliases.c.profile_id.in_(chunk))
            )

    # -------------------------------------------------------------------------- history

    def append_history(
        self, conn: Connection, workspace: str, records: Mapping[str, Sequence[pb.HistoryRecord]]
    ) -> None:
        """One sealed block per profile (the records identity sent about it in this batch)."""
        subjects = {profile_id: subject_of(workspace, profile_id) for profile_id in records}
        ciphers = self._ciphers(conn, subjects.values(), create=True)
        rows = []
        for profile_id, items in records.items():
            cipher = ciphers.get(subjects[profile_id])
            if cipher is None or not items:
                continue
            block = pb.HistoryBlock(records=items).SerializeToString()
            rows.append(
                {
                    "workspace": workspace,
                    "profile_id": profile_id,
                    "subject": subjects[profile_id],
                    "records": len(items),
                    "block": cipher.seal(block, associated_data(_HISTORY_TYPE, subjects[profile_id])),
                }
            )
        if rows:
            conn.execute(history.insert(), rows)

    def read_history(
        self, conn: Connection, workspace: str, profile_ids: Sequence[str]
    ) -> dict[str, list[pb.HistoryRecord]]:
        """Each profile's records in time order ((at, event id), however late they arrived)."""
        rows: list[tuple[str, str, bytes]] = []
        for chunk in _chunks(profile_ids):
            rows.extend(
                (str(r[0]), str(r[1]), bytes(r[2]))
                for r in conn.execute(
                    sa.select(history.c.profile_id, history.c.subject, history.c.block)
                    .where(history.c.workspace == workspace, history.c.profile_id.in_(chunk))
                    .order_by(history.c.seq)
                )
            )
        ciphers = self._ciphers(conn, (r[1] for r in rows), create=False)
        out: dict[str, list[pb.HistoryRecord]] = {p: [] for p in profile_ids}
        for profile_id, subject, sealed in rows:
            cipher = ciphers.get(subject)
            if cipher is None:
                continue
            block = pb.HistoryBlock.FromString(cipher.open(sealed, associated_data(_HISTORY_TYPE, subject)))
            out[profile_id].extend(block.records)
        for records in out.values():
            records.sort(key=lambda r: (r.at_us, r.event_id))
        return out

    def move_history(self, conn: Connection, workspace: str, from_id: str, to_id: str) -> None:
        conn.execute(
            history.update()
            .where(history.c.workspace == workspace, history.c.profile_id == from_id)
            .values(profile_id=to_id)
        )

    def delete_history(self, conn: Connection, workspace: str, profile_ids: Sequence[str]) -> None:
        for chunk in _chunks(profile_ids):
            conn.execute(
                history.delete().where(history.c.workspace == workspace, history.c.profile_id.in_(chunk))
            )

    def history_records(
        self, conn: Connection, workspace: str, profile_ids: Sequence[str] | None = None
    ) -> int:
        query = sa.select(sa.func.coalesce(sa.func.sum(history.c.records), 0)).where(
            history.c.workspace == workspace
        )
        if profile_ids is not None:
            query = query.where(history.c.profile_id.in_(list(profile_ids)))
        return int(conn.execute(query).scalar() or 0)

    # -------------------------------------------------------------------------- backfills

    def start_backfill(self, conn: Connection, backfill: Backfill, created_at: int) -> None:
        conn.execute(
            backfills.insert().values(
                backfill_id=backfill.backfill_id,
                workspace=backfill.workspace,
                definition=backfill.definition,
                definition_version=backfill.definition_version,
                features=json.dumps(backfill.features),
                recompute=json.dumps(backfill.recompute),
                cursor=backfill.cursor,
                events_done=backfill.events_done,
                events_total=backfill.events_total,
                finished=backfill.finished,
                created_at_us=created_at,
            )
        )

    def advance_backfill(self, conn: Connection, backfill: Backfill) -> None:
        conn.execute(
            backfills.update()
            .where(backfills.c.backfill_id == backfill.backfill_id)
            .values(cursor=backfill.cursor, events_done=backfill.events_done, finished=backfill.finished)
        )

    def backfill(self, conn: Connection, workspace: str, backfill_id: str) -> Backfill | None:
        row = conn.execute(
            sa.select(backfills).where(
                backfills.c.backfill_id == backfill_id, backfills.c.workspace == workspace
            )
        ).first()
        return None if row is None else _backfill(row)

    def unfinished_backfills(self, conn: Connection, workspace: str | None = None) -> list[Backfill]:
        """In the order they were started (a later one may depend on an earlier one's outputs)."""
        query = sa.select(backfills).where(backfills.c.finished == sa.false())
        if workspace is not None:
            query = query.where(backfills.c.workspace == workspace)
        return [
            _backfill(r)
            for r in conn.execute(query.order_by(backfills.c.created_at_us, backfills.c.backfill_id))
        ]

    # -------------------------------------------------------------------------- schedules

    def last_runs(self, conn: Connection) -> dict[tuple[str, str], int]:
        return {
            (str(w), str(n)): int(t)
            for w, n, t in conn.execute(
                sa.select(schedules.c.workspace, schedules.c.name, schedules.c.last_run_us)
            )
        }

    def record_run(
        self, conn: Connection, workspace: str, name: str, at: int, boundaries: CutOffs | None = None
    ) -> None:
        where = (schedules.c.workspace == workspace) & (schedules.c.name == name)
        conn.execute(schedules.delete().where(where))
        conn.execute(
            schedules.insert().values(
                workspace=workspace,
                name=name,
                last_run_us=at,
                boundaries=None if boundaries is None else json.dumps(dataclasses.astuple(boundaries)),
            )
        )

    def rfm_boundaries(self, conn: Connection, workspace: str) -> tuple[int, dict[str, CutOffs]]:
        """(the latest run's moment, each RFM definition's quintile boundaries from its last run)."""
        latest, out = 0, {}
        for name, at, text in conn.execute(
            sa.select(schedules.c.name, schedules.c.last_run_us, schedules.c.boundaries).where(
                schedules.c.workspace == workspace
            )
        ):
            latest = max(latest, int(at))
            if text:
                recency, frequency, monetary = json.loads(str(text))
                out[str(name)] = CutOffs(tuple(recency), tuple(frequency), tuple(monetary))
        return latest, out
