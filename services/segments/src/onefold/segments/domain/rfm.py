"""RFM: recency, frequency and monetary value within the lookback, scored 1-5, and a named cell.

Scores come from four ascending boundaries per measure: fixed cut-offs from the definition, or
workspace quintiles computed by a scheduled run over every profile (`population_boundaries`) and
used for every profile until the next run. One rule serves both, with the window rule of the whole
service (being exactly at a boundary counts as having reached it):

- frequency and monetary: score = 1 + the number of boundaries the value has reached (value >= b);
- recency (days since the last purchase) is reversed: score = 5 - the number of boundaries the age
  has reached. A purchase exactly `b` days old has reached `b`: "within b days" excludes it.

Quintiles rank the population and cut it into five equal groups; ties are broken by first
occurrence (the population's order, as pandas' `rank(method="first")` does), because frequency is
mostly small integers and equal values would otherwise leave groups empty. `population_scores`
gives those rank-based scores for a scheduled run; `population_boundaries` turns the ranking into
boundaries (the smallest value of each group) so a profile that changes between runs is scored by
the same line: a profile tied with a group's first member scores into that group.

A profile with no purchase within the lookback has no RFM value (no tag).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from onefold.segments.domain.definitions import DAY, Cell, CutOffs, Json, Micros, RfmSpec, format_number
from onefold.segments.domain.features import PurchasesAcc

Bounds = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Measures:
    recency: Micros  # since the last purchase
    frequency: int
    monetary: float

    @property
    def recency_days(self) -> float:
        return self.recency / DAY


def measures(acc: PurchasesAcc, now: Micros) -> Measures | None:
    """The profile's measures at `now`; None without a purchase inside the lookback."""
    inside = acc.inside(now)
    if not inside:
        return None
    last = max(o[0] for o, _ in inside)
    return Measures(now - last, len(inside), math.fsum(r for _, r in inside))


def score(value: float, bounds: Bounds) -> int:
    """Frequency / monetary: 1 + the boundaries reached."""
    return 1 + sum(1 for b in bounds if value >= b)


def recency_score(age: Micros, bounds_days: Bounds) -> int:
    """5 - the boundaries (days) the age has reached: a purchase exactly b days old has reached b."""
    return 5 - sum(1 for b in bounds_days if age >= _micros(b))


def _micros(days: float) -> Micros:
    """Days as microseconds, rounded: a boundary computed as age / DAY maps back to that age."""
    return round(days * DAY) if math.isfinite(days) else 2**62


def cell(cells: Sequence[Cell], r: int, f: int) -> str | None:
    """The first cell holding (R, F)."""
    for c in cells:
        if c.recency[0] <= r <= c.recency[1] and c.frequency[0] <= f <= c.frequency[1]:
            return c.name
    return None


def evaluate(
    spec: RfmSpec, acc: PurchasesAcc, now: Micros, cut_offs: CutOffs | None
) -> tuple[str | None, list[tuple[str, Json]], Micros | None]:
    """(cell, reasons as (text, observed), the next moment R or F changes by time alone). Without
    cut-offs (quintiles not computed yet) there is no score."""
    m = measures(acc, now)
    if m is None or cut_offs is None:
        return None, [], acc.next_change(now)
    r = recency_score(m.recency, cut_offs.recency_days)
    f = score(m.frequency, cut_offs.frequency)
    v = score(m.monetary, cut_offs.monetary)
    last = now - m.recency
    moments = [last + _micros(b) for b in cut_offs.recency_days]
    leaving = acc.next_change(now)
    due = min([t for t in moments if t > now] + ([leaving] if leaving is not None else []), default=None)
    name = cell(spec.cells, r, f)
    # Shown to a person: days to two places (about a quarter of an hour), not 2.0000115740740743.
    shown_recency = round(m.recency_days, 2)
    observed: Json = {"recency_days": shown_recency, "frequency": float(m.frequency), "monetary": m.monetary}
    text = f"rfm R{r} F{f} M{v} (frequency {m.frequency}, monetary {format_number(m.monetary)})"
    return name, [(text, observed)] if name else [], due


# ------------------------------------------------------------------------------------------------
# Workspace quintiles (a scheduled run over every profile's measures).


def _groups(values: Sequence[float]) -> list[int]:
    """Each value's quintile group 0..4 by rank, ties broken by position (first occurrence)."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    groups = [0] * len(values)
    for rank, i in enumerate(order):
        groups[i] = rank * 5 // len(values)
    return groups


def population_scores(values: Sequence[float], reverse: bool = False) -> list[int]:
    """Rank-based quintile scores 1..5 (reverse: the smallest value scores 5, as recency does)."""
    return [5 - g if reverse else g + 1 for g in _groups(values)]


def quintile_boundaries(values: Sequence[float]) -> Bounds:
    """The smallest value of quintile groups 1..4 (a group left empty by a small population takes
    the next group's, or +inf: nobody reaches it)."""
    groups = _groups(values)
    first: dict[int, float] = {}
    for i in sorted(range(len(values)), key=lambda i: (values[i], i)):
        first.setdefault(groups[i], values[i])
    bounds: list[float] = []
    for k in (4, 3, 2, 1):
        bounds.append(first.get(k, bounds[-1] if bounds else math.inf))
    return tuple(reversed(bounds))  # type: ignore[return-value]


def population_boundaries(population: Sequence[Measures]) -> CutOffs | None:
    """Workspace quintiles from every profile's measures; None for an empty population."""
    if not population:
        return None
    return CutOffs(
        quintile_boundaries([m.recency_days for m in population]),
        quintile_boundaries([float(m.frequency) for m in population]),
        quintile_boundaries([m.monetary for m in population]),
    )
