"""A journey's figures (`JourneyStatsResponse`) for people: the sentences and rows `onefold journeys
stats` prints, and the self-contained HTML report `--html` writes (inline CSS and one SVG bar chart
per step: it opens from a mail attachment or an air-gapped share, with no script and no fetch)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

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
BAR_WIDTH = 360
BAR_HEIGHT = 18
LABEL_WIDTH = 90
COUNT_WIDTH = 70


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


# --- HTML ----------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 60rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1rem 0; } figcaption { font-weight: 600; margin-bottom: 0.3rem; }
p.uplift { font-size: 1.05rem; }
"""


def stats_html(stats: pb.JourneyStatsResponse, version: int = 0) -> str:
    """The whole report as one HTML document; every value from the service is escaped."""
    scope = f"version {version}" if version else "every version"
    title = f"Journey {stats.journey} ({scope})"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _table(("", "count"), summary_rows(stats)),
        f'<p class="uplift">{escape(uplift_sentence(stats))}</p>',
        "<h2>Exits by reason</h2>",
        _table(("reason", "exited", "share"), exit_rows(stats))
        if stats.exits_by_reason
        else "<p>none yet</p>",
        "<h2>Steps</h2>",
        _table(STEP_COLUMNS, step_rows(stats)) if stats.steps else "<p>no step entered yet</p>",
        *(_step_chart(step) for step in stats.steps if _sends(step)),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sends(step: pb.StepStats) -> bool:
    """Whether the step queued messages (a send step): the others have no bars to draw."""
    return any(getattr(step, outcome) for outcome, _ in MESSAGE_OUTCOMES)


def _step_chart(step: pb.StepStats) -> str:
    """A horizontal bar per message outcome, scaled to the step's largest count."""
    counts = [(outcome, colour, getattr(step, outcome)) for outcome, colour in MESSAGE_OUTCOMES]
    scale = max(count for _, _, count in counts) or 1
    width = LABEL_WIDTH + BAR_WIDTH + COUNT_WIDTH
    height = len(counts) * (BAR_HEIGHT + 6)
    bars = []
    for row, (outcome, colour, count) in enumerate(counts):
        y = row * (BAR_HEIGHT + 6)
        length = round(BAR_WIDTH * count / scale)
        bars.append(
            f'<text x="0" y="{y + BAR_HEIGHT - 4}" font-size="13">{outcome}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{length}" height="{BAR_HEIGHT}" fill="{colour}">'
            f"<title>{outcome}: {count:,}</title></rect>"
            f'<text x="{LABEL_WIDTH + length + 6}" y="{y + BAR_HEIGHT - 4}" font-size="13">{count:,}</text>'
        )
    label = escape(step.step)
    return (
        f"<figure><figcaption>{label}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="messages of step {label}">{"".join(bars)}</svg></figure>'
    )
