"""The models written back as tags: churn risk, behaviour clusters, affinity — on real DuckDB and scikit-learn.

Hand-made histories check what the features and labels mean (nothing at or after the cut-off is read;
the label is "no order in the horizon"); a seeded history with planted churn checks that the model
finds what the recency baseline misses, and that a rerun with the same seed gives the same model.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pytest

from onefold.insights.adapters.models import (
    affinity_tags,
    behaviour_clusters,
    churn_labels,
    evaluate_churn,
    feature_matrix,
    fit_churn,
    history_end,
    predict_churn,
)
from onefold.insights.adapters.synthetic_models import CATEGORIES, SyntheticHistory, generate_planted_history
from onefold.insights.adapters.warehouse import open_warehouse
from onefold.insights.domain.models import AffinitySpec, ChurnSpec, describe_clusters

WORKSPACE = "acme"
CUTOFF = datetime(2026, 3, 1)
ORDER = "Order Completed"


def add_event(
    warehouse: duckdb.DuckDBPyConnection,
    profile: str,
    at: datetime,
    event: str,
    *,
    category: str | None = None,
    revenue: float | None = None,
) -> None:
    count = warehouse.execute("SELECT count(*) FROM events").fetchone()
    warehouse.execute(
        "INSERT INTO events (workspace, event_id, profile_id, ts, type, event, revenue, category) "
        "VALUES (?, ?, ?, ?, 'track', ?, ?, ?)",
        [WORKSPACE, f"e{count[0] if count else 0}", profile, at, event, revenue, category],
    )


def customers_at(warehouse: duckdb.DuckDBPyConnection, cutoff: datetime) -> dict[str, dict[str, float]]:
    features = feature_matrix(
        warehouse, WORKSPACE, cutoff, goal_event=ORDER, lookback_days=365, customers_only=True
    )
    return {
        profile: dict(zip(features.names, row.tolist(), strict=True))
        for profile, row in zip(features.profile_ids, features.values, strict=True)
    }


@pytest.fixture
def warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = open_warehouse()
    yield connection
    connection.close()


def test_features_at_a_cutoff_ignore_every_event_from_the_cutoff_on(
    warehouse: duckdb.DuckDBPyConnection,
) -> None:
    add_event(warehouse, "ann", CUTOFF - timedelta(days=40), "Product Viewed", category="books")
    add_event(warehouse, "ann", CUTOFF - timedelta(days=10), ORDER, category="books", revenue=30.0)
    add_event(warehouse, "ann", CUTOFF - timedelta(days=2), "Product Viewed", category="toys")
    before = customers_at(warehouse, CUTOFF)

    add_event(warehouse, "ann", CUTOFF, ORDER, category="garden", revenue=500.0)  # at the cut-off itself
    add_event(warehouse, "ann", CUTOFF + timedelta(days=1), "Product Viewed", category="sports")
    add_event(warehouse, "bob", CUTOFF + timedelta(hours=1), ORDER, revenue=10.0)  # a customer only later

    assert customers_at(warehouse, CUTOFF) == before
    ann = before["ann"]
    assert (ann["recency_days"], ann["frequency"], ann["monetary"]) == (10.0, 1.0, 30.0)
    assert (ann["tenure_days"], ann["days_since_last_event"], ann["distinct_categories"]) == (40.0, 2.0, 2.0)
    assert (ann["events_7d"], ann["events_30d"], ann["events_90d"]) == (1.0, 2.0, 3.0)
    # Later, the new events count: the cut-off, not the table's contents, bounds what is read.
    assert customers_at(warehouse, CUTOFF + timedelta(days=2))["ann"]["frequency"] == 2.0


def test_churned_means_a_customer_with_no_goal_event_in_the_horizon(
    warehouse: duckdb.DuckDBPyConnection,
) -> None:
    spec = ChurnSpec(horizon_days=30)
    horizon_end = CUTOFF + timedelta(days=30)
    for profile in ("ann", "bob", "dan", "eve"):
        add_event(warehouse, profile, CUTOFF - timedelta(days=20), ORDER, revenue=20.0)
    add_event(warehouse, "ann", CUTOFF + timedelta(days=29, hours=23), ORDER)  # last hour of the horizon
    add_event(warehouse, "bob", horizon_end, ORDER)  # just after it: too late
    add_event(warehouse, "dan", CUTOFF + timedelta(days=3), "Product Viewed")  # browsing is not ordering
    add_event(warehouse, "eve", CUTOFF, ORDER)  # the horizon starts at the cut-off
    add_event(warehouse, "cat", CUTOFF - timedelta(days=5), "Product Viewed")  # never a customer: no label
    add_event(warehouse, "cat", CUTOFF + timedelta(days=1), ORDER)

    features = feature_matrix(
        warehouse, WORKSPACE, CUTOFF, goal_event=ORDER, lookback_days=365, customers_only=True
    )
    labels = dict(
        zip(features.profile_ids, churn_labels(warehouse, WORKSPACE, features, spec).tolist(), strict=True)
    )

    assert labels == {"ann": 0, "bob": 1, "dan": 1, "eve": 0}


def test_a_category_interacted_with_recently_and_deeply_is_the_affinity(
    warehouse: duckdb.DuckDBPyConnection,
) -> None:
    as_of = CUTOFF
    # Many views of books, but months ago; recent views, an add and an order in garden.
    for day in range(100, 110):
        add_event(warehouse, "ann", as_of - timedelta(days=day), "Product Viewed", category="books")
    for day in (1, 2, 3):
        add_event(warehouse, "ann", as_of - timedelta(days=day), "Product Viewed", category="garden")
    add_event(warehouse, "ann", as_of - timedelta(days=2), "Product Added", category="garden")
    add_event(warehouse, "ann", as_of - timedelta(days=1), ORDER, category="garden")
    add_event(warehouse, "ann", as_of + timedelta(days=1), ORDER, category="books")  # after as_of: unread
    # Two views say nothing yet about bob's taste.
    add_event(warehouse, "bob", as_of - timedelta(days=1), "Product Viewed", category="toys")
    add_event(warehouse, "bob", as_of - timedelta(days=2), "Product Viewed", category="toys")

    version, tags = affinity_tags(
        warehouse, WORKSPACE, as_of, AffinitySpec(half_life_days=30, min_interactions=3)
    )

    categories = {tag.profile_id: tag for tag in tags if tag.tag == "category_affinity"}
    assert set(categories) == {"ann"}
    assert categories["ann"].value == "garden"
    assert categories["ann"].score is not None and 0.5 < categories["ann"].score < 1.0
    assert categories["ann"].model_version == version.label()


def test_cluster_descriptions_differ_even_when_the_centroids_read_alike() -> None:
    sizes = [50, 30, 20]
    standardised = [
        [-1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [2.0, -2.0, -2.0, -2.0, -2.0, -2.0],
        [0.1, 0.0, 0, 0, 0, 0],
    ]
    descriptions = describe_clusters(standardised, standardised, sizes)
    assert [d.words for d in descriptions] == [
        "recent, frequent, high spend, busy lately, regularly visiting, broad interests",
        "very lapsed, very infrequent, very low spend, very quiet lately, very rarely visiting, very narrow interests",
        "average",
    ]
    alike = describe_clusters([[0.8, 0.0, 0, 0, 0, 0], [0.9, 0.2, 0, 0, 0, 0]], [[0] * 6] * 2, [1, 1])
    assert alike[0].words != alike[1].words
    assert [d.share for d in descriptions] == [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def planted() -> Iterator[tuple[duckdb.DuckDBPyConnection, SyntheticHistory]]:
    connection = open_warehouse()
    history = generate_planted_history(connection, people=3000, seed=11)
    yield connection, history
    connection.close()


def test_the_churn_model_beats_days_since_last_order_on_a_later_holdout(
    planted: tuple[duckdb.DuckDBPyConnection, SyntheticHistory],
) -> None:
    connection, history = planted
    as_of = history_end(connection, history.workspace)
    evaluation = evaluate_churn(connection, history.workspace, as_of, seed=3)
    assert evaluation.holdout_cutoff == evaluation.train_cutoff + timedelta(days=30)
    assert evaluation.holdout_cutoff + timedelta(days=30) == as_of
    assert 0.2 < evaluation.holdout_churn_rate < 0.8
    assert evaluation.auc_baseline > 0.6  # recency means something in this history...
    assert evaluation.auc_model > evaluation.auc_baseline + 0.02  # ...and the planted behaviour more


def test_the_same_history_spec_and_seed_give_the_same_version_and_predictions(
    planted: tuple[duckdb.DuckDBPyConnection, SyntheticHistory],
) -> None:
    connection, history = planted
    as_of = history_end(connection, history.workspace)
    again = open_warehouse()
    generate_planted_history(again, people=3000, seed=11)  # the same history, drawn anew
    try:
        first = fit_churn(connection, history.workspace, as_of, seed=5)
        second = fit_churn(again, history.workspace, as_of, seed=5)
        other_seed = fit_churn(connection, history.workspace, as_of, seed=6)
        first_tags = predict_churn(connection, history.workspace, first, as_of)
        second_tags = predict_churn(again, history.workspace, second, as_of)
    finally:
        again.close()

    assert first.version == second.version
    assert other_seed.version.version != first.version.version
    assert first_tags == second_tags
    assert {tag.value for tag in first_tags} == {"low", "medium", "high"}
    assert all(tag.score is not None and 0.0 <= tag.score <= 1.0 for tag in first_tags)
    assert all(tag.model_version == first.version.label() for tag in first_tags)

    spec = ChurnSpec(horizon_days=14)  # another specification is another model
    assert (
        fit_churn(connection, history.workspace, as_of, spec, seed=5).version.version != first.version.version
    )


def test_behaviour_clusters_are_described_distinctly_and_reproducibly(
    planted: tuple[duckdb.DuckDBPyConnection, SyntheticHistory],
) -> None:
    connection, history = planted
    as_of = history_end(connection, history.workspace)
    result = behaviour_clusters(connection, history.workspace, as_of, seed=2)
    again = behaviour_clusters(connection, history.workspace, as_of, seed=2)

    words = [d.words for d in result.descriptions]
    assert len(words) == 5 and all(words) and len(set(words)) == 5
    assert sum(d.size for d in result.descriptions) == len(result.tags)
    assert {tag.value for tag in result.tags} == set(words)
    assert result.tags == again.tags and result.version == again.version
    # The loyal shoppers planted in the history form a cluster of their own.
    assert any(w.startswith("recent, frequent, high spend") for w in words)


def test_affinity_finds_the_planted_favourite_category(
    planted: tuple[duckdb.DuckDBPyConnection, SyntheticHistory],
) -> None:
    connection, history = planted
    as_of = history_end(connection, history.workspace)
    _, tags = affinity_tags(connection, history.workspace, as_of)
    planted_favourite = dict(
        connection.execute("SELECT profile_id, favourite FROM planted_people").fetchall()
    )
    found = [
        CATEGORIES[planted_favourite[t.profile_id]] == t.value for t in tags if t.tag == "category_affinity"
    ]
    assert len(found) > 1000
    assert np.mean(found) > 0.85
