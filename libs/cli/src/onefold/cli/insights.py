"""`onefold insights status|funnel|attribution|cohorts|roi` (docs/insights.md): the insights service's
analyses (onefold.insights.v1.InsightsService) as readable tables, `--json`, and `--html PATH` for a
self-contained report with charts (html_report.py).

Times: `--since` and `--until` take an ISO-8601 time with its offset or a duration ago (7d, 12h);
`--until` defaults to now. Exit status: 0 answered, 2 a usage, credential, connection or
specification error (the service names the field).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from onefold.cli import html_report
from onefold.cli.client import Connection, DataDir, Token, connect, run_async, service_stub
from onefold.cli.destinations import parse_moment
from onefold.cli.options import Json
from onefold.cli.output import console, print_json, print_table

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from onefold.contracts.insights.v1 import insights_pb2 as pb
    from onefold.contracts.insights.v1 import insights_pb2_grpc

SERVICE = "insights"
ANALYSIS_TIMEOUT_SECONDS = 300.0  # an analysis over a large history takes seconds, not minutes
M = TypeVar("M")

insights_app = typer.Typer(
    help="Insights: funnels, attribution, cohorts and campaign ROI over the analytical copy of the history.",
    no_args_is_help=True,
)

InsightsTarget = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="ONEFOLD_INSIGHTS_TARGET",
        help="insights gRPC host:port (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]
Since = Annotated[
    str, typer.Option("--since", help="start of the range: an ISO-8601 time or a duration ago (30d)")
]
Until = Annotated[
    str | None, typer.Option("--until", help="end of the range (default: now)", show_default=False)
]
Html = Annotated[Path | None, typer.Option("--html", help="also write a self-contained HTML report here")]


# --- talking to the service ----------------------------------------------------------------------


def _call(
    data_dir: Path,
    target: str | None,
    token: str | None,
    method: Callable[[insights_pb2_grpc.InsightsServiceStub], Callable[..., Any]],
    request: Message,
) -> Any:
    from onefold.contracts.insights.v1 import insights_pb2_grpc

    conn: Connection = connect(data_dir, target, token, service=SERVICE)

    async def call() -> Any:
        async with service_stub(conn, insights_pb2_grpc.InsightsServiceStub) as stub:
            return await method(stub)(request, timeout=ANALYSIS_TIMEOUT_SECONDS)

    return run_async(conn, call)


def _range(since: str, until: str | None, start_option: str = "--since") -> pb.TimeRange:
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    now = datetime.now(UTC)
    start = parse_moment(since, start_option, now)
    end = parse_moment(until, "--until", now) if until is not None else now
    if end <= start:
        raise typer.BadParameter(f"must be after {start_option}", param_hint="--until")
    found = pb.TimeRange()
    found.start.FromDatetime(start)
    found.end.FromDatetime(end)
    return found


def _as_dict(message: Message) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _conversions(count: int) -> str:
    return f"{count:,} conversion" + ("" if count == 1 else "s")


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _write_html(path: Path | None, page: Callable[[], str]) -> None:
    """The report `page()` makes, written only when --html asked for one."""
    if path is not None:
        path.write_text(page())
        console.print(f"report written to {path}", highlight=False, markup=False)


# --- status --------------------------------------------------------------------------------------


@insights_app.command()
def status(
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: InsightsTarget = None,
    token: Token = None,
) -> None:
    """What the analytical copy holds for the workspace, and how far it has followed each upstream."""
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    answer: pb.InsightsStatus = _call(data_dir, target, token, lambda s: s.GetStatus, pb.GetStatusRequest())
    if as_json:
        print_json(_as_dict(answer))
        return
    print_table(("table", "rows"), [(t.table, f"{t.rows:,}") for t in answer.tables], title="analytical copy")
    print_table(
        ("upstream", "applied up to"),
        [(a.upstream, f"{a.position:,}") for a in answer.applied],
        title="followed",
    )


# --- funnel --------------------------------------------------------------------------------------


FUNNEL_COLUMNS = ("step", "event", "entered", "from previous", "overall", "dropped off", "median", "p90")


def funnel_rows(group: pb.FunnelGroup) -> list[tuple[str, ...]]:
    return [
        (
            str(step.step),
            step.event,
            f"{step.entered:,}",
            _share(_optional(step, "conversion_from_previous")),
            _share(_optional(step, "conversion_overall")),
            f"{step.dropped_off:,}",
            _duration(_optional(step, "median_seconds")),
            _duration(_optional(step, "p90_seconds")),
        )
        for step in group.steps
    ]


def funnel_html(result: pb.FunnelResult, title: str) -> str:
    sections = [
        html_report.table(FUNNEL_COLUMNS, funnel_rows(result.total)),
        html_report.bar_chart(
            "people per step",
            [(f"{s.step}. {s.event}", float(s.entered), f"{s.entered:,}") for s in result.total.steps],
        ),
    ]
    for group in result.breakdown:
        label = group.value if group.HasField("value") else "(none)"
        sections += [html_report.heading(label), html_report.table(FUNNEL_COLUMNS, funnel_rows(group))]
    return html_report.document(title, *sections)


@insights_app.command()
def funnel(
    steps: Annotated[list[str], typer.Argument(help="the steps' event names, in order (2 to 10)")],
    since: Since,
    window: Annotated[
        str, typer.Option("--window", help="conversion window from the first step (30m, 7d)")
    ] = "7d",
    until: Until = None,
    order: Annotated[str, typer.Option("--order", help="sequential, strict or any")] = "sequential",
    breakdown: Annotated[
        str | None,
        typer.Option("--breakdown", help="split by a column of the first step's event (e.g. channel)"),
    ] = None,
    segment: Annotated[
        list[str] | None,
        typer.Option("--segment", help="split by membership of this segment at the first step (repeatable)"),
    ] = None,
    as_json: Json = False,
    html: Html = None,
    data_dir: DataDir = Path(".onefold"),
    target: InsightsTarget = None,
    token: Token = None,
) -> None:
    """Where people drop off between STEPS: each person anchored on their first step-1 event in the range."""
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    if breakdown and segment:
        raise typer.BadParameter("split by a column or by segments, not both", param_hint="--segment")
    request = pb.FunnelRequest(
        steps=[pb.EventMatch(event=name) for name in steps],
        window=window,
        range=_range(since, until),
        order=order,
    )
    if breakdown:
        request.column = breakdown
    elif segment:
        request.segments.segments.extend(segment)
    result: pb.FunnelResult = _call(data_dir, target, token, lambda s: s.Funnel, request)
    if as_json:
        print_json(_as_dict(result))
    else:
        print_table(FUNNEL_COLUMNS, funnel_rows(result.total), title=f"funnel ({result.order})")
        for group in result.breakdown:
            label = group.value if group.HasField("value") else "(none)"
            print_table(FUNNEL_COLUMNS, funnel_rows(group), title=label)
    _write_html(html, lambda: funnel_html(result, f"Funnel: {' → '.join(steps)}"))


# --- attribution ---------------------------------------------------------------------------------


def attribution_rows(result: pb.AttributionResult, models: Sequence[str]) -> list[tuple[str, ...]]:
    rows = []
    for row in result.rows:
        credits = [row.credit.get(m) for m in models]
        rows.append(
            (
                row.value if row.HasField("value") else "(none)",
                f"{row.touches:,}",
                *(f"{c.conversions:,.1f} / {_money(c.revenue)}" if c is not None else "-" for c in credits),
            )
        )
    rows.append(
        (
            "(direct)",
            "-",
            *(f"{result.direct.conversions:,.0f} / {_money(result.direct.revenue)}",) * len(models),
        )
    )
    return rows


@insights_app.command()
def attribution(
    conversion: Annotated[str, typer.Argument(help="the conversion's event name (its revenue is credited)")],
    since: Since,
    until: Until = None,
    lookback: Annotated[str, typer.Option("--lookback", help="touches at most this long before")] = "30d",
    half_life: Annotated[str, typer.Option("--half-life", help="time decay's half-life")] = "7d",
    group_by: Annotated[
        str, typer.Option("--group-by", help="campaign_name, campaign_source, channel or journey")
    ] = "campaign_name",
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help="first_touch, last_touch, linear, time_decay, position_based (repeatable)"
        ),
    ] = None,
    touches: Annotated[
        list[str] | None, typer.Option("--touches", help="campaigns, sends (repeatable; default both)")
    ] = None,
    as_json: Json = False,
    html: Html = None,
    data_dir: DataDir = Path(".onefold"),
    target: InsightsTarget = None,
    token: Token = None,
) -> None:
    """Which campaigns (or journeys) earned the CONVERSION events, under each attribution model."""
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    request = pb.AttributionRequest(
        conversion=pb.EventMatch(event=conversion),
        range=_range(since, until),
        lookback=lookback,
        half_life=half_life,
        group_by=group_by,
        models=model or [],
        touches=touches or [],
    )
    result: pb.AttributionResult = _call(data_dir, target, token, lambda s: s.Attribution, request)
    models = list(model or ["first_touch", "last_touch", "linear", "time_decay", "position_based"])
    columns = (group_by, "touches", *(f"{m} (conv. / revenue)" for m in models))
    if as_json:
        print_json(_as_dict(result))
    else:
        print_table(
            columns,
            attribution_rows(result, models),
            title=f"{_conversions(result.conversions)}, revenue {_money(result.revenue)}",
        )

    def page() -> str:
        charts = [
            html_report.bar_chart(
                f"revenue credited by {m}",
                [
                    (
                        row.value if row.HasField("value") else "(none)",
                        row.credit[m].revenue,
                        _money(row.credit[m].revenue),
                    )
                    for row in result.rows
                    if m in row.credit
                ],
            )
            for m in models
        ]
        summary = f"{_conversions(result.conversions)}, revenue {_money(result.revenue)}"
        return html_report.document(
            f"Attribution of {conversion}",
            html_report.paragraph(summary, "lead"),
            html_report.table(columns, attribution_rows(result, models)),
            *charts,
        )

    _write_html(html, page)


# --- cohorts -------------------------------------------------------------------------------------


def cohort_rows(result: pb.CohortsResult) -> list[tuple[str, ...]]:
    return [
        (
            cohort.start.ToDatetime(tzinfo=UTC).date().isoformat(),
            f"{cohort.size:,}",
            *(_share(rate) for rate in cohort.rates),
        )
        for cohort in result.cohorts
    ]


@insights_app.command()
def cohorts(
    since: Since,
    until: Until = None,
    cohort_by: Annotated[str, typer.Option("--by", help="first_seen or first_purchase")] = "first_seen",
    granularity: Annotated[str, typer.Option("--granularity", help="week or month")] = "week",
    periods: Annotated[int, typer.Option("--periods", help="periods after the first (1 to 120)")] = 12,
    purchase_event: Annotated[str, typer.Option("--purchase-event")] = "Order Completed",
    activity_event: Annotated[
        str | None, typer.Option("--activity-event", help="what counts as active (default: any event)")
    ] = None,
    as_json: Json = False,
    html: Html = None,
    data_dir: DataDir = Path(".onefold"),
    target: InsightsTarget = None,
    token: Token = None,
) -> None:
    """Retention of weekly or monthly cohorts: the share of each cohort active in each later period."""
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    request = pb.CohortsRequest(
        range=_range(since, until),
        cohort_by=cohort_by,
        granularity=granularity,
        periods=periods,
        purchase_event=purchase_event,
        activity_event=activity_event or "",
    )
    result: pb.CohortsResult = _call(data_dir, target, token, lambda s: s.Cohorts, request)
    columns = ("cohort", "people", *(f"{result.granularity[0]}{p}" for p in range(result.periods)))
    if as_json:
        print_json(_as_dict(result))
    else:
        print_table(columns, cohort_rows(result), title=f"retention by {cohort_by} {result.granularity}")
    _write_html(
        html,
        lambda: html_report.document(
            f"Retention by {cohort_by} {result.granularity}", html_report.table(columns, cohort_rows(result))
        ),
    )


# --- roi -----------------------------------------------------------------------------------------


CAMPAIGN_COLUMNS: tuple[str, ...] = ("campaign", "conversions", "revenue", "cost", "ROI")
UPLIFT_COLUMNS: tuple[str, ...] = ("journey", "sent converted", "held back converted", "uplift", "p")


def roi_tables(result: pb.RoiResult) -> list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]]:
    """(title, columns, rows) of each part of the ROI answer."""

    def revenue(
        rows: Sequence[pb.SegmentRevenue], what: str
    ) -> tuple[str, tuple[str, ...], list[tuple[str, ...]]]:
        return (
            f"by {what}",
            (what, "conversions", "revenue", "people"),
            [
                (
                    r.segment if r.HasField("segment") else "(none)",
                    f"{r.conversions:,}",
                    _money(r.revenue),
                    f"{r.people:,}",
                )
                for r in rows
            ],
        )

    campaigns: list[tuple[str, ...]] = [
        (
            c.campaign if c.HasField("campaign") else "(no campaign)",
            f"{c.conversions:,}",
            _money(c.revenue),
            _money(c.cost),
            "-" if not c.HasField("roi") else f"{c.roi:,.2f}",
        )
        for c in result.campaigns
    ]
    uplift: list[tuple[str, ...]] = [
        (
            u.journey,
            f"{u.sent_converted:,}/{u.sent:,}",
            f"{u.held_back_converted:,}/{u.held_back:,}",
            "-" if not u.HasField("uplift") else f"{100 * u.uplift:+.1f} pp",
            "-" if not u.HasField("p_value") else f"{u.p_value:.3g}",
        )
        for u in result.uplift
    ]
    return [
        revenue(result.segments, "segment"),
        revenue(result.stages, "lifecycle stage"),
        ("by campaign", ("campaign", "conversions", "revenue", "cost", "ROI"), campaigns),
        (
            "journeys' uplift over control",
            ("journey", "sent converted", "held back converted", "uplift", "p"),
            uplift,
        ),
    ]


@insights_app.command()
def roi(
    goal: Annotated[str, typer.Argument(help="the goal event's name (its revenue counts)")],
    since: Since,
    until: Until = None,
    lookback: Annotated[
        str, typer.Option("--lookback", help="a campaign's last touch at most this long before")
    ] = "30d",
    uplift_window: Annotated[
        str, typer.Option("--uplift-window", help="conversions counted this long after a send")
    ] = "7d",
    segment: Annotated[
        list[str] | None, typer.Option("--segment", help="only these segments (repeatable)")
    ] = None,
    as_json: Json = False,
    html: Html = None,
    data_dir: DataDir = Path(".onefold"),
    target: InsightsTarget = None,
    token: Token = None,
) -> None:
    """Revenue of GOAL events per segment, lifecycle stage and campaign against costs, and journeys' uplift."""
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    request = pb.RoiRequest(
        goal=pb.EventMatch(event=goal),
        range=_range(since, until),
        lookback=lookback,
        uplift_window=uplift_window,
        segments=segment or [],
    )
    result: pb.RoiResult = _call(data_dir, target, token, lambda s: s.Roi, request)
    summary = f"{_conversions(result.conversions)}, revenue {_money(result.revenue)}"
    if as_json:
        print_json(_as_dict(result))
    else:
        console.print(summary, highlight=False, markup=False)
        for title, columns, rows in roi_tables(result):
            print_table(columns, rows, title=title)

    def page() -> str:
        sections = [html_report.paragraph(summary, "lead")]
        for title, columns, rows in roi_tables(result):
            sections += [html_report.heading(title), html_report.table(columns, rows)]
        return html_report.document(f"ROI of {goal}", *sections)

    _write_html(html, page)


