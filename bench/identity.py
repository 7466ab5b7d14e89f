"""Identity resolution benchmark: synthetic events with a known true person each, resolved into
clusters by deterministic identifier matching; Splink (DuckDB backend) with the equivalent
deterministic rules on the same data in the same run; precision / recall of the clusters against
the truth.

    python bench/identity.py [--events N] [--splink-events N] [--repeats R] [--seed S]
                             [--rules both|unlimited|default] [--publish atomic|async]
                             [--latency-seconds S] [--projection-rebuild] [--workers N] [--json]
    onefold bench identity --json [--workers N]

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
- Onefold (`run_onefold`): the data set resolved by a real identity service, end to end through its
  ingest subscriber (below).

Onefold, per rules mode. A real nats-server (JetStream, `sync_interval: always`) and a real identity
service process (`python -m onefold.identity`, SQLite in a temporary data dir, a key file, a
credential store holding an admin, a profiles:read and a service credential). ONEFOLD_INGEST is
created before the service starts, with the relay's own helper (`ensure_service_stream`).

The events travel as ingest's relay publishes them: sealed. Before anything is timed, the records
are appended (batches of 5000) to a real ingest EventStore in the bench process (`IngestLog`: a
SQLite file in the temporary dir, the ingest event registry, a key-encryption key of its own),
each as the EventAccepted the ingest service appends: an identify call for a record with an email
or phone (traits.email / traits.phone), a track call otherwise; user_id and anonymous_id as
themselves, device_id as context.device.id, message id = record id; stream, subject (the person:
`<ws>:u:<HMAC of user_id>`, else the anonymous id's, from ingest's `subjects.person`), blind
indexes and partition key as ingest computes them. The store seals the personal fields with the
subject's data key and chooses the event ids (UUIDs; `record_of` maps them back to the records).
The log is then read back as the relay does: `to_envelope(decrypt=False)`, Nats-Msg-Id = event id,
positions 1..N, subject `onefold.ingest.EventAccepted.<ws>.<partition>` from `event_subject`. The
identity service opens them with keys it asks for: the bench process serves the ingest log's
subject keys (`KeyServer`: a real GrpcServer with `keyaccess.registration`, checking credentials
against the identity data dir's credential store) and the service is started with
ONEFOLD_PEERS__INGEST = that server and ONEFOLD_AUTH__SERVICE_TOKEN = its service credential, as
`onefold up` wires the services. Its RemoteSubjectKeys caches the keys (5 minutes, 100,000
subjects), so a subject's key travels once per run unless the run outlasts that or has more
subjects (about 0.3 per event here: a person's events without a user_id have their cookie's
subject, so 1,000,000 events have about 290,000).

- resolve: from the first publish until the service's tracking row of upstream "ingest" reaches N
  (polled every 50 ms on a read-only connection), with a timeline (events resolved at each tenth of
  that time) and the identity process's CPU seconds over the phase, per event
  (`service_cpu_us_per_event`; it includes opening the sealed payloads). The cost of sealing on the
  producer's side, `key_server`: GetSubjectKeys calls, subjects asked for and keys served over the
  phase (`subjects` is how many subjects the log has), the lookups' wall and CPU seconds
  (`EventStore.data_keys`: query and unwrap), and the key server's whole CPU time (`cpu_seconds`,
  `cpu_us_per_event`: the bench process's CPU time outside its publishing thread and its progress
  watcher, i.e. gRPC, credential checks and lookups); `calls_total` / `keys_served_total` include
  the latency phase. Publishing
  (`--publish`): `atomic` (default) sends what ingest's relay sends, atomic JetStream batches of
  1000 (one acknowledgement and one fsync per batch, the next after the ack); `async` uses
  `js.publish_async`, pipelined with up to 20,000 unacknowledged. Either way everything is
  published before the consumer catches up, so the publish time (first publish to last
  acknowledgement) is the raw JetStream baseline of the same envelopes in the same run. With
  `async` and `sync_interval: always` every message is its own fsync (about 1,000-4,000/s here) and
  the consumer gets almost nothing delivered until the publishing ends (the timeline shows it), so
  the end-to-end figure then measures the publisher;
- clusters: each EventResolved (its event_id is the ingest event id of a record) goes with the
  live profile holding its first key (`identity_identifiers`), scored like Splink's; link refusals
  (LinkRefused, by type and reason), profiles, merges counted from the log;
- rebuild: the graph events (ProfileCreated, IdentifierLinked, ProfilesMerged, ProfileUnmerged,
  ProfileProtectionSet, ProfileErased; not EventResolved) read with plain SQL in position order,
  each payload parsed as its message (the public fields, keys included, need no decryption) and
  folded into a fresh IdentityGraph as `GraphFold` does; checked equal to the live read model.
  Compared with Splink's link + cluster. `--projection-rebuild` also times
  `Projector.rebuild()` of the SQL read model on a copy of the database (it decrypts every event:
  minutes for large runs, so off by default);
- latency (`--latency-seconds`, 5): once the service is idle again, 200 GetProfile calls by
  identifier one at a time (service time), then GetProfile by a random user_id or email at
  `--get-profile-rate` (500/s) on a fixed schedule (open loop, profiles:read credential); then
  `--paced-rate` (200/s) new events of the same people published on a fixed schedule: per event,
  publish -> its EventResolved's recorded_at (stamped when its batch is appended) and publish -> the
  tracking row covering it became visible (committed; polled every 2 ms); then GetProfile at
  `--get-profile-rate` again while `--load-rate` (1000/s) further new events are published on a
  fixed schedule for the service to resolve meanwhile (`get_profile_under_load`: reads under
  writes). Each GetProfile phase reports the identity process's CPU over it per call answered
  (`service_cpu_us_per_call`, warm-up calls included); the phase under load its CPU in all
  (`service_cpu_seconds`) and how long the events took to resolve. With `--read-replicas N`, N
  more identity processes on the same database (not leading: they only answer gRPC, as a
  deployment's replicas do) answer every GetProfile instead, and the CPU figures are of all the
  identity processes. Measured once: in the default-rules run when both modes run;
- memory: the identity process's VmHWM (peak RSS) at the end;
- workers (`--workers N`, default 1): with N > 1 each rules mode first resolves the data set with N
  identity processes on one database (`with_workers` in the mode's figures): each started once the
  previous is SERVING (two creating the SQLite schema at once can fail), all with
  ONEFOLD_EVENTLOG__WORKERS=N and the nats-server's authorization rendered for their N consumers,
  as `onefold up --workers identity=N` runs them. The first process takes the partition groups of
  the slots still empty and hands each back within a lease round or two, so the publishing waits
  until every process holds its own group (the lease files' flocks, /proc/locks). The catch-up is
  done when every partition's tracking row ("ingest.p<k>") reaches its last published position;
  its CPU is summed over the N processes (`service_cpu_us_per_event`, and per process), peak RSS
  per process (`rss_peak_mb_per_process`); then counts, clusters and the graph rebuild as above,
  no latency phases. The mode then runs as it does with one worker (a fresh data dir, the same data
  set, every phase: all of the mode's other figures are of one worker): `workers_speedup` = the
  catch-up's rate with N / with one, `workers_identical` = both runs put the same records together
  (the partitions compared, not the random profile ids), `workers_agreement` = the pairwise
  precision / recall of the N workers' clusters against one worker's. Every batch is still applied
  under the log's one write lock (SQLite BEGIN IMMEDIATE): the workers parallelise fetching,
  checking and opening the events, not the folds. With the default rules the order in which events
  on different partitions are applied decides which links a limit refuses (one person's events
  without a user_id are on their cookie's subject's partition), and N workers interleave partitions
  in no fixed order, so the clusters can differ; with unlimited rules they cannot.

Rules (`--rules`, default both, one service each, in turn):

- unlimited: every identifier limit set to 1e9 through SetRules (admin) before publishing, so no
  link is ever refused and the clusters must be IDENTICAL to connected components (and Splink);
  this run's figures are the headline ones;
- default: the workspace defaults (user_id 1, every other type 5 per profile): heavy users' and
  shared devices' anonymous ids / devices hit the limits and are refused (counted), which splits
  what connected components merge: precision / recall against the truth.

Runtime: the identity service spends about 0.8-1.2 ms of CPU per event (mostly its SQL read model
and outbox relay), so it resolves at most about 1,000 events/s on one core, and 400-900/s on this
shared 2-core machine. `--events 20000` takes about 1.5-2 minutes; 1,000,000 events take 20-40
minutes per rules mode (both modes: about an hour; the bench process holds about 2.5 GB of
envelopes and clusters then). Building the sealed envelopes (untimed) takes about 150 µs per event,
so 2-3 minutes per rules mode for 1,000,000, and their ingest log about 0.9 GB of the temporary dir.
Use `--rules unlimited`, `--latency-seconds 0` or a smaller `--events` for a quick look.

Targets (identity issue, a 2-core machine): resolve >= 20,000 events/s through the consumer, i.e.
1,000,000 events carrying 3,000,000 identifiers in <= 60 s end to end; Onefold's clusters identical
to Splink's (unlimited rules); Onefold's rebuild at least as fast as Splink's link + cluster (splink
seconds / rebuild seconds >= 1.0); GetProfile p99 <= 10 ms at 500 requests/s, idle and while
resolving 1,000 events/s (`get_profile_under_load_p99_ms`); resolve-and-apply
(publish -> committed) p99 <= 5 ms; with `--workers N` > 1, the catch-up's rate with N identity
processes >= 1.6 x its rate with one (`workers_speedup`, the target for 1 -> 2 workers) with
identical clusters (`workers_identical`). `met` in the JSON says which were met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
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
from typing import TYPE_CHECKING, Any, NamedTuple, cast

if TYPE_CHECKING:
    from onefold.eventlog import EventStore
    from onefold.platform.nats_server import NatsServerProcess
    from onefold.testing.processes import ServiceProcess

IDENTIFIER_TYPES: tuple[str, ...] = ("user_id", "anonymous_id", "email", "phone", "device_id")
TARGETS = {
    "events_per_second": 20_000,
    "resolve_seconds": 60.0,  # for 1,000,000 events
    "rebuild_ratio_vs_splink": 1.0,
    "get_profile_p99_ms": 10.0,
    "resolve_p99_ms": 5.0,
}
# With --workers N > 1: the catch-up's throughput with N identity processes over one's, same run
WORKERS_SPEEDUP_TARGET = 1.6

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


# Mobile prefixes that libphonenumber (the identity service's normaliser) accepts as valid, and US
# area codes in service: every generated number must normalise to itself, or the service would
# report it invalid and never link it (and its clusters would differ from the reference's).
CN_MOBILE = ("133", "135", "136", "137", "138", "139", "150", "151", "158", "159", "177", "180", "186", "187", "188", "189")  # fmt: skip
DE_MOBILE = ("151", "152", "157", "160", "162", "170", "171", "172", "173", "174", "175", "176", "177", "178", "179")  # fmt: skip
US_AREAS = ("212", "415", "312", "617", "206", "303", "512", "404", "305", "702", "213", "646", "718", "818", "917", "510", "408", "650", "202", "214")  # fmt: skip


def _phone(pid: int, rng: random.Random) -> str:
    """A unique, valid E.164 number per person: China mobile, German mobile or US, by a bijective
    scramble of the person id."""
    scrambled = (pid * 387_420_489 + 12_345) % 100_000_000  # 387420489 = 3**18, coprime to 10**8
    country = rng.random()
    if country < 0.45:
        return f"+86{CN_MOBILE[int(rng.random() * len(CN_MOBILE))]}{scrambled:08d}"
    if country < 0.8:
        return f"+49{DE_MOBILE[int(rng.random() * len(DE_MOBILE))]}{scrambled:08d}"
    # US: 7 local digits whose exchange must start with 2-9; a 0 or 1 moves to a second area code
    local = scrambled % 10_000_000
    top = local // 1_000_000
    moved = top < 2
    area = US_AREAS[scrambled // 10_000_000 * 2 + moved]
    return f"+1{area}{top + 2 if moved else top}{local % 1_000_000:06d}"


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

WORKSPACE = "bench"
SOURCE_ID = "bench-source"
UPSTREAM = "ingest"  # the identity service's subscriber: tracking row "ingest", consumer identity__ingest
UNLIMITED = 1_000_000_000  # an identifier limit no profile of the benchmark reaches
ACCEPTED = "onefold.ingest.v1.EventAccepted"
RESOLVED = "onefold.identity.v1.EventResolved"
REFUSED = "onefold.identity.v1.LinkRefused"
CREATED = "onefold.identity.v1.ProfileCreated"
LINKED = "onefold.identity.v1.IdentifierLinked"
MERGED = "onefold.identity.v1.ProfilesMerged"
# The events an identity graph is folded from (EventResolved / TraitsUpdated / rules are not graph).
GRAPH_TYPES = (
    CREATED,
    LINKED,
    MERGED,
    "onefold.identity.v1.ProfileUnmerged",
    "onefold.identity.v1.ProfileProtectionSet",
    "onefold.identity.v1.ProfileErased",
)
RULE_MODES = ("unlimited", "default")
SEQUENTIAL_CALLS = 200
WARM_UP_CALLS = 20  # GetProfile calls before a timed phase


def _option(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


APPEND_BATCH = 5000  # events per ingest log transaction (the ingest service's largest commit group)


class Outgoing(NamedTuple):
    subject: str
    body: bytes  # the EventEnvelope exactly as ingest's relay publishes it (personal data sealed)
    event_id: str  # also the Nats-Msg-Id
    position: int


class MeteredKeys:
    """The ingest log's subject keys as the key server looks them up (`EventStore.data_keys`: one
    query and one unwrap per subject), counted: calls, subjects asked for, keys given, wall and
    CPU seconds of the lookups (the worker thread's own CPU time)."""

    def __init__(self, store: EventStore) -> None:
        import threading

        self.store = store
        self.calls = 0
        self.subjects = 0
        self.keys = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._lock = threading.Lock()

    def data_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        started, cpu_started = time.perf_counter(), time.thread_time()
        keys = self.store.data_keys(subjects)
        seconds, cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu_started
        with self._lock:
            self.calls += 1
            self.subjects += len(subjects)
            self.keys += len(keys)
            self.seconds += seconds
            self.cpu_seconds += cpu_seconds
        return keys

    def snapshot(self) -> tuple[int, int, int, float, float]:
        with self._lock:
            return self.calls, self.subjects, self.keys, self.seconds, self.cpu_seconds


class IngestLog:
    """The ingest service's side of the bus, in the bench process: a real ingest EventStore (SQLite
    file, the ingest event registry, its own key-encryption key) the records are appended to as the
    ingest service appends accepted events, read back and encoded as its relay publishes them, and
    the keys of its subjects served the way the ingest service serves them (see KeyServer)."""

    def __init__(self, directory: Any) -> None:
        from pathlib import Path

        from onefold.eventlog import EventStore
        from onefold.eventlog.cipher import KeyEncryptionKey
        from onefold.ingest.application.subjects import person
        from onefold.ingest.domain.events import REGISTRY

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.store = EventStore(
            f"sqlite:///{directory / 'ingest.db'}",
            service="ingest",
            registry=REGISTRY,
            keys=KeyEncryptionKey.generate(),
        )
        self.store.create_schema()
        # The subject (and blind indexes) of an event's person, as ingest computes them.
        self.person = functools.partial(person, self.store)
        self.record_of: dict[str, str] = {}  # ingest's event id -> the record's id
        self.subjects: set[str] = set()

    def append(self, records: Sequence[Record]) -> list[Outgoing]:
        """Append the records as ingest accepts them and return them as its relay publishes them.

        Each record becomes the EventAccepted of an identify call when it has an email or phone
        (traits.email / traits.phone), of a track call otherwise; user_id and anonymous_id as
        themselves, device_id as context.device.id, the message id the record's id. Its stream
        (`ingest:<subject>`), subject (the person: `<ws>:u:<HMAC of user_id>`, else the anonymous
        id's), partition key and blind indexes are ingest's own; the store seals the personal
        fields with the subject's data key and chooses the event id (a UUID), so `record_of` maps
        it back to the record. Appended in batches of APPEND_BATCH, then read back in log order.
        """
        from datetime import UTC, datetime

        from onefold.contracts.ingest.v1 import ingest_pb2
        from onefold.eventlog import NewEvent
        from onefold.eventlog.streams import PARTITION_KEY

        identify, track = ingest_pb2.EVENT_TYPE_IDENTIFY, ingest_pb2.EVENT_TYPE_TRACK
        person = self.person
        after = self.store.head_position()
        base = int(time.time()) - 86_400
        for start in range(0, len(records), APPEND_BATCH):
            batch = records[start : start + APPEND_BATCH]
            new_events = []
            for offset, record in enumerate(batch, start):
                ids = dict(record.identifiers)
                user_id, anonymous_id = ids.get("user_id", ""), ids.get("anonymous_id", "")
                email, phone, device = ids.get("email"), ids.get("phone"), ids.get("device_id")
                event = ingest_pb2.TrackingEvent(
                    message_id=record.event_id,
                    user_id=user_id,
                    anonymous_id=anonymous_id,
                    source_id=SOURCE_ID,
                )
                if email or phone:
                    event.type = identify
                    traits = event.traits.fields
                    if email:
                        traits["email"].string_value = email
                    if phone:
                        traits["phone"].string_value = phone
                else:
                    event.type = track
                    event.event = "Product Viewed"
                    event.properties.fields["product_id"].string_value = f"sku-{offset % 5000}"
                context = event.context.fields
                context["library"].struct_value.fields["name"].string_value = "onefold-bench"
                if device:
                    context["device"].struct_value.fields["id"].string_value = device
                event.timestamp.seconds = base + offset // 1000
                event.timestamp.nanos = offset % 1000 * 1_000_000
                subject, user_index, anonymous_index = person(WORKSPACE, user_id, anonymous_id)
                self.subjects.add(subject)
                accepted = ingest_pb2.EventAccepted(
                    event=event,
                    workspace=WORKSPACE,
                    source_id=SOURCE_ID,
                    user_id_index=user_index,
                    anonymous_id_index=anonymous_index,
                )
                new_events.append(
                    NewEvent(
                        stream_id=f"ingest:{subject}",
                        message=accepted,
                        subject=subject,
                        workspace=WORKSPACE,
                        occurred_at=datetime.fromtimestamp(event.timestamp.ToMicroseconds() / 1e6, UTC),
                        metadata={PARTITION_KEY: subject},
                    )
                )
            for record, recorded in zip(batch, self.store.append(new_events), strict=True):
                self.record_of[recorded.event_id] = record.event_id
        return self.outgoing(after)

    def outgoing(self, after_position: int) -> list[Outgoing]:
        """The log after `after_position` as the relay publishes it (OutboxRelay._prepare):
        `to_envelope(decrypt=False)`, on the subject `event_subject` gives it."""
        from onefold.eventlog.relay import MAX_ATOMIC_BATCH
        from onefold.eventlog.streams import StreamSettings, event_subject

        partitions = StreamSettings().partitions
        out: list[Outgoing] = []
        while events := self.store.read(after_position=after_position, limit=MAX_ATOMIC_BATCH):
            for event in events:
                envelope = self.store.to_envelope(event, decrypt=False)
                subject = event_subject(
                    UPSTREAM,
                    event_type=event.type,
                    workspace=event.workspace,
                    stream_id=event.stream_id,
                    metadata=event.metadata or {},
                    partitions=partitions,
                )
                out.append(Outgoing(subject, envelope.SerializeToString(), event.event_id, event.position))
            after_position = events[-1].position
        return out

    def close(self) -> None:
        self.store.close()


class KeyServer:
    """The ingest service's SubjectKeyService for the IngestLog's subjects, served from a thread of
    the bench process: a real GrpcServer (authentication, scopes, error mapping) with
    `keyaccess.registration`, credentials checked against `credentials_url` (the identity service's
    credential store, where its service credential is issued). Lookups are counted (MeteredKeys)."""

    def __init__(self, store: EventStore, credentials_url: str) -> None:
        import threading

        from onefold.platform.ports import free_port

        self.keys = MeteredKeys(store)
        self.credentials_url = credentials_url
        self.port = free_port()  # known before it serves: the identity service is told it at start
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="bench-key-server", daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self._failure is not None:
            raise RuntimeError(f"the bench's key server did not start: {self._failure or 'timed out'}")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as failure:
            self._failure = failure
            self._ready.set()

    async def _serve(self) -> None:
        from onefold.eventlog import keyaccess
        from onefold.platform.auth import CredentialStore
        from onefold.platform.config import GrpcSettings
        from onefold.platform.grpc_server import GrpcServer

        credentials = CredentialStore(self.credentials_url, cache_seconds=60)
        # MeteredKeys is all the servicer uses of a store (data_keys).
        registration = keyaccess.registration(cast("EventStore", self.keys))
        settings = GrpcSettings(port=self.port, grace_seconds=1.0)
        server = GrpcServer("ingest", settings, credentials, [registration])
        try:
            await server.start()
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await self._stopping.wait()
        finally:
            await server.stop()
            credentials.engine.dispose()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread.is_alive():
            self._thread.join(30)


class ReadOnlyLog:
    """A read-only SQLite connection to the identity service's database (never writes)."""

    def __init__(self, path: Any) -> None:
        import sqlite3

        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def tracking(self) -> int:
        row = self.connection.execute(
            "SELECT position FROM tracking WHERE upstream = ?", (UPSTREAM,)
        ).fetchone()
        return int(row[0]) if row else 0

    def applied(self, positions_by_partition: Mapping[int, Sequence[int]]) -> int:
        """How many of these positions (sorted, per partition) are applied: worker processes keep a
        tracking row per partition ("ingest.p3"); what is applied of a partition is the larger of its
        row and the whole stream's ("ingest"), as the subscriber counts it."""
        import bisect

        rows = dict(
            self.connection.execute(
                "SELECT upstream, position FROM tracking WHERE upstream = ? OR upstream LIKE ?",
                (UPSTREAM, f"{UPSTREAM}.p%"),
            ).fetchall()
        )
        whole = rows.get(UPSTREAM, 0)
        return sum(
            bisect.bisect_right(positions, max(whole, rows.get(f"{UPSTREAM}.p{partition}", 0)))
            for partition, positions in positions_by_partition.items()
        )

    def count(self, event_type: str) -> int:
        return int(
            self.connection.execute("SELECT count(*) FROM events WHERE type = ?", (event_type,)).fetchone()[0]
        )

    def head(self) -> int:
        return int(self.connection.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0])

    def rows(self, sql: str, *params: Any) -> Any:
        return self.connection.execute(sql, params)

    def close(self) -> None:
        self.connection.close()


