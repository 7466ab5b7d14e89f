"""Identity resolution benchmark: synthetic events with a known true person each, resolved into
clusters by deterministic identifier matching; Splink (DuckDB backend) with the equivalent
deterministic rules on the same data in the same run; precision / recall of the clusters against
the truth.

    python bench/identity.py [--events N] [--splink-events N] [--repeats R] [--seed S] [--json]
    onefold bench identity --json

Data (`generate`, seeded, deterministic): `events // 10` people by default. Each person has a
user_id (except `anonymous_only_rate` of them), 1-2 emails, one E.164 phone, 1-3 devices and 2-6
anonymous ids (cookies, each living on one of the person's devices). Events are spread over people
by a log-normal activity weight (a few heavy users, many light ones) and each carries exactly three
identifiers in one of five shapes:

    (anonymous_id, device_id, user_id)   signed-in app / web event            (never for anonymous-only people)
    (user_id, email, phone)              server-side identify / CRM sync      (never for anonymous-only people)
    (anonymous_id, device_id, email)     anonymous form fill
    (anonymous_id, email, phone)         guest checkout
    (anonymous_id, device_id, phone)     SMS sign-in

so 1,000,000 events carry 3,000,000 identifiers. Noise: `shared_device_rate` of the people also use
a shared device (a family tablet of 2-3 people, or a shop kiosk used by about 20), which deterministic
matching merges, costing precision; `typo_rate` of the email occurrences carry a mistyped email
(a doubled letter or a misspelt domain), which deterministic matching must not merge with the real
one: it becomes an identifier of its own.

Measured, for the rules "exact match on <type>" for every identifier type:

- generation time of the data set;
- Splink 5 (DuckDB): one row per event with a column per identifier type (NULL when absent),
  `block_on(<type>)` per type, `linker.inference.deterministic_link()` then
  `linker.clustering.cluster_pairwise_predictions_at_threshold(..., None)` (connected components).
  Only linking + clustering is timed (wall clock, and process CPU time over DuckDB's threads), not
  loading the table; a fresh DuckDB connection per repeat, median of the repeats. DuckDB uses all
  cores (2 threads here), so its wall time depends on what else the machine is running;
- a plain Python union-find over the same rules (the reference partition): Splink's clusters must
  equal it;
- pairwise precision / recall / F1 of both against the true people (counted over contingency
  cells, pairs are never enumerated);
- Onefold (`run_onefold`, filled in by the identity service's bench): events resolved per second
  through the consumer, its clusters, and the rebuild of its identity graph.

Targets (identity issue, a 2-core machine): resolve 1,000,000 events carrying 3,000,000 identifiers
in <= 60 s end to end through the consumer; Onefold's clusters identical to Splink's; Onefold's
rebuild at least as fast as Splink's link + cluster (splink seconds / rebuild seconds >= 1.0).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

IDENTIFIER_TYPES: tuple[str, ...] = ("user_id", "anonymous_id", "email", "phone", "device_id")
TARGETS = {"resolve_seconds": 60.0, "rebuild_ratio_vs_splink": 1.0}

FIRST_NAMES = (
    "anna", "ben", "chen", "dmitri", "elena", "farah", "george", "hana", "ivan", "julia", "kenji",
    "lena", "mateo", "nina", "omar", "priya", "quentin", "rosa", "sven", "tomas", "uma", "victor",
    "wei", "xenia", "yusuf", "zoe", "li", "maria", "jonas", "sofia",
)  # fmt: skip
LAST_NAMES = (
    "schmidt", "wang", "garcia", "mueller", "smith", "kim", "rossi", "novak", "silva", "tanaka",
    "weber", "zhang", "lopez", "fischer", "khan", "meyer", "ivanova", "dubois", "jensen", "costa",
)  # fmt: skip
DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "qq.com", "gmx.de", "web.de", "163.com", "icloud.com")
DOMAIN_TYPOS = {
    "gmail.com": ("gmial.com", "gmail.con", "gmal.com"),
    "outlook.com": ("outlok.com", "outlook.co"),
    "yahoo.com": ("yahooo.com", "yaho.com"),
    "qq.com": ("qq.cm",),
    "gmx.de": ("gmx.ed", "gmxx.de"),
    "web.de": ("wen.de", "web.d"),
    "163.com": ("136.com", "163.con"),
    "icloud.com": ("iclod.com", "icluod.com"),
}


# --- data -----------------------------------------------------------------------------------------


class Record(NamedTuple):
    """One tracked event: its id, the true person behind it, and its (type, value) identifiers."""

    event_id: str
    person: int
    identifiers: tuple[tuple[str, str], ...]


@dataclass
class Dataset:
    records: list[Record]
    people: int
    events: int
    seed: int
    shared_device_rate: float
    typo_rate: float
    anonymous_only_rate: float
    identifier_types: tuple[str, ...] = IDENTIFIER_TYPES
    shared_device_ids: tuple[str, ...] = ()  # device ids used by 2+ people
    typo_emails: frozenset[str] = field(default_factory=frozenset)  # mistyped emails that occur
    anonymous_only_people: int = 0

    def truth(self) -> dict[str, int]:
        return {r.event_id: r.person for r in self.records}

    @property
    def identifiers(self) -> int:
        return sum(len(r.identifiers) for r in self.records)


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def _phone(pid: int, rng: random.Random) -> str:
    """A unique E.164 number per person: China mobile, German mobile or US, by a bijective scramble."""
    scrambled = (pid * 387_420_489 + 12_345) % 100_000_000  # 387420489 = 3**18, coprime to 10**8
    country = rng.random()
    if country < 0.45:
        return f"+861{rng.choice('3589')}{rng.randrange(10)}{scrambled:08d}"  # +86 138 0013 8000 style
    if country < 0.8:
        return f"+49{rng.choice(('151', '160', '170', '176'))}{scrambled:08d}"
    return (
        f"+1{201 + scrambled // 10_000_000 * 77}{scrambled % 10_000_000:07d}"  # area code from the scramble
    )


def _typo(email: str, rng: random.Random) -> str:
    """A mistyped email that no other person has: a doubled letter in the name, or a misspelt domain."""
    local, domain = email.split("@")
    if rng.random() < 0.5:
        name_end = len(local.rstrip("0123456789"))
        i = rng.randrange(name_end)
        if local[i] != ".":
            return f"{local[: i + 1]}{local[i:]}@{domain}"
    return f"{local}@{rng.choice(DOMAIN_TYPOS[domain])}"


def generate(
    events: int,
    *,
    people: int | None = None,
    seed: int = 1,
    shared_device_rate: float = 0.02,
    typo_rate: float = 0.01,
    anonymous_only_rate: float = 0.2,
) -> Dataset:
    """`events` events of `people` (default events // 10, at least 1) synthetic people, each event
    with exactly three identifiers and its true person. Deterministic for a given seed."""
    collecting = gc.isenabled()
    gc.disable()  # millions of small tuples, none of them cyclic: the collector would only rescan them
    try:
        return _generate(events, people, seed, shared_device_rate, typo_rate, anonymous_only_rate)
    finally:
        if collecting:
            gc.enable()


def _generate(
    events: int,
    people: int | None,
    seed: int,
    shared_device_rate: float,
    typo_rate: float,
    anonymous_only_rate: float,
) -> Dataset:
    people = max(1, events // 10) if people is None else people
    if people < 1 or events < 0:
        raise ValueError("need events >= 0 and people >= 1")
    rng = random.Random(seed)
    rand = rng.random

    # People: identifiers built once and shared by every event that carries them.
    uids: list[tuple[str, str] | None] = []
    emails: list[tuple[tuple[str, str], ...]] = []
    phones: list[tuple[str, str]] = []
    devices: list[tuple[tuple[str, str], ...]] = []
    # cookies[pid]: ((anonymous_id pair, device pair), ...): a cookie lives on one device
    cookies: list[tuple[tuple[tuple[str, str], tuple[str, str]], ...]] = []
    anonymous_only = 0
    for pid in range(people):
        if rand() < anonymous_only_rate:
            uids.append(None)
            anonymous_only += 1
        else:
            uids.append(("user_id", f"user-{pid:07d}"))
        first, last = FIRST_NAMES[int(rand() * len(FIRST_NAMES))], LAST_NAMES[int(rand() * len(LAST_NAMES))]
        personal = ("email", f"{first}.{last}{pid}@{DOMAINS[int(rand() * len(DOMAINS))]}")
        if rand() < 0.35:
            work = ("email", f"{first[0]}{last}{pid}@{DOMAINS[int(rand() * len(DOMAINS))]}")
            emails.append((personal, work))
        else:
            emails.append((personal,))
        phones.append(("phone", _phone(pid, rng)))
        devices.append(tuple(("device_id", _uuid(rng)) for _ in range(1 + int(rand() * 3))))
        own = devices[-1]
        cookies.append(
            tuple((("anonymous_id", _uuid(rng)), own[i % len(own)]) for i in range(2 + int(rand() * 5)))
        )

    # Shared devices: family tablets (2-3 people in a row) and shop kiosks (~20 people each).
    sharers = [pid for pid in range(people) if rand() < shared_device_rate]
    shared_ids: list[str] = []
    kiosks = [("device_id", f"kiosk-{_uuid(rng)}") for _ in range(max(1, len(sharers) // 140))]
    used_kiosks: set[tuple[str, str]] = set()
    index = 0
    while index < len(sharers):
        if rand() < 0.7 and index + 1 < len(sharers):  # a family tablet
            size = 2 + int(rand() * 2)
            tablet = ("device_id", f"tablet-{_uuid(rng)}")
            shared_ids.append(tablet[1])
            group = sharers[index : index + size]
            index += size
        else:
            tablet = kiosks[int(rand() * len(kiosks))]
            used_kiosks.add(tablet)
            group = [sharers[index]]
            index += 1
        for pid in group:
            devices[pid] = (*devices[pid], tablet)
            cookies[pid] = (*cookies[pid], (("anonymous_id", _uuid(rng)), tablet))
    shared_ids.extend(k[1] for k in kiosks if k in used_kiosks)

    # Activity: a log-normal weight per person, events drawn by cumulative weight.
    cumulative: list[float] = []
    total = 0.0
    for _ in range(people):
        total += min(rng.lognormvariate(0.0, 1.0), 60.0)
        cumulative.append(total)
    owners = rng.choices(range(people), cum_weights=cumulative, k=events)

    # Per person: (user_id or None, emails to draw from (the personal one twice as often as a
    # work one), phone, cookies), looked up once per event.
    persons = [
        (uids[p], emails[p] if len(emails[p]) == 1 else (emails[p][0], *emails[p]), phones[p], cookies[p])
        for p in range(people)
    ]
    records: list[Record] = []
    append = records.append
    make = tuple.__new__
    typos: set[str] = set()
    for i, pid in enumerate(owners):
        uid, own_emails, phone, own_cookies = persons[pid]
        shape = rand()
        if uid is not None and shape < 0.4:  # signed-in app / web event
            cookie, device = own_cookies[int(rand() * len(own_cookies))]
            append(make(Record, (f"evt-{i:08d}", pid, (cookie, device, uid))))
            continue
        if shape < 0.85:  # the shapes with an email
            email = own_emails[int(rand() * len(own_emails))]
            if rand() < typo_rate:
                email = ("email", _typo(email[1], rng))
                typos.add(email[1])
            if uid is not None and shape < 0.5:  # server-side identify
                append(make(Record, (f"evt-{i:08d}", pid, (uid, email, phone))))
                continue
            cookie, device = own_cookies[int(rand() * len(own_cookies))]
            ids = (cookie, device, email) if shape < 0.7 else (cookie, email, phone)
        else:  # SMS sign-in
            cookie, device = own_cookies[int(rand() * len(own_cookies))]
            ids = (cookie, device, phone)
        append(make(Record, (f"evt-{i:08d}", pid, ids)))

    return Dataset(
        records=records,
        people=people,
        events=events,
        seed=seed,
        shared_device_rate=shared_device_rate,
        typo_rate=typo_rate,
        anonymous_only_rate=anonymous_only_rate,
        shared_device_ids=tuple(shared_ids),
        typo_emails=frozenset(typos),
        anonymous_only_people=anonymous_only,
    )


# --- the reference: union-find in plain Python -----------------------------------------------------


def connected_components(
    records: Sequence[Record], identifier_types: Iterable[str] = IDENTIFIER_TYPES
) -> dict[str, int]:
    """event_id -> cluster (the index of a representative event): events sharing an identifier of
    one of `identifier_types` (exact value) are in one cluster, transitively."""
    types = frozenset(identifier_types)
    parent = list(range(len(records)))
    first: dict[tuple[str, str], int] = {}
    setdefault = first.setdefault

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for i, record in enumerate(records):
        for pair in record.identifiers:
            if pair[0] in types:
                j = setdefault(pair, i)
                if j != i:
                    a, b = find(i), find(j)
                    if a != b:
                        if a < b:
                            parent[b] = a
                        else:
                            parent[a] = b
    return {record.event_id: find(i) for i, record in enumerate(records)}


# --- the baseline: Splink 5 on DuckDB ---------------------------------------------------------------


def splink_input(records: Sequence[Record], identifier_types: Sequence[str]) -> Any:
    """A pyarrow table: unique_id (the record's position) and one column per identifier type."""
    import pyarrow as pa

    columns: dict[str, list[str | None]] = {t: [None] * len(records) for t in identifier_types}
    for i, record in enumerate(records):
        seen = set()
        for kind, value in record.identifiers:
            column = columns.get(kind)
            if column is not None:
                if kind in seen:
                    raise ValueError(f"{record.event_id} has two {kind} identifiers; one column per type")
                seen.add(kind)
                column[i] = value
    arrays = {"unique_id": pa.array(range(len(records)), pa.int64())}
    arrays.update({t: pa.array(v, pa.string()) for t, v in columns.items()})
    return pa.table(arrays)


@dataclass
class SplinkRun:
    clusters: dict[str, Any]
    seconds: float  # deterministic_link + cluster_pairwise_predictions_at_threshold, wall clock
    cpu_seconds: float  # the same, process CPU time over all of DuckDB's threads
    setup_seconds: float  # DuckDB table from arrow + Linker construction (not in `seconds`)
    pairs: int  # edges from deterministic_link
    threads: str


def splink_run(
    records: Sequence[Record], identifier_types: Sequence[str] = IDENTIFIER_TYPES, *, table: Any = None
) -> SplinkRun:
    import duckdb
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    identifier_types = list(identifier_types)
    if table is None:
        table = splink_input(records, identifier_types)
    started = time.perf_counter()
    con = duckdb.connect(":memory:")
    con.register("bench_events_arrow", table)
    con.execute("CREATE TABLE bench_events AS SELECT * FROM bench_events_arrow")
    con.unregister("bench_events_arrow")
    db_api = DuckDBAPI(con)
    settings = SettingsCreator(
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[block_on(t) for t in identifier_types],
        retain_matching_columns=False,
    )
    linker = Linker(db_api.register("bench_events"), settings, log_level=None)
    setup = time.perf_counter() - started

    started, cpu_started = time.perf_counter(), time.process_time()
    edges = linker.inference.deterministic_link()
    clustered = linker.clustering.cluster_pairwise_predictions_at_threshold(edges, None)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    pairs = con.execute(f"SELECT count(*) FROM {edges.physical_name}").fetchall()[0][0]
    rows = con.execute(f"SELECT unique_id, cluster_id FROM {clustered.physical_name}").fetchall()
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.close()
    clusters = {records[uid].event_id: cluster for uid, cluster in rows}
    if len(clusters) != len(records):
        raise RuntimeError(f"Splink clustered {len(clusters)} of {len(records)} records")
    return SplinkRun(clusters, seconds, cpu_seconds, setup, pairs, str(threads))


def splink_clusters(
    records: Sequence[Record], identifier_types: Sequence[str] = IDENTIFIER_TYPES
) -> tuple[dict[str, Any], float]:
    """(event_id -> Splink cluster_id, seconds of deterministic_link + clustering)."""
    run = splink_run(records, identifier_types)
    return run.clusters, run.seconds


# --- metrics --------------------------------------------------------------------------------------


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def cluster_metrics(predicted: Mapping[str, Hashable], truth: Mapping[str, Hashable]) -> dict[str, Any]:
    """Pairwise precision / recall / F1 over pairs of events (from contingency counts), clusters vs
    true people, and the share of people whose events form exactly one cluster of their own."""
    if predicted.keys() != truth.keys():
        raise ValueError("predicted and truth cover different events")
    cells = Counter((predicted[e], truth[e]) for e in truth)
    predicted_sizes = Counter(predicted.values())
    true_sizes = Counter(truth.values())
    together = sum(_pairs(n) for n in cells.values())
    predicted_pairs = sum(_pairs(n) for n in predicted_sizes.values())
    true_pairs = sum(_pairs(n) for n in true_sizes.values())
    precision = together / predicted_pairs if predicted_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    exact = sum(
        1 for (p, t), n in cells.items() if n == predicted_sizes[p] == true_sizes[t]
    )  # a cell that is its whole cluster and its whole person
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "clusters": len(predicted_sizes),
        "people": len(true_sizes),
        "people_exactly_recovered": exact / len(true_sizes) if true_sizes else 1.0,
        "largest_cluster": max(predicted_sizes.values(), default=0),
    }


def same_partition(a: Mapping[str, Hashable], b: Mapping[str, Hashable]) -> bool:
    """True when a and b group the same keys into the same clusters, whatever the labels."""
    if a.keys() != b.keys():
        return False
    pairs = {(a[k], b[k]) for k in a}
    return len(pairs) == len(set(a.values())) == len(set(b.values()))


# --- Onefold ----------------------------------------------------------------------------------------


def run_onefold(dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Onefold's side of the benchmark: filled in by the identity service's bench (resolve through
    the consumer, rebuild of the graph).

    Expected keys, all optional: "events_per_second" and "resolve_seconds" (the whole data set
    resolved end to end through the consumer), "rebuild_seconds" (rebuild of the identity graph
    from the log, over all `dataset.records`), "clusters" (event_id -> profile id, compared with
    Splink and the truth). Returning {} skips the Onefold figures.
    """
    return {}


# --- main -------------------------------------------------------------------------------------------


def _line(label: str, value: str) -> None:
    print(f"  {label:<52} {value:>18}", file=sys.stderr)


def _metrics_lines(prefix: str, metrics: Mapping[str, Any]) -> None:
    _line(
        f"{prefix} precision / recall / F1",
        f"{metrics['precision']:.4f} / {metrics['recall']:.4f} / {metrics['f1']:.4f}",
    )
    _line(
        f"{prefix} clusters (people {metrics['people']:,})",
        f"{metrics['clusters']:,}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events (default 1000000)")
    parser.add_argument("--people", type=int, default=None, help="true people (default events / 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--splink-events", type=int, default=None, help="events Splink links (default: all of them)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="Splink runs; the median is reported")
    parser.add_argument("--skip-splink", action="store_true")
    parser.add_argument(
        "--shared-device-rate", type=float, default=0.02, help="people also on a shared device"
    )
    parser.add_argument("--typo-rate", type=float, default=0.01, help="email occurrences mistyped")
    parser.add_argument("--anonymous-only-rate", type=float, default=0.2, help="people without a user_id")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.repeats < 1 or args.events < 1:
        parser.error("--events and --repeats must be at least 1")

    import duckdb

    results: dict[str, Any] = {
        "events": args.events,
        "seed": args.seed,
        "repeats": args.repeats,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}, DuckDB {duckdb.__version__}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"identity benchmark: {args.events:,} events, seed {args.seed}", file=sys.stderr)

    started = time.perf_counter()
    dataset = generate(
        args.events,
        people=args.people,
        seed=args.seed,
        shared_device_rate=args.shared_device_rate,
        typo_rate=args.typo_rate,
        anonymous_only_rate=args.anonymous_only_rate,
    )
    results["generate_seconds"] = round(time.perf_counter() - started, 3)
    results.update(
        people=dataset.people,
        identifiers=dataset.identifiers,
        anonymous_only_people=dataset.anonymous_only_people,
        shared_devices=len(dataset.shared_device_ids),
        typo_emails=len(dataset.typo_emails),
    )
    _line(
        f"generate ({dataset.identifiers:,} identifiers, {dataset.people:,} people)",
        f"{results['generate_seconds']:.2f} s",
    )
    _line(
        "shared devices / mistyped emails / anonymous-only people",
        f"{len(dataset.shared_device_ids):,} / {len(dataset.typo_emails):,} / {dataset.anonymous_only_people:,}",
    )
    types = dataset.identifier_types
    truth = dataset.truth()

    started = time.perf_counter()
    reference = connected_components(dataset.records, types)
    results["cc_seconds"] = round(time.perf_counter() - started, 3)
    _line("reference union-find (Python), all events", f"{results['cc_seconds']:.2f} s")
    results["cc"] = cluster_metrics(reference, truth)
    _metrics_lines("reference", results["cc"])

    splink_events = min(args.events, args.splink_events if args.splink_events is not None else args.events)
    splink: dict[str, Any] | None = None
    splink_clustering: dict[str, Any] | None = None
    splink_seconds = 0.0
    if not args.skip_splink and splink_events > 0:
        subset = dataset.records[:splink_events]
        table = splink_input(subset, types)
        runs = []
        for _ in range(args.repeats):
            runs.append(splink_run(subset, types, table=table))
            splink_clustering = runs[-1].clusters  # only the last run's mapping is kept
            if len(runs) < args.repeats:
                runs[-1].clusters = {}
        seconds = splink_seconds = statistics.median(r.seconds for r in runs)
        if splink_events == args.events:
            subset_reference, subset_truth = reference, truth
        else:
            subset_reference = connected_components(subset, types)
            subset_truth = {r.event_id: r.person for r in subset}
        assert splink_clustering is not None
        equal = same_partition(splink_clustering, subset_reference)
        splink = {
            "events": splink_events,
            "seconds": round(seconds, 3),
            "seconds_all": [round(r.seconds, 3) for r in runs],
            "records_per_second": round(splink_events / seconds),
            "cpu_seconds": round(statistics.median(r.cpu_seconds for r in runs), 3),
            "setup_seconds": round(runs[-1].setup_seconds, 3),
            "pairs": runs[-1].pairs,
            "duckdb_threads": runs[-1].threads,
            "equals_connected_components": equal,
            **cluster_metrics(splink_clustering, subset_truth),
        }
        results["splink"] = splink
        _line(f"Splink deterministic link + cluster, {splink_events:,} events", f"{seconds:.2f} s")
        _line("Splink records/s", f"{splink['records_per_second']:,}")
        _line(
            f"Splink CPU seconds ({splink['duckdb_threads']} DuckDB threads)",
            f"{splink['cpu_seconds']:.2f} s",
        )
        _line("Splink pairs from the blocking rules", f"{splink['pairs']:,}")
        _line("splink == connected components", str(equal))
        _metrics_lines("Splink", splink)
        if not equal:
            print("  WARNING: Splink's clusters differ from the union-find reference", file=sys.stderr)

    onefold = run_onefold(dataset, args)
    results["onefold"] = {k: v for k, v in onefold.items() if not isinstance(v, Mapping)}
    for key, value in onefold.items():
        if key == "clusters" and isinstance(value, Mapping):
            metrics = cluster_metrics(value, truth)
            results["onefold"]["metrics"] = metrics
            results["onefold"]["equals_connected_components"] = same_partition(value, reference)
            _metrics_lines("Onefold", metrics)
            _line("onefold == connected components", str(results["onefold"]["equals_connected_components"]))
            if splink is not None and splink_events == args.events and splink_clustering is not None:
                results["onefold"]["equals_splink"] = same_partition(value, splink_clustering)
                _line("onefold == splink", str(results["onefold"]["equals_splink"]))
        elif isinstance(value, float):
            _line(f"Onefold {key}", f"{value:,.3f}")
        elif isinstance(value, int):
            _line(f"Onefold {key}", f"{value:,}")
        else:
            _line(f"Onefold {key}", str(value))
    rebuild = onefold.get("rebuild_seconds")
    if splink is not None and isinstance(rebuild, int | float) and rebuild > 0:
        if splink_events == args.events:
            ratio = splink_seconds / rebuild
            label = "ratio splink seconds / onefold rebuild seconds"
        else:  # Splink ran on a prefix only: compare rates instead
            ratio = (args.events / rebuild) / (splink_events / splink_seconds)
            label = f"ratio rebuild rate / splink rate (splink on {splink_events:,})"
        results["rebuild_ratio_vs_splink"] = round(ratio, 3)
        _line(label, f"{ratio:.2f}x (target >= {TARGETS['rebuild_ratio_vs_splink']})")
    results["targets"] = TARGETS
    if args.json:
        print(json.dumps(results, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
