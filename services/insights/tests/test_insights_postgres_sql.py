"""The PostgreSQL queries of docs/insights-warehouse.md give the DuckDB adapters' answers.

A synthetic history is made in DuckDB, copied into a fresh PostgreSQL database whose tables and
indexes are made by the page's own DDL, and the page's funnel (sequential and strict), attribution
and cohort queries — read from its fenced blocks marked `sql postgres-…`, so the page and this test
cannot drift apart — are run there and compared with `run_funnel`, `run_attribution` and
`run_cohorts` on the same specification: counts exactly, times and revenues within 1e-6 relative.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from onefold.insights.adapters.attribution import run_attribution
from onefold.insights.adapters.cohorts import run_cohorts
from onefold.insights.adapters.funnels import FunnelGroupResult, run_funnel
from onefold.insights.adapters.synthetic import FUNNEL, generate_history
from onefold.insights.adapters.warehouse import PROFILE_TABLES, TABLES, erase_profiles, open_warehouse
from onefold.insights.domain.specs import (
    AttributionModel,
    AttributionSpec,
    CohortSpec,
    EventMatch,
    FunnelSpec,
    OrderMode,
    TimeRange,
)
from onefold.platform.database import normalise_url

PAGE = Path(__file__).resolve().parents[3] / "docs" / "insights-warehouse.md"
WORKSPACE = "w"
START = datetime(2026, 1, 5)  # the synthetic history's first day
BLOCK = re.compile(r"^```sql (postgres-[\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MODELS = tuple(AttributionModel)


def documented() -> dict[str, str]:
    """The page's PostgreSQL blocks by their mark."""
    return {mark: sql for mark, sql in BLOCK.findall(PAGE.read_text(encoding="utf-8"))}


def test_the_page_has_every_postgres_block() -> None:
    assert set(documented()) == {
        "postgres-ddl",
        "postgres-indexes",
        "postgres-funnel",
        "postgres-funnel-strict",
        "postgres-attribution",
        "postgres-cohorts",
        "postgres-erase",
    }


@pytest.fixture(scope="module")
def history() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = open_warehouse(threads=2)
    generate_history(connection, events=20_000, people=2_000, seed=3, workspace=WORKSPACE)
    yield connection
    connection.close()


@pytest.fixture
def postgres(fresh_postgres_url: str, history: duckdb.DuckDBPyConnection) -> Iterator[sa.Connection]:
    """The fresh database with the page's tables and indexes, holding a copy of `history`."""
    blocks = documented()
    engine = sa.create_engine(normalise_url(fresh_postgres_url))
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(blocks["postgres-ddl"])
            raw = connection.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor:
                for table in TABLES:
                    rows = history.execute(
                        f"SELECT * FROM {table} WHERE workspace = ?", [WORKSPACE]
                    ).fetchall()
                    assert rows, table
                    with cursor.copy(f"COPY {table} FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            connection.exec_driver_sql(blocks["postgres-indexes"])
            connection.commit()
            yield connection
    finally:
        engine.dispose()


def close(actual: Any, expected: Any) -> bool:
    """Equal within 1e-6 relative (None only with None)."""
    if expected is None or actual is None:
        return actual is None and expected is None
    return float(actual) == pytest.approx(float(expected), rel=1e-6, abs=1e-9)


def assert_funnel(row: sa.Row[Any], expected: FunnelGroupResult) -> None:
    figures = row._mapping
    steps = expected.steps
    assert figures["entered_1"] == steps[0].entered
    for step in steps[1:]:
        k = step.step
        assert figures[f"entered_{k}"] == step.entered, k
        assert close(figures[f"median_seconds_{k}"], step.median_seconds), (k, figures[f"median_seconds_{k}"])
        assert close(figures[f"p90_seconds_{k}"], step.p90_seconds), (k, figures[f"p90_seconds_{k}"])


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("order", "mark"),
    [(OrderMode.SEQUENTIAL, "postgres-funnel"), (OrderMode.STRICT, "postgres-funnel-strict")],
)
def test_the_funnel_matches_duckdb(
    history: duckdb.DuckDBPyConnection, postgres: sa.Connection, order: OrderMode, mark: str
) -> None:
    time_range = TimeRange(START + timedelta(days=5), START + timedelta(days=60))
    spec = FunnelSpec(
        steps=tuple(EventMatch(name) for name in FUNNEL), window="7d", time_range=time_range, order=order
    )
    expected = run_funnel(history, WORKSPACE, spec).total
    assert expected.steps[-1].entered > 0  # every step is reached by someone: the comparison means something
    params = {
        "workspace": WORKSPACE,
        "start": time_range.start,
        "end": time_range.end,
        "window": timedelta(days=7),
        **{f"step{k}": name for k, name in enumerate(FUNNEL, start=1)},
    }
    (row,) = postgres.execute(sa.text(documented()[mark]), params).all()
    assert_funnel(row, expected)


