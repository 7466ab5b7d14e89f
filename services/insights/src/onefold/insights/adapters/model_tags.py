"""The read model of the models written back (the insights service's projection of its own log).

- `insights_models`: the latest version of each workspace's models (the `ModelTrained` event, which
  holds nothing personal), for ListModels and to know whether a retrain gave a new version.
- `insights_model_tags`: each profile's current model tags, one row per (workspace, profile, tag),
  with the value sealed under the profile's data key (like its events): a retrain compares against it
  to write only the values that changed. Shredding the key (an erasure) leaves the row unreadable, and
  the row is deleted then too.

Tag rows are buffered per batch and sealed in `flush`, with the data keys of the whole batch fetched
at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from onefold.contracts.insights.v1 import models_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.mapper import associated_data
from onefold.eventlog.models import RecordedEvent
from onefold.eventlog.store import EventStore
from onefold.insights.domain.streams import subject_of

PROJECTION_NAME = "insights-models"
_IN_CHUNK = 500
_TAG_TYPE = pb.ProfileModelTagged.DESCRIPTOR.full_name
metadata = sa.MetaData()

models = sa.Table(
    "insights_models",
    metadata,
    sa.Column("workspace", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("trained", sa.LargeBinary, nullable=False),  # the ModelTrained event (nothing personal)
)

model_tags = sa.Table(
    "insights_model_tags",
    metadata,
    sa.Column("workspace", sa.String(200), primary_key=True),
    sa.Column("profile_id", sa.String(200), primary_key=True),
    sa.Column("tag", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(500), nullable=False),  # whose key sealed the value
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),  # sealed
)

TagKey = tuple[str, str, str]  # (workspace, profile id, tag)


def _upsert(conn: Connection, table: sa.Table, key: Sequence[str]) -> sa.Insert:
    insert = (pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect).insert(table)
    updates = {c.name: insert.excluded[c.name] for c in table.columns if c.name not in key}
    return insert.on_conflict_do_update(index_elements=list(key), set_=updates)


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield list(items[start : start + _IN_CHUNK])


class ModelsReadModel(Handlers):
    """The projection: ModelTrained into `insights_models`, ProfileModelTagged into `insights_model_tags`."""

    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = (models, model_tags)

    def __init__(self, store: EventStore) -> None:
        self.store = store
        # Per batch: the tag rows to write (value None = the row goes), sealed and written in `flush`.
        self._pending: dict[TagKey, tuple[str, str | None]] = {}

    def reset(self, conn: Connection) -> None:
        self._pending.clear()
        for table in self.tables:
            conn.execute(table.delete())

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, conn, message, event)

    @handles(pb.ModelTrained)
    def _trained(self, conn: Connection, message: pb.ModelTrained, event: RecordedEvent) -> None:
        row = {
            "workspace": message.workspace,
            "model": message.model,
            "version": message.version,
            "position": event.position,
            "trained": message.SerializeToString(),
        }
        conn.execute(_upsert(conn, models, ("workspace", "model")), [row])

    @handles(pb.ProfileModelTagged)
    def _tagged(self, conn: Connection, message: pb.ProfileModelTagged, event: RecordedEvent) -> None:
        # Replayed for an erased profile, the value reads as erased: its row goes (flush finds no key).
        self._pending[(message.workspace, message.profile_id, message.tag)] = (
            message.model_version,
            message.value or None,
        )

    def flush(self, conn: Connection) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        subjects = {key: subject_of(key[0], key[1]) for key in pending}
        ciphers = self.store.data_ciphers(conn, set(subjects.values()), create=False)
        rows: list[dict[str, Any]] = []
        gone: list[dict[str, str]] = []
        for key, (model_version, value) in pending.items():
            cipher = ciphers.get(subjects[key])
            if value is None or cipher is None:
                gone.append({"w": key[0], "p": key[1], "t": key[2]})
                continue
            sealed = cipher.seal(value.encode(), associated_data(_TAG_TYPE, subjects[key]))
            rows.append(
                {
                    "workspace": key[0],
                    "profile_id": key[1],
                    "tag": key[2],
                    "subject": subjects[key],
                    "model_version": model_version,
                    "value": sealed,
                }
            )
        if gone:
            conn.execute(
                model_tags.delete().where(
                    model_tags.c.workspace == sa.bindparam("w"),
                    model_tags.c.profile_id == sa.bindparam("p"),
                    model_tags.c.tag == sa.bindparam("t"),
                ),
                gone,
            )
        if rows:
            conn.execute(_upsert(conn, model_tags, ("workspace", "profile_id", "tag")), rows)


def latest_models(conn: Connection, workspace: str) -> list[pb.ModelTrained]:
    """The latest version of each of the workspace's models, by model name."""
    rows = conn.execute(
        sa.select(models.c.trained).where(models.c.workspace == workspace).order_by(models.c.model)
    ).all()
    return [pb.ModelTrained.FromString(bytes(row[0])) for row in rows]


def current_tags(
    store: EventStore, conn: Connection, workspace: str, tags: Iterable[str]
) -> dict[tuple[str, str], str]:
    """(profile id, tag) -> the value the profile holds now, for these tags (opened with its key;
    an erased profile's rows are left out)."""
    wanted = sorted(set(tags))
    if not wanted:
        return {}
    rows = conn.execute(
        sa.select(model_tags.c.profile_id, model_tags.c.tag, model_tags.c.subject, model_tags.c.value).where(
            model_tags.c.workspace == workspace, model_tags.c.tag.in_(wanted)
        )
    ).all()
    ciphers = store.data_ciphers(conn, {str(row[2]) for row in rows}, create=False)
    values: dict[tuple[str, str], str] = {}
    for profile_id, tag, subject, sealed in rows:
        cipher = ciphers.get(subject)
        if cipher is not None:
            values[(str(profile_id), str(tag))] = cipher.open(
                bytes(sealed), associated_data(_TAG_TYPE, subject)
            ).decode()
    return values


def held_tags(conn: Connection, workspace: str, profile_ids: Sequence[str]) -> int:
    """How many current model tags these profiles hold."""
    held = 0
    for chunk in _chunks(sorted(set(profile_ids))):
        held += int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(model_tags)
                .where(model_tags.c.workspace == workspace, model_tags.c.profile_id.in_(chunk))
            ).scalar()
            or 0
        )
    return held


def forget_profiles(conn: Connection, workspace: str, profile_ids: Sequence[str]) -> int:
    """Delete the model tag rows of these profiles (erased); how many went."""
    removed = 0
    for chunk in _chunks(sorted(set(profile_ids))):
        removed += conn.execute(
            model_tags.delete().where(model_tags.c.workspace == workspace, model_tags.c.profile_id.in_(chunk))
        ).rowcount
    return removed
