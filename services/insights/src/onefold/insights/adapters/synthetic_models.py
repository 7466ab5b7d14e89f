"""A seeded shop history with planted churn, taste and behaviour, written into the warehouse's `events`.

For the models' tests and benchmark: the truth is decided up front per person, then the events are
drawn from it, all in DuckDB SQL (no Python loop over rows). Randomness is `hash(seed, person, ...)`
rather than `random()`, so the history is the same for a seed whatever the number of threads.

What is planted (in the temporary table `planted_people`, one row per person):

- kinds with different rhythms: loyal (daily-ish visits, frequent orders, big baskets), regular and
  occasional shoppers — behaviour clusters for k-means;
- churners (CHURNER_SHARE), each with a churn day after which nothing happens:
  - fading: visits thin out linearly over the FADE_DAYS before the churn day (longer gaps, fewer
    orders) — the recency baseline sees part of this;
  - silent: orders keep their pace until the churn day (recency looks healthy), but visits drop to a
    third and each is a quick buy, over the SILENT_DAYS before — only behaviour shows it;
- a favourite category (60% of interactions), a second one (20%), and a favourite product in the
  favourite category (half of its interactions) — the affinity to find.

Each visit (a day with a session) has 1-4 "Product Viewed", sometimes a "Product Added", and with
the person's order probability an "Order Completed" with revenue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

CATEGORIES = ("apparel", "beauty", "books", "electronics", "garden", "grocery", "sports", "toys")
PRODUCTS_PER_CATEGORY = 25
CHURNER_SHARE = 0.35
SILENT_SHARE_OF_CHURNERS = 0.5
FADE_DAYS = 60
SILENT_DAYS = 45
DEFAULT_START = datetime(2025, 1, 1)

# Uniform draws in [0, 1) from a hash of their coordinates: reproducible, and independent of threads.
_MACROS_SQL = """
CREATE OR REPLACE TEMP MACRO planted_unit(seed, person, salt) AS
    (hash(seed, person, salt) % 1000000007)::DOUBLE / 1000000007;
CREATE OR REPLACE TEMP MACRO daily_unit(seed, person, day, salt) AS
    (hash(seed, person, day, salt) % 1000000007)::DOUBLE / 1000000007;
"""

_PEOPLE_SQL = """
CREATE OR REPLACE TEMP TABLE planted_people AS
WITH drawn AS (
    SELECT i AS person,
           planted_unit($seed, i, 1) AS u_kind, planted_unit($seed, i, 2) AS u_rate,
           planted_unit($seed, i, 3) AS u_churn, planted_unit($seed, i, 4) AS u_churn_kind,
           planted_unit($seed, i, 5) AS u_churn_day, planted_unit($seed, i, 6) AS u_join,
           planted_unit($seed, i, 7) AS u_favourite, planted_unit($seed, i, 8) AS u_second,
           planted_unit($seed, i, 9) AS u_basket, planted_unit($seed, i, 10) AS u_product
    FROM range($people) t(i)
),
kinds AS (
    SELECT *, CASE WHEN u_kind < 0.2 THEN 'loyal' WHEN u_kind < 0.65 THEN 'regular' ELSE 'occasional' END AS kind,
           floor(u_join * $days * 0.5)::INTEGER AS join_day
    FROM drawn
)
SELECT person, 'p' || lpad(person::VARCHAR, 7, '0') AS profile_id, kind, join_day,
       -- visits per day and the chance a visit ends in an order, by kind
       CASE kind WHEN 'loyal' THEN 0.25 + 0.2 * u_rate WHEN 'regular' THEN 0.1 + 0.1 * u_rate
                 ELSE 0.03 + 0.05 * u_rate END AS visit_rate,
       CASE kind WHEN 'loyal' THEN 0.35 WHEN 'regular' THEN 0.25 ELSE 0.3 END AS order_chance,
       CASE kind WHEN 'loyal' THEN 60 + 140 * u_basket WHEN 'regular' THEN 30 + 70 * u_basket
                 ELSE 20 + 40 * u_basket END AS basket,
       CASE WHEN u_churn >= $churner_share THEN NULL
            WHEN u_churn_kind < $silent_share THEN 'silent' ELSE 'fading' END AS churn_kind,
       -- after 60 days as a customer, until a month past the history (some churners have not churned yet)
       CASE WHEN u_churn < $churner_share
            THEN join_day + 60 + floor(u_churn_day * ($days + 30 - join_day - 60))::INTEGER
            ELSE $days + 1 END AS churn_day,
       floor(u_favourite * $categories)::INTEGER AS favourite,
       ((floor(u_favourite * $categories) + 1 + floor(u_second * ($categories - 1))) % $categories)::INTEGER
           AS second_favourite,
       floor(u_product * $products)::INTEGER AS favourite_product
