"""The lifecycle stage: where a customer stands, from their purchases and the time since the last.

Stages: registered (no purchase) → first_purchase (one) → active (repeat) → churning → dormant →
lost, and reactivated for `reactivated_for` after a purchase that ended a gap of at least the
churning threshold. Thresholds are times since the last purchase, with the window rule of the whole
service: the customer is churning from the moment `churning_after` has passed (a last purchase
exactly 60 days old is churning), and reactivated stops at exactly `reactivated_for`.

With `relative` > 0, a customer with at least three purchases is judged by their own rhythm: each
threshold becomes `relative` x the median time between their (latest 20) purchases, when that is
longer than the absolute one — a customer who buys every 90 days is not churning at 60. Whether the
last purchase was a reactivation is judged the same way, from the purchases before it.
"""

from __future__ import annotations

import itertools
import math
import statistics

from onefold.segments.domain.definitions import Json, LifecycleSpec, Micros, format_duration
from onefold.segments.domain.features import Occurrence, PurchasesAcc

REGISTERED = "registered"
FIRST_PURCHASE = "first_purchase"
ACTIVE = "active"
CHURNING = "churning"
DORMANT = "dormant"
LOST = "lost"
REACTIVATED = "reactivated"
STAGES = (REGISTERED, FIRST_PURCHASE, ACTIVE, CHURNING, DORMANT, LOST, REACTIVATED)


def thresholds(spec: LifecycleSpec, latest: list[Occurrence], count: int) -> tuple[Micros, Micros, Micros]:
    """(churning, dormant, lost) for a customer with `count` purchases, the latest of which are
    `latest` (newest first): absolute, or relative to their median interval when that is longer."""
    absolute = (spec.churning_after, spec.dormant_after, spec.lost_after)
    if spec.relative <= 0 or count < 3 or len(latest) < 3:
        return absolute
    times = sorted(at for at, _ in latest)
    median = statistics.median(b - a for a, b in itertools.pairwise(times))
    factor = spec.relative * median / spec.churning_after
    if factor <= 1:
        return absolute
    return (
        math.ceil(absolute[0] * factor),
        math.ceil(absolute[1] * factor),
        math.ceil(absolute[2] * factor),
    )


def stage(
    spec: LifecycleSpec, acc: PurchasesAcc, now: Micros
) -> tuple[str, list[tuple[str, Json]], Micros | None]:
    """(stage, reasons as (text, observed), the next moment the stage changes by time alone)."""
    if not acc.count or not acc.latest:
        return REGISTERED, [("no purchase", 0.0)], None
    last = acc.latest[0][0]
    gap = now - last
    churning, dormant, lost = thresholds(spec, acc.latest, acc.count)
    observed: Json = float(acc.count)
    moments = [last + churning, last + dormant, last + lost]
    if gap >= lost:
        result, text = LOST, f"last purchase >= {format_duration(lost)} ago"
    elif gap >= dormant:
        result, text = DORMANT, f"last purchase >= {format_duration(dormant)} ago"
    elif gap >= churning:
        result, text = CHURNING, f"last purchase >= {format_duration(churning)} ago"
    elif _reactivation(spec, acc) and gap < spec.reactivated_for:
        result, text = REACTIVATED, f"purchase after >= {format_duration(churning)} without one"
        moments.append(last + spec.reactivated_for)
    elif acc.count == 1:
        result, text = FIRST_PURCHASE, "one purchase"
    else:
        result, text = ACTIVE, f"repeat purchases, the last < {format_duration(churning)} ago"
    return result, [(text, observed)], min((m for m in moments if m > now), default=None)


def _reactivation(spec: LifecycleSpec, acc: PurchasesAcc) -> bool:
    """Whether the last purchase came after a gap the customer was churning in (by the thresholds
    that held just before it)."""
    if acc.count < 2 or len(acc.latest) < 2:
        return False
    before = acc.latest[1:]
    churning, _, _ = thresholds(spec, before, acc.count - 1)
    return acc.latest[0][0] - acc.latest[1][0] >= churning
