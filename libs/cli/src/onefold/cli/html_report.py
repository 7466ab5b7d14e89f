"""Self-contained HTML reports for people (`--html` of `onefold journeys stats` and `onefold
insights …`): inline CSS and SVG, no script and no fetch, so a report opens from a mail attachment
or an air-gapped share. Every value is escaped here."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 60rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1rem 0; } figcaption { font-weight: 600; margin-bottom: 0.3rem; }
p.lead { font-size: 1.05rem; }
"""
BAR_WIDTH = 360
BAR_HEIGHT = 18
COUNT_WIDTH = 90
CHAR_WIDTH = 7.5  # of the 13px labels, to fit the label column to the longest


def document(title: str, *sections: str) -> str:
    """One HTML page: the title, then the sections (already HTML, made with the helpers below)."""
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
                f"<h1>{escape(title)}</h1>",
                *sections,
                "</body></html>",
            ]
        )
        + "\n"
    )


def heading(text: str) -> str:
    return f"<h2>{escape(text)}</h2>"


def paragraph(text: str, css_class: str = "") -> str:
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<p{attribute}>{escape(text)}</p>"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(caption: str, bars: Sequence[tuple[str, float, str]], colour: str = "#2f6fdb") -> str:
    """A horizontal bar per (label, value, shown value), scaled to the largest; `colour` unless a
    label's bar names its own as "label|#rrggbb"."""
    scale = max((value for _, value, _ in bars), default=0.0) or 1.0
    label_width = max((len(label.split("|")[0]) for label, _, _ in bars), default=0) * CHAR_WIDTH + 12
    width = label_width + BAR_WIDTH + COUNT_WIDTH
    height = max(1, len(bars)) * (BAR_HEIGHT + 6)
    drawn = []
    for row, (label, value, shown) in enumerate(bars):
        name, _, own = label.partition("|")
        y = row * (BAR_HEIGHT + 6)
        length = round(BAR_WIDTH * max(value, 0.0) / scale)
        drawn.append(
            f'<text x="0" y="{y + BAR_HEIGHT - 4}" font-size="13">{escape(name)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{length}" height="{BAR_HEIGHT}" fill="{escape(own or colour)}">'
            f"<title>{escape(name)}: {escape(shown)}</title></rect>"
            f'<text x="{label_width + length + 6}" y="{y + BAR_HEIGHT - 4}" font-size="13">{escape(shown)}</text>'
        )
    return (
        f"<figure><figcaption>{escape(caption)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" role="img" '
        f'aria-label="{escape(caption)}">{"".join(drawn)}</svg></figure>'
    )
