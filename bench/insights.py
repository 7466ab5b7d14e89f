"""Insights benchmark: the analyses (funnels, attribution, cohorts, ROI) over a synthetic history of
10,000,000 events in the service's DuckDB store, each beside a floor measured in the same run.

    python bench/insights.py [--events N] [--people N] [--threads N] [--repeats R] [--in-memory]
                             [--model-people N] [--seed S] [--quick] [--json]
    onefold bench insights --json

The system: the insights service's analytical store (`open_warehouse`, its DuckDB schema) in a file
of a temporary directory (`--in-memory` keeps it in memory), DuckDB limited to `--threads` threads
(2 by default, as the 2-core target machine), queried in this process by the service's adapters.
Every figure is wall seconds with this process's CPU seconds beside it (DuckDB's threads are this
process's): the median of `--repeats` runs of the same query.

Phases:

- generate: `generate_history` fills the store with exactly `--events` events over `--people`
  people and 90 days (a Product Viewed -> Product Added -> Checkout Started -> Order Completed
  funnel, campaigns, journey sends with a control group, other events), sends, memberships,
  lifecycle tags and costs, in DuckDB SQL; how long it took;
- floor: `SELECT event, count(*) FROM events WHERE workspace = ? GROUP BY event`, a plain scan and
  aggregate of the same table: what reading it costs at least;
- funnel: the 4-step funnel above, sequential, 7-day window, over the 90 days (the target), then
  the same in `strict` and `any` order (no targets); its step counts; the ratio to the floor;
- attribution: conversions = Product Added (a cart's value as revenue; about 1,300,000 of them at
  10M events) credited to campaign names under all five models, 30-day lookback, touches from
  campaign events and journey sends. Floor: `SELECT campaign_name, count(*), sum(revenue) ...
  GROUP BY campaign_name` over the same table;
- cohorts: weekly cohorts by first seen, 12 periods, any activity (no target);
- roi: Order Completed's revenue per segment, lifecycle stage and campaign (against costs), and the
  journeys' uplift with its z-test (no target);
- memory: this process's RSS and its peak (VmRSS, VmHWM), DuckDB's buffers included;
- models (bench/_insights_models.py, docs/insights-models.md): a history of `--model-people` people
  (50,000; 3,000 with --quick) with planted churn signals; the churn model trained on a time split
  and its hold-out AUC beside the days-since-last-order baseline's, behaviour clusters described in
  words, affinity tags; scikit-learn's threads bounded to `--threads`.

Targets (a 2-core machine): a 4-step funnel over 10,000,000 events <= 10 s; attribution of
1,000,000 conversions under all five models <= 20 s; the churn model's AUC above the baseline's. `met` in the JSON says which were met (a
figure measured at a smaller size than the target's is not met: see `at_target_size`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from threadpoolctl import threadpool_limits

from onefold.insights.adapters.attribution import run_attribution
from onefold.insights.adapters.cohorts import run_cohorts
from onefold.insights.adapters.funnels import run_funnel
from onefold.insights.adapters.roi import run_roi
from onefold.insights.adapters.synthetic import FUNNEL, generate_history
from onefold.insights.adapters.warehouse import open_warehouse
from onefold.insights.domain.specs import (
    AttributionSpec,
    CohortSpec,
    EventMatch,
    FunnelSpec,
    OrderMode,
    RoiSpec,
    TimeRange,
)
from onefold.testing.measure import memory_mb, progress, say_targets

if str(Path(__file__).resolve().parent) not in sys.path:  # `onefold bench` loads this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _insights_models import run_models  # (bench/_insights_models.py: churn, clusters, affinity)

T = TypeVar("T")
WORKSPACE = "bench"
START = datetime(2026, 1, 5)
DAYS = 90
HISTORY = TimeRange(START, START + timedelta(days=DAYS))
ATTRIBUTION_CONVERSION = "Product Added"
TARGETS: dict[str, Any] = {
    "funnel_4_steps_seconds": 10.0,
    "attribution_5_models_seconds": 20.0,
    "churn_auc_above_baseline": "the model's hold-out AUC > the days-since-last-order baseline's",
}
TARGET_SIZES = {"events": 10_000_000, "conversions": 1_000_000}


def timed(run: Callable[[], T], repeats: int) -> tuple[T, dict[str, float]]:
    """`run`'s last result, and the median wall and CPU seconds of `repeats` runs."""
    walls, cpus = [], []
    result: T | None = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    assert result is not None
    return result, {
        "seconds": round(statistics.median(walls), 3),
        "cpu_seconds": round(statistics.median(cpus), 3),
    }


