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

Rows are keyed by workspace and profile id (a pseudonym, meaningless outside Onefold): an erasure
deletes a profile's rows from every table, so nothing of an erased person stays here either.
"""

from __future__ import annotations

from pathlib import Path

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

TABLES = ("events", "sends", "memberships", "profile_tags", "costs")


def open_warehouse(
    path: Path | str | None = None, *, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """The analytical database at `path` (created with its tables), or an in-memory one."""
    connection = duckdb.connect(str(path) if path is not None else ":memory:")
    if threads is not None:
        connection.execute(f"SET threads = {int(threads)}")
    connection.execute(SCHEMA)
    return connection


def erase_profiles(connection: duckdb.DuckDBPyConnection, workspace: str, profile_ids: list[str]) -> int:
    """Delete every row of these profiles from every table; returns how many rows went."""
    removed = 0
    for table in ("events", "sends", "memberships", "profile_tags"):
        found = connection.execute(
            f"DELETE FROM {table} WHERE workspace = ? AND list_contains(?, profile_id)",
            [workspace, profile_ids],
        ).fetchone()
        removed += int(found[0]) if found else 0
    return removed
