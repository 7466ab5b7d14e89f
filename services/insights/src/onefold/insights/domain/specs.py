"""What an analysis asks: funnels, attribution, cohorts and campaign ROI over the analytical store.

Specifications are plain, immutable values checked when they are made: a bad one raises `SpecError`
(a `ValueError`) whose one-sentence message names the field. Nothing here knows SQL; the adapters
turn a valid specification into a query whose identifiers come only from the enums below and whose
values are always bound parameters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeAlias

MAX_FUNNEL_WINDOW = timedelta(days=180)
MIN_FUNNEL_STEPS, MAX_FUNNEL_STEPS = 2, 10
MAX_COHORT_PERIODS = 120

Scalar: TypeAlias = str | int | float | bool
FilterValue: TypeAlias = Scalar | tuple[Scalar, ...]


class SpecError(ValueError):
    """A specification that cannot be run; the message names the field at fault."""


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | timedelta, what: str) -> timedelta:
    """'30m', '12h', '7d', '2w' (or a timedelta) as a positive timedelta; `what` names the field."""
    if isinstance(text, timedelta):
        parsed = text
    else:
        match = _DURATION.match(text)
        if match is None:
            raise SpecError(f"{what} must be a duration such as '30m', '12h', '7d' or '2w', not {text!r}.")
        parsed = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if parsed <= timedelta(0):
        raise SpecError(f"{what} must be longer than zero.")
    return parsed


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"
    IN = "in"


class EventColumn(StrEnum):
    """The events table's columns a filter, a breakdown or a grouping may read."""

    REVENUE = "revenue"
    CURRENCY = "currency"
    PRODUCT_ID = "product_id"
    CATEGORY = "category"
    CAMPAIGN_SOURCE = "campaign_source"
    CAMPAIGN_MEDIUM = "campaign_medium"
    CAMPAIGN_NAME = "campaign_name"
    CHANNEL = "channel"


NUMERIC_COLUMNS = frozenset({EventColumn.REVENUE})
PROPERTIES_PREFIX = "properties."
_PROPERTY_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ORDERING_OPS = frozenset({Op.GT, Op.GE, Op.LT, Op.LE})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Filter:
    """One condition on an event: `field` is a column of `EventColumn` or `properties.<path>` (a
    JSON path into the properties the workspace allows, e.g. `properties.cart.size`)."""

    field: str
    op: Op | str
    value: FilterValue

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "op", Op(self.op))
        except ValueError:
            raise SpecError(
                f"filter op must be one of {', '.join(o.value for o in Op)}, not {self.op!r}."
            ) from None
        if self.field.startswith(PROPERTIES_PREFIX):
            if not _PROPERTY_PATH.match(self.property_path):
                raise SpecError(f"filter field {self.field!r} must be 'properties.' then dotted names.")
        elif self.field not in {c.value for c in EventColumn}:
            raise SpecError(
                f"filter field must be 'properties.<path>' or one of {', '.join(EventColumn)}, not {self.field!r}."
            )
        values = self.value if isinstance(self.value, tuple) else (self.value,)
        if (self.op is Op.IN) != isinstance(self.value, tuple) or not values:
            raise SpecError(
                f"filter value of {self.field!r} must be a non-empty tuple exactly when op is 'in'."
            )
        numeric = [_is_number(v) for v in values]
        if any(numeric) and not all(numeric):
            raise SpecError(f"filter value of {self.field!r} must not mix numbers and other values.")
        if self.op in _ORDERING_OPS and not all(numeric):
            raise SpecError(f"filter value of {self.field!r} must be a number for op '{self.op}'.")
        if self.column is not None and (self.column in NUMERIC_COLUMNS) != all(numeric):
            kind = "a number" if self.column in NUMERIC_COLUMNS else "a string"
            raise SpecError(f"filter value of {self.field!r} must be {kind}.")

    @property
    def column(self) -> EventColumn | None:
        return None if self.field.startswith(PROPERTIES_PREFIX) else EventColumn(self.field)

    @property
    def property_path(self) -> str:
        return self.field.removeprefix(PROPERTIES_PREFIX)

    @property
    def values(self) -> tuple[Scalar, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)


@dataclass(frozen=True)
class EventMatch:
    """An event by name, with every filter holding."""

    event: str
    filters: tuple[Filter, ...] = ()

    def __post_init__(self) -> None:
        if not self.event.strip():
            raise SpecError("event must name an event.")
        object.__setattr__(self, "filters", tuple(self.filters))