def scan(connection: duckdb.DuckDBPyConnection, sql: str) -> Callable[[], list[Any]]:
    return lambda: connection.execute(sql, [WORKSPACE]).fetchall()


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    path = None if args.in_memory else directory / "insights.duckdb"
    warehouse = open_warehouse(path, threads=args.threads)
    warehouse.execute("SET enable_progress_bar = false")
    results: dict[str, Any] = {
        "sizes": {"events": args.events, "people": args.people, "days": DAYS},
        "threads": args.threads,
        "repeats": args.repeats,
        "store": "in-memory" if path is None else "file",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)} GiB, "
        f"{platform.python_implementation()} {platform.python_version()}, DuckDB {duckdb.__version__}",
    }
    steps = tuple(EventMatch(name) for name in FUNNEL)
    phases = 8
    with progress("insights") as bar:
        task = bar.add_task("phases", total=phases)

        history, figures = timed(
            lambda: generate_history(warehouse, events=args.events, people=args.people, start=START, days=DAYS,
                                     workspace=WORKSPACE),
            1,
        )  # fmt: skip
        results["generate"] = {
            **history.__dict__,
            **figures,
            "events_per_s": round(history.events / max(figures["seconds"], 1e-9)),
        }
        bar.advance(task)

        _, figures = timed(
            scan(warehouse, "SELECT event, count(*) FROM events WHERE workspace = ? GROUP BY event"),
            args.repeats,
        )
        results["floor"] = {"query": "SELECT event, count(*) ... GROUP BY event", **figures}
        bar.advance(task)

        for order in OrderMode:
            spec = FunnelSpec(steps=steps, window="7d", time_range=HISTORY, order=order)
            funnel, figures = timed(lambda spec=spec: run_funnel(warehouse, WORKSPACE, spec), args.repeats)  # type: ignore[misc]
            results[f"funnel_{order.value}"] = {
                "steps": len(steps),
                "window": "7d",
                "entered": [step.entered for step in funnel.total.steps],
                **figures,
                "vs_floor": round(figures["seconds"] / max(results["floor"]["seconds"], 1e-9), 1),
            }
            bar.advance(task)

        _, figures = timed(
            scan(
                warehouse,
                "SELECT campaign_name, count(*), sum(revenue) FROM events WHERE workspace = ? GROUP BY campaign_name",
            ),
            args.repeats,
        )
        results["attribution_floor"] = {
            "query": "SELECT campaign_name, count(*), sum(revenue) ... GROUP BY",
            **figures,
        }
        attribution_spec = AttributionSpec(conversion=EventMatch(ATTRIBUTION_CONVERSION), time_range=HISTORY)
        attribution, figures = timed(
            lambda: run_attribution(warehouse, WORKSPACE, attribution_spec), args.repeats
        )
        results["attribution"] = {
            "conversion": ATTRIBUTION_CONVERSION,
            "conversions": attribution.conversions,
            "direct": round(attribution.direct.conversions),
            "groups": len(attribution.rows),
            "models": [str(m) for m in attribution_spec.models],
            **figures,
            "vs_floor": round(figures["seconds"] / max(results["attribution_floor"]["seconds"], 1e-9), 1),
        }
        bar.advance(task)

        cohorts, figures = timed(
            lambda: run_cohorts(warehouse, WORKSPACE, CohortSpec(time_range=HISTORY, periods=12)),
            args.repeats,
        )
        results["cohorts"] = {"cohorts": len(cohorts.cohorts), "periods": cohorts.periods, **figures}
        bar.advance(task)

        roi, figures = timed(
            lambda: run_roi(
                warehouse, WORKSPACE, RoiSpec(goal=EventMatch("Order Completed"), time_range=HISTORY)
            ),
            args.repeats,
        )
        results["roi"] = {
            "conversions": roi.conversions,
            "segments": len(roi.segments),
            "campaigns": len(roi.campaigns),
            "uplift": {u.journey: round(u.uplift or 0.0, 4) for u in roi.uplift},
            **figures,
        }
        bar.advance(task)
    results["memory"] = memory_mb()
    warehouse.close()
    # The models on a history of their own with planted churn signals (bench/_insights_models.py);
    # scikit-learn's and numpy's threads bounded like DuckDB's.
    with threadpool_limits(limits=args.threads):
        results["models"] = run_models(args.model_people, args.seed)

    results["targets"] = TARGETS
    results["at_target_size"] = {
        "events": history.events >= TARGET_SIZES["events"],
        "conversions": attribution.conversions >= TARGET_SIZES["conversions"],
    }
    results["met"] = {
        "funnel_4_steps_seconds": results["at_target_size"]["events"]
        and results["funnel_sequential"]["seconds"] <= TARGETS["funnel_4_steps_seconds"],
        "attribution_5_models_seconds": results["at_target_size"]["conversions"]
        and results["attribution"]["seconds"] <= TARGETS["attribution_5_models_seconds"],
        "churn_auc_above_baseline": bool(results["models"]["met"]["auc_above_baseline"]),
    }
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return results