class ProgressWatcher:
    """Polls the tracking row of upstream "ingest" from a thread: when each position became visible
    (committed), and when `target` was reached. With `positions_by_partition` (the published
    positions of each partition, for worker processes' per-partition rows) "position" is how many of
    them are applied instead."""

    def __init__(
        self,
        path: Any,
        interval: float = 0.05,
        positions_by_partition: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        import threading

        self.path, self.interval = path, interval
        self.positions_by_partition = positions_by_partition
        self.target = 0
        self.position = 0
        self.reached = threading.Event()
        self.reached_at = 0.0  # perf_counter
        self.visible: list[tuple[float, int]] = []  # (time.time(), position) at each change
        self.last_change = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def expect(self, target: int) -> None:
        self.target = target
        self.reached.clear()
        if self.position >= target:
            self.reached_at = time.perf_counter()
            self.reached.set()

    def _run(self) -> None:
        log = ReadOnlyLog(self.path)
        try:
            while not self._stop.is_set():
                if self.positions_by_partition is None:
                    position = log.tracking()
                else:
                    position = log.applied(self.positions_by_partition)
                if position != self.position:
                    self.position = position
                    self.last_change = time.perf_counter()
                    self.visible.append((time.time(), position))
                    if self.target and position >= self.target and not self.reached.is_set():
                        self.reached_at = time.perf_counter()
                        self.reached.set()
                self._stop.wait(self.interval)
        finally:
            log.close()

    def cpu_seconds(self) -> float:
        """This polling thread's CPU time so far."""
        assert self._thread.ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    def wait(self, stall_seconds: float, what: str, log_path: Any) -> None:
        while not self.reached.wait(1.0):
            if time.perf_counter() - self.last_change > stall_seconds:
                tail = log_path.read_text()[-3000:] if log_path.exists() else ""
                raise RuntimeError(
                    f"{what}: the identity service stopped at position {self.position} of {self.target} "
                    f"for {stall_seconds:.0f} s; its log ends:\n{tail}"
                )

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _summary(latencies: Sequence[float], **extra: Any) -> dict[str, Any]:
    return {
        "count": len(latencies),
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
        **extra,
    }


def _cpu_seconds(pid: int | None) -> float:
    from pathlib import Path

    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(pid: int, timeout: float = 300.0) -> float:
    """Wait until the process uses under 10% of a core (its relay done); returns the seconds waited."""
    started = time.perf_counter()
    previous = _cpu_seconds(pid)
    while time.perf_counter() - started < timeout:
        time.sleep(0.5)
        current = _cpu_seconds(pid)
        if current - previous < 0.05:
            break
        previous = current
    return round(time.perf_counter() - started, 1)


def _timeline(visible: Sequence[tuple[float, int]], begin: float, seconds: float) -> list[list[float]]:
    """[seconds since the first publish, events resolved] at tenths of the resolve time."""
    import bisect

    times = [moment for moment, _ in visible]
    points = []
    for tenth in range(1, 11):
        at = bisect.bisect_right(times, begin + seconds * tenth / 10) - 1
        points.append([round(seconds * tenth / 10, 1), visible[at][1] if at >= 0 else 0])
    return points


def _flock_holders() -> dict[int, int]:
    """inode -> pid of every flock held on this machine (/proc/locks)."""
    from pathlib import Path

    holders = {}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK":  # a waiter's line reads "N: -> FLOCK ..."
            holders[int(fields[5].rsplit(":", 1)[1])] = int(fields[4])
    return holders


def _memory_kb(pid: int) -> dict[str, int]:
    from pathlib import Path

    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0])
    return values