# --- costs ---------------------------------------------------------------------------------------

costs_app = typer.Typer(help="What campaigns cost, for ROI: set and list.", no_args_is_help=True)
insights_app.add_typer(costs_app, name="costs")
COST_COLUMNS = ("campaign", "channel", "from", "until", "amount")


def cost_rows(costs: Sequence[pb.CampaignCost]) -> list[tuple[str, ...]]:
    def day(stamp: Any) -> str:
        return str(stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))

    return [
        (
            c.campaign,
            c.channel or "(every)",
            day(c.period_start),
            day(c.period_end),
            f"{_money(c.amount)} {c.currency}",
        )
        for c in costs
    ]


@costs_app.command("set")
def set_cost(
    campaign: Annotated[str, typer.Argument(help="a campaign_name of events, or a journey's name")],
    amount: Annotated[float, typer.Option("--amount", help="what it cost over the period")],
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code, e.g. EUR")],
    since: Annotated[
        str, typer.Option("--from", help="the period's start: an ISO-8601 time or a duration ago")
    ],
    until: Annotated[
        str | None, typer.Option("--until", help="the period's end (default: now)", show_default=False)
    ] = None,
    channel: Annotated[
        str, typer.Option("--channel", help="only this channel (default: every channel)")
    ] = "",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: InsightsTarget = None,
    token: Token = None,
) -> None:
    """Set what CAMPAIGN cost over a period (setting the same campaign, channel and period replaces it)."""
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    period = _range(since, until, "--from")
    cost = pb.CampaignCost(
        campaign=campaign,
        channel=channel,
        period_start=period.start,
        period_end=period.end,
        amount=amount,
        currency=currency,
    )
    recorded: pb.CampaignCost = _call(
        data_dir, target, token, lambda s: s.SetCampaignCost, pb.SetCampaignCostRequest(cost=cost)
    )
    if as_json:
        print_json(_as_dict(recorded))
    else:
        print_table(COST_COLUMNS, cost_rows([recorded]), title="set")


@costs_app.command("list")
def list_costs(
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: InsightsTarget = None,
    token: Token = None,
) -> None:
    """Every campaign cost set in the workspace."""
    from onefold.contracts.insights.v1 import insights_pb2 as pb

    answer: pb.ListCampaignCostsResponse = _call(
        data_dir, target, token, lambda s: s.ListCampaignCosts, pb.ListCampaignCostsRequest()
    )
    if as_json:
        print_json([_as_dict(c) for c in answer.costs])
    else:
        print_table(COST_COLUMNS, cost_rows(answer.costs), title="campaign costs")
