"""Specifications refuse what cannot run, with a sentence naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from onefold.insights.domain.specs import (
    AttributionSpec,
    CohortSpec,
    ColumnBreakdown,
    EventMatch,
    Filter,
    FunnelSpec,
    OrderMode,
    RoiSpec,
    SpecError,
    TimeRange,
    parse_duration,
)

RANGE = TimeRange(datetime(2026, 3, 1), datetime(2026, 4, 1))
STEPS = (EventMatch("Product Viewed"), EventMatch("Order Completed"))


def test_durations() -> None:
    assert parse_duration("30m", "window") == timedelta(minutes=30)
    assert parse_duration(" 7d ", "window") == timedelta(days=7)
    assert parse_duration("2w", "window") == timedelta(days=14)
    assert parse_duration(timedelta(hours=1), "window") == timedelta(hours=1)
    with pytest.raises(SpecError, match=r"^window must be a duration"):
        parse_duration("7 days", "window")
    with pytest.raises(SpecError, match=r"^lookback must be longer than zero"):
        parse_duration("0d", "lookback")


def test_a_valid_funnel_is_normalised() -> None:
    spec = FunnelSpec(steps=list(STEPS), window="7d", time_range=RANGE, order="strict")  # type: ignore[arg-type]
    assert (
        spec.steps == STEPS and spec.conversion_window == timedelta(days=7) and spec.order is OrderMode.STRICT
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: FunnelSpec(steps=STEPS[:1], window="1d", time_range=RANGE),
            "^steps must number 2 to 10, not 1",
        ),
        (
            lambda: FunnelSpec(steps=STEPS * 6, window="1d", time_range=RANGE),
            "^steps must number 2 to 10, not 12",
        ),
        (
            lambda: FunnelSpec(steps=STEPS, window="181d", time_range=RANGE),
            "^window must be at most 180 days",
        ),
        (lambda: FunnelSpec(steps=STEPS, window="soon", time_range=RANGE), r"^window must be a duration"),
        (
            lambda: FunnelSpec(steps=STEPS, window="1d", time_range=RANGE, order="loose"),
            "^order must be one of",
        ),
        (lambda: ColumnBreakdown("email"), r"^breakdown column must be one of"),
        (lambda: EventMatch(" "), r"^event must name an event"),
        (
            lambda: TimeRange(datetime(2026, 4, 1), datetime(2026, 3, 1)),
            "^time range end must be after its start",
        ),
        (
            lambda: TimeRange(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1)),
            "^time range must use naive UTC",
        ),
        (lambda: Filter("email", "eq", "x"), r"^filter field must be 'properties.<path>' or one of"),
        (lambda: Filter("properties.a b", "eq", "x"), r"^filter field 'properties.a b' must be"),
        (lambda: Filter("category", "like", "x"), r"^filter op must be one of"),
        (lambda: Filter("category", "in", "books"), r"^filter value of 'category' must be a non-empty tuple"),
        (lambda: Filter("category", "in", ()), r"^filter value of 'category' must be a non-empty tuple"),
        (lambda: Filter("category", "eq", ("a",)), r"^filter value of 'category' must be a non-empty tuple"),
        (lambda: Filter("category", "gt", "b"), r"^filter value of 'category' must be a number for op 'gt'"),
        (lambda: Filter("category", "eq", 3), r"^filter value of 'category' must be a string"),
        (lambda: Filter("revenue", "eq", "3"), r"^filter value of 'revenue' must be a number"),
        (lambda: Filter("properties.x", "in", (1, "a")), r"must not mix numbers and other values"),
        (lambda: Filter("revenue", "gt", float("nan")), r"^filter value of 'revenue' must be a number"),
    ],
)
def test_funnel_refusals(make: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"lookback": "-1d"}, r"^lookback must be a duration"),
        ({"half_life": "0h"}, r"^half_life must be longer than zero"),
        ({"touches": ("tv",)}, r"^touches must be among campaigns, sends"),
        ({"touches": ()}, r"^touches must name at least one source"),
        ({"group_by": "medium"}, r"^group_by must be one of"),
        ({"group_by": "journey"}, r"^group_by 'journey' needs touches from sends only"),
        ({"models": ("u_shaped",)}, r"^models must be among"),
        ({"models": ()}, r"^models must name at least one"),
    ],
)
def test_attribution_refusals(extra: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        AttributionSpec(conversion=EventMatch("Order Completed"), time_range=RANGE, **extra)  # type: ignore[arg-type]


def test_attribution_defaults() -> None:
    spec = AttributionSpec(conversion=EventMatch("Order Completed"), time_range=RANGE)
    assert spec.lookback_window == timedelta(days=30) and spec.half_life_window == timedelta(days=7)
    assert len(spec.models) == 5 and spec.group_by == "campaign_name"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"cohort_by": "signup"}, r"^cohort_by must be one of"),
        ({"granularity": "day"}, r"^granularity must be one of"),
        ({"periods": 0}, r"^periods must be 1 to 120, not 0"),
        ({"periods": True}, r"^periods must be 1 to 120"),
        ({"cohort_by": "first_purchase", "purchase_event": ""}, r"^purchase_event must name an event"),
        ({"activity_event": ""}, r"^activity_event must name an event"),
    ],
)
def test_cohort_refusals(extra: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        CohortSpec(time_range=RANGE, **extra)  # type: ignore[arg-type]


def test_roi_refusals() -> None:
    with pytest.raises(SpecError, match=r"^uplift_window must be a duration"):
        RoiSpec(goal=EventMatch("Order Completed"), time_range=RANGE, uplift_window="a while")
    with pytest.raises(SpecError, match=r"^lifecycle_tag must name a tag"):
        RoiSpec(goal=EventMatch("Order Completed"), time_range=RANGE, lifecycle_tag="")
    assert issubclass(SpecError, ValueError)