@pytest.mark.postgres
def test_attribution_matches_duckdb(history: duckdb.DuckDBPyConnection, postgres: sa.Connection) -> None:
    time_range = TimeRange(START + timedelta(days=20), START + timedelta(days=80))
    spec = AttributionSpec(
        conversion=EventMatch("Order Completed"), time_range=time_range, lookback="30d", half_life="7d"
    )
    expected = run_attribution(history, WORKSPACE, spec)
    assert expected.conversions > 0 and expected.direct.conversions > 0 and len(expected.rows) > 3
    params = {
        "workspace": WORKSPACE,
        "start": time_range.start,
        "end": time_range.end,
        "conversion": "Order Completed",
        "lookback": timedelta(days=30),
        "half_life_seconds": 7 * 86_400,
    }
    rows = [row._mapping for row in postgres.execute(sa.text(documented()["postgres-attribution"]), params)]
    (total,) = (row for row in rows if row["kind"] == "total")
    (direct,) = (row for row in rows if row["kind"] == "direct")
    assert total["conversions"] == expected.conversions
    assert close(total["revenue"], expected.revenue)
    assert direct["conversions"] == expected.direct.conversions
    assert close(direct["revenue"], expected.direct.revenue)
    groups = {row["grp"]: row for row in rows if row["kind"] == "group"}
    assert set(groups) == {row.value for row in expected.rows}
    for want in expected.rows:
        got = groups[want.value]
        assert got["touches"] == want.touches, want.value
        for model in MODELS:
            credit = want.credit[model]
            assert close(got[model.value], credit.conversions), (want.value, model)
            assert close(got[f"{model.value}_revenue"], credit.revenue), (want.value, model)


@pytest.mark.postgres
def test_weekly_cohorts_match_duckdb(history: duckdb.DuckDBPyConnection, postgres: sa.Connection) -> None:
    spec = CohortSpec(time_range=TimeRange(START, START + timedelta(days=90)), periods=12)
    expected = run_cohorts(history, WORKSPACE, spec)
    assert len(expected.cohorts) > 5
    params = {
        "workspace": WORKSPACE,
        "start": spec.time_range.start,
        "end": spec.time_range.end,
        "periods": 12,
    }
    sizes: dict[datetime, int] = {}
    retained: dict[datetime, list[int]] = {}
    for cohort, size, period, people in postgres.execute(sa.text(documented()["postgres-cohorts"]), params):
        sizes[cohort] = size
        counts = retained.setdefault(cohort, [0] * spec.periods)
        if period is not None:
            counts[period] = people
    assert sizes == {row.start: row.size for row in expected.cohorts}
    assert {cohort: tuple(counts) for cohort, counts in retained.items()} == {
        row.start: row.retained for row in expected.cohorts
    }


@pytest.mark.postgres
def test_the_erasure_deletes_what_duckdb_deletes(postgres: sa.Connection) -> None:
    """On a history of its own (the module's is shared): the page's DELETEs, in one transaction,
    leave the same rows in PostgreSQL as `erase_profiles` in DuckDB, and none of the erased."""
    duck = open_warehouse(threads=2)
    generate_history(duck, events=20_000, people=2_000, seed=3, workspace=WORKSPACE)
    erased = ["u1", "u2", "u3", "u250"]
    before = {t: postgres.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in PROFILE_TABLES}
    removed = erase_profiles(duck, WORKSPACE, erased)
    assert removed["events"] > 0 and removed["memberships"] > 0
    params = {"workspace": WORKSPACE, "profile_ids": erased}
    for statement in documented()["postgres-erase"].split(";"):
        if statement.strip():
            postgres.execute(sa.text(statement), params)
    postgres.commit()
    for table in PROFILE_TABLES:
        left = postgres.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        assert left == before[table] - removed[table], table
        gone = postgres.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE profile_id = ANY(:ids)"), {"ids": erased}
        ).scalar_one()
        assert gone == 0, table
    duck.close()