FROM kinds
"""

# A visit on `day` happens with the person's visit rate times how active they still are that day.
_VISITS_SQL = """
CREATE OR REPLACE TEMP TABLE planted_visits AS
WITH days AS (
    SELECT p.*, d.day,
           CASE WHEN churn_kind = 'fading' AND d.day >= churn_day - $fade_days
                    THEN 0.15 + 0.85 * (churn_day - d.day) / $fade_days
                WHEN churn_kind = 'silent' AND d.day >= churn_day - $silent_days THEN 0.33
                ELSE 1.0 END AS activity,
           churn_kind = 'silent' AND d.day >= churn_day - $silent_days AS silent_phase
    FROM planted_people p JOIN range($days) d(day) ON d.day >= p.join_day AND d.day < p.churn_day
)
SELECT person, profile_id, day, favourite, second_favourite, favourite_product, basket,
       -- silent churners buy as often as before on fewer visits: each visit is a quick order
       daily_unit($seed, person, day, 12) < CASE WHEN silent_phase THEN least(0.95, order_chance * 3)
                                                  ELSE order_chance END AS ordered,
       CASE WHEN silent_phase THEN 1 ELSE 1 + floor(daily_unit($seed, person, day, 13) * 4)::INTEGER END
           AS views,
       daily_unit($seed, person, day, 14) < 0.3 AS added,
       floor(daily_unit($seed, person, day, 15) * 80000)::INTEGER AS second_of_day
FROM days
WHERE daily_unit($seed, person, day, 11) < visit_rate * activity
"""

# Slots 0-3 are views, 4 an add to cart (also before every order), 5 the order.
_EVENTS_SQL = """
INSERT INTO events (workspace, event_id, profile_id, ts, type, event, revenue, currency, product_id,
                    category, channel)
WITH slots AS (
    SELECT v.*, s.slot,
           daily_unit($seed, person, day * 8 + s.slot, 16) AS u_category,
           daily_unit($seed, person, day * 8 + s.slot, 17) AS u_product,
           daily_unit($seed, person, day * 8 + s.slot, 18) AS u_revenue
    FROM planted_visits v JOIN range(6) s(slot)
      ON s.slot < v.views OR (s.slot = 4 AND (v.added OR v.ordered)) OR (s.slot = 5 AND v.ordered)
),
placed AS (
    SELECT *,
           CASE WHEN u_category < 0.6 THEN favourite WHEN u_category < 0.8 THEN second_favourite
                ELSE floor((u_category - 0.8) / 0.2 * $categories)::INTEGER END AS category_index
    FROM slots
)
SELECT $workspace, 'e-' || person || '-' || day || '-' || slot, profile_id,
       $start::TIMESTAMP + to_days(day::INTEGER) + to_seconds((second_of_day + slot * 45)::BIGINT),
       'track',
       CASE WHEN slot < 4 THEN 'Product Viewed' WHEN slot = 4 THEN 'Product Added' ELSE 'Order Completed' END,
       CASE WHEN slot = 5 THEN round(basket * (0.7 + 0.6 * u_revenue), 2) END,
       CASE WHEN slot = 5 THEN 'EUR' END,
       $category_names[category_index + 1] || '-' ||
           CASE WHEN category_index = favourite AND u_product < 0.5 THEN favourite_product
                ELSE floor(u_product * $products)::INTEGER END,
       $category_names[category_index + 1],
       'web'
FROM placed
"""


@dataclass(frozen=True)
class SyntheticHistory:
    workspace: str
    people: int
    start: datetime
    end: datetime  # the history's "now": nothing happens from here on
    events: int


def generate_planted_history(
    connection: duckdb.DuckDBPyConnection,
    *,
    people: int,
    seed: int,
    days: int = 300,
    workspace: str = "synthetic",
    start: datetime = DEFAULT_START,
) -> SyntheticHistory:
    """Write `people` persons' `days` of events into `events`; the planted truth stays in `planted_people`."""
    common = {"seed": seed, "days": days}
    connection.execute(_MACROS_SQL)
    connection.execute(
        _PEOPLE_SQL,
        {
            **common,
            "people": people,
            "churner_share": CHURNER_SHARE,
            "silent_share": SILENT_SHARE_OF_CHURNERS,
            "categories": len(CATEGORIES),
            "products": PRODUCTS_PER_CATEGORY,
        },
    )
    connection.execute(_VISITS_SQL, {**common, "fade_days": FADE_DAYS, "silent_days": SILENT_DAYS})
    before = _count_events(connection, workspace)
    connection.execute(
        _EVENTS_SQL,
        {
            "seed": seed,
            "workspace": workspace,
            "start": start,
            "categories": len(CATEGORIES),
            "category_names": list(CATEGORIES),
            "products": PRODUCTS_PER_CATEGORY,
        },
    )
    return SyntheticHistory(
        workspace, people, start, start + timedelta(days=days), _count_events(connection, workspace) - before
    )


def _count_events(connection: duckdb.DuckDBPyConnection, workspace: str) -> int:
    row = connection.execute("SELECT count(*) FROM events WHERE workspace = ?", [workspace]).fetchone()
    return int(row[0]) if row else 0
