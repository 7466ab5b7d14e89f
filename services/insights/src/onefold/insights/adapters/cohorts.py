"""Retention cohorts in one DuckDB query.

A person's cohort is the week (ISO: starting Monday 00:00) or month of their first event in the
workspace (or their first `purchase_event`), over all of the store's history; the cohorts shown are
those whose first moment falls in the spec's range. Period p of a cohort is the p-th week or month
after the cohort's own (p = 0: the cohort's week or month); a person is retained in period p when
they did an activity event (any, or `activity_event`) in it, at or after their first moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from onefold.insights.adapters.sql import Fragment
from onefold.insights.domain.specs import CohortBy, CohortSpec, Granularity

_PERIODS_AS_INTERVAL = {Granularity.WEEK: "to_weeks", Granularity.MONTH: "to_months"}


@dataclass(frozen=True)
class CohortRow:
    start: datetime  # the cohort's week (Monday) or month
    size: int
    retained: tuple[int, ...]  # people active in period 0, 1, ...
    rates: tuple[float, ...]  # retained / size


@dataclass(frozen=True)
class CohortResult:
    granularity: Granularity
    periods: int
    cohorts: tuple[CohortRow, ...]  # oldest first


def cohort_query(workspace: str, spec: CohortSpec) -> Fragment:
    assert isinstance(spec.granularity, Granularity)
    unit = spec.granularity.value
    firsts_filter = " AND event = ?" if spec.cohort_by is CohortBy.FIRST_PURCHASE else ""
    activity_filter = " AND e.event = ?" if spec.activity_event is not None else ""
    sql = (
        "WITH firsts AS (SELECT profile_id, min(ts) AS first FROM events"
        f" WHERE workspace = ?{firsts_filter} GROUP BY profile_id),"
        f" cohorts AS MATERIALIZED (SELECT profile_id, first, date_trunc('{unit}', first) AS cohort FROM firsts"
        " WHERE first >= ? AND first < ?),"
        " sizes AS (SELECT cohort, count(*) AS size FROM cohorts GROUP BY cohort),"
        f" active AS (SELECT DISTINCT c.cohort, date_diff('{unit}', c.cohort, date_trunc('{unit}', e.ts)) AS period,"
        " e.profile_id FROM cohorts c JOIN events e ON e.workspace = ? AND e.profile_id = c.profile_id"
        f" AND e.ts >= c.first AND e.ts < c.cohort + {_PERIODS_AS_INTERVAL[spec.granularity]}(?){activity_filter}),"
        " retained AS (SELECT cohort, period, count(*) AS people FROM active GROUP BY cohort, period)"
        " SELECT s.cohort, s.size, r.period, r.people FROM sizes s LEFT JOIN retained r USING (cohort)"
        " ORDER BY s.cohort, r.period"
    )
    params: list[object] = [workspace]
    if spec.cohort_by is CohortBy.FIRST_PURCHASE:
        params.append(spec.purchase_event)
    params += [spec.time_range.start, spec.time_range.end, workspace, spec.periods]
    if spec.activity_event is not None:
        params.append(spec.activity_event)
    return Fragment(sql, params)


def run_cohorts(connection: duckdb.DuckDBPyConnection, workspace: str, spec: CohortSpec) -> CohortResult:
    """The retention matrix of `spec`: a row per cohort, a column per period."""
    query = cohort_query(workspace, spec)
    sizes: dict[datetime, int] = {}
    retained: dict[datetime, list[int]] = {}
    for cohort, size, period, people in connection.execute(query.sql, query.params).fetchall():
        sizes[cohort] = int(size)
        counts = retained.setdefault(cohort, [0] * spec.periods)
        if period is not None:
            counts[int(period)] = int(people)
    assert isinstance(spec.granularity, Granularity)
    return CohortResult(
        granularity=spec.granularity,
        periods=spec.periods,
        cohorts=tuple(
            CohortRow(
                start=cohort,
                size=sizes[cohort],
                retained=tuple(retained[cohort]),
                rates=tuple(count / sizes[cohort] for count in retained[cohort]),
            )
            for cohort in sorted(sizes)
        ),
    )
