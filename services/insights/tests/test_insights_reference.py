"""The queries against a plain-Python reading of the definitions (docs/insights.md), event by event,
on a small synthetic history dense enough that people have several attempts, campaigns and sends:
every funnel order mode and every attribution model must agree exactly."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import duckdb
import pytest

from onefold.insights.adapters.attribution import run_attribution
from onefold.insights.adapters.funnels import run_funnel
from onefold.insights.adapters.synthetic import FUNNEL, generate_history
from onefold.insights.adapters.warehouse import open_warehouse
from onefold.insights.domain.specs import AttributionSpec, EventMatch, FunnelSpec, TimeRange

START = datetime(2026, 1, 5)
RANGE = TimeRange(START + timedelta(days=10), START + timedelta(days=60))
WINDOW = timedelta(days=2)
Row = tuple[datetime, str, str]  # time, id, name


@pytest.fixture(scope="module")
def dense() -> duckdb.DuckDBPyConnection:
    connection = open_warehouse(threads=2)
    generate_history(connection, events=6_000, people=150, start=START, days=90, workspace="w", seed=3)
    return connection


def people_events(connection: duckdb.DuckDBPyConnection) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for profile, ts, event_id, name in connection.execute(
        "SELECT profile_id, ts, event_id, event FROM events WHERE workspace = 'w' ORDER BY profile_id, ts, event_id"
    ).fetchall():
        out[profile].append((ts, event_id, name))
    return out


def reference_funnel(events: dict[str, list[Row]], steps: tuple[str, ...], order: str) -> list[int]:
    reached = [0] * len(steps)
    for rows in events.values():
        anchors = [
            i for i, (ts, _, name) in enumerate(rows) if name == steps[0] and RANGE.start <= ts < RANGE.end
        ]
        if not anchors:
            continue
        at = anchors[0]
        anchor_ts = rows[at][0]
        deadline = anchor_ts + WINDOW
        depth = 1
        if order == "sequential":
            previous = anchor_ts
            for step in steps[1:]:
                found = [ts for ts, _, name in rows if name == step and previous < ts <= deadline]
                if not found:
                    break
                previous, depth = min(found), depth + 1
        elif order == "strict":
            previous = anchor_ts
            for k, step in enumerate(steps[1:], start=1):
                if at + k >= len(rows):
                    break
                ts, _, name = rows[at + k]
                if name != step or not previous < ts <= deadline:
                    break
                previous, depth = ts, depth + 1
        else:
            for step in steps[1:]:
                if not any(name == step and anchor_ts < ts <= deadline for ts, _, name in rows):
                    break
                depth += 1
        for k in range(depth):
            reached[k] += 1
    return reached


@pytest.mark.parametrize("order", ["sequential", "strict", "any"])
@pytest.mark.parametrize(
    "steps", [FUNNEL, (FUNNEL[0], FUNNEL[0], FUNNEL[1]), ("Page Viewed", FUNNEL[0], FUNNEL[3])]
)
def test_funnels_agree_with_the_reference(
    dense: duckdb.DuckDBPyConnection, order: str, steps: tuple[str, ...]
) -> None:
    spec = FunnelSpec(steps=tuple(EventMatch(s) for s in steps), window=WINDOW, time_range=RANGE, order=order)
    got = [step.entered for step in run_funnel(dense, "w", spec).total.steps]
    assert got == reference_funnel(people_events(dense), steps, order)
    # dense enough for every step to be exercised (strict: an order never comes right after a view)
    assert got[-1] > 0 or (order == "strict" and got[1] > 0)


def reference_attribution(
    connection: duckdb.DuckDBPyConnection, lookback: timedelta, half_life: timedelta
) -> dict[str, dict[str | None, float]]:
    touches: dict[str, list[tuple[datetime, str, str | None]]] = defaultdict(list)
    for profile, ts, touch_id, campaign in connection.execute(
        "SELECT profile_id, ts, event_id, campaign_name FROM events WHERE workspace = 'w' AND"
        " (campaign_name IS NOT NULL OR campaign_source IS NOT NULL OR campaign_medium IS NOT NULL)"
        " UNION ALL SELECT profile_id, ts, message_id, journey FROM sends WHERE workspace = 'w' AND NOT control"
    ).fetchall():
        touches[profile].append((ts, touch_id, campaign))
    credit: dict[str, dict[str | None, float]] = defaultdict(lambda: defaultdict(float))
    for profile, ts, revenue in connection.execute(
        "SELECT profile_id, ts, coalesce(revenue, 0) FROM events WHERE workspace = 'w' AND event = 'Order Completed'"
        " AND ts >= ? AND ts < ?",
        [RANGE.start, RANGE.end],
    ).fetchall():
        before = sorted(t for t in touches[profile] if ts - lookback <= t[0] < ts)
        n = len(before)
        if n == 0:
            continue
        decay = [0.5 ** ((ts - t[0]) / half_life) for t in before]
        for i, (_, _, group) in enumerate(before):
            middle = 0.2 / (n - 2) if n > 2 else 0.0
            shares = {
                "first_touch": 1.0 if i == 0 else 0.0,
                "last_touch": 1.0 if i == n - 1 else 0.0,
                "linear": 1 / n,
                "time_decay": decay[i] / sum(decay),
                "position_based": 1.0 if n == 1 else 0.5 if n == 2 else 0.4 if i in (0, n - 1) else middle,
            }
            for model, share in shares.items():
                credit[model][group] += share * revenue
    return credit


def test_attribution_agrees_with_the_reference(dense: duckdb.DuckDBPyConnection) -> None:
    lookback, half_life = timedelta(days=20), timedelta(days=3)
    spec = AttributionSpec(
        conversion=EventMatch("Order Completed"), time_range=RANGE, lookback=lookback, half_life=half_life
    )
    result = run_attribution(dense, "w", spec)
    expected = reference_attribution(dense, lookback, half_life)
    for model in spec.models:
        got = {row.value: row.credit[model].revenue for row in result.rows}  # type: ignore[index]
        want = expected[str(model)]
        assert set(got) == set(want), model
        assert got == {group: pytest.approx(revenue) for group, revenue in want.items()}, model