class IdentitySystem:
    """A real nats-server and a real identity service process (SQLite in a temporary data dir, a key
    file, a credential store holding the bench's credentials and a service credential), with
    ONEFOLD_INGEST created the way the ingest relay creates it, and the ingest log's key server
    (KeyServer) the service asks for subject keys (ONEFOLD_PEERS__INGEST, ONEFOLD_AUTH__SERVICE_TOKEN).

    With `workers` > 1, that many identity processes on the same database share the ingest
    subscription by partition group (ONEFOLD_EVENTLOG__WORKERS, as `onefold up --workers` runs them),
    the nats-server's authorization rendered for their consumers."""

    def __init__(self, directory: Any, ingest: IngestLog, workers: int = 1) -> None:
        from pathlib import Path

        from onefold.platform.auth import CredentialStore
        from onefold.platform.nats_server import NatsServerProcess
        from onefold.testing.processes import ServiceProcess, peer_env

        directory = Path(directory)
        self.workers = workers
        self.nats = NatsServerProcess(directory / "nats", workers={"identity": workers})
        self.data_dir = directory / "identity"
        self.data_dir.mkdir(parents=True)
        credentials_url = f"sqlite:///{self.data_dir / 'auth.db'}"
        credentials = CredentialStore(credentials_url, cache_seconds=0)
        credentials.create_schema()
        self.admin_token = credentials.issue(WORKSPACE, ["admin"], name="bench admin").token
        self.read_token = credentials.issue(WORKSPACE, ["profiles:read"], name="bench reader").token
        credentials.engine.dispose()
        self.key_server = KeyServer(ingest.store, credentials_url)
        self.service = ServiceProcess(
            name="identity",
            data_dir=self.data_dir,
            nats=self.nats,
            extra_env={
                "ONEFOLD_AUTH__CACHE_SECONDS": "60",
                "ONEFOLD_TELEMETRY__LOG_LEVEL": "WARNING",
                "ONEFOLD_EVENTLOG__WORKERS": str(workers),
                **peer_env(self.data_dir, []),  # the service credential (workspace *, scope service)
            },
        )
        self.db_path = self.data_dir / "identity.db"
        self.key_file = self.data_dir / "keys" / "identity.kek"
        self.replicas: list[ServiceProcess] = []
        self.more_workers: list[ServiceProcess] = []  # the worker processes after the first

    def _same_database(self, data_dir: Any) -> ServiceProcess:
        """Another identity process on the service's database, key and credential store."""
        from onefold.testing.processes import ServiceProcess

        return ServiceProcess(
            name="identity",
            data_dir=data_dir,
            nats=self.nats,
            extra_env={
                **self.service.extra_env,
                "ONEFOLD_DATABASE__URL": f"sqlite:///{self.db_path}",
                "ONEFOLD_AUTH__DATABASE_URL": f"sqlite:///{self.data_dir / 'auth.db'}",
                "ONEFOLD_EVENTLOG__KEY_FILE": str(self.key_file),
            },
        )

    def start_read_replicas(self, count: int) -> None:
        """`count` more identity processes on the same database, key and credential store: the
        first process holds the leader lease (it resolves), these only answer gRPC, as replicas
        of a deployment do."""
        for number in range(count):
            replica = self._same_database(self.data_dir / f"replica-{number}")
            replica.start(timeout=60)
            self.replicas.append(replica)

    @property
    def read_targets(self) -> list[str]:
        """Where GetProfile goes: the read replicas when there are any, else the one service."""
        return [replica.target for replica in self.replicas] or [self.service.target]

    @property
    def processes(self) -> list[ServiceProcess]:
        """Every identity process: the service, its other workers, its read replicas."""
        return [self.service, *self.more_workers, *self.replicas]

    @property
    def pids(self) -> list[int]:
        return [process.process.pid for process in self.processes if process.process]

    @property
    def worker_pids(self) -> list[int]:
        """The processes consuming the ingest subscription (the first one alone with one worker)."""
        return [process.process.pid for process in (self.service, *self.more_workers) if process.process]

    def cpu_seconds(self) -> float:
        """CPU seconds of the identity processes: the service, its workers and its read replicas."""
        return sum(_cpu_seconds(pid) for pid in self.pids)

    def start(self) -> None:
        self.nats.start()
        try:
            # The stream first, as ingest's relay makes it: the subscriber then binds at once
            # instead of backing off until the stream exists.
            asyncio.run(self._ensure_streams())
            self.service.extra_env["ONEFOLD_PEERS__INGEST"] = self.key_server.target
            self.service.start(timeout=60)
            # One at a time, each once the previous is SERVING: two processes creating the SQLite
            # schema at once can fail with "database is locked".
            for number in range(1, self.workers):
                worker = self._same_database(self.data_dir / f"worker-{number}")
                self.more_workers.append(worker)
                worker.start(timeout=60)
            # After the fork: the service is not asked for keys before events arrive, and a fork
            # while gRPC threads run here only makes gRPC warn that it skips its fork handlers.
            self.key_server.start()
            asyncio.run(self._wait_for_consumer())
            if self.workers > 1:
                self._wait_for_worker_groups()
        except BaseException:
            self.stop()
            raise

    async def _ensure_streams(self) -> None:
        import nats

        from onefold.eventlog.streams import StreamSettings, ensure_dlq_stream, ensure_service_stream

        connection = await nats.connect(self.nats.url, **self.nats.connect_options(UPSTREAM))
        try:
            js = connection.jetstream()
            await ensure_service_stream(js, UPSTREAM, StreamSettings())
            await ensure_dlq_stream(js, StreamSettings())
        finally:
            await connection.close()

    async def _wait_for_consumer(self, within: float = 30.0) -> None:
        import nats
        from nats.js.errors import NotFoundError

        from onefold.eventlog.streams import consumer_name, stream_name
        from onefold.eventlog.workers import partition_groups

        if self.workers == 1:
            names = [consumer_name("identity", UPSTREAM)]
        else:  # one consumer per partition group
            names = [
                consumer_name("identity", UPSTREAM, group)
                for group in partition_groups(self.nats.partitions, self.workers)
            ]
        connection = await nats.connect(self.nats.url, **self.nats.connect_options("identity"))
        try:
            js = connection.jetstream()
            deadline = time.monotonic() + within
            for name in names:
                while True:
                    try:
                        await js.consumer_info(stream_name(UPSTREAM), name)
                        break
                    except NotFoundError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(
                                f"the identity service's consumer {name} never appeared"
                            ) from None
                        await asyncio.sleep(0.1)
        finally:
            await connection.close()

    def _wait_for_worker_groups(self, within: float = 30.0) -> None:
        """Until the process in each worker slot holds its own partition group. The first process
        takes the groups of the slots still empty and hands each back within a lease round or two
        once its process has started; measuring before that would time one process doing more."""
        deadline = time.monotonic() + within
        while True:
            holders = _flock_holders()
            slots = [self._lease_holder(f"worker_{slot}", holders) for slot in range(self.workers)]
            groups = [self._lease_holder(f"group_{group}", holders) for group in range(self.workers)]
            if slots == groups and sorted(p for p in slots if p) == sorted(self.worker_pids):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the identity workers never held their own partition groups: slots held by "
                    f"{slots}, groups by {groups}, workers {self.worker_pids}"
                )
            time.sleep(0.2)

    def _lease_holder(self, lease: str, holders: Mapping[int, int]) -> int | None:
        """The pid holding the service's lease `lease` ("worker_0", "group_1"): a SQLite database's
        lease is an exclusive flock on a file beside it (eventlog/lease.py)."""
        path = self.db_path.parent / f"{self.db_path.name}.identity_{lease}.leader"
        return holders.get(path.stat().st_ino) if path.exists() else None

    def stop(self) -> None:
        try:
            for process in reversed(self.processes):
                process.stop()
        finally:
            try:
                self.key_server.stop()
            finally:
                self.nats.stop()


