"""Attribution on a hand-made history; each model's credit worked out by hand.

Conversions: Order Completed in [T0, T0 + 30 days); lookback 10 days; time-decay half-life 1 day.
Days after T0:

- ann: campaign 'search' day 0, journey 'welcome' sent day 1, campaign 'social' day 2, order 100 on
  day 3. Three touches aged 3, 2 and 1 days: time-decay weights 1/8, 1/4, 1/2 -> 1/7, 2/7, 4/7;
  position-based 0.4, 0.2, 0.4.
- bob: 'search' day -20 (beyond the lookback), 'welcome' held back (control) day 0, order 50 on
  day 1: no touch, direct.
- cat: 'search' day 5, 'social' day 6, order 40 on day 7, 'social' again a minute after the order
  (not a touch of it): two touches aged 2 and 1 days: time decay 1/3, 2/3; position-based 1/2 each.
- dan: 'search' day 3, an order without revenue on day 4: everything to search, revenue 0.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest
from insights_history import T0, History, at

from onefold.insights.adapters.attribution import AttributionResult, run_attribution
from onefold.insights.domain.specs import AttributionModel, AttributionSpec, EventMatch, TimeRange

ORDER = "Order Completed"
RANGE = TimeRange(T0, T0 + timedelta(days=30))
M = AttributionModel


@pytest.fixture
def touched(history: History) -> History:
    def campaign(profile: str, days: float, name: str) -> None:
        history.event(
            profile,
            at(days=days),
            "Page Viewed",
            campaign_name=name,
            campaign_source=f"{name}-src",
            channel="web",
        )

    campaign("ann", 0, "search")
    history.send("ann", at(days=1), "welcome")
    campaign("ann", 2, "social")
    history.event("ann", at(days=3), ORDER, revenue=100.0)
    campaign("bob", -20, "search")
    history.send("bob", at(days=0), "welcome", control=True)
    history.event("bob", at(days=1), ORDER, revenue=50.0)
    campaign("cat", 5, "search")
    campaign("cat", 6, "social")
    history.event("cat", at(days=7), ORDER, revenue=40.0)
    history.event("cat", at(1, days=7), "Page Viewed", campaign_name="social")
    campaign("dan", 3, "search")
    history.event("dan", at(days=4), ORDER)
    return history


def attribute(warehouse: duckdb.DuckDBPyConnection, **extra: object) -> AttributionResult:
    spec = AttributionSpec(
        conversion=EventMatch(ORDER), time_range=RANGE, lookback="10d", half_life="1d", **extra
    )
    return run_attribution(warehouse, "acme", spec)


def credits(result: AttributionResult, model: AttributionModel) -> dict[str | None, tuple[float, float]]:
    return {row.value: (row.credit[model].conversions, row.credit[model].revenue) for row in result.rows}


def test_every_model_by_campaign_name(warehouse: duckdb.DuckDBPyConnection, touched: History) -> None:
    result = attribute(warehouse)
    assert (result.conversions, result.revenue) == (4, 190.0)
    assert (result.direct.conversions, result.direct.revenue) == (1, 50.0)
    assert [(row.value, row.touches) for row in result.rows] == [("search", 3), ("social", 2), ("welcome", 1)]
    expected = {
        M.FIRST_TOUCH: {"search": (3, 140), "social": (0, 0), "welcome": (0, 0)},
        M.LAST_TOUCH: {"search": (1, 0), "social": (2, 140), "welcome": (0, 0)},
        M.LINEAR: {
            "search": (1 / 3 + 1 / 2 + 1, 100 / 3 + 20),
            "social": (1 / 3 + 1 / 2, 100 / 3 + 20),
            "welcome": (1 / 3, 100 / 3),
        },
        M.TIME_DECAY: {
            "search": (1 / 7 + 1 / 3 + 1, 100 / 7 + 40 / 3),
            "social": (4 / 7 + 2 / 3, 400 / 7 + 80 / 3),
            "welcome": (2 / 7, 200 / 7),
        },
        M.POSITION_BASED: {
            "search": (0.4 + 0.5 + 1, 40 + 20),
            "social": (0.4 + 0.5, 40 + 20),
            "welcome": (0.2, 20),
        },
    }
    for model, groups in expected.items():
        got = credits(result, model)
        assert got == {g: (pytest.approx(c), pytest.approx(r)) for g, (c, r) in groups.items()}, model
        # each touched conversion's shares sum to 1: the groups and the direct ones make the whole
        assert sum(c for c, _ in got.values()) + result.direct.conversions == pytest.approx(
            result.conversions
        )
        assert sum(r for _, r in got.values()) + result.direct.revenue == pytest.approx(result.revenue)


def test_groups_by_source_and_channel_place_sends_under_journeys_and_their_channel(
    warehouse: duckdb.DuckDBPyConnection, touched: History
) -> None:
    by_source = attribute(warehouse, group_by="campaign_source", models=("last_touch",))
    assert credits(by_source, M.LAST_TOUCH) == {
        "journeys": (0, 0), "search-src": (1, 0), "social-src": (2, 140)
    }  # fmt: skip
    by_channel = attribute(warehouse, group_by="channel", models=("linear",))
    assert credits(by_channel, M.LINEAR) == {
        "email": (pytest.approx(1 / 3), pytest.approx(100 / 3)),
        "web": (pytest.approx(2 + 2 / 3), pytest.approx(140 - 100 / 3)),
    }


def test_journeys_from_sends_alone(warehouse: duckdb.DuckDBPyConnection, touched: History) -> None:
    result = attribute(warehouse, touches=("sends",), group_by="journey")
    assert [row.value for row in result.rows] == ["welcome"]  # bob's held-back send is no touch
    assert all(credit.conversions == 1 and credit.revenue == 100 for credit in result.rows[0].credit.values())
    assert (result.direct.conversions, result.direct.revenue) == (3, 90.0)


def test_position_based_shares_a_fifth_among_the_middle_touches(
    warehouse: duckdb.DuckDBPyConnection, history: History
) -> None:
    for day, name in enumerate(("a", "b", "c", "d")):
        history.event("ann", at(days=day), "Page Viewed", campaign_name=name)
    history.event("ann", at(days=5), ORDER, revenue=10.0)
    result = attribute(warehouse, models=("position_based",))
    assert credits(result, M.POSITION_BASED) == {
        "a": (pytest.approx(0.4), pytest.approx(4)),
        "b": (pytest.approx(0.1), pytest.approx(1)),
        "c": (pytest.approx(0.1), pytest.approx(1)),
        "d": (pytest.approx(0.4), pytest.approx(4)),
    }
