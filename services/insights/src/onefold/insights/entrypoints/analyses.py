"""The analyses' requests and results on the wire: protobuf messages to specifications (a bad one is
INVALID_ARGUMENT naming the field) and results back to messages. No logic of an analysis lives here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.insights.adapters.attribution import AttributionResult
from onefold.insights.adapters.cohorts import CohortResult
from onefold.insights.adapters.funnels import FunnelGroupResult, FunnelResult
from onefold.insights.adapters.roi import RoiResult, SegmentRevenue
from onefold.insights.domain.specs import (
    AttributionGroup,
    AttributionModel,
    AttributionSpec,
    CohortSpec,
    ColumnBreakdown,
    EventMatch,
    Filter,
    FilterValue,
    FunnelSpec,
    RoiSpec,
    Scalar,
    SegmentBreakdown,
    SpecError,
    TimeRange,
    TouchSource,
)
from onefold.platform.errors import InvalidArgument

MAX_FILTER_VALUES = 100


def _invalid(analysis: str, error: SpecError) -> InvalidArgument:
    """A specification's error names its field first ("steps must number 2 to 10, not 1.")."""
    message = str(error)
    first = message.split(maxsplit=1)[0] if message else ""
    field = f"{analysis}.{first}" if first.isidentifier() else analysis
    return InvalidArgument(f"the {analysis} request is not valid", violations=[(field, message)])


def _scalar(value: struct_pb2.Value, field: str) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    if kind == "bool_value":
        return value.bool_value
    raise InvalidArgument(
        "a filter value must be a string, a number or a boolean", violations=[(field, f"{kind} given")]
    )


def _filter(message: pb.Filter, field: str) -> Filter:
    if not message.values or len(message.values) > MAX_FILTER_VALUES:
        raise InvalidArgument(
            f"a filter needs 1 to {MAX_FILTER_VALUES} values", violations=[(f"{field}.values", "count")]
        )
    values = tuple(_scalar(v, f"{field}.values") for v in message.values)
    value: FilterValue = values if message.op == "in" else values[0]
    if message.op != "in" and len(values) > 1:
        raise InvalidArgument(
            "several values only with op 'in'", violations=[(f"{field}.values", f"{len(values)} given")]
        )
    return Filter(message.field, message.op, value)


def _match(message: pb.EventMatch, field: str) -> EventMatch:
    return EventMatch(
        message.event, tuple(_filter(f, f"{field}.filters[{i}]") for i, f in enumerate(message.filters))
    )


def _range(message: pb.TimeRange, has_range: bool) -> TimeRange:
    if not has_range or not message.HasField("start") or not message.HasField("end"):
        raise InvalidArgument(
            "give the range's start and end", violations=[("range", "start and end required")]
        )
    return TimeRange(_naive(message.start), _naive(message.end))


def _naive(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC).replace(tzinfo=None)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.replace(tzinfo=UTC))
    return stamp


def funnel_spec(request: pb.FunnelRequest) -> FunnelSpec:
    try:
        steps = tuple(_match(step, f"steps[{i}]") for i, step in enumerate(request.steps))
        breakdown: ColumnBreakdown | SegmentBreakdown | None = None
        which = request.WhichOneof("breakdown")
        if which == "column":
            breakdown = ColumnBreakdown(request.column)
        elif which == "segments":
            breakdown = SegmentBreakdown(tuple(request.segments.segments))
        return FunnelSpec(
            steps=steps,
            window=request.window,
            time_range=_range(request.range, request.HasField("range")),
            order=request.order or "sequential",
            breakdown=breakdown,
        )
    except SpecError as error:
        raise _invalid("funnel", error) from None


def attribution_spec(request: pb.AttributionRequest) -> AttributionSpec:
    try:
        return AttributionSpec(
            conversion=_match(request.conversion, "conversion"),
            time_range=_range(request.range, request.HasField("range")),
            lookback=request.lookback or "30d",
            half_life=request.half_life or "7d",
            touches=tuple(request.touches) or tuple(TouchSource),
            group_by=request.group_by or AttributionGroup.CAMPAIGN_NAME,
            models=tuple(request.models) or tuple(AttributionModel),
        )
    except SpecError as error:
        raise _invalid("attribution", error) from None


