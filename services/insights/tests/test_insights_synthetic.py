"""The synthetic history: exactly the events asked for, the same rows for the same seed whatever the
threads, a funnel shaped as planted, and the planted uplift of journeys found by the analysis."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from onefold.insights.adapters.funnels import run_funnel
from onefold.insights.adapters.roi import run_roi
from onefold.insights.adapters.synthetic import ADD_RATE, FUNNEL, generate_history
from onefold.insights.adapters.warehouse import open_warehouse
from onefold.insights.domain.specs import EventMatch, FunnelSpec, RoiSpec, TimeRange

START = datetime(2026, 1, 5)


def fingerprint(connection: duckdb.DuckDBPyConnection) -> tuple[object, ...]:
    found = connection.execute(
        "SELECT (SELECT sum(hash(event_id, profile_id, ts, event, revenue, campaign_name, channel, properties))"
        " FROM events), (SELECT sum(hash(message_id, profile_id, ts, journey, control)) FROM sends),"
        " (SELECT sum(hash(profile_id, segment, entered_at, exited_at)) FROM memberships),"
        " (SELECT sum(hash(profile_id, value, since, until)) FROM profile_tags), (SELECT sum(amount) FROM costs)"
    ).fetchone()
    assert found is not None
    return tuple(found)


def test_same_seed_same_rows_whatever_the_threads() -> None:
    one, two, other = open_warehouse(threads=1), open_warehouse(threads=2), open_warehouse(threads=2)
    first = generate_history(one, events=30_000, people=3_000, seed=7)
    assert generate_history(two, events=30_000, people=3_000, seed=7) == first
    generate_history(other, events=30_000, people=3_000, seed=8)
    assert first.events == 30_000 and first.sends > 0 and first.memberships > 0 and first.costs == 33
    assert first.profile_tags == 2 * 3_000
    assert fingerprint(one) == fingerprint(two) != fingerprint(other)


def test_the_planted_funnel_and_uplift_are_found() -> None:
    warehouse = open_warehouse(threads=2)
    generate_history(warehouse, events=100_000, people=10_000, workspace="w")
    window = TimeRange(START, START + timedelta(days=90))
    spec = FunnelSpec(steps=tuple(EventMatch(e) for e in FUNNEL), window="30d", time_range=window)
    steps = run_funnel(warehouse, "w", spec).total.steps
    counts = [step.entered for step in steps]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0
    # a person anchors on their first view; with a few views each, more than ADD_RATE of them add
    assert (steps[1].conversion_from_previous or 0) > ADD_RATE
    uplift = run_roi(warehouse, "w", RoiSpec(goal=EventMatch("Order Completed"), time_range=window)).uplift
    assert {u.journey for u in uplift} == {"welcome", "winback", "cart_reminder"}
    assert all((u.uplift or 0) > 0.1 and (u.p_value or 1) < 1e-3 for u in uplift)
