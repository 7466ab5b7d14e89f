"""The analytical copy of the history: a DuckDB database of the facts the analyses read.

One row per fact, columnar, appended in batches from the services' streams (or loaded from Parquet):

- `events`: every ingest event once its person is known — the resolved profile id, the event's time,
  its type and name, and only the fields an analysis reads that are not personal (revenue and
  currency, product and category, the campaign's UTM fields, the source's channel, and the properties
  a workspace allows). Names, e-mail addresses, phone numbers, addresses, free text and ids of the
  person never enter this copy.
- `sends`: journeys' messages sent (or held back for a control group), the touch a campaign made.
- `memberships`: segments' entries and exits (a row per stay; `exited_at` NULL while a member).
- `profile_tags`: segments' tag values over time (lifecycle stage, RFM, model tags), a row per value.
- `costs`: what a campaign cost over a period (configured by the workspace), for ROI.
- `applied`: how far each upstream's events are applied, in the same transaction as their rows, so
  a batch delivered again after a crash is never applied twice.

Rows are keyed by workspace and profile id (a pseudonym, meaningless outside Onefold): an erasure
deletes a profile's rows from every table, so nothing of an erased person stays here either.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    workspace VARCHAR NOT NULL,
    event_id VARCHAR NOT NULL,
    profile_id VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    type VARCHAR NOT NULL,            -- track, page, screen, identify, group
    event VARCHAR NOT NULL,           -- the track event's name; the page or screen name; '' otherwise
    revenue DOUBLE,                   -- properties.revenue (else total) when numeric
    currency VARCHAR,
    product_id VARCHAR,
    category VARCHAR,
    campaign_source VARCHAR,          -- context.campaign.source (utm_source)
    campaign_medium VARCHAR,
    campaign_name VARCHAR,
    channel VARCHAR,                  -- the source's kind: web, ios, android, server, ...
    properties JSON                   -- the properties the workspace allows (never personal)
);
CREATE TABLE IF NOT EXISTS sends (
    workspace VARCHAR NOT NULL,
    message_id VARCHAR NOT NULL,
    profile_id VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    journey VARCHAR NOT NULL,
    step VARCHAR NOT NULL,
    channel VARCHAR NOT NULL,         -- email, sms, push, wechat, webhook
    control BOOLEAN NOT NULL          -- held back: the profile is in the journey's control group
);
CREATE TABLE IF NOT EXISTS memberships (
    workspace VARCHAR NOT NULL,
    profile_id VARCHAR NOT NULL,
    segment VARCHAR NOT NULL,
    entered_at TIMESTAMP NOT NULL,
    exited_at TIMESTAMP               -- NULL while a member
);
CREATE TABLE IF NOT EXISTS profile_tags (
    workspace VARCHAR NOT NULL,
    profile_id VARCHAR NOT NULL,
    tag VARCHAR NOT NULL,             -- lifecycle_stage, rfm, churn_risk, ...
    value VARCHAR NOT NULL,
    since TIMESTAMP NOT NULL,
    until TIMESTAMP                   -- NULL while current
);
CREATE TABLE IF NOT EXISTS applied (
    upstream VARCHAR PRIMARY KEY,
    position UBIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS costs (
    workspace VARCHAR NOT NULL,
    campaign VARCHAR NOT NULL,        -- a campaign_name of events, or a journey's name
    channel VARCHAR NOT NULL,
    period_start TIMESTAMP NOT NULL,
    period_end TIMESTAMP NOT NULL,
    amount DOUBLE NOT NULL,
    currency VARCHAR NOT NULL
);
"""

T = TypeVar("T")
INSERT_CHUNK = 500  # rows per INSERT statement (one statement, not one per row)
TABLES = ("events", "sends", "memberships", "profile_tags", "costs")
PROFILE_TABLES = ("events", "sends", "memberships", "profile_tags")  # the tables rows of a person are in


