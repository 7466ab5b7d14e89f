"""Campaign ROI and journey uplift, a few DuckDB queries over the goal's conversions.

- Per segment and per lifecycle stage: the conversions (goal events in the range), their revenue
  and the people converting, by the segments the person was in, and the stage tag they had, at the
  conversion's time (a person in two segments counts in both; without a stage under None).
- Per campaign: each conversion goes whole to its last touch within the lookback (a campaign event's
  campaign_name, or a journey send, not held back, under the journey's name; None: no touch),
  against the campaign's costs over the range: a cost row counts in proportion to the part of its
  period inside the range. ROI = (revenue - cost) / cost (None without cost). The campaign's revenue
  is split again per segment (at conversion time); costs are not, as nothing says how.
- Per journey, the uplift: everyone sent or held back (control) in the range, on their first such
  row for the journey; converted when a goal event follows within `uplift_window`. Uplift = the sent
  rate minus the held-back rate, with a two-sided two-proportion z-test (pooled standard error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb

from onefold.insights.adapters.sql import Fragment, match_sql
from onefold.insights.domain.specs import RoiSpec


@dataclass(frozen=True)
class SegmentRevenue:
    segment: str | None
    conversions: int
    revenue: float
    people: int


@dataclass(frozen=True)
class CampaignRoi:
    campaign: str | None  # None: conversions no campaign touched
    conversions: int
    revenue: float
    cost: float
    roi: float | None


@dataclass(frozen=True)
class CampaignSegmentRevenue:
    campaign: str | None
    segment: str | None
    conversions: int
    revenue: float


@dataclass(frozen=True)
class JourneyUplift:
    journey: str
    sent: int
    sent_converted: int
    held_back: int
    held_back_converted: int
    sent_rate: float | None
    held_back_rate: float | None
    uplift: float | None  # sent_rate - held_back_rate
    z: float | None
    p_value: float | None  # two-sided; None when either group is empty or nobody (or everybody) converted


@dataclass(frozen=True)
class RoiResult:
    conversions: int
    revenue: float
    segments: tuple[SegmentRevenue, ...]
    stages: tuple[SegmentRevenue, ...]
    campaigns: tuple[CampaignRoi, ...]
    campaign_segments: tuple[CampaignSegmentRevenue, ...]
    uplift: tuple[JourneyUplift, ...]


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """(z, two-sided p-value) of x1/n1 against x2/n2 with the pooled standard error; None when it is
    undefined (an empty group, or a pooled rate of 0 or 1). p = erfc(|z| / sqrt 2) = 2 (1 - Phi(|z|)),
    erfc rather than 1 - erf to keep small p-values exact."""
    if n1 == 0 or n2 == 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def _conversions(workspace: str, spec: RoiSpec) -> Fragment:
    goal = match_sql(spec.goal)
    return Fragment(
        "conversions AS MATERIALIZED (SELECT event_id AS conversion_id, profile_id, ts,"
        f" coalesce(revenue, 0) AS revenue FROM events WHERE workspace = ? AND ts >= ? AND ts < ? AND {goal.sql})",
        [workspace, spec.time_range.start, spec.time_range.end, *goal.params],
    )


def _member_at_conversion(workspace: str, spec: RoiSpec, alias: str) -> Fragment:
    chosen = " AND list_contains(?::VARCHAR[], m.segment)" if spec.segments else ""
    return Fragment(
        f"LEFT JOIN memberships m ON m.workspace = ? AND m.profile_id = {alias}.profile_id"
        f" AND m.entered_at <= {alias}.ts AND (m.exited_at IS NULL OR m.exited_at > {alias}.ts){chosen}",
        [workspace, *([list(spec.segments)] if spec.segments else [])],
    )


def _last_touches(workspace: str, spec: RoiSpec) -> Fragment:
    start = spec.time_range.start - spec.lookback_window
    return Fragment(
        "touches AS (SELECT profile_id, ts, event_id AS touch_id, campaign_name AS campaign FROM events"
        " WHERE workspace = ? AND ts >= ? AND ts < ? AND campaign_name IS NOT NULL"
        " UNION ALL SELECT profile_id, ts, message_id, journey FROM sends"
        " WHERE workspace = ? AND ts >= ? AND ts < ? AND NOT control),"
        " last_touch AS (SELECT c.conversion_id, t.campaign FROM conversions c JOIN touches t"
        " ON t.profile_id = c.profile_id AND t.ts < c.ts AND t.ts >= c.ts - ?"
        " QUALIFY row_number() OVER (PARTITION BY c.conversion_id ORDER BY t.ts DESC, t.touch_id DESC) = 1),"
        " credited AS MATERIALIZED (SELECT c.*, l.campaign FROM conversions c LEFT JOIN last_touch l USING (conversion_id))",
        [workspace, start, spec.time_range.end, workspace, start, spec.time_range.end, spec.lookback_window],
    )


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    return connection.execute(sql, params).fetchall()


def _by(value: Any) -> tuple[bool, str]:
    return value is None, "" if value is None else str(value)


def run_roi(connection: duckdb.DuckDBPyConnection, workspace: str, spec: RoiSpec) -> RoiResult:
    conversions = _conversions(workspace, spec)
    member = _member_at_conversion(workspace, spec, "c")
    totals = _rows(
        connection,
        f"WITH {conversions.sql} SELECT count(*), coalesce(sum(revenue), 0) FROM conversions",
        conversions.params,
    )[0]
    segments = _rows(
        connection,
        f"WITH {conversions.sql} SELECT m.segment, count(*), sum(c.revenue), count(DISTINCT c.profile_id)"
        f" FROM conversions c {member.sql} GROUP BY m.segment",
        [*conversions.params, *member.params],
    )
    stages = _rows(
        connection,
        f"WITH {conversions.sql} SELECT t.value, count(*), sum(c.revenue), count(DISTINCT c.profile_id)"
        " FROM conversions c LEFT JOIN profile_tags t ON t.workspace = ? AND t.profile_id = c.profile_id"
        " AND t.tag = ? AND t.since <= c.ts AND (t.until IS NULL OR t.until > c.ts) GROUP BY t.value",
        [*conversions.params, workspace, spec.lifecycle_tag],
    )
    touches = _last_touches(workspace, spec)
    campaigns = _rows(
        connection,
        f"WITH {conversions.sql}, {touches.sql},"
        " earned AS (SELECT campaign, count(*) AS conversions, sum(revenue) AS revenue FROM credited GROUP BY campaign),"
        " spent AS (SELECT campaign, sum(amount * greatest(0, date_diff('microsecond', greatest(period_start, ?),"
        " least(period_end, ?))) / greatest(1, date_diff('microsecond', period_start, period_end))) AS cost"
        " FROM costs WHERE workspace = ? AND period_start < ? AND period_end > ? GROUP BY campaign)"
        " SELECT campaign, coalesce(e.conversions, 0), coalesce(e.revenue, 0), coalesce(s.cost, 0)"
        " FROM earned e FULL OUTER JOIN spent s USING (campaign)",
        [
            *conversions.params,
            *touches.params,
            spec.time_range.start,
            spec.time_range.end,
            workspace,
            spec.time_range.end,
            spec.time_range.start,
        ],
    )
    credited_member = _member_at_conversion(workspace, spec, "c")
    campaign_segments = _rows(
        connection,
        f"WITH {conversions.sql}, {touches.sql} SELECT c.campaign, m.segment, count(*), sum(c.revenue)"
        f" FROM credited c {credited_member.sql} GROUP BY c.campaign, m.segment",
        [*conversions.params, *touches.params, *credited_member.params],
    )
    goal = match_sql(spec.goal)
    uplift = _rows(
        connection,
        "WITH exposed AS (SELECT journey, profile_id, min(ts) AS sent_at, arg_min(control, ts) AS held_back"
        " FROM sends WHERE workspace = ? AND ts >= ? AND ts < ? GROUP BY journey, profile_id),"
        f" goals AS (SELECT profile_id, ts FROM events WHERE workspace = ? AND ts > ? AND ts <= ? AND {goal.sql}),"
        " outcomes AS (SELECT x.journey, x.profile_id, x.held_back, count(g.ts) > 0 AS converted FROM exposed x"
        " LEFT JOIN goals g ON g.profile_id = x.profile_id AND g.ts > x.sent_at AND g.ts <= x.sent_at + ?"
        " GROUP BY x.journey, x.profile_id, x.held_back)"
        " SELECT journey, count(*) FILTER (WHERE NOT held_back), count(*) FILTER (WHERE NOT held_back AND converted),"
        " count(*) FILTER (WHERE held_back), count(*) FILTER (WHERE held_back AND converted)"
        " FROM outcomes GROUP BY journey ORDER BY journey",
        [
            workspace,
            spec.time_range.start,
            spec.time_range.end,
            workspace,
            spec.time_range.start,
            spec.time_range.end + spec.uplift_after,
            *goal.params,
            spec.uplift_after,
        ],
    )
    return RoiResult(
        conversions=int(totals[0]),
        revenue=float(totals[1]),
        segments=tuple(
            SegmentRevenue(s, int(n), float(r), int(p))
            for s, n, r, p in sorted(segments, key=lambda row: _by(row[0]))
        ),
        stages=tuple(
            SegmentRevenue(s, int(n), float(r), int(p))
            for s, n, r, p in sorted(stages, key=lambda row: _by(row[0]))
        ),
        campaigns=tuple(
            CampaignRoi(
                c, int(n), float(r), float(cost), (float(r) - float(cost)) / float(cost) if cost else None
            )
            for c, n, r, cost in sorted(campaigns, key=lambda row: _by(row[0]))
        ),
        campaign_segments=tuple(
            CampaignSegmentRevenue(c, s, int(n), float(r))
            for c, s, n, r in sorted(campaign_segments, key=lambda row: (_by(row[0]), _by(row[1])))
        ),
        uplift=tuple(_uplift(*row) for row in uplift),
    )


def _uplift(
    journey: str, sent: int, sent_converted: int, held_back: int, held_back_converted: int
) -> JourneyUplift:
    sent_rate = sent_converted / sent if sent else None
    held_back_rate = held_back_converted / held_back if held_back else None
    test = two_proportion_z_test(sent_converted, sent, held_back_converted, held_back)
    return JourneyUplift(
        journey=journey,
        sent=sent,
        sent_converted=sent_converted,
        held_back=held_back,
        held_back_converted=held_back_converted,
        sent_rate=sent_rate,
        held_back_rate=held_back_rate,
        uplift=sent_rate - held_back_rate if sent_rate is not None and held_back_rate is not None else None,
        z=test[0] if test else None,
        p_value=test[1] if test else None,
    )
