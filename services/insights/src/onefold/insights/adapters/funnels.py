"""Funnels in one DuckDB query: each person's anchor and the time they reached each step, then counts,
conversion rates and times to convert per step, overall and per breakdown value.

The query reads only what a step can match: for `sequential` and `any`, the events named by a step
in [range start, range end + window]; each person's anchor is a min() over their step-1 events,
and each later step is a join restricted to the window and aggregated (sequential: the earliest
step-k event after step k-1's; any: the earliest of each step after the anchor). `strict` needs the
event following each one among all the person's events, so it reads them all once with LEAD over
the person's events ordered by (time, event id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from onefold.insights.adapters.sql import Fragment, match_sql
from onefold.insights.domain.specs import ColumnBreakdown, FunnelSpec, OrderMode, SegmentBreakdown


@dataclass(frozen=True)
class FunnelStepResult:
    step: int  # 1-based
    event: str
    entered: int  # people who reached this step
    conversion_from_previous: (
        float | None
    )  # entered / the previous step's entered (None at step 1, or when it had nobody)
    conversion_overall: float | None  # entered / step 1's entered (None when nobody entered step 1)
    dropped_off: int  # the previous step's entered minus this one's (0 at step 1)
    median_seconds: float | None  # from the anchor to this step, interpolated (None at step 1 or if nobody)
    p90_seconds: float | None


@dataclass(frozen=True)
class FunnelGroupResult:
    value: str | None  # the breakdown value (None: the total, or people without a value or segment)
    steps: tuple[FunnelStepResult, ...]


@dataclass(frozen=True)
class FunnelResult:
    order: OrderMode
    total: FunnelGroupResult
    breakdown: tuple[FunnelGroupResult, ...]  # empty without a breakdown; sorted by value, None last


def _reached_people(workspace: str, spec: FunnelSpec) -> Fragment:
    """SQL of the CTEs ending in `people(profile_id, grp, r1, ..., rn)`: r_k is when the person
    reached step k (NULL if they did not); grp is the anchoring event's breakdown column."""
    window = spec.conversion_window
    last_ts = spec.time_range.end + window
    group_column = (
        f"CAST({spec.breakdown.column} AS VARCHAR)" if isinstance(spec.breakdown, ColumnBreakdown) else "NULL"
    )
    n = len(spec.steps)
    matches = [match_sql(step) for step in spec.steps]
    params: list[Any] = []
    if spec.order is OrderMode.STRICT:
        columns = [f"{group_column} AS grp", f"{matches[0].sql} AS s1"]
        params.extend(matches[0].params)
        for k in range(2, n + 1):
            columns.append(f"lead({matches[k - 1].sql}, {k - 1}) OVER w AS n{k}")
            columns.append(f"lead(ts, {k - 1}) OVER w AS u{k}")
            params.extend(matches[k - 1].params)
        sql = (
            f"ordered AS (SELECT profile_id, ts, event_id, {', '.join(columns)} FROM events"
            " WHERE workspace = ? AND ts >= ? AND ts <= ?"
            " WINDOW w AS (PARTITION BY profile_id ORDER BY ts, event_id)),"
            " a1 AS (SELECT *, ts AS r1, ts + ? AS deadline FROM ordered WHERE s1 AND ts < ?"
            " QUALIFY row_number() OVER (PARTITION BY profile_id ORDER BY ts, event_id) = 1),"
        )
        params += [workspace, spec.time_range.start, last_ts, window, spec.time_range.end]
        reached = ["r1"]
        condition = "true"
        previous = "r1"
        for k in range(2, n + 1):
            condition += f" AND n{k} AND u{k} > {previous} AND u{k} <= deadline"
            reached.append(f"CASE WHEN {condition} THEN u{k} END AS r{k}")
            previous = f"u{k}"
        sql += f" people AS MATERIALIZED (SELECT profile_id, grp, {', '.join(reached)} FROM a1)"
        return Fragment(sql, params)

    flags = []
    for k, match in enumerate(matches, start=1):
        flags.append(f"{match.sql} AS s{k}")
        params.extend(match.params)
    names = list(dict.fromkeys(step.event for step in spec.steps))
    sql = (
        f"step_events AS MATERIALIZED (SELECT profile_id, ts, {group_column} AS grp, {', '.join(flags)}"
        f" FROM events WHERE workspace = ? AND ts >= ? AND ts <= ? AND event IN ({', '.join('?' * len(names))})),"
        " a1 AS (SELECT profile_id, min(ts) AS r1, min(ts) + ? AS deadline, arg_min(grp, ts) AS grp"
        " FROM step_events WHERE s1 AND ts < ? GROUP BY profile_id),"
    )
    params += [workspace, spec.time_range.start, last_ts, *names, window, spec.time_range.end]
    if spec.order is OrderMode.SEQUENTIAL:
        for k in range(2, n + 1):
            sql += (
                f" a{k} AS (SELECT a.profile_id, any_value(a.deadline) AS deadline, min(e.ts) AS r{k}"
                f" FROM a{k - 1} a JOIN step_events e ON e.profile_id = a.profile_id AND e.s{k}"
                f" AND e.ts > a.r{k - 1} AND e.ts <= a.deadline GROUP BY a.profile_id),"
            )
        joins = " ".join(f"LEFT JOIN a{k} USING (profile_id)" for k in range(2, n + 1))
        later = ", ".join(f"r{k}" for k in range(2, n + 1))
        sql += f" people AS MATERIALIZED (SELECT profile_id, a1.grp, r1, {later} FROM a1 {joins})"
        return Fragment(sql, params)

    firsts = ", ".join(f"min(e.ts) FILTER (WHERE e.s{k}) AS h{k}" for k in range(2, n + 1))
    sql += (
        f" hits AS (SELECT a.profile_id, {firsts} FROM a1 a JOIN step_events e ON e.profile_id = a.profile_id"
        " AND e.ts > a.r1 AND e.ts <= a.deadline GROUP BY a.profile_id),"
    )
    reached_any = []
    for k in range(2, n + 1):
        hits = [f"h{j}" for j in range(2, k + 1)]
        every = " AND ".join(f"{h} IS NOT NULL" for h in hits)
        reached_any.append(f"CASE WHEN {every} THEN greatest({', '.join(hits)}) END AS r{k}")
    sql += (
        f" people AS MATERIALIZED (SELECT profile_id, a1.grp, r1, {', '.join(reached_any)}"
        " FROM a1 LEFT JOIN hits USING (profile_id))"
    )
    return Fragment(sql, params)