def open_warehouse(
    path: Path | str | None = None, *, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """The analytical database at `path` (created with its tables), or an in-memory one."""
    connection = duckdb.connect(str(path) if path is not None else ":memory:")
    if threads is not None:
        connection.execute(f"SET threads = {int(threads)}")
    connection.execute(SCHEMA)
    return connection


def erase_profiles(
    connection: duckdb.DuckDBPyConnection, workspace: str, profile_ids: list[str]
) -> dict[str, int]:
    """Delete every row of these profiles from every table; returns how many rows went, per table."""
    removed: dict[str, int] = {}
    for table in PROFILE_TABLES:
        found = connection.execute(
            f"DELETE FROM {table} WHERE workspace = ? AND list_contains(?, profile_id)",
            [workspace, profile_ids],
        ).fetchone()
        removed[table] = int(found[0]) if found else 0
    return removed


def profile_rows(
    connection: duckdb.DuckDBPyConnection, workspace: str, profile_ids: list[str]
) -> dict[str, int]:
    counted: dict[str, int] = {}
    for table in PROFILE_TABLES:
        found = connection.execute(
            f"SELECT count(*) FROM {table} WHERE workspace = ? AND list_contains(?, profile_id)",
            [workspace, profile_ids],
        ).fetchone()
        counted[table] = int(found[0]) if found else 0
    return counted


class Warehouse:
    """The service's analytical database: written on the service's writer thread, one transaction per
    upstream batch; read by each query on a cursor of its own (DuckDB connections are not shared
    between threads), so a read never waits for a batch to be written."""

    def __init__(self, path: Path | None = None, *, threads: int | None = None) -> None:
        self.path = path
        self._root = open_warehouse(path, threads=threads)
        self._cursors = threading.Lock()  # cursor() on the root connection, one thread at a time
        self._writer = self.cursor()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the same database, for one thread."""
        with self._cursors:
            return self._root.cursor()

    def reading(self, run: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`run(cursor)` on a cursor of its own, closed after: a read from any thread."""
        cursor = self.cursor()
        try:
            return run(cursor)
        finally:
            cursor.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The writer's transaction: committed when the block ends, rolled back when it raises."""
        self._writer.execute("BEGIN TRANSACTION")
        try:
            yield self._writer
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")

    def close(self) -> None:
        self._writer.close()
        self._root.close()


def applied_position(db: duckdb.DuckDBPyConnection, upstream: str) -> int:
    found = db.execute("SELECT position FROM applied WHERE upstream = ?", [upstream]).fetchone()
    return int(found[0]) if found else 0


def record_applied(db: duckdb.DuckDBPyConnection, upstream: str, position: int) -> None:
    db.execute("INSERT OR REPLACE INTO applied VALUES (?, ?)", [upstream, position])


def add_events(db: duckdb.DuckDBPyConnection, rows: Sequence[tuple[object, ...]]) -> None:
    """Append event rows (EventFact tuples, in the table's column order): one statement per chunk."""
    width = 15
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        placeholders = ", ".join(["(" + ", ".join(["?"] * width) + ")"] * len(chunk))
        db.execute(f"INSERT INTO events VALUES {placeholders}", [value for row in chunk for value in row])


def move_profile(db: duckdb.DuckDBPyConnection, workspace: str, merged: str, survivor: str) -> None:
    """A merge: every row of `merged` is the survivor's from now on."""
    for table in PROFILE_TABLES:
        db.execute(
            f"UPDATE {table} SET profile_id = ? WHERE workspace = ? AND profile_id = ?",
            [survivor, workspace, merged],
        )


def enter_segment(
    db: duckdb.DuckDBPyConnection, workspace: str, profile_id: str, segment: str, at: datetime
) -> None:
    db.execute("INSERT INTO memberships VALUES (?, ?, ?, ?, NULL)", [workspace, profile_id, segment, at])


def exit_segment(
    db: duckdb.DuckDBPyConnection, workspace: str, profile_id: str, segment: str, at: datetime
) -> None:
    db.execute(
        "UPDATE memberships SET exited_at = ? "
        "WHERE workspace = ? AND profile_id = ? AND segment = ? AND exited_at IS NULL",
        [at, workspace, profile_id, segment],
    )


def set_tag(
    db: duckdb.DuckDBPyConnection, workspace: str, profile_id: str, tag: str, value: str, at: datetime
) -> None:
    """The tag's current value ends now; a new one ("" = removed: none) begins."""
    db.execute(
        "UPDATE profile_tags SET until = ? WHERE workspace = ? AND profile_id = ? AND tag = ? AND until IS NULL",
        [at, workspace, profile_id, tag],
    )
    if value:
        db.execute(
            "INSERT INTO profile_tags VALUES (?, ?, ?, ?, ?, NULL)", [workspace, profile_id, tag, value, at]
        )


def add_send(
    db: duckdb.DuckDBPyConnection,
    workspace: str,
    message_id: str,
    profile_id: str,
    at: datetime,
    journey: str,
    step: str,
    channel: str,
    *,
    control: bool,
) -> None:
    db.execute(
        "INSERT INTO sends VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [workspace, message_id, profile_id, at, journey, step, channel, control],
    )


def mark_sent(db: duckdb.DuckDBPyConnection, workspace: str, message_id: str, at: datetime) -> None:
    db.execute("UPDATE sends SET ts = ? WHERE workspace = ? AND message_id = ?", [at, workspace, message_id])


def drop_send(db: duckdb.DuckDBPyConnection, workspace: str, message_id: str) -> None:
    """A queued message suppressed (consent, or the instance stopped): it touched nobody."""
    db.execute("DELETE FROM sends WHERE workspace = ? AND message_id = ?", [workspace, message_id])


def table_rows(db: duckdb.DuckDBPyConnection, workspace: str) -> dict[str, int]:
    counted: dict[str, int] = {}
    for table in TABLES:
        found = db.execute(f"SELECT count(*) FROM {table} WHERE workspace = ?", [workspace]).fetchone()
        counted[table] = int(found[0]) if found else 0
    return counted


def applied_positions(db: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {
        str(upstream): int(position) for upstream, position in db.execute("SELECT * FROM applied").fetchall()
    }


def set_cost(
    db: duckdb.DuckDBPyConnection,
    workspace: str,
    campaign: str,
    channel: str,
    start: datetime,
    end: datetime,
    amount: float,
    currency: str,
) -> None:
    """The campaign's cost over [start, end) on the channel, replacing one set for the same period."""
    db.execute(
        "DELETE FROM costs WHERE workspace = ? AND campaign = ? AND channel = ? AND period_start = ? AND period_end = ?",
        [workspace, campaign, channel, start, end],
    )
    db.execute(
        "INSERT INTO costs VALUES (?, ?, ?, ?, ?, ?, ?)",
        [workspace, campaign, channel, start, end, amount, currency],
    )


def costs_of(
    db: duckdb.DuckDBPyConnection, workspace: str
) -> list[tuple[str, str, datetime, datetime, float, str]]:
    rows = db.execute(
        "SELECT campaign, channel, period_start, period_end, amount, currency FROM costs "
        "WHERE workspace = ? ORDER BY campaign, channel, period_start",
        [workspace],
    ).fetchall()
    return [(str(a), str(b), c, d, float(e), str(f)) for a, b, c, d, e, f in rows]
