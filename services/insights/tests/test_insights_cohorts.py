"""Retention cohorts on a hand-made history (T0 is a Monday; cohorts in [T0, T0 + 14 days)):

- ann: Page Viewed day 0 (week 0), Order Completed day 8 (week 1), Page Viewed day 22 (week 3);
- bob: Page Viewed day 2 (week 0), Page Viewed day 15 (week 2);
- cat: Page Viewed day 7 (week 1), Order Completed day 9 (week 1), Page Viewed day 14 (week 2);
- dan: Page Viewed day -7: first seen before the range, in no cohort shown; also active on day 1.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest
from insights_history import T0, History, at

from onefold.insights.adapters.cohorts import CohortResult, run_cohorts
from onefold.insights.domain.specs import CohortSpec, Granularity, TimeRange

RANGE = TimeRange(T0, T0 + timedelta(days=14))
WEEK1 = T0 + timedelta(days=7)


@pytest.fixture
def visits(history: History) -> History:
    for profile, day, name in (
        ("ann", 0, "Page Viewed"), ("ann", 8, "Order Completed"), ("ann", 22, "Page Viewed"),
        ("bob", 2, "Page Viewed"), ("bob", 15, "Page Viewed"),
        ("cat", 7, "Page Viewed"), ("cat", 9, "Order Completed"), ("cat", 14, "Page Viewed"),
        ("dan", -7, "Page Viewed"), ("dan", 1, "Page Viewed"),
    ):  # fmt: skip
        history.event(profile, at(days=day), name)
    return history


def matrix(result: CohortResult) -> dict[datetime, tuple[int, tuple[int, ...]]]:
    return {row.start: (row.size, row.retained) for row in result.cohorts}


def test_weekly_cohorts_by_first_seen_and_any_activity(
    warehouse: duckdb.DuckDBPyConnection, visits: History
) -> None:
    result = run_cohorts(warehouse, "acme", CohortSpec(time_range=RANGE, periods=4))
    assert result.granularity is Granularity.WEEK
    assert matrix(result) == {T0: (2, (2, 1, 1, 1)), WEEK1: (1, (1, 1, 0, 0))}
    assert result.cohorts[0].rates == (1.0, 0.5, 0.5, 0.5)


def test_activity_of_one_event(warehouse: duckdb.DuckDBPyConnection, visits: History) -> None:
    spec = CohortSpec(time_range=RANGE, periods=4, activity_event="Order Completed")
    assert matrix(run_cohorts(warehouse, "acme", spec)) == {T0: (2, (0, 1, 0, 0)), WEEK1: (1, (1, 0, 0, 0))}


def test_cohorts_by_first_purchase(warehouse: duckdb.DuckDBPyConnection, visits: History) -> None:
    spec = CohortSpec(time_range=RANGE, periods=4, cohort_by="first_purchase")
    # ann and cat first ordered in week 1; ann is back in week 3 (period 2), cat in week 2 (period 1)
    assert matrix(run_cohorts(warehouse, "acme", spec)) == {WEEK1: (2, (2, 1, 1, 0))}


def test_monthly_cohorts(warehouse: duckdb.DuckDBPyConnection, visits: History) -> None:
    spec = CohortSpec(
        time_range=TimeRange(datetime(2026, 3, 1), datetime(2026, 4, 1)), granularity="month", periods=2
    )
    # everyone but dan first seen in March; ann back in the March 24 visit (same month) only
    assert matrix(run_cohorts(warehouse, "acme", spec)) == {datetime(2026, 3, 1): (3, (3, 0))}