async def _set_unlimited_rules(target: str, token: str) -> dict[str, int]:
    from onefold.contracts.identity.v1 import identity_pb2 as ipb
    from onefold.contracts.identity.v1 import identity_pb2_grpc
    from onefold.identity.domain.identifiers import BUILT_IN_TYPES
    from onefold.platform.client import authenticated_channel

    rules = ipb.IdentityRules(
        identifiers=[ipb.IdentifierRule(type=t, limit=UNLIMITED) for t in BUILT_IN_TYPES]
    )
    async with authenticated_channel(target, token) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        await stub.SetRules(ipb.SetRulesRequest(rules=rules), timeout=30)
        applied = await stub.GetRules(ipb.GetRulesRequest(), timeout=30)
    return {rule.type: rule.limit for rule in applied.identifiers}


async def _publish(
    nats_server: NatsServerProcess, batch: Sequence[Outgoing], max_pending: int = 20_000
) -> float:
    """js.publish_async of every envelope (Nats-Msg-Id = event id), pipelined; seconds until the
    last acknowledgement."""
    import nats

    # The bench plays ingest: its NATS user may publish exactly these subjects.
    connection = await nats.connect(nats_server.url, **nats_server.connect_options(UPSTREAM))
    try:
        js = connection.jetstream(publish_async_max_pending=max_pending)
        started = time.perf_counter()
        futures = [
            await js.publish_async(out.subject, out.body, headers={"Nats-Msg-Id": out.event_id})
            for out in batch
        ]
        acks = await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    if len(acks) != len(batch) or any(ack.duplicate for ack in acks):
        raise RuntimeError("JetStream did not store every envelope exactly once")
    return seconds


async def _publish_atomic(nats_server: NatsServerProcess, batch: Sequence[Outgoing]) -> float:
    """The relay's normal path: atomic JetStream batches of up to 1000 envelopes (one
    acknowledgement and one fsync per batch), the next sent once this one is acknowledged."""
    import uuid

    import nats

    from onefold.eventlog.relay import BATCH_COMMIT, BATCH_ID, BATCH_SEQUENCE, MAX_ATOMIC_BATCH, MSG_ID

    # The bench plays ingest: its NATS user may publish exactly these subjects.
    connection = await nats.connect(nats_server.url, **nats_server.connect_options(UPSTREAM))
    try:
        started = time.perf_counter()
        for start in range(0, len(batch), MAX_ATOMIC_BATCH):
            chunk = batch[start : start + MAX_ATOMIC_BATCH]
            batch_id = uuid.uuid4().hex
            for sequence, out in enumerate(chunk, 1):
                headers = {MSG_ID: out.event_id, BATCH_ID: batch_id, BATCH_SEQUENCE: str(sequence)}
                if sequence < len(chunk):
                    await connection.publish(out.subject, out.body, headers=headers)
                    continue
                headers[BATCH_COMMIT] = "1"
                reply = await connection.request(out.subject, out.body, timeout=30, headers=headers)
                answer = json.loads(reply.data)
                if answer.get("error"):
                    raise RuntimeError(f"JetStream refused an atomic batch: {answer}")
        return time.perf_counter() - started
    finally:
        await connection.close()


async def _publish_paced(
    nats_server: NatsServerProcess, batch: Sequence[Outgoing], rate: float
) -> dict[str, float]:
    """Publish one envelope every 1/rate s (open loop); event id -> time.time() just before its publish."""
    import nats

    # The bench plays ingest: its NATS user may publish exactly these subjects.
    connection = await nats.connect(nats_server.url, **nats_server.connect_options(UPSTREAM))
    sent: dict[str, float] = {}
    try:
        js = connection.jetstream(publish_async_max_pending=10_000)
        futures = []
        begin = time.perf_counter()
        for i, out in enumerate(batch):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[out.event_id] = time.time()
            futures.append(
                await js.publish_async(out.subject, out.body, headers={"Nats-Msg-Id": out.event_id})
            )
        await asyncio.gather(*futures)
    finally:
        await connection.close()
    return sent


