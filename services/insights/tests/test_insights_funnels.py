"""Funnels on a hand-made history, every figure worked out by hand beside the facts.

Steps: Product Viewed (V) -> Product Added (A) -> Checkout Started (C); window 1 h; anchors in
[T0, T0 + 1 day). Minutes after T0:

- ann: V 0, A 10, C 20                    everything, in order, nothing between
- bob: V 0, Searched 5, A 20, C 30        in order with an event between (not strict)
- cat: V 0, C 5, A 30                     out of order (sequential stops at A; any has all three)
- dan: V 0, A 70                          A after the window
- eve: V -60 (before the range), V 30, A 40   anchored at 30, the first V in the range
- fay: V 0, V 50, A 65                    anchored at 0: A is 65 min after it (a later V does not re-anchor)
- gus: A 0, V 5                           nothing after V
- hal: V one day and 10 min later         outside the range: not in the funnel
- ann in another workspace: V 0, A 1      never counted
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest
from insights_history import T0, History, at

from onefold.insights.adapters.funnels import FunnelResult, run_funnel
from onefold.insights.domain.specs import (
    ColumnBreakdown,
    EventMatch,
    Filter,
    FunnelSpec,
    OrderMode,
    SegmentBreakdown,
    TimeRange,
)

V, A, C = "Product Viewed", "Product Added", "Checkout Started"
RANGE = TimeRange(T0, T0 + timedelta(days=1))


@pytest.fixture
def shop(history: History) -> History:
    history.event("ann", at(0), V, channel="web")
    history.event("ann", at(10), A)
    history.event("ann", at(20), C)
    history.event("bob", at(0), V, channel="web")
    history.event("bob", at(5), "Searched")
    history.event("bob", at(20), A)
    history.event("bob", at(30), C)
    history.event("cat", at(0), V)
    history.event("cat", at(5), C)
    history.event("cat", at(30), A)
    history.event("dan", at(0), V)
    history.event("dan", at(70), A)
    history.event("eve", at(-60), V, channel="web")
    history.event("eve", at(30), V, channel="ios")
    history.event("eve", at(40), A)
    history.event("fay", at(0), V)
    history.event("fay", at(50), V)
    history.event("fay", at(65), A)
    history.event("gus", at(0), A)
    history.event("gus", at(5), V)
    history.event("hal", at(24 * 60 + 10), V)
    History(history.connection, workspace="other").event("ann", at(0), V)
    History(history.connection, workspace="other").event("ann", at(1), A)
    return history


def funnel(warehouse: duckdb.DuckDBPyConnection, order: str, **extra: object) -> FunnelResult:
    spec = FunnelSpec(
        steps=(EventMatch(V), EventMatch(A), EventMatch(C)),
        window="1h",
        time_range=RANGE,
        order=order,
        **extra,
    )
    return run_funnel(warehouse, "acme", spec)


def entered(result: FunnelResult) -> list[int]:
    return [step.entered for step in result.total.steps]


def test_sequential_takes_the_earliest_step_after_the_previous_within_the_window_of_the_first_anchor(
    warehouse: duckdb.DuckDBPyConnection, shop: History
) -> None:
    result = funnel(warehouse, "sequential")
    assert entered(result) == [7, 4, 2]  # step 2: ann bob cat eve; step 3: ann bob
    first, second, third = result.total.steps
    assert (first.conversion_from_previous, first.conversion_overall, first.dropped_off) == (None, 1.0, 0)
    assert second.conversion_from_previous == pytest.approx(4 / 7) and second.dropped_off == 3
    assert third.conversion_from_previous == 0.5 and third.conversion_overall == pytest.approx(2 / 7)
    assert third.dropped_off == 2
    # to step 2: ann 600 s, bob 1200, cat 1800, eve 600 -> sorted 600 600 1200 1800
    assert second.median_seconds == 900.0
    assert second.p90_seconds == pytest.approx(1200 + 0.7 * 600)  # interpolated at rank 0.9 x 3 = 2.7
    # to step 3: ann 1200, bob 1800
    assert (third.median_seconds, third.p90_seconds) == (1500.0, pytest.approx(1200 + 0.9 * 600))
    assert first.median_seconds is None and result.breakdown == ()


def test_strict_needs_each_step_to_be_the_very_next_event(
    warehouse: duckdb.DuckDBPyConnection, shop: History
) -> None:
    result = funnel(warehouse, "strict")
    assert result.order is OrderMode.STRICT
    assert entered(result) == [7, 2, 1]  # step 2: ann and eve (V 30 then A 40); step 3: ann
    assert [s.median_seconds for s in result.total.steps] == [None, 600.0, 1200.0]


def test_any_order_needs_every_step_within_the_window_after_the_anchor(
    warehouse: duckdb.DuckDBPyConnection, shop: History
) -> None:
    result = funnel(warehouse, "any")
    assert entered(result) == [7, 4, 3]  # cat's C 5 and A 30 both count
    # to step 3: the later of the steps' first times: ann 1200, bob 1800, cat 1800
    assert result.total.steps[2].median_seconds == 1800.0


def test_a_breakdown_by_column_reads_the_anchoring_event(
    warehouse: duckdb.DuckDBPyConnection, shop: History
) -> None:
    result = funnel(warehouse, "sequential", breakdown=ColumnBreakdown("channel"))
    groups = {group.value: [step.entered for step in group.steps] for group in result.breakdown}
    # eve's anchor is her V at 30 (ios), not the earlier one (web) outside the range
    assert groups == {"ios": [1, 1, 0], "web": [2, 2, 2], None: [4, 1, 0]}
    assert [group.value for group in result.breakdown] == ["ios", "web", None]
    assert entered(result) == [7, 4, 2]


def test_a_breakdown_by_segment_reads_memberships_at_the_anchor(
    warehouse: duckdb.DuckDBPyConnection, shop: History
) -> None:
    shop.member("ann", "vip", at(days=-3))
    shop.member("bob", "vip", at(1))  # entered after his anchor
    shop.member("cat", "vip", at(days=-1), exited=at(-1))  # left before her anchor
    shop.member("dan", "vip", at(days=-1))
    shop.member("dan", "newsletter", at(days=-1))  # dan counts in both segments
    result = funnel(warehouse, "sequential", breakdown=SegmentBreakdown())
    groups = {group.value: [step.entered for step in group.steps] for group in result.breakdown}
    assert groups == {"vip": [2, 1, 1], "newsletter": [1, 0, 0], None: [5, 3, 1]}

    only_vip = funnel(warehouse, "sequential", breakdown=SegmentBreakdown(("vip",)))
    assert {group.value: group.steps[0].entered for group in only_vip.breakdown} == {"vip": 2, None: 5}


def test_step_filters_on_columns_and_json_properties(
    warehouse: duckdb.DuckDBPyConnection, history: History
) -> None:
    history.event("ann", at(0), V, category="books", properties='{"price": 12.5, "shop": {"country": "FR"}}')
    history.event("bob", at(0), V, category="books", properties='{"price": 5, "shop": {"country": "FR"}}')
    history.event("cat", at(0), V, category="toys", properties='{"price": 20, "shop": {"country": "DE"}}')
    history.event("dan", at(0), V, category="books", properties='{"price": 30, "shop": {"country": "ES"}}')
    for profile in ("ann", "bob", "cat", "dan"):
        history.event(profile, at(5), A, revenue=10.0 if profile != "dan" else 99.0)

    def first_steps(*filters: Filter, added: tuple[Filter, ...] = ()) -> list[int]:
        spec = FunnelSpec(steps=(EventMatch(V, filters), EventMatch(A, added)), window="1h", time_range=RANGE)
        return entered(run_funnel(warehouse, "acme", spec))

    assert first_steps(Filter("category", "eq", "books"), Filter("properties.price", "gt", 10)) == [2, 2]
    assert first_steps(Filter("properties.shop.country", "in", ("FR", "ES"))) == [3, 3]
    assert first_steps(Filter("properties.shop.country", "ne", "FR")) == [2, 2]
    assert first_steps(Filter("category", "in", ("toys",)), added=(Filter("revenue", "ge", 50),)) == [1, 0]
    assert first_steps(added=(Filter("revenue", "lt", 50), Filter("revenue", "le", 10))) == [4, 3]


def test_same_instant_events_do_not_follow_each_other(
    warehouse: duckdb.DuckDBPyConnection, history: History
) -> None:
    history.event("ann", at(0), V)
    history.event("ann", at(0), A)  # same instant as the view: not after it
    history.event("bob", at(0), V)
    history.event("bob", at(0), "Searched")  # bob's next event in (time, id) order, at the same instant
    history.event("bob", at(1), A)
    for order in ("sequential", "strict", "any"):
        spec = FunnelSpec(steps=(EventMatch(V), EventMatch(A)), window="1h", time_range=RANGE, order=order)
        assert entered(run_funnel(warehouse, "acme", spec)) == ([2, 0] if order == "strict" else [2, 1]), (
            order
        )


def test_an_empty_funnel_has_no_rates(warehouse: duckdb.DuckDBPyConnection) -> None:
    result = funnel(warehouse, "sequential")
    assert entered(result) == [0, 0, 0]
    assert all(step.conversion_overall is None and step.median_seconds is None for step in result.total.steps)
