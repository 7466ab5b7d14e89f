"""The models over the warehouse: features in DuckDB SQL as of a cut-off, scikit-learn to fit and score.

- churn risk: a classifier trained at T1 on the labels of [T1, T1 + horizon), evaluated on a later
  cut-off T2 = T1 + horizon beside the "days since last order" baseline (AUC of both on the same
  hold-out), then fitted again at T2 — the latest labelled cut-off — to score every customer as of
  now into low / medium / high bands with the probability;
- behaviour clusters: k-means over standardised RFM and behaviour features, each cluster described
  in words (`onefold.insights.domain.models.describe_clusters`);
- affinity: each profile's top category and product by weighted, decayed interactions, all in SQL.

Every result carries its `ModelVersion`; every estimator has a fixed `random_state`, so the same
history, specification and seed give the same version and the same predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import KMeans
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from onefold.insights.domain.models import (
    CHURN_FEATURES,
    CLUSTER_FEATURES,
    AffinitySpec,
    ChurnSpec,
    ClusterDescription,
    ClusterSpec,
    ModelTag,
    ModelVersion,
    churn_risk_band,
    describe_clusters,
    evaluation_cutoffs,
    model_version,
)

SECONDS_PER_DAY = 86400.0

# One row per profile with events before the cut-off; columns in CHURN_FEATURES' order. `age` is how
# long before the cut-off an event happened, in days; nothing at or after the cut-off is read.
_FEATURES_SQL = """
WITH history AS (
    SELECT profile_id, event, revenue, category,
           date_diff('millisecond', ts, $cutoff::TIMESTAMP) / 86400000.0 AS age
    FROM events
    WHERE workspace = $workspace AND ts < $cutoff::TIMESTAMP
),
per_profile AS (
    SELECT profile_id,
           min(age) FILTER (WHERE event = $goal) AS last_goal_age,
           max(age) FILTER (WHERE event = $goal AND age <= $lookback) AS first_goal_age_in_lookback,
           count(*) FILTER (WHERE event = $goal) AS goals_ever,
           count(*) FILTER (WHERE event = $goal AND age <= $lookback) AS frequency,
           coalesce(sum(revenue) FILTER (WHERE event = $goal AND age <= $lookback), 0) AS monetary,
           max(age) AS tenure_days,
           min(age) AS days_since_last_event,
           count(*) FILTER (WHERE age <= 7) AS events_7d,
           count(*) FILTER (WHERE age <= 30) AS events_30d,
           count(*) FILTER (WHERE age > 30 AND age <= 60) AS events_previous_30d,
           count(*) FILTER (WHERE age <= 90) AS events_90d,
           count(DISTINCT floor(age)) FILTER (WHERE age <= 30) AS active_days_30d,
           count(DISTINCT floor(age)) FILTER (WHERE age <= 90) AS active_days_90d,
           count(DISTINCT category) FILTER (WHERE age <= $lookback) AS distinct_categories
    FROM history
    GROUP BY profile_id
),
shaped AS (
    SELECT *,
           coalesce(last_goal_age, $lookback) AS recency_days,
           CASE WHEN frequency >= 2
                THEN (first_goal_age_in_lookback - last_goal_age) / (frequency - 1)
                ELSE $lookback END AS mean_order_gap_days
    FROM per_profile
    WHERE (goals_ever > 0 OR NOT $customers_only) AND days_since_last_event <= $lookback
)
SELECT profile_id,
       recency_days, frequency, monetary, tenure_days, days_since_last_event,
       events_7d, events_30d, events_90d, active_days_30d, active_days_90d,
       (events_30d - events_previous_30d) / (events_30d + events_previous_30d + 1) AS trend_30d,
       distinct_categories, mean_order_gap_days,
       recency_days / greatest(mean_order_gap_days, 1) AS overdue_ratio
FROM shaped
ORDER BY profile_id
"""

# Customers at the cut-off that reached the goal again within the horizon (they did not churn).
_RETAINED_SQL = """
SELECT DISTINCT profile_id FROM events
WHERE workspace = $workspace AND event = $goal
  AND ts >= $cutoff::TIMESTAMP AND ts < $horizon_end::TIMESTAMP