async def _get_profile_latency(
    targets: Sequence[str], token: str, identifiers: Sequence[tuple[str, str]], rate: float, seconds: float
) -> dict[str, Any]:
    """GetProfile by identifier, started on a fixed schedule (open loop), spread over `targets` in
    turn; latency from start to answer."""
    import grpc

    from onefold.contracts.identity.v1 import identity_pb2 as ipb
    from onefold.contracts.identity.v1 import identity_pb2_grpc
    from onefold.platform.client import authenticated_channel

    requests = [
        ipb.GetProfileRequest(profile=ipb.ProfileRef(identifier=ipb.Identifier(type=t, value=v)))
        for t, v in identifiers
    ]
    latencies: list[float] = []
    sizes: list[int] = []
    outcome: Counter[str] = Counter()
    async with contextlib.AsyncExitStack() as channels:
        stubs = [
            identity_pb2_grpc.IdentityServiceStub(
                await channels.enter_async_context(authenticated_channel(target, token))
            )
            for target in targets
        ]
        for i, request in enumerate(requests[:WARM_UP_CALLS]):  # channels, credential caches, code paths
            with contextlib.suppress(grpc.RpcError):
                await stubs[i % len(stubs)].GetProfile(request, timeout=30)

        async def one(request: Any, stub: Any) -> None:
            started = time.perf_counter()
            try:
                profile = await stub.GetProfile(request, timeout=30)
            except grpc.RpcError as error:
                outcome[error.code().name] += 1
                if error.code() == grpc.StatusCode.NOT_FOUND:  # an answer too (a refused identifier)
                    latencies.append((time.perf_counter() - started) * 1000)
                return
            latencies.append((time.perf_counter() - started) * 1000)
            outcome["OK"] += 1
            sizes.append(profile.event_count)

        total = int(rate * seconds)
        tasks = []
        begin = time.perf_counter()
        for i in range(total):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = requests[WARM_UP_CALLS + i % (len(requests) - WARM_UP_CALLS)]
            tasks.append(asyncio.create_task(one(request, stubs[i % len(stubs)])))
        await asyncio.gather(*tasks)
    failures = sum(n for code, n in outcome.items() if code not in ("OK", "NOT_FOUND"))
    return _summary(
        latencies,
        rate_per_s=rate,
        requests=total,
        warm_up_calls=WARM_UP_CALLS,
        failures=failures,
        outcomes=dict(outcome),
        mean_event_count=round(statistics.fmean(sizes), 1) if sizes else 0,
        max_event_count=max(sizes, default=0),
    )


