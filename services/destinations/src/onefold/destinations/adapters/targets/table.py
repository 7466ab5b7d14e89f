"""A business database kept in sync through SQLAlchemy (PostgreSQL or SQLite): three tables under
the destination's prefix, created when missing:

- `<prefix>_events`: one row per delivered event, keyed by the delivery id (a redelivery inserts
  nothing), with its name, time and data (JSON text);
- `<prefix>_memberships`: (profile, segment) upserted on entry, deleted on exit;
- `<prefix>_traits`: (profile, trait) upserted with the value (JSON text) on each change;

and an erasure deletes the person's rows from all three.

A batch is applied in one transaction, in order, a statement per run of deliveries of one kind
(executemany). A lost connection or a database that is down retries the whole batch. A row the
database refuses (an integrity or data error) makes the batch go again one delivery at a time, so
only the person whose delivery is refused is held back (REJECTED, their later ones
BEHIND_A_FAILURE) and everyone else's go. Errors name the exception's class and never the URL, the
SQL or the values.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import BEHIND_A_FAILURE, DELIVERED, Delivery, Result
from onefold.platform.config import ConfigError
from onefold.platform.database import create_engine

TABLE_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,40}")
MAX_REASON_CHARS = 120
_ID = 200  # the length of ids, names, segments and trait names


def _tables(prefix: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    metadata = sa.MetaData()
    events = sa.Table(
        f"{prefix}_events",
        metadata,
        sa.Column("delivery_id", sa.String(_ID), primary_key=True),
        sa.Column("profile_id", sa.String(_ID), nullable=False, index=True),
        sa.Column("name", sa.String(_ID * 2), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    memberships = sa.Table(
        f"{prefix}_memberships",
        metadata,
        sa.Column("profile_id", sa.String(_ID), primary_key=True),
        sa.Column("segment", sa.String(_ID), primary_key=True),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
    )
    traits = sa.Table(
        f"{prefix}_traits",
        metadata,
        sa.Column("profile_id", sa.String(_ID), primary_key=True),
        sa.Column("trait", sa.String(_ID), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    return metadata, events, memberships, traits


def database_url(config: pb.SqlTable, environ: Mapping[str, str]) -> str:
    """The SQLAlchemy URL of a table destination; a ValueError that never quotes it when missing."""
    if config.url_env:
        url = environ.get(config.url_env, "").strip()
        if not url:
            raise ValueError(f"the table destination's database URL is not set: set {config.url_env}")
        return url
    if not config.url:
        raise ValueError("a table destination needs url_env (or url, when it holds no password)")
    return config.url


class UnknownDeliveryKind(Exception):
    """A delivery of a kind a table does not know: rejected, not retried."""


# What the database (or the target) refuses for good: the delivery is rejected, not retried.
_REFUSED = (sa_exc.IntegrityError, sa_exc.DataError, UnknownDeliveryKind)


class TableTarget:
    kind = "table"

    def __init__(self, config: pb.SqlTable, environ: Mapping[str, str]) -> None:
        if not TABLE_PREFIX.fullmatch(config.table):
            raise ValueError("a table destination's table is [a-z][a-z0-9_]{0,40}")
        url = database_url(config, environ)
        try:
            self._engine = create_engine(url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        except sa_exc.ArgumentError:
            # SQLAlchemy's message quotes the URL, password and all.
            raise ValueError("the table destination's database URL is not a SQLAlchemy URL") from None
        dialects: dict[str, Any] = {"postgresql": postgresql, "sqlite": sqlite}
        self._dialect = dialects[self._engine.dialect.name]
        self._metadata, self._events, self._memberships, self._traits = _tables(config.table)
        self._tables_exist = False

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        if not deliveries:
            return []
        return await asyncio.to_thread(self._deliver, deliveries)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._engine.dispose)

    # ------------------------------------------------------------------------------ applying

    def _deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        try:
            if not self._tables_exist:
                self._metadata.create_all(self._engine, checkfirst=True)
                self._tables_exist = True
            with self._engine.begin() as connection:
                self._apply(connection, deliveries)
            return [DELIVERED] * len(deliveries)
        except _REFUSED:
            return self._deliver_one_at_a_time(deliveries)
        except sa_exc.SQLAlchemyError as exc:
            return [Result.retry(_describe(exc))] * len(deliveries)

    def _deliver_one_at_a_time(self, deliveries: Sequence[Delivery]) -> list[Result]:
        """Each delivery in its own transaction, so only a refused delivery's person is held back."""
        results: list[Result] = []
        failed_persons: set[str] = set()
        for index, delivery in enumerate(deliveries):
            if delivery.profile_id in failed_persons:
                results.append(BEHIND_A_FAILURE)
                continue
            try:
                with self._engine.begin() as connection:
                    self._apply(connection, [delivery])
                results.append(DELIVERED)
            except _REFUSED as exc:
                results.append(Result.rejected(_describe(exc)))
                failed_persons.add(delivery.profile_id)
            except sa_exc.SQLAlchemyError as exc:
                # The database went away: what is left goes again later.
                return results + [Result.retry(_describe(exc))] * (len(deliveries) - index)
        return results

    def _apply(self, connection: Connection, deliveries: Sequence[Delivery]) -> None:
        """Every delivery in order, one executemany per run of deliveries of one kind."""
        appliers: dict[str, Callable[[Connection, list[Delivery]], None]] = {
            "event": self._insert_events,
            "segment_entered": self._upsert_memberships,
            "segment_exited": self._delete_memberships,
            "traits": self._upsert_traits,
            "deletion": self._delete_persons,
        }
        for kind, run in itertools.groupby(deliveries, key=lambda delivery: delivery.kind):
            applier = appliers.get(kind)
            if applier is None:
                raise UnknownDeliveryKind(f"unknown delivery kind {kind[:40]!r}")
            applier(connection, list(run))

    def _insert_events(self, connection: Connection, run: list[Delivery]) -> None:
        rows = {
            delivery.delivery_id: {
                "delivery_id": delivery.delivery_id,
                "profile_id": delivery.profile_id,
                "name": delivery.name,
                "occurred_at": _utc(delivery),
                "data": json.dumps(delivery.data, ensure_ascii=False, sort_keys=True),
            }
            for delivery in run
        }
        statement = self._dialect.insert(self._events).on_conflict_do_nothing(index_elements=["delivery_id"])
        connection.execute(statement, list(rows.values()))

    def _upsert_memberships(self, connection: Connection, run: list[Delivery]) -> None:
        # One row per key: PostgreSQL refuses an upsert touching a row twice in one statement.
        rows = {
            (delivery.profile_id, delivery.name): {
                "profile_id": delivery.profile_id,
                "segment": delivery.name,
                "entered_at": _utc(delivery),
            }
            for delivery in run
        }
        insert = self._dialect.insert(self._memberships)
        statement = insert.on_conflict_do_update(
            index_elements=["profile_id", "segment"], set_={"entered_at": insert.excluded.entered_at}
        )
        connection.execute(statement, list(rows.values()))

    def _delete_memberships(self, connection: Connection, run: list[Delivery]) -> None:
        table = self._memberships
        statement = table.delete().where(
            table.c.profile_id == sa.bindparam("person"), table.c.segment == sa.bindparam("segment_name")
        )
        connection.execute(
            statement, [{"person": delivery.profile_id, "segment_name": delivery.name} for delivery in run]
        )

    def _upsert_traits(self, connection: Connection, run: list[Delivery]) -> None:
        rows = {
            (delivery.profile_id, trait): {
                "profile_id": delivery.profile_id,
                "trait": trait,
                "value": json.dumps(value, ensure_ascii=False, sort_keys=True),
                "updated_at": _utc(delivery),
            }
            for delivery in run
            for trait, value in delivery.data.items()
        }
        if not rows:
            return
        insert = self._dialect.insert(self._traits)
        statement = insert.on_conflict_do_update(
            index_elements=["profile_id", "trait"],
            set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
        )
        connection.execute(statement, list(rows.values()))

    def _delete_persons(self, connection: Connection, run: list[Delivery]) -> None:
        persons = sorted({delivery.profile_id for delivery in run})
        for table in (self._events, self._memberships, self._traits):
            connection.execute(table.delete().where(table.c.profile_id.in_(persons)))


def _utc(delivery: Delivery) -> datetime:
    # SQLite keeps a time without its zone: every time is stored in UTC so all rows compare.
    return delivery.occurred_at.astimezone(UTC)


def _describe(error: Exception) -> str:
    """A bounded error: the exception's class and, for a connection's failure, the driver's first
    line (an integrity or data error's message quotes the values, so it is left out)."""
    if isinstance(error, UnknownDeliveryKind):
        return str(error)
    original = getattr(error, "orig", None)
    name = type(error).__name__
    if original is None:
        return name
    described = f"{name} ({type(original).__name__})"
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
        described += f": {first_line[:MAX_REASON_CHARS]}"
    return described
