"""Insights models benchmark: churn risk beside the recency baseline, behaviour clusters and affinity
over a seeded history with planted churn, each figure from one run.

    python bench/_insights_models.py [--people N] [--seed S] [--json]

`run_models(people, seed)` is what the insights benchmark calls. The history
(`onefold.insights.adapters.synthetic_models`) is generated in an in-memory DuckDB warehouse, then:

- evaluate: the churn model trained at T1 and scored at T2 = T1 + 30 days, AUC beside the AUC of
  "days since last order" on the same hold-out; `met.auc_above_baseline` says whether the model wins;
- train: the model fitted again at the latest labelled cut-off (the one that scores);
- predict: every customer's risk as of the end of the history, as `churn_risk` model tags;
- clusters: k-means (k = 5) over RFM and behaviour, sizes and descriptions;
- affinity: top category and product per profile.

Each step's wall seconds and process CPU seconds (`time.process_time`: every thread of the process,
DuckDB's and scikit-learn's OpenMP ones included), the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from onefold.insights.adapters.models import (
    affinity_tags,
    behaviour_clusters,
    evaluate_churn,
    fit_churn,
    history_end,
    predict_churn,
)
from onefold.insights.adapters.synthetic_models import generate_planted_history
from onefold.insights.adapters.warehouse import open_warehouse

T = TypeVar("T")


def _timed(step: Callable[[], T], timings: dict[str, dict[str, float]], name: str) -> T:
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    timings[name] = {
        "seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
    }
    return result


def run_models(people: int, seed: int) -> dict[str, Any]:
    timings: dict[str, dict[str, float]] = {}
    warehouse = open_warehouse()
    try:
        history = _timed(
            lambda: generate_planted_history(warehouse, people=people, seed=seed), timings, "generate"
        )
        workspace = history.workspace
        as_of = history_end(warehouse, workspace)
        evaluation = _timed(
            lambda: evaluate_churn(warehouse, workspace, as_of, seed=seed), timings, "evaluate"
        )
        model = _timed(
            lambda: fit_churn(warehouse, workspace, as_of, seed=seed, metrics=evaluation.metrics()),
            timings,
            "train",
        )
        churn_tags = _timed(lambda: predict_churn(warehouse, workspace, model, as_of), timings, "predict")
        clusters = _timed(
            lambda: behaviour_clusters(warehouse, workspace, as_of, seed=seed), timings, "clusters"
        )
        affinity_version, affinity = _timed(
            lambda: affinity_tags(warehouse, workspace, as_of), timings, "affinity"
        )
    finally:
        warehouse.close()
    return {
        "people": people,
        "seed": seed,
        "events": history.events,
        "churn": {
            "model_version": model.version.label(),
            "train_cutoff": evaluation.train_cutoff.isoformat(),
            "holdout_cutoff": evaluation.holdout_cutoff.isoformat(),
            "train_profiles": evaluation.train_profiles,
            "holdout_profiles": evaluation.holdout_profiles,
            "holdout_churn_rate": round(evaluation.holdout_churn_rate, 4),
            "auc_model": round(evaluation.auc_model, 4),
            "auc_baseline": round(evaluation.auc_baseline, 4),
            "risk_bands": dict(sorted(Counter(tag.value for tag in churn_tags).items())),
        },
        "clusters": {
            "model_version": clusters.version.label(),
            "clusters": [
                {"size": d.size, "share": round(d.share, 4), "description": d.words}
                for d in clusters.descriptions
            ],
        },
        "affinity": {
            "model_version": affinity_version.label(),
            "tags": dict(sorted(Counter(tag.tag for tag in affinity).items())),
        },
        "model_tags": len(churn_tags) + len(clusters.tags) + len(affinity),
        "met": {"auc_above_baseline": evaluation.auc_model > evaluation.auc_baseline},
        "timings": timings,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def report(results: dict[str, Any]) -> None:
    churn = results["churn"]
    print(f"insights models ({results['machine']}, load {results['load_average']}):", file=sys.stderr)
    print(
        f"  {results['people']:,} people, {results['events']:,} events, seed {results['seed']}",
        file=sys.stderr,
    )
    print(
        f"  churn AUC {churn['auc_model']} vs days-since-last-order {churn['auc_baseline']} "
        f"(hold-out {churn['holdout_profiles']:,} customers, {churn['holdout_churn_rate']:.1%} churned); "
        f"above baseline: {results['met']['auc_above_baseline']}",
        file=sys.stderr,
    )
    for cluster in results["clusters"]["clusters"]:
        print(
            f"  cluster {cluster['size']:>7,} ({cluster['share']:.1%}): {cluster['description']}",
            file=sys.stderr,
        )
    print(f"  model tags: {results['model_tags']:,}", file=sys.stderr)
    for step, figures in results["timings"].items():
        print(
            f"  {step:<9} {figures['seconds']:>8.2f} s wall {figures['cpu_seconds']:>8.2f} s CPU",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--people", type=int, default=50_000, help="persons in the planted history")
    parser.add_argument("--seed", type=int, default=1, help="seed of the history and the models")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.people < 100:
        parser.error("--people must be at least 100 (the hold-out needs churned and retained customers)")
    results = run_models(args.people, args.seed)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