"""


@dataclass(frozen=True)
class FeatureMatrix:
    """Profiles' features as of a cut-off: row i of `values` is `profile_ids[i]`."""

    cutoff: datetime
    profile_ids: list[str]
    names: tuple[str, ...]
    values: NDArray[np.float64]

    def column(self, name: str) -> NDArray[np.float64]:
        return self.values[:, self.names.index(name)]


@dataclass(frozen=True)
class ChurnEvaluation:
    train_cutoff: datetime
    holdout_cutoff: datetime
    train_profiles: int
    holdout_profiles: int
    holdout_churn_rate: float
    auc_model: float
    auc_baseline: float  # the score "days since last order" on the same hold-out

    def metrics(self) -> dict[str, float]:
        return {
            "auc_model": self.auc_model,
            "auc_baseline": self.auc_baseline,
            "holdout_churn_rate": self.holdout_churn_rate,
            "train_profiles": float(self.train_profiles),
            "holdout_profiles": float(self.holdout_profiles),
        }


@dataclass(frozen=True)
class ChurnModel:
    version: ModelVersion
    spec: ChurnSpec
    estimator: Any  # a fitted sklearn Pipeline


@dataclass(frozen=True)
class ClusterResult:
    version: ModelVersion
    descriptions: list[ClusterDescription]
    tags: list[ModelTag]


def history_end(connection: duckdb.DuckDBPyConnection, workspace: str) -> datetime:
    """Just after the workspace's last event: the default "now" of a model run over a loaded history."""
    row = connection.execute("SELECT max(ts) FROM events WHERE workspace = ?", [workspace]).fetchone()
    if row is None or row[0] is None:
        raise ValueError(f"workspace {workspace!r} has no events")
    last: datetime = row[0]
    return last + timedelta(microseconds=1)


def feature_matrix(
    connection: duckdb.DuckDBPyConnection,
    workspace: str,
    cutoff: datetime,
    *,
    goal_event: str,
    lookback_days: int,
    customers_only: bool,
) -> FeatureMatrix:
    """CHURN_FEATURES per profile from its events before `cutoff` (active within the lookback)."""
    columns = connection.execute(
        _FEATURES_SQL,
        {
            "workspace": workspace,
            "cutoff": cutoff,
            "goal": goal_event,
            "lookback": float(lookback_days),
            "customers_only": customers_only,
        },
    ).fetchnumpy()
    names = tuple(CHURN_FEATURES)
    values = (
        np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in names])
        if len(columns["profile_id"])
        else np.empty((0, len(names)))
    )
    return FeatureMatrix(cutoff, [str(p) for p in columns["profile_id"]], names, values)


def churn_labels(
    connection: duckdb.DuckDBPyConnection, workspace: str, features: FeatureMatrix, spec: ChurnSpec
) -> NDArray[np.int_]:
    """1 where the customer has no goal event in [cutoff, cutoff + horizon), else 0; aligned with `features`."""
    retained = {
        row[0]
        for row in connection.execute(
            _RETAINED_SQL,
            {
                "workspace": workspace,
                "goal": spec.goal_event,
                "cutoff": features.cutoff,
                "horizon_end": features.cutoff + timedelta(days=spec.horizon_days),
            },
        ).fetchall()
    }
    return np.array([0 if profile in retained else 1 for profile in features.profile_ids], dtype=np.int_)


def _customers(
    connection: duckdb.DuckDBPyConnection, workspace: str, cutoff: datetime, spec: ChurnSpec
) -> FeatureMatrix:
    return feature_matrix(
        connection,
        workspace,
        cutoff,
        goal_event=spec.goal_event,
        lookback_days=spec.lookback_days,
        customers_only=True,
    )