def cohort_spec(request: pb.CohortsRequest) -> CohortSpec:
    try:
        return CohortSpec(
            time_range=_range(request.range, request.HasField("range")),
            cohort_by=request.cohort_by or "first_seen",
            granularity=request.granularity or "week",
            periods=request.periods or 12,
            purchase_event=request.purchase_event or "Order Completed",
            activity_event=request.activity_event or None,
        )
    except SpecError as error:
        raise _invalid("cohorts", error) from None


def roi_spec(request: pb.RoiRequest) -> RoiSpec:
    try:
        return RoiSpec(
            goal=_match(request.goal, "goal"),
            time_range=_range(request.range, request.HasField("range")),
            lookback=request.lookback or "30d",
            uplift_window=request.uplift_window or "7d",
            lifecycle_tag=request.lifecycle_tag or "lifecycle_stage",
            segments=tuple(request.segments),
        )
    except SpecError as error:
        raise _invalid("roi", error) from None


# -- results ----------------------------------------------------------------------------------------


def _group(group: FunnelGroupResult) -> pb.FunnelGroup:
    message = pb.FunnelGroup(
        steps=[
            pb.FunnelStep(
                step=step.step,
                event=step.event,
                entered=step.entered,
                conversion_from_previous=step.conversion_from_previous,
                conversion_overall=step.conversion_overall,
                dropped_off=step.dropped_off,
                median_seconds=step.median_seconds,
                p90_seconds=step.p90_seconds,
            )
            for step in group.steps
        ]
    )
    if group.value is not None:
        message.value = group.value
    return message


def funnel_message(result: FunnelResult) -> pb.FunnelResult:
    return pb.FunnelResult(
        order=str(result.order), total=_group(result.total), breakdown=[_group(g) for g in result.breakdown]
    )


def attribution_message(result: AttributionResult) -> pb.AttributionResult:
    rows = []
    for row in result.rows:
        message = pb.AttributionRow(
            touches=row.touches,
            credit={
                str(model): pb.Credit(conversions=c.conversions, revenue=c.revenue)
                for model, c in row.credit.items()
            },
        )
        if row.value is not None:
            message.value = row.value
        rows.append(message)
    return pb.AttributionResult(
        conversions=result.conversions,
        revenue=result.revenue,
        direct=pb.Credit(conversions=result.direct.conversions, revenue=result.direct.revenue),
        rows=rows,
    )


def cohorts_message(result: CohortResult) -> pb.CohortsResult:
    return pb.CohortsResult(
        granularity=str(result.granularity),
        periods=result.periods,
        cohorts=[
            pb.Cohort(start=_stamp(c.start), size=c.size, retained=list(c.retained), rates=list(c.rates))
            for c in result.cohorts
        ],
    )


def _revenues(rows: Sequence[SegmentRevenue]) -> list[pb.SegmentRevenue]:
    found = []
    for row in rows:
        message = pb.SegmentRevenue(conversions=row.conversions, revenue=row.revenue, people=row.people)
        if row.segment is not None:
            message.segment = row.segment
        found.append(message)
    return found


def roi_message(result: RoiResult) -> pb.RoiResult:
    campaigns = []
    for c in result.campaigns:
        campaign = pb.CampaignRoi(conversions=c.conversions, revenue=c.revenue, cost=c.cost, roi=c.roi)
        if c.campaign is not None:
            campaign.campaign = c.campaign
        campaigns.append(campaign)
    by_segment = []
    for pair in result.campaign_segments:
        row = pb.CampaignSegmentRevenue(conversions=pair.conversions, revenue=pair.revenue)
        if pair.campaign is not None:
            row.campaign = pair.campaign
        if pair.segment is not None:
            row.segment = pair.segment
        by_segment.append(row)
    return pb.RoiResult(
        conversions=result.conversions,
        revenue=result.revenue,
        segments=_revenues(result.segments),
        stages=_revenues(result.stages),
        campaigns=campaigns,
        campaign_segments=by_segment,
        uplift=[
            pb.JourneyUplift(
                journey=u.journey,
                sent=u.sent,
                sent_converted=u.sent_converted,
                held_back=u.held_back,
                held_back_converted=u.held_back_converted,
                sent_rate=u.sent_rate,
                held_back_rate=u.held_back_rate,
                uplift=u.uplift,
                z=u.z,
                p_value=u.p_value,
            )
            for u in result.uplift
        ],
    )