def funnel_query(workspace: str, spec: FunnelSpec) -> Fragment:
    """The whole query: one row for the total (is_total), then one per breakdown value; per step k
    the count of people who reached it and the median and p90 seconds from the anchor."""
    people = _reached_people(workspace, spec)
    n = len(spec.steps)
    figures = ["count(r1)"]
    for k in range(2, n + 1):
        seconds = f"date_diff('microsecond', r1, r{k}) / 1e6"
        figures += [f"count(r{k})", f"quantile_cont({seconds}, 0.5)", f"quantile_cont({seconds}, 0.9)"]
    aggregates = ", ".join(figures)
    sql = f"WITH {people.sql} SELECT true AS is_total, NULL AS value, {aggregates} FROM people"
    params = list(people.params)
    if isinstance(spec.breakdown, ColumnBreakdown):
        sql += f" UNION ALL SELECT false, grp, {aggregates} FROM people GROUP BY grp"
    elif isinstance(spec.breakdown, SegmentBreakdown):
        chosen = " AND list_contains(?::VARCHAR[], m.segment)" if spec.breakdown.segments else ""
        sql += (
            f" UNION ALL SELECT false, m.segment, {aggregates} FROM people p LEFT JOIN memberships m"
            " ON m.workspace = ? AND m.profile_id = p.profile_id AND m.entered_at <= p.r1"
            f" AND (m.exited_at IS NULL OR m.exited_at > p.r1){chosen} GROUP BY m.segment"
        )
        params.append(workspace)
        if spec.breakdown.segments:
            params.append(list(spec.breakdown.segments))
    return Fragment(sql, params)


def _group(spec: FunnelSpec, value: str | None, figures: tuple[Any, ...]) -> FunnelGroupResult:
    entered = [int(figures[0])] + [int(figures[1 + 3 * (k - 2)]) for k in range(2, len(spec.steps) + 1)]
    steps = []
    for k, step in enumerate(spec.steps, start=1):
        count = entered[k - 1]
        previous = entered[k - 2] if k > 1 else None
        times = figures[2 + 3 * (k - 2) : 4 + 3 * (k - 2)] if k > 1 else (None, None)
        steps.append(
            FunnelStepResult(
                step=k,
                event=step.event,
                entered=count,
                conversion_from_previous=(count / previous if previous else None) if k > 1 else None,
                conversion_overall=count / entered[0] if entered[0] else None,
                dropped_off=(previous - count) if previous is not None else 0,
                median_seconds=None if times[0] is None else float(times[0]),
                p90_seconds=None if times[1] is None else float(times[1]),
            )
        )
    return FunnelGroupResult(value=value, steps=tuple(steps))


def run_funnel(connection: duckdb.DuckDBPyConnection, workspace: str, spec: FunnelSpec) -> FunnelResult:
    """The funnel of `spec` over the workspace's events (see `FunnelSpec` for its definition)."""
    query = funnel_query(workspace, spec)
    rows = connection.execute(query.sql, query.params).fetchall()
    total = next(row for row in rows if row[0])
    groups = sorted((row for row in rows if not row[0]), key=lambda row: (row[1] is None, row[1] or ""))
    assert isinstance(spec.order, OrderMode)
    return FunnelResult(
        order=spec.order,
        total=_group(spec, None, total[2:]),
        breakdown=tuple(_group(spec, row[1], row[2:]) for row in groups),
    )