def _estimator(spec: ChurnSpec, seed: int) -> Pipeline:
    if spec.estimator == "logistic_regression":
        # Counts and amounts are heavy-tailed: log1p keeps a few big spenders from dominating the scale.
        return Pipeline(
            [
                ("log", FunctionTransformer(np.log1p)),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(max_iter=1000, random_state=seed)),
            ]
        )
    # No early stopping: its validation split would be one more source of randomness and data loss.
    return Pipeline(
        [
            (
                "model",
                HistGradientBoostingClassifier(
                    max_iter=200,
                    learning_rate=0.05,
                    max_leaf_nodes=15,
                    l2_regularization=1.0,
                    early_stopping=False,
                    random_state=seed,
                ),
            )
        ]
    )


def evaluate_churn(
    connection: duckdb.DuckDBPyConnection,
    workspace: str,
    as_of: datetime,
    spec: ChurnSpec = ChurnSpec(),  # noqa: B008 - frozen, so a shared default is safe
    seed: int = 0,
) -> ChurnEvaluation:
    """Train at T1, score the hold-out at T2 = T1 + horizon, and compare with days since last order."""
    train_cutoff, holdout_cutoff = evaluation_cutoffs(as_of, spec)
    train = _customers(connection, workspace, train_cutoff, spec)
    holdout = _customers(connection, workspace, holdout_cutoff, spec)
    train_labels = churn_labels(connection, workspace, train, spec)
    holdout_labels = churn_labels(connection, workspace, holdout, spec)
    if len(set(train_labels.tolist())) < 2 or len(set(holdout_labels.tolist())) < 2:
        raise ValueError("the history needs churned and retained customers at both cut-offs to evaluate")
    estimator = _estimator(spec, seed).fit(train.values, train_labels)
    predicted = estimator.predict_proba(holdout.values)[:, 1]
    return ChurnEvaluation(
        train_cutoff=train_cutoff,
        holdout_cutoff=holdout_cutoff,
        train_profiles=len(train.profile_ids),
        holdout_profiles=len(holdout.profile_ids),
        holdout_churn_rate=float(holdout_labels.mean()),
        auc_model=float(roc_auc_score(holdout_labels, predicted)),
        auc_baseline=float(roc_auc_score(holdout_labels, holdout.column("recency_days"))),
    )


def fit_churn(
    connection: duckdb.DuckDBPyConnection,
    workspace: str,
    as_of: datetime,
    spec: ChurnSpec = ChurnSpec(),  # noqa: B008 - frozen, so a shared default is safe
    seed: int = 0,
    metrics: dict[str, float] | None = None,
) -> ChurnModel:
    """The model to score with: fitted at the latest cut-off whose labels are known (as_of - horizon)."""
    cutoff = as_of - timedelta(days=spec.horizon_days)
    training = _customers(connection, workspace, cutoff, spec)
    labels = churn_labels(connection, workspace, training, spec)
    estimator = _estimator(spec, seed).fit(training.values, labels)
    version = model_version("churn_risk", spec, cutoff, seed, training.names, metrics)
    return ChurnModel(version, spec, estimator)


def predict_churn(
    connection: duckdb.DuckDBPyConnection, workspace: str, model: ChurnModel, as_of: datetime
) -> list[ModelTag]:
    """Every customer's churn risk as of `as_of`: the band as the value, the probability as the score."""
    customers = _customers(connection, workspace, as_of, model.spec)
    if not customers.profile_ids:
        return []
    probabilities = model.estimator.predict_proba(customers.values)[:, 1]
    label = model.version.label()
    return [
        ModelTag(profile, "churn_risk", churn_risk_band(float(p), model.spec), round(float(p), 6), label)
        for profile, p in zip(customers.profile_ids, probabilities, strict=True)
    ]


