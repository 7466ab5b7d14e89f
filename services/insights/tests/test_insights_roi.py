"""Campaign ROI and journey uplift on hand-made histories, worked out by hand."""

from __future__ import annotations

import math
from datetime import timedelta

import duckdb
import pytest
from insights_history import T0, History, at

from onefold.insights.adapters.roi import (
    CampaignRoi,
    CampaignSegmentRevenue,
    SegmentRevenue,
    run_roi,
    two_proportion_z_test,
)
from onefold.insights.domain.specs import EventMatch, RoiSpec, TimeRange

ORDER = "Order Completed"
RANGE = TimeRange(T0, T0 + timedelta(days=30))


def test_revenue_per_segment_stage_and_campaign_against_costs(
    warehouse: duckdb.DuckDBPyConnection, history: History
) -> None:
    # ann: vip, active; touched by 'search' on day 0; orders 100 on day 1
    history.member("ann", "vip", at(days=-5))
    history.tag("ann", "active", at(days=-5))
    history.event("ann", at(days=0), "Page Viewed", campaign_name="search")
    history.event("ann", at(days=1), ORDER, revenue=100.0)
    # bob: joins the newsletter after his order; 'new' until day 1 12:00; sent 'welcome' on day 0
    history.member("bob", "newsletter", at(days=2))
    history.tag("bob", "new", at(days=-1), until=at(12 * 60, days=1))
    history.tag("bob", "active", at(12 * 60, days=1))
    history.send("bob", at(days=0), "welcome")
    history.event("bob", at(days=1), ORDER, revenue=30.0)
    # cat: vip and newsletter, no stage, no touch; orders 70 on day 5
    history.member("cat", "vip", at(days=-1))
    history.member("cat", "newsletter", at(days=-1))
    history.event("cat", at(days=5), ORDER, revenue=70.0)
    # search's 200 spans 20 days, half of them in the range; tv's is after it; welcome's is inside
    history.cost("search", at(days=-10), at(days=10), 200.0)
    history.cost("tv", at(days=40), at(days=50), 999.0)
    history.cost("welcome", at(days=0), at(days=30), 10.0)

    result = run_roi(warehouse, "acme", RoiSpec(goal=EventMatch(ORDER), time_range=RANGE))
    assert (result.conversions, result.revenue) == (3, 200.0)
    assert result.segments == (
        SegmentRevenue("newsletter", 1, 70.0, 1),
        SegmentRevenue("vip", 2, 170.0, 2),
        SegmentRevenue(None, 1, 30.0, 1),
    )
    assert result.stages == (
        SegmentRevenue("active", 1, 100.0, 1),
        SegmentRevenue("new", 1, 30.0, 1),
        SegmentRevenue(None, 1, 70.0, 1),
    )
    assert result.campaigns == (
        CampaignRoi("search", 1, 100.0, pytest.approx(100.0), pytest.approx(0.0)),  # type: ignore[arg-type]
        CampaignRoi("welcome", 1, 30.0, 10.0, 2.0),
        CampaignRoi(None, 1, 70.0, 0.0, None),
    )
    assert result.campaign_segments == (
        CampaignSegmentRevenue("search", "vip", 1, 100.0),
        CampaignSegmentRevenue("welcome", None, 1, 30.0),
        CampaignSegmentRevenue(None, "newsletter", 1, 70.0),
        CampaignSegmentRevenue(None, "vip", 1, 70.0),
    )
    only_vip = run_roi(
        warehouse, "acme", RoiSpec(goal=EventMatch(ORDER), time_range=RANGE, segments=("vip",))
    )
    assert [(s.segment, s.conversions) for s in only_vip.segments] == [("vip", 2), (None, 1)]


def test_journey_uplift_of_those_sent_over_those_held_back(
    warehouse: duckdb.DuckDBPyConnection, history: History
) -> None:
    # sent: bob orders a day later, kim a day after her send on day 2; eve never; fay 3 days later
    # (after the 2-day window). Held back: gus orders a day later; hal, ivy and jay never.
    for profile, day, control in (
        ("bob", 0, False), ("eve", 0, False), ("fay", 3, False), ("kim", 2, False),
        ("gus", 0, True), ("hal", 0, True), ("ivy", 0, True), ("jay", 0, True),
    ):  # fmt: skip
        history.send(profile, at(days=day), "welcome", control=control)
    history.send("bob", at(days=4), "welcome")  # a second send: bob counts once, from his first
    for profile, day in (("bob", 1), ("kim", 3), ("fay", 6), ("gus", 1)):
        history.event(profile, at(days=day), ORDER, revenue=10.0)

    spec = RoiSpec(goal=EventMatch(ORDER), time_range=RANGE, uplift_window="2d")
    (uplift,) = run_roi(warehouse, "acme", spec).uplift
    assert (uplift.journey, uplift.sent, uplift.sent_converted, uplift.held_back, uplift.held_back_converted) == (
        "welcome", 4, 2, 4, 1
    )  # fmt: skip
    assert (uplift.sent_rate, uplift.held_back_rate, uplift.uplift) == (0.5, 0.25, 0.25)
    pooled = 3 / 8
    z = 0.25 / math.sqrt(pooled * (1 - pooled) * (1 / 4 + 1 / 4))
    assert uplift.z == pytest.approx(z)
    assert uplift.p_value == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(z / math.sqrt(2)))))
    assert uplift.p_value == pytest.approx(0.4652, abs=1e-4)


def test_the_z_test_against_known_values() -> None:
    # 60.0% against 55.6% of 1000 each: pooled 0.578, standard error sqrt(0.578 x 0.422 x 0.002) =
    # 0.022087, z = 0.044 / 0.022087 = 1.9921; a normal table gives Phi(1.99) = 0.97670 and
    # Phi(2.00) = 0.97725, so p = 2 (1 - Phi(1.9921)) = 0.0464
    z, p = two_proportion_z_test(600, 1000, 556, 1000) or (0.0, 0.0)
    assert z == pytest.approx(1.9921, abs=1e-4) and p == pytest.approx(0.0464, abs=2e-4)
    assert two_proportion_z_test(0, 10, 0, 10) is None  # nobody converted: undefined
    assert two_proportion_z_test(1, 0, 1, 10) is None
