"""The models written back to profiles as tags: what each one reads, predicts and is called.

Pure definitions, no I/O: the features of the churn model and their meaning, the label, the
specifications whose fingerprint versions a model, the risk bands, and the words that describe a
behaviour cluster. The adapters (`onefold.insights.adapters.models`) compute the features in DuckDB
and fit scikit-learn; everything they decide is decided here.

Every feature of a profile is computed as of a cut-off time T from its events strictly before T, so a
model trained at T never sees what happened after it (the label's window starts at T).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

DEFAULT_GOAL_EVENT = "Order Completed"

# Feature name → what it measures (as of the cut-off T, from events before T). The order is the
# column order of every feature matrix.
CHURN_FEATURES: Mapping[str, str] = {
    "recency_days": "days since the last goal event (the lookback if none)",
    "frequency": "goal events in the lookback",
    "monetary": "revenue of the goal events in the lookback",
    "tenure_days": "days since the profile's first event",
    "days_since_last_event": "days since the last event of any kind",
    "events_7d": "events in the last 7 days",
    "events_30d": "events in the last 30 days",
    "events_90d": "events in the last 90 days",
    "active_days_30d": "distinct days with an event in the last 30 days (a proxy for sessions)",
    "active_days_90d": "distinct days with an event in the last 90 days",
    "trend_30d": "events in the last 30 days against the 30 before: (last - previous) / (last + previous + 1)",
    "distinct_categories": "distinct product categories interacted with in the lookback",
    "mean_order_gap_days": "mean days between consecutive goal events (the lookback if fewer than two)",
    "overdue_ratio": "recency_days / mean_order_gap_days: how late the next order is by the profile's own rhythm",
}

# The population's features a behaviour cluster is placed and described by (RFM and behaviour).
CLUSTER_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "events_30d",
    "active_days_90d",
    "distinct_categories",
)

# How a cluster's centroid reads on each feature when it is well below / well above the population.
_CLUSTER_WORDS: Mapping[str, tuple[str, str]] = {
    "recency_days": ("recent", "lapsed"),
    "frequency": ("infrequent", "frequent"),
    "monetary": ("low spend", "high spend"),
    "events_30d": ("quiet lately", "busy lately"),
    "active_days_90d": ("rarely visiting", "regularly visiting"),
    "distinct_categories": ("narrow interests", "broad interests"),
}
# A centroid this many standard deviations from the population mean is "well" below or above it, and
# this many "very" far.
CLEAR_DEVIATION = 0.5
STRONG_DEVIATION = 1.5


@dataclass(frozen=True)
class ChurnSpec:
    """What the churn model predicts and how it is trained; its fingerprint is part of the version."""

    goal_event: str = DEFAULT_GOAL_EVENT
    # The label at cut-off T: a profile with a goal event before T (a customer) has churned when it has
    # no goal event in [T, T + horizon). Profiles that never reached the goal are not labelled.
    horizon_days: int = 30
    lookback_days: int = 365  # the window of frequency, monetary and categories
    estimator: Literal["gradient_boosting", "logistic_regression"] = "gradient_boosting"
    # Probability at or above which the risk is medium, then high.
    medium_risk_from: float = 0.4
    high_risk_from: float = 0.7


@dataclass(frozen=True)
class ClusterSpec:
    """Behaviour clusters by k-means over standardised CLUSTER_FEATURES."""

    clusters: int = 5
    initialisations: int = 10  # k-means restarts (n_init); fixed so that a rerun gives the same clusters
    lookback_days: int = 365
    goal_event: str = DEFAULT_GOAL_EVENT


@dataclass(frozen=True)
class AffinitySpec:
    """Category and product affinity: weighted, decayed interactions mined from the history."""

    # Event name → weight of one interaction with a product or category.
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"Product Viewed": 1.0, "Product Added": 3.0, DEFAULT_GOAL_EVENT: 5.0}
    )
    half_life_days: float = 30.0  # an interaction this old counts half
    lookback_days: int = 180
    min_interactions: int = 3  # fewer interactions than this say nothing about a profile's taste


@dataclass(frozen=True)
class ModelVersion:
    """Which model made a tag: same specification, data cut-off and seed → the same version."""

    name: str
    version: str
    trained_at: datetime  # the data cut-off the model was fitted at
    seed: int
    feature_names: tuple[str, ...]
    metrics: Mapping[str, float]

    def label(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelTag:
    """A tag a model gives a profile, to be written back to it as a model tag."""

    profile_id: str
    tag: str  # churn_risk, behaviour_cluster, category_affinity, product_affinity
    value: str
    score: float | None  # the probability, affinity share, ...; None when the value says it all
    model_version: str  # ModelVersion.label()


@dataclass(frozen=True)
class ClusterDescription:
    cluster: int
    size: int
    share: float  # of the clustered population
    words: str  # e.g. "recent, frequent, high spend"
    centroid: Mapping[str, float]  # in the features' own units


def model_version(
    name: str,
    spec: ChurnSpec | ClusterSpec | AffinitySpec,
    cutoff: datetime,
    seed: int,
    feature_names: Sequence[str],
    metrics: Mapping[str, float] | None = None,
) -> ModelVersion:
    """The version is a hash of what determines the model: its specification, data cut-off and seed."""
    fingerprint = json.dumps(
        {"name": name, "spec": _plain(asdict(spec)), "cutoff": cutoff.isoformat(), "seed": seed},
        sort_keys=True,
    )
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    return ModelVersion(name, digest, cutoff, seed, tuple(feature_names), dict(metrics or {}))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def churn_risk_band(probability: float, spec: ChurnSpec) -> str:
    if probability >= spec.high_risk_from:
        return "high"
    if probability >= spec.medium_risk_from:
        return "medium"
    return "low"


def evaluation_cutoffs(as_of: datetime, spec: ChurnSpec) -> tuple[datetime, datetime]:
    """The time split: train at T1, evaluate at T2 = T1 + horizon, whose horizon ends at `as_of`.

    Training reads features before T1 and labels in [T1, T2); the hold-out reads features before T2
    and labels in [T2, as_of): both labels are known in the data, and no training row sees the
    hold-out's label window.
    """
    holdout_cutoff = as_of - timedelta(days=spec.horizon_days)
    return holdout_cutoff - timedelta(days=spec.horizon_days), holdout_cutoff


def describe_clusters(
    standardised_centroids: Sequence[Sequence[float]],
    centroids: Sequence[Sequence[float]],
    sizes: Sequence[int],
    feature_names: Sequence[str] = CLUSTER_FEATURES,
) -> list[ClusterDescription]:
    """Each cluster in words from where its centroid sits against the population (in standard deviations).

    A feature is named when the centroid is CLEAR_DEVIATION or more from the mean ("very" from
    STRONG_DEVIATION); a cluster with no such feature is "average". Clusters that would read the same
    get their strongest remaining deviation added ("slightly ...") until the descriptions differ; if
    every feature is named and two still read alike, their number tells them apart, so that each tag
    value names one cluster.
    """
    ranked = [_ranked_terms(z, feature_names) for z in standardised_centroids]
    named = [sum(1 for deviation, _, _ in terms if deviation >= CLEAR_DEVIATION) for terms in ranked]
    words = [_words(terms, count) for terms, count in zip(ranked, named, strict=True)]
    for _ in feature_names:
        duplicates = {text for text in words if words.count(text) > 1}
        for index, text in enumerate(words):
            if text in duplicates and named[index] < len(feature_names):
                named[index] += 1
                words[index] = _words(ranked[index], named[index])
    alike = [text for text in words if words.count(text) > 1]
    words = [f"{text} (cluster {index})" if text in alike else text for index, text in enumerate(words)]
    total = sum(sizes) or 1
    return [
        ClusterDescription(
            cluster=index,
            size=int(size),
            share=size / total,
            words=words[index],
            centroid=dict(zip(feature_names, (float(v) for v in centre), strict=True)),
        )
        for index, (centre, size) in enumerate(zip(centroids, sizes, strict=True))
    ]


def _ranked_terms(z_scores: Sequence[float], feature_names: Sequence[str]) -> list[tuple[float, int, str]]:
    terms = []
    for position, (name, z) in enumerate(zip(feature_names, z_scores, strict=True)):
        low, high = _CLUSTER_WORDS.get(name, (f"low {name}", f"high {name}"))
        terms.append((abs(float(z)), position, high if z > 0 else low))
    # Strongest first; ties by the features' own order (sort is stable) so the wording is deterministic.
    return sorted(terms, key=lambda term: -term[0])


def _words(terms: list[tuple[float, int, str]], count: int) -> str:
    # The strongest `count` deviations, read in the features' order (recency, frequency, spend, ...).
    chosen = sorted(terms[:count], key=lambda term: term[1])
    phrases = [_graded(deviation, word) for deviation, _, word in chosen]
    return ", ".join(phrases) if phrases else "average"


def _graded(deviation: float, word: str) -> str:
    if deviation >= STRONG_DEVIATION:
        return f"very {word}"
    if deviation >= CLEAR_DEVIATION:
        return word
    return f"slightly {word}"
