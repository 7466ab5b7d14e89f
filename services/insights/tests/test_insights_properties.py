"""Properties over random small histories: a funnel's counts never grow from a step to the next, and
per step `any` >= `sequential` >= `strict` (each demands more than the one before); attribution's
shares of the touched conversions and the direct ones make every conversion exactly once."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from insights_history import T0, History, at

from onefold.insights.adapters.attribution import run_attribution
from onefold.insights.adapters.funnels import run_funnel
from onefold.insights.adapters.warehouse import open_warehouse
from onefold.insights.domain.specs import AttributionSpec, EventMatch, FunnelSpec, TimeRange

NAMES = ("A", "B", "C", "X")
RANGE = TimeRange(T0, T0 + timedelta(hours=2))
events = st.lists(
    st.tuples(
        st.sampled_from(("ann", "bob", "cat")),
        st.integers(min_value=-10, max_value=150),  # minutes: some before the range, some after it
        st.sampled_from(NAMES),
        st.sampled_from((None, "search", "social")),
    ),
    max_size=40,
)
slow = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@slow
@given(events, st.lists(st.sampled_from(NAMES[:3]), min_size=2, max_size=4), st.integers(1, 90))
def test_funnel_modes_nest(
    history_rows: list[tuple[str, int, str, str | None]], steps: list[str], window: int
) -> None:
    warehouse = open_warehouse(threads=2)
    history = History(warehouse)
    for profile, minutes, name, campaign in history_rows:
        history.event(profile, at(minutes), name, campaign_name=campaign)
    counts = {}
    for order in ("strict", "sequential", "any"):
        spec = FunnelSpec(
            steps=tuple(EventMatch(s) for s in steps), window=f"{window}m", time_range=RANGE, order=order
        )
        counts[order] = [step.entered for step in run_funnel(warehouse, "acme", spec).total.steps]
        assert counts[order] == sorted(counts[order], reverse=True), order
    for k in range(len(steps)):
        assert counts["any"][k] >= counts["sequential"][k] >= counts["strict"][k], (k, counts)
    assert counts["any"][0] == counts["sequential"][0] == counts["strict"][0]
    warehouse.close()


@slow
@given(events, st.integers(1, 120), st.integers(1, 60))
def test_attribution_credits_every_conversion_once(
    history_rows: list[tuple[str, int, str, str | None]], lookback: int, half_life: int
) -> None:
    warehouse = open_warehouse(threads=2)
    history = History(warehouse)
    for profile, minutes, name, campaign in history_rows:
        history.event(profile, at(minutes), name, campaign_name=campaign, revenue=float(minutes % 7))
    spec = AttributionSpec(
        conversion=EventMatch("C"), time_range=RANGE, lookback=f"{lookback}m", half_life=f"{half_life}m"
    )
    result = run_attribution(warehouse, "acme", spec)
    for model in spec.models:
        credited = sum(row.credit[model].conversions for row in result.rows)  # type: ignore[index]
        revenue = sum(row.credit[model].revenue for row in result.rows)  # type: ignore[index]
        assert abs(credited + result.direct.conversions - result.conversions) < 1e-9, model
        assert abs(revenue + result.direct.revenue - result.revenue) < 1e-6, model
    warehouse.close()
