"""A synthetic history for the analytical store, made by DuckDB itself (no Python loop over rows).

Every random draw is `hash(row, seed, salt)`, so the same seed gives the same rows whatever the
number of threads. Over `days` from `start`, for `people` people:

- funnel attempts (about 60% of the events): Product Viewed, then Product Added with probability
  ADD_RATE, Checkout Started with CHECKOUT_RATE of those, Order Completed with ORDER_RATE of those;
  each step 1 min - 2 h after the previous one (Product Added: SLOW_SHARE of them 2-10 days later);
  a third of the views carry one of CAMPAIGNS (its UTM source and medium); carts, checkouts and orders carry the cart's value as revenue;
- journey sends: each person with probability SEND_RATE gets one send of one of JOURNEYS, held back
  (control) with probability CONTROL_RATE; a person sent (not held back) orders within 3 days with
  probability UPLIFT_RATE more: the planted uplift;
- other events (Page Viewed, Searched, Signed In, Email Opened; some page views with a campaign)
  make up the rest, so the events table gets exactly `events` rows;
- memberships (vip, newsletter, cart_abandoners), a lifecycle_stage tag (new, then active or
  at_risk) and monthly costs per campaign and journey.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

CAMPAIGNS = (
    ("spring_sale", "google", "cpc"),
    ("brand_search", "google", "cpc"),
    ("retargeting", "facebook", "social"),
    ("influencers", "instagram", "social"),
    ("newsletter_weekly", "newsletter", "email"),
    ("partners", "affiliate", "referral"),
    ("tv_promo", "tv", "offline"),
    ("black_friday", "google", "display"),
)
JOURNEYS = ("welcome", "winback", "cart_reminder")
CATEGORIES = ("electronics", "books", "fashion", "home", "toys", "sports")
FUNNEL = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")
OTHER_EVENTS = ("Page Viewed", "Searched", "Signed In", "Email Opened")
ADD_RATE, CHECKOUT_RATE, ORDER_RATE = 0.35, 0.5, 0.6
SLOW_SHARE = 0.05
CAMPAIGN_SHARE = 1 / 3
SEND_RATE, CONTROL_RATE, UPLIFT_RATE = 0.5, 0.1, 0.2
FUNNEL_SHARE = 0.6
EVENTS_PER_ATTEMPT = 1 + ADD_RATE * (1 + CHECKOUT_RATE * (1 + ORDER_RATE))


@dataclass(frozen=True)
class SyntheticHistory:
    events: int
    attempts: int
    uplift_orders: int
    sends: int
    memberships: int
    profile_tags: int
    costs: int


def _draw(row: str, salt: str) -> str:
    """A uniform draw in [0, 1) for `row`, fixed by the seed (the first parameter) and `salt`."""
    return f"((hash({row}, $seed, '{salt}') % 1000003) / 1000003.0)"


def _pick(row: str, salt: str, among: int) -> str:
    """A uniform index in 1..among for `row`, fixed by the seed and `salt`."""
    return f"CAST(1 + hash({row}, $seed, '{salt}') % {among} AS BIGINT)"


def generate_history(
    connection: duckdb.DuckDBPyConnection,
    *,
    events: int,
    people: int,
    seed: int = 1,
    start: datetime = datetime(2026, 1, 5),
    days: int = 90,
    workspace: str = "synthetic",
) -> SyntheticHistory:
    """Append a history of exactly `events` events (and sends, memberships, tags, costs) to the
    store's tables for `workspace`; the same arguments give the same rows."""
    if events < 1 or people < 1 or days < 1:
        raise ValueError("events, people and days must be positive.")
    base = {"seed": seed, "start": start, "span": days * 86400, "ws": workspace, "people": people}

    def run(sql: str, params: dict[str, object]) -> None:
        # DuckDB refuses named parameters a statement does not use: pass only those it names.
        connection.execute(sql, {name: value for name, value in params.items() if f"${name}" in sql})

    campaigns = [list(c) for c in CAMPAIGNS]
    run(
        "INSERT INTO sends SELECT $ws, 'm' || i, 'u' || (i % $people), $start + to_seconds(CAST("
        + _draw("i", "send_at")
        + " * $span AS BIGINT)),"
        f" $journeys[{_pick('i', 'journey', len(JOURNEYS))}], 'send',"
        f" CASE WHEN {_draw('i', 'push')} < 0.3 THEN 'push' ELSE 'email' END,"
        f" {_draw('i', 'control')} < $control FROM range($people) r(i) WHERE {_draw('i', 'sent')} < $send_rate",
        {**base, "journeys": list(JOURNEYS), "control": CONTROL_RATE, "send_rate": SEND_RATE},
    )
    before = _count(connection, "events", workspace)
    run(
        "INSERT INTO events (workspace, event_id, profile_id, ts, type, event, revenue, currency, channel)"
        " SELECT $ws, 'x' || message_id, profile_id, ts + to_seconds(CAST("
        + _draw("message_id", "uplift_delay")
        + " * 3 * 86400 AS BIGINT) + 1), 'track', 'Order Completed',"
        f" round(10 + {_draw('message_id', 'uplift_revenue')} * 490, 2), 'USD', 'web'"
        f" FROM sends WHERE workspace = $ws AND NOT control AND {_draw('message_id', 'uplifted')} < $uplift"
        " LIMIT $events",
        {**base, "uplift": UPLIFT_RATE, "events": events},
    )
    uplift_orders = _count(connection, "events", workspace) - before
    attempts = min(round(events * FUNNEL_SHARE / EVENTS_PER_ATTEMPT), events - uplift_orders)
    step_times = (
        "CASE WHEN "
        + _draw("a", "slow")
        + f" < {SLOW_SHARE} THEN 172800 + "
        + _draw("a", "slow_delay")
        + " * 691200 ELSE 60 + "
        + _draw("a", "add_delay")
        + " * 7140 END"
    )
    run(
        "INSERT INTO events WITH attempts AS (SELECT a, 'u' || (hash(a, $seed, 'person') % $people) AS profile_id,"
        f" $start + to_seconds(CAST({_draw('a', 'at')} * $span AS BIGINT)) AS t0,"
        f" 1 + ({_draw('a', 'add')} < $add)::INT * (1 + ({_draw('a', 'checkout')} < $checkout)::INT"
        f" * (1 + ({_draw('a', 'order')} < $order)::INT)) AS depth,"
        f" CAST({step_times} AS BIGINT) AS d2,"
        f" CAST(60 + {_draw('a', 'checkout_delay')} * 7140 AS BIGINT) AS d3,"
        f" CAST(60 + {_draw('a', 'order_delay')} * 7140 AS BIGINT) AS d4,"
        f" CASE WHEN {_draw('a', 'campaign')} < $campaign_share"
        f" THEN $campaigns[{_pick('a', 'which_campaign', len(CAMPAIGNS))}] END AS campaign,"
        f" $categories[{_pick('a', 'category', len(CATEGORIES))}] AS category,"
        f" 'p' || CAST({_draw('a', 'product')} * 500 AS INTEGER) AS product_id,"
        f" {_pick('a', 'items', 4)} AS items,"
        f" round(10 + {_draw('a', 'revenue')} * 490, 2) AS revenue FROM range($attempts) r(a))"
        " SELECT $ws, 'f' || a || '-' || k, profile_id,"
        " t0 + to_seconds(CASE k WHEN 1 THEN 0 WHEN 2 THEN d2 WHEN 3 THEN d2 + d3 ELSE d2 + d3 + d4 END),"
        " 'track', $funnel[k], CASE WHEN k >= 2 THEN revenue END, CASE WHEN k >= 2 THEN 'USD' END,"
        " product_id, category, CASE WHEN k = 1 THEN campaign[2] END, CASE WHEN k = 1 THEN campaign[3] END,"
        " CASE WHEN k = 1 THEN campaign[1] END,"
        " ['web', 'web', 'web', 'ios', 'android'][CAST(1 + hash(profile_id, $seed, 'channel') % 5 AS BIGINT)],"
        " CASE WHEN k >= 2 THEN json_object('items', items) END"
        " FROM attempts, range(1, 5) s(k) WHERE k <= depth",
        {
            **base,
            "add": ADD_RATE,
            "checkout": CHECKOUT_RATE,
            "order": ORDER_RATE,
            "campaign_share": CAMPAIGN_SHARE,
            "campaigns": campaigns,
            "categories": list(CATEGORIES),
            "attempts": attempts,
            "funnel": list(FUNNEL),
        },
    )
    others = events - _count(connection, "events", workspace) + before
    run(
        "INSERT INTO events SELECT $ws, 'o' || i, 'u' || (hash(i, $seed, 'other_person') % $people),"
        f" $start + to_seconds(CAST({_draw('i', 'other_at')} * $span AS BIGINT)), CASE WHEN kind = 1 THEN 'page' ELSE 'track' END,"
        " $others[kind], NULL, NULL, NULL, NULL, campaign[2], campaign[3], campaign[1],"
        " ['web', 'web', 'web', 'ios', 'android'][CAST(1 + hash('u' || (hash(i, $seed, 'other_person') % $people), $seed, 'channel') % 5 AS BIGINT)],"
        f" NULL FROM (SELECT i, {_pick('i', 'kind', len(OTHER_EVENTS))} AS kind,"
        f" CASE WHEN {_draw('i', 'other_campaign')} < 0.1 THEN $campaigns[{_pick('i', 'other_which_campaign', len(CAMPAIGNS))}]"
        " END AS campaign FROM range(greatest($count, 0)) r(i))",
        {**base, "others": list(OTHER_EVENTS), "campaigns": campaigns, "count": others},
    )
    segments = [("vip", 0.1, None), ("newsletter", 0.3, None), ("cart_abandoners", 0.2, 14)]
    for name, share, stay_days in segments:
        run(
            "INSERT INTO memberships SELECT $ws, 'u' || i, $segment, $start + to_seconds(CAST("
            + _draw("i", f"{name}_at")
            + " * $span AS BIGINT)) AS entered_at,"
            + (f" entered_at + to_days({stay_days})" if stay_days else " NULL")
            + f" FROM range($people) r(i) WHERE {_draw('i', name)} < $share",
            {**base, "segment": name, "share": share},
        )
    run(
        "INSERT INTO profile_tags SELECT $ws, 'u' || i, 'lifecycle_stage', stage, since, until FROM ("
        f" SELECT i, $start + to_seconds(CAST({_draw('i', 'new_for')} * $span / 2 AS BIGINT)) AS switch,"
        f" CASE WHEN {_draw('i', 'at_risk')} < 0.3 THEN 'at_risk' ELSE 'active' END AS later FROM range($people) r(i)),"
        " LATERAL (VALUES ('new', $start, switch), (later, switch, NULL)) v(stage, since, until)",
        base,
    )
    run(
        "INSERT INTO costs SELECT $ws, name, channel, $start + to_days(30 * m), $start + to_days(30 * (m + 1)),"
        " 1000 + 250 * idx, 'USD' FROM (SELECT unnest($names) AS name, unnest($channels) AS channel,"
        " generate_subscripts($names, 1) AS idx), range(CAST(ceil($days / 30) AS INTEGER)) r(m)",
        {
            "ws": workspace,
            "start": start,
            "days": days,
            "names": [c[0] for c in CAMPAIGNS] + list(JOURNEYS),
            "channels": [c[2] for c in CAMPAIGNS] + ["email"] * len(JOURNEYS),
        },
    )
    return SyntheticHistory(
        events=_count(connection, "events", workspace),
        attempts=attempts,
        uplift_orders=uplift_orders,
        sends=_count(connection, "sends", workspace),
        memberships=_count(connection, "memberships", workspace),
        profile_tags=_count(connection, "profile_tags", workspace),
        costs=_count(connection, "costs", workspace),
    )


def _count(connection: duckdb.DuckDBPyConnection, table: str, workspace: str) -> int:
    found = connection.execute(f"SELECT count(*) FROM {table} WHERE workspace = ?", [workspace]).fetchone()
    return int(found[0]) if found else 0
