"""Multi-touch attribution in one DuckDB query: conversions joined to the person's touches within the
lookback, each touch weighted per model with window functions over its conversion, summed per group.

Weights of touch i of n (ordered by time, then id) of a conversion:

- first_touch: 1 for i = 1; last_touch: 1 for i = n; linear: 1/n;
- time_decay: 2^(-age_i / half_life), normalised to sum to 1 (age: the conversion's time minus the
  touch's; computed relative to the newest touch so long lookbacks cannot underflow to 0/0);
- position_based: n = 1: 1; n = 2: 1/2 each; else 0.4 to the first and the last, 0.2 shared
  equally by the n - 2 between.

A send counts as a touch of campaign "name" = its journey, "source" = 'journeys' and "channel" = its
channel; held-back (control) sends are no touch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from onefold.insights.adapters.sql import Fragment, match_sql
from onefold.insights.domain.specs import AttributionGroup, AttributionModel, AttributionSpec, TouchSource

SEND_SOURCE = "journeys"

_WEIGHTS = {
    AttributionModel.FIRST_TOUCH: "CASE WHEN position = 1 THEN 1.0 ELSE 0.0 END",
    AttributionModel.LAST_TOUCH: "CASE WHEN position = touches THEN 1.0 ELSE 0.0 END",
    AttributionModel.LINEAR: "1.0 / touches",
    AttributionModel.TIME_DECAY: "decay / sum(decay) OVER (PARTITION BY conversion_id)",
    AttributionModel.POSITION_BASED: (
        "CASE WHEN touches = 1 THEN 1.0 WHEN touches = 2 THEN 0.5"
        " WHEN position = 1 OR position = touches THEN 0.4 ELSE 0.2 / (touches - 2) END"
    ),
}
_EVENT_GROUP = {
    AttributionGroup.CAMPAIGN_NAME: "campaign_name",
    AttributionGroup.CAMPAIGN_SOURCE: "campaign_source",
    AttributionGroup.CHANNEL: "channel",
}
_SEND_GROUP = {
    AttributionGroup.CAMPAIGN_NAME: "journey",
    AttributionGroup.CAMPAIGN_SOURCE: f"'{SEND_SOURCE}'",
    AttributionGroup.CHANNEL: "channel",
    AttributionGroup.JOURNEY: "journey",
}


@dataclass(frozen=True)
class Credit:
    conversions: float  # the sum of the shares of conversions credited
    revenue: float  # the sum of share x the conversion's revenue


@dataclass(frozen=True)
class AttributionRow:
    value: str | None  # the group (None: touches without that field, e.g. a campaign with no name)
    touches: int  # touches of this group that preceded a conversion within the lookback
    credit: Mapping[AttributionModel, Credit]


@dataclass(frozen=True)
class AttributionResult:
    conversions: int
    revenue: float
    direct: Credit  # conversions without any touch (whole), and their revenue
    rows: tuple[AttributionRow, ...]  # sorted by value, None last


def _touch_events(workspace: str, spec: AttributionSpec) -> Fragment:
    start = spec.time_range.start - spec.lookback_window
    end = spec.time_range.end
    assert isinstance(spec.group_by, AttributionGroup)
    parts, params = [], []
    if TouchSource.CAMPAIGNS in spec.touches:
        parts.append(
            f"SELECT profile_id, ts, event_id AS touch_id, {_EVENT_GROUP[spec.group_by]} AS grp FROM events"
            " WHERE workspace = ? AND ts >= ? AND ts < ?"
            " AND (campaign_source IS NOT NULL OR campaign_medium IS NOT NULL OR campaign_name IS NOT NULL)"
        )
        params += [workspace, start, end]
    if TouchSource.SENDS in spec.touches:
        parts.append(
            f"SELECT profile_id, ts, message_id AS touch_id, {_SEND_GROUP[spec.group_by]} AS grp FROM sends"
            " WHERE workspace = ? AND ts >= ? AND ts < ? AND NOT control"
        )
        params += [workspace, start, end]
    return Fragment(" UNION ALL ".join(parts), params)


def attribution_query(workspace: str, spec: AttributionSpec) -> Fragment:
    """Rows (kind, value, touches, conversions, revenue, then per model credited conversions and
    revenue): kind 'group' per group, one 'direct' row and one 'total' row."""
    conversion = match_sql(spec.conversion)
    touch_events = _touch_events(workspace, spec)
    models = [AttributionModel(m) for m in spec.models]
    weights = ", ".join(f"{_WEIGHTS[m]} AS {m.value}" for m in models)
    sums = ", ".join(f"sum({m.value}), sum({m.value} * revenue)" for m in models)
    blanks = ", ".join("NULL, NULL" for _ in models)
    sql = (
        "WITH conversions AS MATERIALIZED (SELECT event_id AS conversion_id, profile_id, ts,"
        " coalesce(revenue, 0) AS revenue FROM events"
        f" WHERE workspace = ? AND ts >= ? AND ts < ? AND {conversion.sql}),"
        f" touch_events AS ({touch_events.sql}),"
        " matched AS (SELECT c.conversion_id, c.revenue, t.grp, t.touch_id, t.ts,"
        " date_diff('microsecond', t.ts, c.ts) AS age FROM conversions c JOIN touch_events t"
        " ON t.profile_id = c.profile_id AND t.ts < c.ts AND t.ts >= c.ts - ?),"
        " positioned AS MATERIALIZED (SELECT conversion_id, revenue, grp,"
        " row_number() OVER (PARTITION BY conversion_id ORDER BY ts, touch_id) AS position,"
        " count(*) OVER (PARTITION BY conversion_id) AS touches,"
        " pow(0.5, (age - min(age) OVER (PARTITION BY conversion_id)) / ?) AS decay FROM matched),"
        f" weighted AS (SELECT grp, revenue, {weights} FROM positioned)"
        f" SELECT 'group' AS kind, grp, count(*), NULL, NULL, {sums} FROM weighted GROUP BY grp"
        f" UNION ALL SELECT 'direct', NULL, 0, count(*), coalesce(sum(revenue), 0), {blanks} FROM conversions"
        " WHERE conversion_id NOT IN (SELECT conversion_id FROM positioned)"
        f" UNION ALL SELECT 'total', NULL, 0, count(*), coalesce(sum(revenue), 0), {blanks} FROM conversions"
    )
    params = [
        workspace,
        spec.time_range.start,
        spec.time_range.end,
        *conversion.params,
        *touch_events.params,
        spec.lookback_window,
        spec.half_life_window.total_seconds() * 1e6,
    ]
    return Fragment(sql, params)


def run_attribution(
    connection: duckdb.DuckDBPyConnection, workspace: str, spec: AttributionSpec
) -> AttributionResult:
    """Conversions of `spec` in its range, credited to groups of touches per model."""
    query = attribution_query(workspace, spec)
    rows = connection.execute(query.sql, query.params).fetchall()
    models = [AttributionModel(m) for m in spec.models]
    by_kind: dict[str, list[tuple[Any, ...]]] = {"group": [], "direct": [], "total": []}
    for row in rows:
        by_kind[row[0]].append(row)
    (direct,) = by_kind["direct"]
    (total,) = by_kind["total"]
    groups = sorted(by_kind["group"], key=lambda row: (row[1] is None, row[1] or ""))
    return AttributionResult(
        conversions=int(total[3]),
        revenue=float(total[4]),
        direct=Credit(conversions=float(direct[3]), revenue=float(direct[4])),
        rows=tuple(
            AttributionRow(
                value=row[1],
                touches=int(row[2]),
                credit={
                    model: Credit(conversions=float(row[5 + 2 * i]), revenue=float(row[6 + 2 * i]))
                    for i, model in enumerate(models)
                },
            )
            for row in groups
        ),
    )