@dataclass(frozen=True)
class TimeRange:
    """[start, end): the half-open range the analysis's anchors (first steps, conversions, ...) fall in."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise SpecError("time range must use naive UTC datetimes, as the store's timestamps are.")
        if self.end <= self.start:
            raise SpecError("time range end must be after its start.")


class OrderMode(StrEnum):
    SEQUENTIAL = "sequential"
    STRICT = "strict"
    ANY = "any"


@dataclass(frozen=True)
class ColumnBreakdown:
    """Split the funnel by a column of the anchoring (first step-1) event."""

    column: EventColumn | str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "column", EventColumn(self.column))
        except ValueError:
            raise SpecError(
                f"breakdown column must be one of {', '.join(EventColumn)}, not {self.column!r}."
            ) from None


@dataclass(frozen=True)
class SegmentBreakdown:
    """Split the funnel by the segments a person was a member of at their anchor's time (all
    segments, or only these); a person in several counts in each, in none under None."""

    segments: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))


@dataclass(frozen=True)
class FunnelSpec:
    """A funnel: who did step 1, then step 2, ... within `window` of their step 1.

    Each person is anchored on their FIRST step-1 event in `time_range` (as Mixpanel and Amplitude
    do); later steps may fall after the range's end, but never after the anchor plus `window`.
    A later step's event must happen strictly after the previous step's (same-instant events have no
    order). Order modes:

    - sequential (default): steps in order, other events (and repeats) in between allowed; each step
      takes the earliest matching event after the previous step's;
    - strict: each step is the person's very next event (all their events in the workspace, ordered
      by time then event id) after the previous step's;
    - any: every step within the window after the anchor, in any order.
    """

    steps: tuple[EventMatch, ...]
    window: timedelta | str
    time_range: TimeRange
    order: OrderMode | str = OrderMode.SEQUENTIAL
    breakdown: ColumnBreakdown | SegmentBreakdown | None = None

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not MIN_FUNNEL_STEPS <= len(steps) <= MAX_FUNNEL_STEPS:
            raise SpecError(f"steps must number {MIN_FUNNEL_STEPS} to {MAX_FUNNEL_STEPS}, not {len(steps)}.")
        object.__setattr__(self, "steps", steps)
        window = parse_duration(self.window, "window")
        if window > MAX_FUNNEL_WINDOW:
            raise SpecError(f"window must be at most {MAX_FUNNEL_WINDOW.days} days.")
        object.__setattr__(self, "window", window)
        try:
            object.__setattr__(self, "order", OrderMode(self.order))
        except ValueError:
            raise SpecError(f"order must be one of {', '.join(OrderMode)}, not {self.order!r}.") from None

    @property
    def conversion_window(self) -> timedelta:
        assert isinstance(self.window, timedelta)  # made one in __post_init__
        return self.window


class AttributionModel(StrEnum):
    FIRST_TOUCH = "first_touch"
    LAST_TOUCH = "last_touch"
    LINEAR = "linear"
    TIME_DECAY = "time_decay"
    POSITION_BASED = "position_based"


class TouchSource(StrEnum):
    CAMPAIGNS = "campaigns"  # events carrying a campaign (UTM source, medium or name)
    SENDS = "sends"  # journeys' messages actually sent (not the control group's held-back ones)


class AttributionGroup(StrEnum):
    CAMPAIGN_NAME = "campaign_name"
    CAMPAIGN_SOURCE = "campaign_source"
    CHANNEL = "channel"
    JOURNEY = "journey"


@dataclass(frozen=True)
class AttributionSpec:
    """Credit for each conversion (an event, its revenue) shared among the touches before it.

    Touches are the person's campaign events and journey sends strictly before the conversion and
    no longer than `lookback` before it. Per conversion with touches the shares sum to 1 under each
    model; a conversion without touches is "direct" (unattributed).
    """

    conversion: EventMatch
    time_range: TimeRange
    lookback: timedelta | str = "30d"
    half_life: timedelta | str = "7d"
    touches: tuple[TouchSource | str, ...] = (TouchSource.CAMPAIGNS, TouchSource.SENDS)
    group_by: AttributionGroup | str = AttributionGroup.CAMPAIGN_NAME
    models: tuple[AttributionModel | str, ...] = tuple(AttributionModel)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lookback", parse_duration(self.lookback, "lookback"))
        object.__setattr__(self, "half_life", parse_duration(self.half_life, "half_life"))
        try:
            touches = tuple(dict.fromkeys(TouchSource(t) for t in self.touches))
        except ValueError:
            raise SpecError(f"touches must be among {', '.join(TouchSource)}.") from None
        if not touches:
            raise SpecError("touches must name at least one source of touches.")
        object.__setattr__(self, "touches", touches)
        try:
            object.__setattr__(self, "group_by", AttributionGroup(self.group_by))
        except ValueError:
            raise SpecError(
                f"group_by must be one of {', '.join(AttributionGroup)}, not {self.group_by!r}."
            ) from None
        if self.group_by is AttributionGroup.JOURNEY and touches != (TouchSource.SENDS,):
            raise SpecError(
                "group_by 'journey' needs touches from sends only, as campaign events have no journey."
            )
        try:
            models = tuple(dict.fromkeys(AttributionModel(m) for m in self.models))
        except ValueError:
            raise SpecError(f"models must be among {', '.join(AttributionModel)}.") from None
        if not models:
            raise SpecError("models must name at least one attribution model.")
        object.__setattr__(self, "models", models)

    @property
    def lookback_window(self) -> timedelta:
        assert isinstance(self.lookback, timedelta)
        return self.lookback

    @property
    def half_life_window(self) -> timedelta:
        assert isinstance(self.half_life, timedelta)
        return self.half_life


class CohortBy(StrEnum):
    FIRST_SEEN = "first_seen"
    FIRST_PURCHASE = "first_purchase"


class Granularity(StrEnum):
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True)
class CohortSpec:
    """Retention: people grouped by the week or month of their first event (or first purchase),
    then, for periods 0..periods-1 after it, how many were active (did any event, or
    `activity_event`) at or after that first moment."""

    time_range: TimeRange
    cohort_by: CohortBy | str = CohortBy.FIRST_SEEN
    granularity: Granularity | str = Granularity.WEEK
    periods: int = 12
    purchase_event: str = "Order Completed"
    activity_event: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "cohort_by", CohortBy(self.cohort_by))
        except ValueError:
            raise SpecError(
                f"cohort_by must be one of {', '.join(CohortBy)}, not {self.cohort_by!r}."
            ) from None
        try:
            object.__setattr__(self, "granularity", Granularity(self.granularity))
        except ValueError:
            raise SpecError(
                f"granularity must be one of {', '.join(Granularity)}, not {self.granularity!r}."
            ) from None
        if isinstance(self.periods, bool) or not 1 <= self.periods <= MAX_COHORT_PERIODS:
            raise SpecError(f"periods must be 1 to {MAX_COHORT_PERIODS}, not {self.periods!r}.")
        if self.cohort_by is CohortBy.FIRST_PURCHASE and not self.purchase_event.strip():
            raise SpecError("purchase_event must name an event when cohorts are by first purchase.")
        if self.activity_event is not None and not self.activity_event.strip():
            raise SpecError("activity_event must name an event, or be None for any event.")


@dataclass(frozen=True)
class RoiSpec:
    """Revenue of goal events per segment and lifecycle stage (at the conversion's time), per
    campaign (last touch within `lookback`) against the campaign's costs over the range, and each
    journey's uplift: the goal's conversion rate within `uplift_window` after the first send of
    those sent beside those held back (the control group)."""

    goal: EventMatch
    time_range: TimeRange
    lookback: timedelta | str = "30d"
    uplift_window: timedelta | str = "7d"
    lifecycle_tag: str = "lifecycle_stage"
    segments: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "lookback", parse_duration(self.lookback, "lookback"))
        object.__setattr__(self, "uplift_window", parse_duration(self.uplift_window, "uplift_window"))
        object.__setattr__(self, "segments", tuple(self.segments))
        if not self.lifecycle_tag.strip():
            raise SpecError("lifecycle_tag must name a tag.")

    @property
    def lookback_window(self) -> timedelta:
        assert isinstance(self.lookback, timedelta)
        return self.lookback

    @property
    def uplift_after(self) -> timedelta:
        assert isinstance(self.uplift_window, timedelta)
        return self.uplift_window