async def _get_profile_sequential(
    target: str, token: str, identifiers: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """GetProfile by identifier one call at a time: the service time without queueing."""
    import grpc

    from onefold.contracts.identity.v1 import identity_pb2 as ipb
    from onefold.contracts.identity.v1 import identity_pb2_grpc
    from onefold.platform.client import authenticated_channel

    latencies: list[float] = []
    outcome: Counter[str] = Counter()
    async with authenticated_channel(target, token) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        for kind, value in identifiers:
            request = ipb.GetProfileRequest(
                profile=ipb.ProfileRef(identifier=ipb.Identifier(type=kind, value=value))
            )
            started = time.perf_counter()
            try:
                await stub.GetProfile(request, timeout=30)
                outcome["OK"] += 1
            except grpc.RpcError as error:
                outcome[error.code().name] += 1
            latencies.append((time.perf_counter() - started) * 1000)
    mean = statistics.fmean(latencies) if latencies else float("nan")
    return _summary(
        latencies,
        outcomes=dict(outcome),
        mean_ms=round(mean, 2),
        capacity_per_s=round(1000 / mean) if latencies else 0,
    )


def _add_cpu_per_call(figures: dict[str, Any], service_cpu: float) -> None:
    """The identity process's CPU over a GetProfile phase, per call answered (the service is idle
    otherwise: its relay has settled)."""
    calls = max(1, sum(figures["outcomes"].values()) + figures.get("warm_up_calls", 0))
    figures["service_cpu_seconds"] = round(service_cpu, 3)
    figures["service_cpu_us_per_call"] = round(service_cpu * 1e6 / calls, 1)


async def _get_profile_under_load(
    system: IdentitySystem,
    identifiers: Sequence[tuple[str, str]],
    rate: float,
    seconds: float,
    events: Sequence[Outgoing],
    event_rate: float,
) -> dict[str, Any]:
    """GetProfile at `rate` (open loop, as `_get_profile_latency`) while `events` are published at
    `event_rate` for the service to resolve meanwhile."""
    reads, sent = await asyncio.gather(
        _get_profile_latency(system.read_targets, system.read_token, identifiers, rate, seconds),
        _publish_paced(system.nats, events, event_rate),
    )
    reads["events_published"] = len(sent)
    reads["event_rate_per_s"] = (
        round(len(sent) / max(1e-9, max(sent.values()) - min(sent.values())), 1) if sent else 0
    )
    return reads


def read_clusters(log: ReadOnlyLog, record_of: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(record id -> live profile id, key -> live profile id): each EventResolved whose event id
    `record_of` maps to a record goes with the live profile holding its first identifier
    (EventResolved.keys, priority order)."""
    from onefold.contracts.identity.v1 import identity_pb2 as ipb

    owners = {
        key: profile
        for key, profile in log.rows(
            "SELECT key, profile_id FROM identity_identifiers WHERE workspace = ? AND NOT retired", WORKSPACE
        )
    }
    clusters: dict[str, str] = {}
    parse = ipb.EventResolved.FromString
    for (payload,) in log.rows("SELECT payload FROM events WHERE type = ?", RESOLVED):
        message = parse(payload)  # the public fields; the tracked event itself stays sealed
        record_id = record_of.get(message.event_id)
        if record_id is None:
            continue
        keys = message.keys
        owner = owners.get(keys[0]) if keys else None
        clusters[record_id] = owner if owner is not None else f"unresolved:{record_id}"
    return clusters, owners


class _Position(NamedTuple):
    position: int


def rebuild_graph(path: Any) -> tuple[float, Any, int]:
    """Fold the identity log's graph events into a fresh IdentityGraph: plain SQL on a read-only
    connection, in position order, each payload parsed as its message (public fields, no
    decryption), the common three applied as `GraphFold` does and the rest through `GraphFold`.
    Returns (seconds, graph, events folded)."""
    from onefold.contracts.identity.v1 import identity_pb2 as ipb
    from onefold.identity.domain.fold import GraphFold
    from onefold.identity.domain.graph import IdentityGraph
    from onefold.identity.domain.identifiers import default_rules, rules_from_proto

    log = ReadOnlyLog(path)
    try:
        row = log.rows("SELECT rules FROM identity_rules WHERE workspace = ?", WORKSPACE).fetchone()
        rules = rules_from_proto(ipb.IdentityRules.FromString(row[0])) if row else default_rules()
        other = {
            "onefold.identity.v1.ProfileUnmerged": ipb.ProfileUnmerged.FromString,
            "onefold.identity.v1.ProfileProtectionSet": ipb.ProfileProtectionSet.FromString,
            "onefold.identity.v1.ProfileErased": ipb.ProfileErased.FromString,
        }
        collecting = gc.isenabled()
        gc.disable()
        try:
            started = time.perf_counter()
            graph = IdentityGraph(rules)
            fold = GraphFold(graph).fold
            link, create, merge = graph.link, graph.create, graph.merge
            parse_linked = ipb.IdentifierLinked.FromString
            parse_created = ipb.ProfileCreated.FromString
            parse_merged = ipb.ProfilesMerged.FromString
            folded = 0
            placeholders = ",".join("?" * len(GRAPH_TYPES))
            cursor = log.rows(
                f"SELECT position, type, payload FROM events WHERE type IN ({placeholders}) ORDER BY position",
                *GRAPH_TYPES,
            )
            while rows := cursor.fetchmany(10_000):
                for position, event_type, payload in rows:
                    if event_type == LINKED:
                        linked = parse_linked(payload)
                        link(linked.profile_id, linked.key, linked.type)
                    elif event_type == CREATED:
                        create(parse_created(payload).profile_id, position)
                    elif event_type == MERGED:
                        merged = parse_merged(payload)
                        merge(merged.survivor_id, merged.merged_id)
                    else:
                        fold(_Position(position), other[event_type](payload))  # type: ignore[arg-type]
                folded += len(rows)
            seconds = time.perf_counter() - started
        finally:
            if collecting:
                gc.enable()
    finally:
        log.close()
    return seconds, graph, folded


def rebuild_projection(system: IdentitySystem, directory: Any) -> tuple[float, int]:
    """Projector(store, [IdentityProjection(store)]).rebuild() on a copy of the service's database (the
    read model's SQL tables folded again from the whole log, decrypting as the service does)."""
    import sqlite3
    from pathlib import Path

    from onefold.eventlog import EventStore
    from onefold.eventlog.cipher import KeyEncryptionKey
    from onefold.eventlog.projections import Projector
    from onefold.identity.adapters.read_model import IdentityProjection
    from onefold.identity.domain.events import REGISTRY
    from onefold.platform.database import create_engine

    copy = Path(directory) / "identity-copy.db"
    source = sqlite3.connect(f"file:{system.db_path}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    engine = create_engine(f"sqlite:///{copy}")
    store = EventStore(
        engine,
        service="identity",
        registry=REGISTRY,
        keys=KeyEncryptionKey.from_base64(system.key_file.read_text()),
    )
    try:
        started = time.perf_counter()
        projection = IdentityProjection(store)
        folded = Projector(store, [projection]).rebuild(projection)
        return time.perf_counter() - started, folded
    finally:
        store.close()
        engine.dispose()
        copy.unlink(missing_ok=True)


def _lookup_identifiers(dataset: Dataset, count: int, seed: int) -> list[tuple[str, str]]:
    """Random identifiers the data set has (user_ids and emails), for GetProfile."""
    rng = random.Random(seed)
    pool = sorted(
        {pair for r in dataset.records for pair in r.identifiers if pair[0] in ("user_id", "email")}
    )
    return [pool[int(rng.random() * len(pool))] for _ in range(count)] if pool else []


def _paced_latency(
    path: Any, head_before: int, sent: Mapping[str, float], visible: Sequence[tuple[float, int]]
) -> dict[str, Any]:
    """Per paced event: publish -> its EventResolved's recorded_at (stamped when the batch holding it
    is appended, after it was resolved; the commit follows), and publish -> the first poll that saw
    the tracking row at or past its position (committed and visible, within the 2 ms poll)."""
    import bisect

    from onefold.contracts.identity.v1 import identity_pb2 as ipb

    log = ReadOnlyLog(path)
    try:
        rows = list(
            log.rows(
                "SELECT recorded_at, payload FROM events WHERE type = ? AND position > ?",
                RESOLVED,
                head_before,
            )
        )
    finally:
        log.close()
    positions = [position for _, position in visible]
    recorded: list[float] = []
    committed: list[float] = []
    for recorded_us, payload in rows:
        message = ipb.EventResolved.FromString(payload)
        published = sent.get(message.event_id)
        if published is None:
            continue
        recorded.append((recorded_us / 1e6 - published) * 1000)
        at = bisect.bisect_left(positions, message.upstream_position)
        if at < len(visible):
            committed.append((visible[at][0] - published) * 1000)
    return {
        "rate_per_s": round(len(sent) / max(1e-9, max(sent.values()) - min(sent.values())), 1) if sent else 0,
        "events": len(sent),
        "resolved": len(recorded),
        "to_recorded": _summary(recorded),
        "to_committed_visible": _summary(committed),
    }


def _positions_by_partition(outgoing: Sequence[Outgoing]) -> dict[int, list[int]]:
    """The positions published to each partition (subject `onefold.ingest.EventAccepted.<ws>.<p>`)."""
    positions: dict[int, list[int]] = {}
    for envelope in outgoing:
        positions.setdefault(int(envelope.subject.rsplit(".", 1)[1]), []).append(envelope.position)
    return {partition: sorted(values) for partition, values in positions.items()}


def run_mode(
    dataset: Dataset,
    args: argparse.Namespace,
    mode: str,
    directory: Any,
    *,
    latency: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """One identity service with `mode` rules: bulk resolve, clusters, rebuild, latency (unless
    `latency` is False), memory. With `workers` > 1 that many identity processes resolve (CPU
    summed over them, memory per process) and the projection rebuild is left out."""
    from pathlib import Path

    events = len(dataset.records)
    latency_seconds = float(_option(args, "latency_seconds", 5.0))
    get_rate = float(_option(args, "get_profile_rate", 500.0))
    paced_rate = float(_option(args, "paced_rate", 200.0))
    load_rate = float(_option(args, "load_rate", 1000.0))
    read_replicas = int(_option(args, "read_replicas", 0))
    stall = float(_option(args, "stall_seconds", 120.0))
    directory = Path(directory)
    out: dict[str, Any] = {"rules": mode}

    def say(text: str) -> None:
        print(f"  [{mode}] {text}", file=sys.stderr, flush=True)

    # The envelopes as ingest's relay publishes them, built before anything is timed.
    ingest = IngestLog(directory / "ingest")
    try:
        started = time.perf_counter()
        outgoing = ingest.append(dataset.records)
        out["envelope_build_seconds"] = round(time.perf_counter() - started, 2)
        out["envelope_mean_bytes"] = round(statistics.fmean(len(o.body) for o in outgoing)) if outgoing else 0
        out["subjects"] = len(ingest.subjects)
        system = IdentitySystem(directory, ingest, workers)
        system.start()
    except BaseException:
        ingest.close()
        raise
    try:
        if mode == "unlimited":
            limits = asyncio.run(_set_unlimited_rules(system.service.target, system.admin_token))
            out["limits"] = sorted(set(limits.values()))
        positions_by_partition = _positions_by_partition(outgoing) if workers > 1 else None
        with ProgressWatcher(system.db_path, positions_by_partition=positions_by_partition) as watcher:
            # 1. bulk: every event, publish pipelined, until the tracking row reaches the last position
            # (with workers: until every partition's row reaches its last position)
            workers_note = f" with {workers} identity worker processes" if workers > 1 else ""
            say(f"publishing {events:,} envelopes and resolving them{workers_note} ...")
            watcher.expect(events)
            cpu_before_each = [_cpu_seconds(pid) for pid in system.worker_pids]
            nats_cpu_before = _cpu_seconds(system.nats.pid)
            # The bench process's CPU outside the publishing (main) thread and the watcher: the key server.
            bench_cpu_before = time.process_time(), time.thread_time(), watcher.cpu_seconds()
            keys_before = system.key_server.keys.snapshot()
            begin, begin_wall = time.perf_counter(), time.time()
            publisher = _publish if _option(args, "publish", "atomic") == "async" else _publish_atomic
            out["publish"] = "async" if publisher is _publish else "atomic"
            publish_seconds = asyncio.run(publisher(system.nats, outgoing))
            resolved_at_publish_end = watcher.position
            watcher.wait(stall, "bulk resolve", system.service.log_path)
            resolve_seconds = watcher.reached_at - begin
            out["resolve_timeline"] = _timeline(watcher.visible, begin_wall, resolve_seconds)
            cpu_each = [
                _cpu_seconds(pid) - before
                for pid, before in zip(system.worker_pids, cpu_before_each, strict=True)
            ]
            service_cpu = sum(cpu_each)
            nats_cpu = _cpu_seconds(system.nats.pid) - nats_cpu_before
            key_server_cpu = (
                time.process_time()
                - bench_cpu_before[0]
                - (time.thread_time() - bench_cpu_before[1])
                - (watcher.cpu_seconds() - bench_cpu_before[2])
            )
            calls, asked, served, lookup_seconds, lookup_cpu = (
                after - before
                for after, before in zip(system.key_server.keys.snapshot(), keys_before, strict=True)
            )
            out["key_server"] = {
                "calls": calls,
                "subjects_asked": asked,
                "keys_served": served,
                "lookup_seconds": round(lookup_seconds, 3),
                "lookup_cpu_seconds": round(lookup_cpu, 3),
                "cpu_seconds": round(key_server_cpu, 3),
                "cpu_us_per_event": round(key_server_cpu * 1e6 / events, 1),
            }
            out.update(
                service_cpu_seconds=round(service_cpu, 2),
                service_cpu_ms_per_event=round(service_cpu * 1000 / events, 3),
                service_cpu_us_per_event=round(service_cpu * 1e6 / events, 1),
                nats_server_cpu_seconds=round(nats_cpu, 2),
                publish_seconds=round(publish_seconds, 3),
                publish_events_per_second=round(events / publish_seconds),
                resolved_when_publish_done=resolved_at_publish_end,
                resolve_seconds=round(resolve_seconds, 3),
                events_per_second=round(events / resolve_seconds),
            )
            if workers > 1:
                out.update(
                    workers=workers,
                    service_cpu_seconds_per_process=[round(cpu, 2) for cpu in cpu_each],
                )
            say(
                f"published in {publish_seconds:.1f} s ({events / publish_seconds:,.0f}/s), all resolved "
                f"after {resolve_seconds:.1f} s ({events / resolve_seconds:,.0f}/s)"
            )
            del outgoing

            # 2. what the log says: counts, clusters
            log = ReadOnlyLog(system.db_path)
            try:
                resolved = log.count(RESOLVED)
                reasons: Counter[str] = Counter()
                from onefold.contracts.identity.v1 import identity_pb2 as ipb

                for (payload,) in log.rows("SELECT payload FROM events WHERE type = ?", REFUSED):
                    refusal = ipb.LinkRefused.FromString(payload)
                    reasons[f"{refusal.type}:{refusal.reason}"] += 1
                out.update(
                    events_resolved=resolved,
                    link_refusals=sum(reasons.values()),
                    link_refusals_by_type_reason=dict(sorted(reasons.items())),
                    profiles_created=log.count(CREATED),
                    identifiers_linked=log.count(LINKED),
                    profiles_merged=log.count(MERGED),
                    traits_updated=log.count("onefold.identity.v1.TraitsUpdated"),
                    log_events=log.head(),
                    live_profiles=int(
                        log.rows(
                            "SELECT count(*) FROM identity_profiles WHERE merged_into IS NULL AND NOT erased"
                        ).fetchone()[0]
                    ),
                )
                if resolved != events:
                    say(f"WARNING: {resolved:,} EventResolved for {events:,} events (dead-lettered?)")
                clusters, live_owners = read_clusters(log, ingest.record_of)
            finally:
                log.close()
            out["clusters"] = clusters
            out["database_mb"] = round(
                sum(p.stat().st_size for p in system.data_dir.glob("identity.db*")) / 1e6, 1
            )

            # 3. rebuild of the graph from the log, checked against the live read model
            seconds, graph, folded = rebuild_graph(system.db_path)
            out.update(
                rebuild_seconds=round(seconds, 3),
                rebuild_events_folded=folded,
                rebuild_events_per_second=round(folded / seconds) if seconds else 0,
                rebuild_equals_live=graph.owner == live_owners,
                rebuild_same_partition_as_live=same_partition(graph.owner, live_owners),
            )
            say(
                f"graph rebuilt from {folded:,} log events in {seconds:.2f} s; equals live: {out['rebuild_equals_live']}"
            )
            del graph, live_owners

            # 4. latency, once the service is idle again (its relay has published its own log)
            out["idle_wait_seconds"] = round(sum(_settle(pid) for pid in system.worker_pids), 1)
            if latency and latency_seconds > 0:
                if read_replicas:
                    say(f"starting {read_replicas} read replica(s) ...")
                    system.start_read_replicas(read_replicas)
                out["read_replicas"] = read_replicas
                lookups = _lookup_identifiers(
                    dataset, int(get_rate * latency_seconds) + WARM_UP_CALLS, dataset.seed
                )
                say("GetProfile one at a time ...")
                phase_cpu_before = system.cpu_seconds()
                out["get_profile_sequential"] = asyncio.run(
                    _get_profile_sequential(
                        system.read_targets[0], system.read_token, lookups[:SEQUENTIAL_CALLS]
                    )
                )
                _add_cpu_per_call(out["get_profile_sequential"], system.cpu_seconds() - phase_cpu_before)
                # 4a. GetProfile at a fixed rate
                say(f"GetProfile at {get_rate:.0f}/s for {latency_seconds:.0f} s ...")
                phase_cpu_before = system.cpu_seconds()
                out["get_profile"] = asyncio.run(
                    _get_profile_latency(
                        system.read_targets, system.read_token, lookups, get_rate, latency_seconds
                    )
                )
                _add_cpu_per_call(out["get_profile"], system.cpu_seconds() - phase_cpu_before)
                # 4b. resolve-and-apply latency of paced events (the same people again, new event ids)
                count = max(1, int(paced_rate * latency_seconds))
                rng = random.Random(dataset.seed + 1)
                sample = [
                    Record(f"paced-{i:07d}", r.person, r.identifiers)
                    for i, r in enumerate(dataset.records[int(rng.random() * events)] for _ in range(count))
                ]
                paced = ingest.append(sample)  # positions events + 1 ...
                say(f"{count:,} events at {paced_rate:.0f}/s ...")
                log = ReadOnlyLog(system.db_path)
                try:
                    head_before = log.head()
                finally:
                    log.close()
                watcher.interval = (
                    0.002  # the tracking row polled every 2 ms: when each commit became visible
                )
                watcher.expect(paced[-1].position)
                sent = asyncio.run(_publish_paced(system.nats, paced, paced_rate))
                watcher.wait(stall, "paced resolve", system.service.log_path)
                watcher.interval = 0.05
                out["resolve_latency"] = _paced_latency(system.db_path, head_before, sent, watcher.visible)
                # 4c. GetProfile at a fixed rate while the service resolves new events at `load_rate`
                count = max(1, int(load_rate * latency_seconds))
                sample = [
                    Record(f"load-{i:07d}", r.person, r.identifiers)
                    for i, r in enumerate(dataset.records[int(rng.random() * events)] for _ in range(count))
                ]
                loading = ingest.append(sample)
                say(f"GetProfile at {get_rate:.0f}/s while resolving {load_rate:.0f} events/s ...")
                watcher.expect(loading[-1].position)
                phase_cpu_before = system.cpu_seconds()
                started = time.perf_counter()
                out["get_profile_under_load"] = asyncio.run(
                    _get_profile_under_load(system, lookups, get_rate, latency_seconds, loading, load_rate)
                )
                watcher.wait(stall, "resolve under GetProfile load", system.service.log_path)
                under_load = out["get_profile_under_load"]
                under_load["resolve_seconds"] = round(watcher.reached_at - started, 3)
                under_load["service_cpu_seconds"] = round(system.cpu_seconds() - phase_cpu_before, 3)
        memory = [_memory_kb(pid) for pid in system.worker_pids]
        out["rss_peak_mb"] = round(memory[0].get("VmHWM", 0) / 1024, 1)
        out["rss_end_mb"] = round(memory[0].get("VmRSS", 0) / 1024, 1)
        if workers > 1:
            out["rss_peak_mb_per_process"] = [round(m.get("VmHWM", 0) / 1024, 1) for m in memory]
        calls, _, served, _, _ = system.key_server.keys.snapshot()
        out["key_server"].update(calls_total=calls, keys_served_total=served)
    finally:
        system.stop()
        ingest.close()
    warnings = [
        line[:300]
        for process in system.processes
        for line in process.log_path.read_text(errors="replace").splitlines()
        if ("warning" in line.lower() or "error" in line.lower()) and "nats.disconnected" not in line
    ]
    out["service_log_warnings"] = len(warnings)
    if warnings:
        out["service_log_last_warnings"] = warnings[-3:]
    if workers == 1 and _option(args, "projection_rebuild", False):
        seconds, folded = rebuild_projection(system, directory)
        out.update(projection_rebuild_seconds=round(seconds, 3), projection_rebuild_events=folded)
        say(f"Projector.rebuild() of the SQL read model: {folded:,} events in {seconds:.1f} s")
    return out


def run_onefold(dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Onefold's side: the data set resolved end to end by a real identity service (see the module
    docstring), once per rules mode (`args.rules`: "unlimited", "default" or "both").

    Returns the first mode's headline figures at the top ("events_per_second", "resolve_seconds",
    "publish_seconds", "rebuild_seconds", "clusters": event_id -> live profile id) and every mode's
    figures under "modes" (each with its own "clusters"). Returns {} with `args.skip_onefold`.

    With `args.workers` N > 1 each mode first resolves the data set with N identity processes
    (catch-up, clusters and rebuild only; its figures under the mode's "with_workers"), then runs
    as with one (fresh data dir, same data set; every phase): "workers_speedup" is the catch-up's
    rate with N over its rate with one, "workers_identical" whether both put the same records
    together (partitions compared, profile ids are random). The first mode's are also at the top.
    """
    import tempfile
    from pathlib import Path

    if _option(args, "skip_onefold", False):
        return {}
    from onefold.platform.config import TelemetrySettings
    from onefold.platform.telemetry import configure_logging

    # The eventlog helpers log (stream created, ...): to stderr, warnings only; stdout is the JSON.
    configure_logging("bench-identity", TelemetrySettings(log_level="WARNING", log_format="console"))
    rules = _option(args, "rules", "both")
    modes = RULE_MODES if rules == "both" else (rules,)
    workers = int(_option(args, "workers", 1))
    result: dict[str, Any] = {"rules": rules, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="onefold-bench-identity-") as tmp:
        for mode in modes:
            # Latency is measured once: with the workspace default rules when both modes run (what
            # a workspace runs with; unlimited rules only exist to compare clusters with Splink).
            latency = len(modes) == 1 or mode == "default"
            if workers > 1:
                with_workers = run_mode(
                    dataset,
                    args,
                    mode,
                    Path(tmp) / f"{mode}-{workers}-workers",
                    latency=False,
                    workers=workers,
                )
            figures = run_mode(dataset, args, mode, Path(tmp) / mode, latency=latency)
            if workers > 1:
                clusters, one = with_workers.pop("clusters"), figures["clusters"]
                # How far apart when not identical: pairwise, one worker's clusters taken as the
                # truth, over the records both resolved.
                common = clusters.keys() & one.keys()
                agreement = cluster_metrics({r: clusters[r] for r in common}, {r: one[r] for r in common})
                figures.update(
                    workers_speedup=round(figures["resolve_seconds"] / with_workers["resolve_seconds"], 3),
                    workers_identical=same_partition(clusters, one),
                    workers_agreement={key: agreement[key] for key in ("precision", "recall", "f1")},
                    with_workers=with_workers,
                )
            result["modes"][mode] = figures
    first = result["modes"][modes[0]]
    for key in ("events_per_second", "resolve_seconds", "publish_seconds", "rebuild_seconds"):
        result[key] = first[key]
    if workers > 1:
        result.update(
            workers=workers,
            workers_speedup=first["workers_speedup"],
            workers_identical=first["workers_identical"],
        )
    result["clusters"] = first["clusters"]
    return result


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


def _onefold_figures(
    onefold: Mapping[str, Any],
    *,
    truth: Mapping[str, Hashable],
    reference: Mapping[str, Hashable],
    splink: Mapping[str, Hashable] | None,
) -> dict[str, Any]:
    """run_onefold's answer for the JSON: clusters replaced by their metrics and comparisons."""

    def scored(clusters: Mapping[str, Hashable], prefix: str) -> dict[str, Any]:
        metrics = cluster_metrics(clusters, truth)
        figures: dict[str, Any] = {
            "metrics": metrics,
            "equals_connected_components": same_partition(clusters, reference),
        }
        _metrics_lines(prefix, metrics)
        _line(f"{prefix} == connected components", str(figures["equals_connected_components"]))
        if splink is not None:
            figures["equals_splink"] = same_partition(clusters, splink)
            _line(f"{prefix} == splink", str(figures["equals_splink"]))
        return figures

    out: dict[str, Any] = {}
    for key, value in onefold.items():
        if key == "clusters" and isinstance(value, Mapping):
            continue  # scored with its mode below (or here, when there are no modes)
        if key == "modes" and isinstance(value, Mapping):
            out["modes"] = {}
            for mode, figures in value.items():
                entry = {k: v for k, v in figures.items() if k != "clusters"}
                _mode_lines(mode, entry)
                if isinstance(figures.get("clusters"), Mapping):
                    entry.update(scored(figures["clusters"], f"Onefold ({mode} rules)"))
                out["modes"][mode] = entry
        else:
            out[key] = value
    clusters = onefold.get("clusters")
    if isinstance(clusters, Mapping) and "modes" not in onefold:
        out.update(scored(clusters, "Onefold"))
    elif isinstance(clusters, Mapping):
        first = next(iter(out["modes"].values()))
        out["equals_connected_components"] = first.get("equals_connected_components")
        if "equals_splink" in first:
            out["equals_splink"] = first["equals_splink"]
    return out


def _mode_lines(mode: str, figures: Mapping[str, Any]) -> None:
    def get(*path: str) -> Any:
        value: Any = figures
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    events = get("events_resolved")
    if get("publish_seconds") is not None:
        _line(
            f"Onefold ({mode}) JetStream publish of the envelopes",
            f"{get('publish_seconds'):.2f} s ({get('publish_events_per_second'):,}/s)",
        )
        _line(
            f"Onefold ({mode}) resolved end to end ({events:,} events)",
            f"{get('resolve_seconds'):.2f} s ({get('events_per_second'):,}/s)",
        )
        _line(
            f"Onefold ({mode}) link refusals / merges / live profiles",
            f"{get('link_refusals'):,} / {get('profiles_merged'):,} / {get('live_profiles'):,}",
        )
        _line(
            f"Onefold ({mode}) graph rebuild from the log (equals live: {get('rebuild_equals_live')})",
            f"{get('rebuild_seconds'):.2f} s",
        )
    if get("projection_rebuild_seconds") is not None:
        _line(
            f"Onefold ({mode}) Projector.rebuild() (SQL read model)",
            f"{get('projection_rebuild_seconds'):.2f} s",
        )
    if get("service_cpu_us_per_event") is not None:
        _line(
            f"Onefold ({mode}) identity CPU per event (nats-server CPU s)",
            f"{get('service_cpu_us_per_event'):.0f} µs ({get('nats_server_cpu_seconds'):.1f} s)",
        )
    if get("key_server") is not None:
        _line(
            f"Onefold ({mode}) subject keys served in calls / key server CPU",
            f"{get('key_server', 'keys_served'):,} in {get('key_server', 'calls'):,} / "
            f"{get('key_server', 'cpu_seconds'):.2f} s",
        )
    if get("get_profile_sequential") is not None:
        _line(
            f"Onefold ({mode}) GetProfile one at a time p50 / p99",
            f"{get('get_profile_sequential', 'p50_ms')} / {get('get_profile_sequential', 'p99_ms')} ms",
        )
    if get("get_profile") is not None:
        _line(
            f"Onefold ({mode}) GetProfile at {get('get_profile', 'rate_per_s'):.0f}/s p50 / p99",
            f"{get('get_profile', 'p50_ms')} / {get('get_profile', 'p99_ms')} ms",
        )
    if get("get_profile", "service_cpu_us_per_call") is not None:
        _line(
            f"Onefold ({mode}) identity CPU per GetProfile, one at a time / at rate",
            f"{get('get_profile_sequential', 'service_cpu_us_per_call'):.0f} / "
            f"{get('get_profile', 'service_cpu_us_per_call'):.0f} µs",
        )
    if get("get_profile_under_load") is not None:
        _line(
            f"Onefold ({mode}) GetProfile at {get('get_profile_under_load', 'rate_per_s'):.0f}/s while "
            f"resolving {get('get_profile_under_load', 'event_rate_per_s'):.0f}/s p50 / p99",
            f"{get('get_profile_under_load', 'p50_ms')} / {get('get_profile_under_load', 'p99_ms')} ms",
        )
    if get("resolve_latency") is not None:
        _line(
            f"Onefold ({mode}) publish -> resolved & committed p50 / p99",
            f"{get('resolve_latency', 'to_committed_visible', 'p50_ms')} / "
            f"{get('resolve_latency', 'to_committed_visible', 'p99_ms')} ms",
        )
    if get("rss_peak_mb") is not None:
        _line(f"Onefold ({mode}) identity process peak RSS (VmHWM)", f"{get('rss_peak_mb')} MB")
    if get("with_workers") is not None:
        workers = get("with_workers", "workers")
        _line(
            f"Onefold ({mode}) resolved end to end by {workers} identity workers",
            f"{get('with_workers', 'resolve_seconds'):.2f} s ({get('with_workers', 'events_per_second'):,}/s)",
        )
        _line(
            f"Onefold ({mode}) {workers} workers / 1 worker rate (target >= {WORKERS_SPEEDUP_TARGET})",
            f"{get('workers_speedup'):.2f}x",
        )
        _line(
            f"Onefold ({mode}) identity CPU per event, {workers} workers summed / 1",
            f"{get('with_workers', 'service_cpu_us_per_event'):.0f} / {get('service_cpu_us_per_event'):.0f} µs",
        )
        _line(
            f"Onefold ({mode}) {workers} workers peak RSS per process",
            " / ".join(f"{mb:.0f}" for mb in get("with_workers", "rss_peak_mb_per_process")) + " MB",
        )
        _line(f"Onefold ({mode}) {workers} workers' clusters == 1 worker's", str(get("workers_identical")))
        _line(
            f"Onefold ({mode}) {workers} workers' link refusals / live profiles",
            f"{get('with_workers', 'link_refusals'):,} / {get('with_workers', 'live_profiles'):,}",
        )
        if not get("workers_identical"):
            _line(
                f"Onefold ({mode}) {workers} workers vs 1 pairwise precision / recall",
                f"{get('workers_agreement', 'precision'):.4f} / {get('workers_agreement', 'recall'):.4f}",
            )
        print(
            f"  (Onefold ({mode}): every figure above but the {workers}-worker lines is of one identity worker)",
            file=sys.stderr,
        )


def _met(results: Mapping[str, Any]) -> dict[str, bool]:
    """Each target against the run's figures (every rules mode must meet a per-mode target)."""
    onefold = results.get("onefold") or {}
    modes = list((onefold.get("modes") or {}).values())
    met: dict[str, bool] = {}
    if modes:
        met["events_per_second"] = all(m["events_per_second"] >= TARGETS["events_per_second"] for m in modes)
        # 1M events in 60 s, projected linearly from this run's size
        met["resolve_seconds_per_1m"] = all(
            m["resolve_seconds"] * 1_000_000 / max(1, m["events_resolved"]) <= TARGETS["resolve_seconds"]
            for m in modes
        )
        timed = [m for m in modes if "get_profile" in m]
        if timed:
            met["get_profile_p99_ms"] = all(
                m["get_profile"]["p99_ms"] <= TARGETS["get_profile_p99_ms"]
                and m["get_profile"]["failures"] == 0
                for m in timed
            )
            met["get_profile_under_load_p99_ms"] = all(
                m["get_profile_under_load"]["p99_ms"] <= TARGETS["get_profile_p99_ms"]
                and m["get_profile_under_load"]["failures"] == 0
                for m in timed
            )
            met["resolve_p99_ms"] = all(
                m["resolve_latency"]["to_committed_visible"]["p99_ms"] <= TARGETS["resolve_p99_ms"]
                for m in timed
            )
        met["rebuild_equals_live"] = all(m["rebuild_equals_live"] for m in modes)
    if "rebuild_ratio_vs_splink" in results:
        met["rebuild_ratio_vs_splink"] = (
            results["rebuild_ratio_vs_splink"] >= TARGETS["rebuild_ratio_vs_splink"]
        )
    if modes and "workers_speedup" in modes[0]:
        met["workers_speedup"] = all(m["workers_speedup"] >= WORKERS_SPEEDUP_TARGET for m in modes)
        met["workers_identical"] = all(m["workers_identical"] for m in modes)
    if "unlimited" in (onefold.get("modes") or {}):
        met["unlimited_equals_connected_components"] = bool(
            onefold["modes"]["unlimited"].get("equals_connected_components")
        )
    return met


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
    parser.add_argument("--skip-onefold", action="store_true", help="no identity service run")
    parser.add_argument(
        "--rules",
        choices=("both", *RULE_MODES),
        default="both",
        help="identity rules of the Onefold run(s): unlimited (compared with Splink / union-find), "
        "default (the workspace defaults: limits), or both in turn (default)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=5.0,
        help="length of each fixed-rate latency phase (GetProfile, paced events); 0 skips them",
    )
    parser.add_argument("--get-profile-rate", type=float, default=500.0, help="GetProfile requests/s")
    parser.add_argument("--paced-rate", type=float, default=200.0, help="events/s of the paced phase")
    parser.add_argument(
        "--load-rate",
        type=float,
        default=1000.0,
        help="events/s resolved while GetProfile runs at --get-profile-rate (the phase after the paced one)",
    )
    parser.add_argument(
        "--read-replicas",
        type=int,
        default=0,
        help="identity processes that only answer gRPC, on the same database; GetProfile goes to "
        "them (the first process keeps resolving)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="identity worker processes sharing the ingest subscription in the catch-up; above 1 "
        "the catch-up also runs with one in the same run, for the speedup and a comparison of the "
        "clusters (the other phases run with one)",
    )
    parser.add_argument(
        "--publish",
        choices=("async", "atomic"),
        default="atomic",
        help="how the envelopes are published: atomic = as ingest's relay does, atomic batches of "
        "1000 (default); async = js.publish_async pipelined, one fsync each (starves the consumer "
        "while it runs)",
    )
    parser.add_argument(
        "--projection-rebuild",
        action="store_true",
        help="also time Projector.rebuild() of the SQL read model (slow: it decrypts every event)",
    )
    parser.add_argument(
        "--stall-seconds", type=float, default=120.0, help="give up when the service makes no progress"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.repeats < 1 or args.events < 1:
        parser.error("--events and --repeats must be at least 1")
    from onefold.eventlog.streams import DEFAULT_PARTITIONS

    if not 1 <= args.workers <= DEFAULT_PARTITIONS:
        parser.error(f"--workers must be between 1 and the {DEFAULT_PARTITIONS} partitions")

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
    results["onefold"] = _onefold_figures(
        onefold,
        truth=truth,
        reference=reference,
        splink=splink_clustering if splink is not None and splink_events == args.events else None,
    )
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
    if onefold:
        from onefold.testing.measure import say_targets

        results["met"] = _met(results)
        say_targets(results["met"])
    results["targets"] = (
        TARGETS if args.workers == 1 else {**TARGETS, "workers_speedup": WORKERS_SPEEDUP_TARGET}
    )
    if args.json:
        print(json.dumps(results, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
