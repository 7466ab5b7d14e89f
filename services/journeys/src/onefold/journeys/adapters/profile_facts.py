"""What journeys knows about each profile, to branch on and to render with: traits (from identity's
TraitsUpdated), tags and segment memberships (from segments' events) and the person's time zone
(the latest event's `context.timezone`, else a `timezone` trait).

All of it is personal, so each profile's facts are one row sealed under the profile's data key
(the same key as its instances' events): shredding the key at erasure leaves the row unreadable,
and erasure deletes it. Rows are read and written a batch at a time, in the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from onefold.eventlog.mapper import associated_data
from onefold.eventlog.store import EventStore
from onefold.journeys.domain.definitions import Json
from onefold.journeys.domain.instance import Facts, subject_of

SEALED_PURPOSE = "onefold.journeys.ProfileFacts"
_IN_CHUNK = 500

metadata = sa.MetaData()

profile_facts = sa.Table(
    "journeys_profile_facts",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)


@dataclass
class MutableFacts:
    """One profile's facts while a batch changes them."""

    traits: dict[str, Json] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    segments: set[str] = field(default_factory=set)
    time_zone: str = ""

    def frozen(self) -> Facts:
        zone = self.time_zone or _text(self.traits.get("timezone"))
        return Facts(dict(self.traits), dict(self.tags), frozenset(self.segments), zone)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "traits": self.traits,
                "tags": self.tags,
                "segments": sorted(self.segments),
                "tz": self.time_zone,
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def from_json(data: bytes) -> MutableFacts:
        parsed: dict[str, Any] = json.loads(data)
        return MutableFacts(
            dict(parsed.get("traits", {})),
            dict(parsed.get("tags", {})),
            set(parsed.get("segments", [])),
            str(parsed.get("tz", "")),
        )


def _text(value: Json) -> str:
    return value if isinstance(value, str) else ""


class ProfileFacts:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        store.create_tables(metadata)

    def load(self, conn: Connection, workspace: str, profile_ids: Iterable[str]) -> dict[str, MutableFacts]:
        """The facts of `profile_ids` (an erased or unknown profile: empty facts)."""
        ids = list(dict.fromkeys(profile_ids))
        rows: dict[str, bytes] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            query = sa.select(profile_facts.c.profile_id, profile_facts.c.sealed).where(
                (profile_facts.c.workspace == workspace) & profile_facts.c.profile_id.in_(chunk)
            )
            rows.update((str(p), bytes(s)) for p, s in conn.execute(query))
        subjects = {p: subject_of(workspace, p) for p in rows}
        ciphers = self.store.data_ciphers(conn, subjects.values(), create=False) if rows else {}
        found = {p: MutableFacts() for p in ids}
        for profile_id, sealed in rows.items():
            subject = subjects[profile_id]
            cipher = ciphers.get(subject)
            if cipher is not None:
                opened = cipher.open(sealed, associated_data(SEALED_PURPOSE, subject))
                found[profile_id] = MutableFacts.from_json(opened)
        return found

    def save(self, conn: Connection, workspace: str, changed: Mapping[str, MutableFacts]) -> None:
        """Seal and upsert; a profile whose key was shredded (erased) is not written again."""
        if not changed:
            return
        subjects = {p: subject_of(workspace, p) for p in changed}
        ciphers = self.store.data_ciphers(conn, subjects.values(), create=True)
        rows = []
        for profile_id, facts in changed.items():
            cipher = ciphers.get(subjects[profile_id])
            if cipher is None:
                continue
            sealed = cipher.seal(facts.to_json(), associated_data(SEALED_PURPOSE, subjects[profile_id]))
            rows.append({"workspace": workspace, "profile_id": profile_id, "sealed": sealed})
        if not rows:
            return
        insert = (pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect).insert(profile_facts)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["workspace", "profile_id"], set_={"sealed": insert.excluded.sealed}
            ),
            rows,
        )

    def count(self, conn: Connection, workspace: str, profile_ids: Iterable[str]) -> int:
        ids = list(profile_ids)
        query = sa.select(sa.func.count()).where(
            (profile_facts.c.workspace == workspace) & profile_facts.c.profile_id.in_(ids)
        )
        return int(conn.execute(query.select_from(profile_facts)).scalar() or 0)

    def delete(self, conn: Connection, workspace: str, profile_ids: Iterable[str]) -> int:
        ids = list(profile_ids)
        deleted = conn.execute(
            profile_facts.delete().where(
                (profile_facts.c.workspace == workspace) & profile_facts.c.profile_id.in_(ids)
            )
        )
        return int(deleted.rowcount or 0)
