"""A journey's figures (`JourneyStatsResponse`) for people: the sentences and rows `onefold journeys
stats` prints, and the self-contained HTML report `--html` writes (html_report.py: one SVG bar chart
per send step)."""

from __future__ import annotations

from onefold.cli import html_report
from onefold.contracts.journeys.v1 import journeys_pb2 as pb

# What happened to a step's messages, in the order a reader follows them (queued is all of them),
# and each bar's colour.
MESSAGE_OUTCOMES = (
    ("queued", "#6b4fbb"),
    ("sent", "#2f6fdb"),
    ("suppressed", "#9a9a9a"),
    ("delivered", "#2e9e5b"),
    ("failed", "#d64545"),
)


def share(part: int, whole: int) -> str:
    """`part` of `whole` as a percentage with one decimal ("12.5%"); "-" when `whole` is 0."""
    return f"{100 * part / whole:.1f}%" if whole else "-"


def money(amount: float) -> str:
    return f"{amount:,.2f}"


def summary_rows(stats: pb.JourneyStatsResponse) -> list[tuple[str, str]]:
    return [
        ("entered", f"{stats.entered:,}"),
        ("active", f"{stats.active:,}"),
        ("exited", f"{stats.exited:,}"),
        ("converted", f"{stats.converted:,} ({share(stats.converted, stats.entered)} of entered)"),
        ("revenue", money(stats.revenue)),
    ]


def exit_rows(stats: pb.JourneyStatsResponse) -> list[tuple[str, str, str]]:
    """Exits by reason, the most frequent first."""
    ordered = sorted(stats.exits_by_reason.items(), key=lambda item: (-item[1], item[0]))
    return [(reason, f"{count:,}", share(count, stats.exited)) for reason, count in ordered]


STEP_COLUMNS = ("step", "entered", "queued", "sent", "suppressed", "delivered", "failed")


def step_rows(stats: pb.JourneyStatsResponse) -> list[tuple[str, ...]]:
    return [
        (
            step.step,
            *(f"{getattr(step, column):,}" for column in STEP_COLUMNS[1:]),
        )
        for step in stats.steps
    ]


def uplift_sentence(stats: pb.JourneyStatsResponse) -> str:
    """The uplift with its 95% interval and the two groups it compares, or why there is none."""
    if not stats.HasField("uplift"):
        return "uplift: none yet (it needs people in both the treated and the control group)"
    uplift = stats.uplift
    return (
        f"uplift {_points(uplift.uplift)} (95% CI {_points(uplift.ci_low)} to {_points(uplift.ci_high)}): "
        f"treated {uplift.treated_converted:,}/{uplift.treated:,} converted "
        f"({share(uplift.treated_converted, uplift.treated)}), "
        f"control {uplift.control_converted:,}/{uplift.control:,} "
        f"({share(uplift.control_converted, uplift.control)})"
    )


def _points(difference: float) -> str:
    """A difference of two proportions in percentage points: +3.2 pp."""
    return f"{100 * difference:+.1f} pp"


def stats_html(stats: pb.JourneyStatsResponse, version: int = 0) -> str:
    """The whole report as one HTML document: the summary, exits, steps and a bar chart of each send
    step's messages."""
    scope = f"version {version}" if version else "every version"
    return html_report.document(
        f"Journey {stats.journey} ({scope})",
        html_report.table(("", "count"), summary_rows(stats)),
        html_report.paragraph(uplift_sentence(stats), "lead"),
        html_report.heading("Exits by reason"),
        html_report.table(("reason", "exited", "share"), exit_rows(stats))
        if stats.exits_by_reason
        else html_report.paragraph("none yet"),
        html_report.heading("Steps"),
        html_report.table(STEP_COLUMNS, step_rows(stats))
        if stats.steps
        else html_report.paragraph("no step entered yet"),
        *(_step_chart(step) for step in stats.steps if _sends(step)),
    )


def _sends(step: pb.StepStats) -> bool:
    """Whether the step queued messages (a send step): the others have no bars to draw."""
    return any(getattr(step, outcome) for outcome, _ in MESSAGE_OUTCOMES)


def _step_chart(step: pb.StepStats) -> str:
    """A horizontal bar per message outcome, scaled to the step's largest count."""
    bars = [
        (f"{outcome}|{colour}", float(getattr(step, outcome)), f"{getattr(step, outcome):,}")
        for outcome, colour in MESSAGE_OUTCOMES
    ]
    return html_report.bar_chart(step.step, bars)