def behaviour_clusters(
    connection: duckdb.DuckDBPyConnection,
    workspace: str,
    as_of: datetime,
    spec: ClusterSpec = ClusterSpec(),  # noqa: B008 - frozen, so a shared default is safe
    seed: int = 0,
) -> ClusterResult:
    """k-means over the active profiles' RFM and behaviour; each profile tagged with its cluster's words."""
    features = feature_matrix(
        connection,
        workspace,
        as_of,
        goal_event=spec.goal_event,
        lookback_days=spec.lookback_days,
        customers_only=False,
    )
    raw = np.column_stack([features.column(name) for name in CLUSTER_FEATURES])
    if len(raw) < spec.clusters:
        raise ValueError(f"{len(raw)} active profiles cannot make {spec.clusters} clusters")
    # log1p first: frequency and spend are heavy-tailed, and k-means would otherwise split off outliers.
    standardised = StandardScaler().fit_transform(np.log1p(raw))
    kmeans = KMeans(n_clusters=spec.clusters, n_init=spec.initialisations, random_state=seed).fit(
        standardised
    )
    assignments: NDArray[np.int_] = kmeans.labels_
    sizes = np.bincount(assignments, minlength=spec.clusters)
    raw_centroids = [raw[assignments == cluster].mean(axis=0) for cluster in range(spec.clusters)]
    descriptions = describe_clusters(kmeans.cluster_centers_.tolist(), raw_centroids, sizes.tolist())
    metrics = {f"cluster_{d.cluster}_size": float(d.size) for d in descriptions}
    metrics["inertia"] = float(kmeans.inertia_)
    version = model_version("behaviour_cluster", spec, as_of, seed, CLUSTER_FEATURES, metrics)
    label = version.label()
    tags = [
        ModelTag(profile, "behaviour_cluster", descriptions[int(cluster)].words, None, label)
        for profile, cluster in zip(features.profile_ids, assignments, strict=True)
    ]
    return ClusterResult(version, descriptions, tags)


# Each profile's favourite `{item}` (category or product_id): the item with the largest sum of
# weight * 0.5^(age / half-life) over its interactions in the lookback, scored by its share of the
# profile's total; only profiles with at least `min_interactions` interactions in the lookback.
_AFFINITY_SQL = """
WITH weights AS (
    SELECT unnest($events) AS event, unnest($weights) AS weight
),
interactions AS (
    SELECT e.profile_id, e.{item} AS item,
           w.weight * pow(0.5, date_diff('millisecond', e.ts, $as_of::TIMESTAMP) / 86400000.0 / $half_life)
               AS score
    FROM events e JOIN weights w ON e.event = w.event
    WHERE e.workspace = $workspace AND e.ts < $as_of::TIMESTAMP AND e.ts >= $since::TIMESTAMP
      AND e.{item} IS NOT NULL
),
per_item AS (
    SELECT profile_id, item, sum(score) AS score, count(*) AS interactions
    FROM interactions GROUP BY profile_id, item
),
ranked AS (
    SELECT profile_id, item, score,
           score / sum(score) OVER (PARTITION BY profile_id) AS share,
           sum(interactions) OVER (PARTITION BY profile_id) AS interactions,
           row_number() OVER (PARTITION BY profile_id ORDER BY score DESC, item) AS rank
    FROM per_item
)
SELECT profile_id, item, share FROM ranked
WHERE rank = 1 AND interactions >= $min_interactions
ORDER BY profile_id
"""

_AFFINITY_ITEMS = {"category_affinity": "category", "product_affinity": "product_id"}


def affinity_tags(
    connection: duckdb.DuckDBPyConnection,
    workspace: str,
    as_of: datetime,
    spec: AffinitySpec = AffinitySpec(),  # noqa: B008 - frozen, so a shared default is safe
) -> tuple[ModelVersion, list[ModelTag]]:
    """`category_affinity` and `product_affinity` tags: the top item, scored by its share of the interest."""
    version = model_version("affinity", spec, as_of, 0, tuple(_AFFINITY_ITEMS.values()))
    label = version.label()
    tags: list[ModelTag] = []
    for tag, item in _AFFINITY_ITEMS.items():
        rows = connection.execute(
            _AFFINITY_SQL.format(item=item),
            {
                "events": list(spec.weights),
                "weights": [float(w) for w in spec.weights.values()],
                "workspace": workspace,
                "as_of": as_of,
                "since": as_of - timedelta(days=spec.lookback_days),
                "half_life": float(spec.half_life_days),
                "min_interactions": spec.min_interactions,
            },
        ).fetchall()
        tags.extend(
            ModelTag(profile, tag, value, round(float(share), 6), label) for profile, value, share in rows
        )
    return version, tags