def report(results: dict[str, Any]) -> None:
    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<62} {value:>12}  {note}", file=sys.stderr)

    def seconds(figures: dict[str, Any]) -> str:
        return f"{figures['seconds']} s"

    def cpu(figures: dict[str, Any]) -> str:
        return f"{figures['cpu_seconds']} CPU s"

    print(
        f"insights benchmark ({results['machine']}; DuckDB {results['threads']} threads, {results['store']}):",
        file=sys.stderr,
    )
    gen = results["generate"]
    line(
        f"generate {gen['events']:,} events ({gen['sends']:,} sends)",
        seconds(gen),
        f"{cpu(gen)}, {gen['events_per_s']:,}/s",
    )
    line("floor: SELECT event, count(*) GROUP BY event", seconds(results["floor"]), cpu(results["floor"]))
    for order in OrderMode:
        funnel = results[f"funnel_{order.value}"]
        line(
            f"funnel, 4 steps, {order.value}: {funnel['entered']}",
            seconds(funnel),
            f"{cpu(funnel)}, {funnel['vs_floor']}x the floor",
        )
    floor = results["attribution_floor"]
    line("floor: SELECT campaign_name, count(*), sum(revenue) GROUP BY", seconds(floor), cpu(floor))
    attribution = results["attribution"]
    line(
        f"attribution, 5 models: {attribution['conversions']:,} conversions ({attribution['direct']:,} direct)",
        seconds(attribution),
        f"{cpu(attribution)}, {attribution['vs_floor']}x the floor",
    )
    line(
        f"cohorts: {results['cohorts']['cohorts']} weekly x 12 periods",
        seconds(results["cohorts"]),
        cpu(results["cohorts"]),
    )
    line(f"roi: {results['roi']['conversions']:,} orders, uplift {results['roi']['uplift']}", seconds(results["roi"]),
         cpu(results["roi"]))  # fmt: skip
    memory = results["memory"]
    line("RSS now / peak", f"{memory['rss_mb']} / {memory['peak_rss_mb']} MB")
    models = results["models"]
    churn = models["churn"]
    line(
        f"churn model, {models['people']:,} people: AUC vs days since last order",
        f"{churn['auc_model']} vs {churn['auc_baseline']}",
        f"hold-out {churn['holdout_profiles']:,}, {churn['holdout_churn_rate']:.1%} churned",
    )
    for cluster in models["clusters"]["clusters"]:
        line(f"  cluster of {cluster['size']:,}: {cluster['description']}", "")
    line("model tags (churn risk, cluster, affinity)", f"{models['model_tags']:,}")
    say_targets(results["met"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--people", type=int, default=0, help="default: a tenth of the events")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB's threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per query; the median is reported")
    parser.add_argument("--in-memory", action="store_true", help="keep the store in memory, not in a file")
    parser.add_argument("--quick", action="store_true", help="200,000 events, one run per query: a smoke run")
    parser.add_argument(
        "--model-people",
        type=int,
        default=50_000,
        help="people of the planted-churn history the models train on",
    )
    parser.add_argument("--seed", type=int, default=1, help="the models' history and estimators")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeats, args.model_people = 200_000, 1, 3_000
    args.people = args.people or max(1, args.events // 10)
    if min(args.events, args.people, args.threads, args.repeats) < 1:
        parser.error("--events, --people, --threads and --repeats must be positive")
    with tempfile.TemporaryDirectory(prefix="onefold-bench-insights-") as tmp:
        results = run(args, Path(tmp))
    report(results)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
