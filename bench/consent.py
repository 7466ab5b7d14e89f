"""Consent benchmark: CheckConsent and CheckConsentBatch latency over gRPC, an audit replay
(ConsentAsOf) of one subject with a long ledger, and the replay rate of the whole ledger, each
beside a baseline measured in the same run.

    python bench/consent.py [--subjects N] [--events N] [--seconds S] [--json]
    onefold bench consent --json

Setup: a real nats-server (JetStream) and a real consent service process (`python -m
onefold.consent`, SQLite in a temporary data directory), the example model
(deploy/examples/consent.yaml, parsed by the CLI's `apply` code) set through SetModel, then through
GrantConsent / WithdrawConsent: N subjects with marketing, analytics and personalisation granted on
email, SMS and WeChat (9 ledger events each, one subject in ten then withdraws SMS marketing), and one
"heavy" subject whose ledger holds --events events (grants and withdrawals of 3 purposes x 5
channels, 15 events per call). Before each phase the bench waits until the service is idle (its
outbox relay has published what was written to JetStream).

Beside each rate the bench reports the service's CPU time (user + system, from /proc) per call or
check over the phase: what a check costs the service, stable on a machine shared with other work
where the latencies are not.

- CheckConsent: single checks (random subject, purpose, channel; a mix of allow and deny) started on
  a fixed schedule of 1,000/s (open loop: a slow answer does not slow the schedule); p50 / p99 from
  start to answer. Baselines: the platform's WhoAmI unary RPC on the same server at the same rate
  (authentication, interceptors and one small message each way: the floor of any Onefold call),
  and the same calls to a bare grpc.aio server (bench/_grpc_floor.py: no interceptor, no
  credential; what grpcio alone costs here).
- Capacity: calls answered per second by 8 callers that each wait for their answer (closed loop),
  CheckConsent beside WhoAmI: what the service sustains, which explains an open-loop figure.
- CheckConsentBatch: batches of 100 checks sent one at a time (each when the previous answered: the
  service time of 100 checks, not queueing), p50 / p99, beside the same WhoAmI baseline.
- Audit: ConsentAsOf of the heavy subject (the service replays its whole ledger), sequential calls,
  median and max. Baseline: a raw SQLite read of the same rows (sqlite3, every column, in-process).
- Ledger replay, in-process on the service's database after it stopped:
  * fold: every ledger event of the store read through EventStore.iter_all and folded by the
    domain's LedgerState.apply (the fold ConsentApplication uses for as-of reads and audits; public
    fields only, no decryption), one state per subject;
  * rebuild: Projector.rebuild of the consent read model (what `onefold replay consent` runs:
    decrypts each event and rewrites the subject's rows);
  baseline: a raw SQLite read of every row of the events table (sqlite3).

Targets (a 2-core machine, the client on the same machine): CheckConsent p99 <= 2 ms at 1,000/s;
CheckConsentBatch of 100 p99 <= 5 ms; ConsentAsOf of 10,000 events <= 100 ms (median); ledger fold
>= 100,000 events/s (the rebuild is reported beside it against the same figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from onefold.cli.consent import model_from_document
from onefold.consent.adapters.read_model import ConsentReadModel
from onefold.consent.domain.events import REGISTRY
from onefold.consent.domain.ledger import LEDGER_EVENTS, LedgerState, evidence_of
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.consent.v1 import consent_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.platform.v1 import platform_pb2, platform_pb2_grpc
from onefold.eventlog import EventStore, KeyEncryptionKey
from onefold.eventlog.projections import Projector
from onefold.platform.auth import CredentialStore
from onefold.platform.client import authenticated_channel
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.measure import cpu_seconds, percentile, say_targets
from onefold.testing.processes import ServiceProcess

if str(Path(__file__).resolve().parent) not in sys.path:  # `onefold bench` loads this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import _grpc_floor as grpc_floor  # (bench/_grpc_floor.py: a bare grpc.aio server, the floor)

WORKSPACE = "bench"
MODEL_FILE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "consent.yaml"
CHECK_RATE = 1000  # single checks per second
BATCH = 100
AS_OF_CALLS = 20
SEED_CLIENTS = 4
CAPACITY_CLIENTS = 8
PURPOSES = ("marketing", "analytics", "personalisation")
SUBJECT_CHANNELS = ("email", "sms", "wechat")
ALL_CHANNELS = ("email", "sms", "wechat", "push", "phone")
PROOF = pb.Proof(
    notice_id="privacy", notice_version="1", source="preference_centre", collection_point="bench"
)
TARGETS = {
    "check_p99_ms": 2.0,
    "batch_p99_ms": 5.0,
    "as_of_ms": 100.0,
    "replay_fold_events_per_s": 100_000,
    "replay_rebuild_events_per_s": 100_000,
}


# --- helpers --------------------------------------------------------------------------------------


def summarise(latencies: list[float], errors: dict[str, int]) -> dict[str, Any]:
    failures = sum(errors.values())
    return {
        "requests": len(latencies) + failures,
        "failures": failures,
        "errors": errors,  # by gRPC status (a deadline exceeded: the service fell behind the schedule)
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies, default=float("nan")), 3),
        "mean_ms": round(statistics.fmean(latencies), 3) if latencies else float("nan"),
    }


async def fixed_rate(
    call: Callable[[int], Awaitable[None]], rate: float, seconds: float
) -> tuple[list[float], dict[str, int]]:
    """Start call(i) every 1/rate s (open loop); latencies in ms, and failures by kind."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            await call(i)
        except Exception as error:
            code = getattr(error, "code", None)
            kind = code().name if callable(code) else type(error).__name__
            errors[kind] = errors.get(kind, 0) + 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    begin = time.perf_counter()
    for i in range(total):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, errors


def settle(pid: int, timeout: float = 120.0) -> float:
    """Wait until the service is idle again (its relay has published what was just written to
    JetStream), so one phase's leftovers do not slow the next; returns the seconds waited."""
    started = time.perf_counter()
    previous = cpu_seconds(pid)
    while time.perf_counter() - started < timeout:
        time.sleep(0.5)
        current = cpu_seconds(pid)
        if current - previous < 0.05:  # under 10% of a core
            break
        previous = current
    return round(time.perf_counter() - started, 1)


def subject(profile_id: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(profile_id=profile_id)


def load_model() -> pb.ConsentModel:
    import yaml

    document = yaml.safe_load(MODEL_FILE.read_text(encoding="utf-8"))
    return model_from_document(document, str(MODEL_FILE), MODEL_FILE.parent)


# --- the system under test ------------------------------------------------------------------------


def start_system(directory: Path) -> tuple[NatsServerProcess, ServiceProcess, str]:
    nats_server = NatsServerProcess(directory / "nats")
    nats_server.start()
    data_dir = directory / "consent"
    data_dir.mkdir(parents=True)
    store = CredentialStore(f"sqlite:///{data_dir / 'auth.db'}", cache_seconds=0)
    store.create_schema()
    token = store.issue(WORKSPACE, ["admin"], name="bench").token
    store.engine.dispose()
    service = ServiceProcess(
        name="consent",
        data_dir=data_dir,
        nats=nats_server,
        extra_env={"ONEFOLD_AUTH__CACHE_SECONDS": "60", "ONEFOLD_TELEMETRY__LOG_LEVEL": "WARNING"},
    )
    try:
        service.start(timeout=60)
    except BaseException:
        nats_server.stop()
        raise
    return nats_server, service, token


async def seed(target: str, token: str, subjects: int, heavy_events: int) -> dict[str, Any]:
    """The model, `subjects` ordinary subjects and one heavy subject; returns what was written."""
    async with authenticated_channel(target, token) as channel:
        stub = consent_pb2_grpc.ConsentServiceStub(channel)
        await stub.SetModel(pb.SetModelRequest(model=load_model()), timeout=30)
        started = time.perf_counter()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(subjects):
            queue.put_nowait(i)
        written = 0

        async def client() -> None:
            nonlocal written
            while not queue.empty():
                i = queue.get_nowait()
                answer = await stub.GrantConsent(
                    pb.GrantConsentRequest(
                        subject=subject(f"p{i}"),
                        purpose_ids=PURPOSES,
                        channels=SUBJECT_CHANNELS,
                        proof=PROOF,
                    ),
                    timeout=30,
                )
                written += len(answer.recorded)
                if i % 10 == 0:
                    answer = await stub.WithdrawConsent(
                        pb.WithdrawConsentRequest(
                            subject=subject(f"p{i}"), purpose_ids=["marketing"], channels=["sms"]
                        ),
                        timeout=30,
                    )
                    written += len(answer.recorded)

        await asyncio.gather(*(client() for _ in range(SEED_CLIENTS)))
        heavy = 0
        calls = 0
        while heavy < heavy_events:
            ref = subject("heavy")
            if calls % 2 == 0:
                answer = await stub.GrantConsent(
                    pb.GrantConsentRequest(
                        subject=ref, purpose_ids=PURPOSES, channels=ALL_CHANNELS, proof=PROOF
                    ),
                    timeout=30,
                )
            else:
                answer = await stub.WithdrawConsent(
                    pb.WithdrawConsentRequest(subject=ref, purpose_ids=PURPOSES, channels=ALL_CHANNELS),
                    timeout=30,
                )
            heavy += len(answer.recorded)
            calls += 1
        return {
            "subject_events": written,
            "heavy_events": heavy,
            "seed_seconds": round(time.perf_counter() - started, 1),
        }


# --- measurements ---------------------------------------------------------------------------------


def check_requests(subjects: int, count: int, seed_value: int) -> list[pb.CheckConsentRequest]:
    rng = random.Random(seed_value)
    return [
        pb.CheckConsentRequest(
            subject=subject(f"p{rng.randrange(subjects)}"),
            purpose_id=rng.choice(PURPOSES),
            channel=rng.choice(ALL_CHANNELS),  # push and phone were never granted: denials too
        )
        for _ in range(count)
    ]


def cpu_us_per(pid: int, cpu_before: float, calls: int) -> float:
    """The service's CPU time (user + system) since `cpu_before`, in µs per call: what a call costs
    the service, whatever else ran on the machine (latencies on a shared machine are noisy; this is not)."""
    return round((cpu_seconds(pid) - cpu_before) * 1e6 / max(calls, 1), 1)


async def who_am_i_latency(target: str, token: str, rate: float, seconds: float, pid: int) -> dict[str, Any]:
    async with authenticated_channel(target, token) as channel:
        return await who_am_i_at_rate(channel, rate, seconds, pid)


async def bare_grpc_latency(target: str, rate: float, seconds: float, pid: int) -> dict[str, Any]:
    """The floor: the same schedule of calls to a bare grpc.aio server (bench/_grpc_floor.py)."""
    async with grpc.aio.insecure_channel(target) as channel:
        return await who_am_i_at_rate(channel, rate, seconds, pid)


async def who_am_i_at_rate(
    channel: grpc.aio.Channel, rate: float, seconds: float, pid: int
) -> dict[str, Any]:
    stub = platform_pb2_grpc.PlatformServiceStub(channel)
    for _ in range(50):
        await stub.WhoAmI(platform_pb2.WhoAmIRequest(), timeout=10)

    async def call(_i: int) -> None:
        await stub.WhoAmI(platform_pb2.WhoAmIRequest(), timeout=10)

    cpu_before = cpu_seconds(pid)
    result = summarise(*await fixed_rate(call, rate, seconds))
    return {**result, "service_cpu_us_per_call": cpu_us_per(pid, cpu_before, result["requests"])}


async def check_latency(target: str, token: str, subjects: int, seconds: float, pid: int) -> dict[str, Any]:
    requests = check_requests(subjects, int(CHECK_RATE * seconds) + 50, 1)
    allowed = 0
    async with authenticated_channel(target, token) as channel:
        stub = consent_pb2_grpc.ConsentServiceStub(channel)
        for request in requests[:50]:
            await stub.CheckConsent(request, timeout=10)

        async def call(i: int) -> None:
            nonlocal allowed
            answer = await stub.CheckConsent(requests[50 + i], timeout=10)
            allowed += answer.decision == pb.DECISION_ALLOW

        cpu_before = cpu_seconds(pid)
        result = summarise(*await fixed_rate(call, CHECK_RATE, seconds))
        cpu = cpu_us_per(pid, cpu_before, result["requests"])
    return {**result, "allowed": allowed, "service_cpu_us_per_check": cpu}


async def capacity(target: str, token: str, subjects: int, seconds: float, pid: int) -> dict[str, Any]:
    """Calls per second answered with CAPACITY_CLIENTS callers each waiting for its answer (closed
    loop): what the service sustains, CheckConsent beside WhoAmI on the same server."""
    requests = check_requests(subjects, 1000, 3)
    out: dict[str, Any] = {"clients": CAPACITY_CLIENTS, "service_cpu_us_per_call": {}}
    async with authenticated_channel(target, token) as channel:
        consent = consent_pb2_grpc.ConsentServiceStub(channel)
        platform_stub = platform_pb2_grpc.PlatformServiceStub(channel)
        calls: dict[str, Callable[[int], Awaitable[Any]]] = {
            "who_am_i_per_s": lambda i: platform_stub.WhoAmI(platform_pb2.WhoAmIRequest(), timeout=30),
            "check_per_s": lambda i: consent.CheckConsent(requests[i % len(requests)], timeout=30),
        }
        for name, call in calls.items():
            done = 0
            deadline = time.perf_counter() + seconds

            async def caller(
                offset: int, call: Callable[[int], Awaitable[Any]] = call, deadline: float = deadline
            ) -> None:
                nonlocal done
                i = offset
                while time.perf_counter() < deadline:
                    await call(i)
                    done += 1
                    i += CAPACITY_CLIENTS

            started = time.perf_counter()
            cpu_before = cpu_seconds(pid)
            await asyncio.gather(*(caller(c) for c in range(CAPACITY_CLIENTS)))
            out[name] = round(done / (time.perf_counter() - started))
            out["service_cpu_us_per_call"][name.removesuffix("_per_s")] = cpu_us_per(pid, cpu_before, done)
    return out


async def batch_latency(target: str, token: str, subjects: int, seconds: float, pid: int) -> dict[str, Any]:
    """Batches sent one at a time (each when the previous answered) for `seconds`: the time the
    service takes for 100 checks, without queueing behind other calls."""
    checks = check_requests(subjects, 200 * BATCH, 2)
    batches = [pb.CheckConsentBatchRequest(checks=checks[i * BATCH : (i + 1) * BATCH]) for i in range(200)]
    latencies: list[float] = []
    async with authenticated_channel(target, token) as channel:
        stub = consent_pb2_grpc.ConsentServiceStub(channel)
        for batch in batches[:5]:
            await stub.CheckConsentBatch(batch, timeout=30)
        deadline = time.perf_counter() + seconds
        cpu_before = cpu_seconds(pid)
        i = 0
        while time.perf_counter() < deadline or len(latencies) < 10:
            started = time.perf_counter()
            answer = await stub.CheckConsentBatch(batches[i % len(batches)], timeout=30)
            latencies.append((time.perf_counter() - started) * 1000)
            if len(answer.results) != BATCH:
                raise RuntimeError("a batch answer is short")
            i += 1
        cpu = cpu_us_per(pid, cpu_before, len(latencies) * BATCH)
    return {**summarise(latencies, {}), "service_cpu_us_per_check": cpu}


async def as_of_latency(target: str, token: str, calls: int) -> dict[str, Any]:
    times: list[float] = []
    replayed = 0
    async with authenticated_channel(target, token) as channel:
        stub = consent_pb2_grpc.AuditServiceStub(channel)
        await stub.ConsentAsOf(pb.ConsentAsOfRequest(subject=subject("heavy")), timeout=60)
        for _ in range(calls):
            started = time.perf_counter()
            answer = await stub.ConsentAsOf(pb.ConsentAsOfRequest(subject=subject("heavy")), timeout=60)
            times.append((time.perf_counter() - started) * 1000)
            replayed = answer.events_replayed
    return {
        "calls": calls,
        "events_replayed": replayed,
        "median_ms": round(statistics.median(times), 2),
        "max_ms": round(max(times), 2),
    }


def raw_stream_read_ms(database: Path, stream_id: str, calls: int) -> dict[str, Any]:
    times: list[float] = []
    rows = 0
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        for _ in range(calls + 1):
            started = time.perf_counter()
            rows = len(
                connection.execute(
                    "SELECT * FROM events WHERE stream_id = ? ORDER BY stream_version", (stream_id,)
                ).fetchall()
            )
            times.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    times = times[1:]  # the first read warms the page cache
    return {"rows": rows, "median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def raw_read_rate(database: Path) -> tuple[int, float]:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        connection.execute("SELECT count(*) FROM events").fetchone()  # warm the cache
        started = time.perf_counter()
        rows = 0
        cursor = connection.execute("SELECT * FROM events ORDER BY position")
        while batch := cursor.fetchmany(5000):
            rows += len(batch)
        return rows, rows / (time.perf_counter() - started)
    finally:
        connection.close()


def open_store(data_dir: Path) -> EventStore:
    keys = KeyEncryptionKey.from_base64((data_dir / "keys" / "consent.kek").read_text())
    return EventStore(f"sqlite:///{data_dir / 'consent.db'}", service="consent", registry=REGISTRY, keys=keys)


def fold_rate(store: EventStore) -> tuple[int, int, float]:
    """Fold every ledger event of the store into one LedgerState per subject (stream)."""
    types = {name: REGISTRY.for_name(name).message_class for name in LEDGER_EVENTS}
    states: dict[str, LedgerState] = {}
    folded = 0
    started = time.perf_counter()
    for event in store.iter_all(batch_size=5000):
        message_type = types.get(event.type)
        if message_type is None:
            continue
        state = states.get(event.stream_id)
        if state is None:
            state = states[event.stream_id] = LedgerState()
        state.apply(evidence_of(event), message_type.FromString(event.payload))
        folded += 1
    elapsed = time.perf_counter() - started
    return folded, len(states), folded / elapsed


def rebuild_rate(store: EventStore) -> tuple[int, float]:
    projection = ConsentReadModel()
    started = time.perf_counter()
    applied = Projector(store, [projection]).rebuild(projection)
    return applied, applied / (time.perf_counter() - started)


# --- the run --------------------------------------------------------------------------------------


def run(subjects: int, heavy_events: int, seconds: float, repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "subjects": subjects,
        "heavy_subject_events": heavy_events,
        "seconds_per_latency_phase": seconds,
        "check_rate_per_s": CHECK_RATE,
        "batch": BATCH,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}",
    }
    with tempfile.TemporaryDirectory(prefix="onefold-bench-consent-") as tmp:
        nats_server, service, token = start_system(Path(tmp))
        target = service.target
        try:
            assert service.process is not None
            pid = service.process.pid

            def phase(name: str, coroutine: Awaitable[Any]) -> Any:
                waited = settle(pid)
                print(f"  {name} (after {waited} s idle wait) ...", file=sys.stderr, flush=True)
                return asyncio.run(coroutine)  # type: ignore[arg-type]

            results["seed"] = phase(
                f"seeding {subjects} subjects and a subject of {heavy_events} events",
                seed(target, token, subjects, heavy_events),
            )
            with grpc_floor.bare_server() as (bare_target, bare_pid):
                results["bare_grpc_latency"] = phase(
                    f"bare grpc.aio unary at {CHECK_RATE}/s (the floor)",
                    bare_grpc_latency(bare_target, CHECK_RATE, seconds, bare_pid),
                )
            results["who_am_i_latency"] = phase(
                f"WhoAmI at {CHECK_RATE}/s (baseline)",
                who_am_i_latency(target, token, CHECK_RATE, seconds, pid),
            )
            results["capacity"] = phase(
                f"closed-loop capacity ({CAPACITY_CLIENTS} callers): WhoAmI, CheckConsent",
                capacity(target, token, subjects, seconds / 2, pid),
            )
            results["check_latency"] = phase(
                f"CheckConsent at {CHECK_RATE}/s", check_latency(target, token, subjects, seconds, pid)
            )
            results["batch_latency"] = phase(
                f"CheckConsentBatch of {BATCH}, one at a time",
                batch_latency(target, token, subjects, seconds, pid),
            )
            results["as_of"] = phase(
                "ConsentAsOf of the heavy subject", as_of_latency(target, token, AS_OF_CALLS)
            )
            database = service.data_dir / "consent.db"
            results["as_of_raw_read"] = raw_stream_read_ms(
                database, f"consent:{WORKSPACE}:heavy", AS_OF_CALLS
            )
        finally:
            service.stop()
            nats_server.stop()
        print("  ledger replay in-process ...", file=sys.stderr, flush=True)
        raw_rows, raw = 0, []
        folds: list[float] = []
        folded = streams = 0
        store = open_store(service.data_dir)
        try:
            for _ in range(repeats):
                raw_rows, rate = raw_read_rate(service.data_dir / "consent.db")
                raw.append(rate)
                folded, streams, rate = fold_rate(store)
                folds.append(rate)
            rebuilt, rebuild = rebuild_rate(store)
        finally:
            store.close()
        results["replay"] = {
            "events_in_log": raw_rows,
            "ledger_events_folded": folded,
            "subjects_folded": streams,
            "raw_sqlite_rows_per_s": round(statistics.median(raw)),
            "fold_events_per_s": round(statistics.median(folds)),
            "rebuild_events": rebuilt,
            "rebuild_events_per_s": round(rebuild),
            "repeats": repeats,
        }
    base = results["who_am_i_latency"]
    check, batch, as_of = results["check_latency"], results["batch_latency"], results["as_of"]
    replay = results["replay"]
    results["ratios"] = {
        "check_capacity_vs_who_am_i": round(
            results["capacity"]["check_per_s"] / max(results["capacity"]["who_am_i_per_s"], 1), 2
        ),
        "check_p99_vs_who_am_i": round(check["p99_ms"] / base["p99_ms"], 2),
        "check_p99_vs_bare_grpc": round(check["p99_ms"] / results["bare_grpc_latency"]["p99_ms"], 2),
        "check_cpu_vs_bare_grpc": round(
            check["service_cpu_us_per_check"]
            / max(results["bare_grpc_latency"]["service_cpu_us_per_call"], 0.1),
            2,
        ),
        "check_cpu_vs_who_am_i": round(
            check["service_cpu_us_per_check"] / max(base["service_cpu_us_per_call"], 0.1), 2
        ),
        "batch_p99_vs_who_am_i": round(batch["p99_ms"] / base["p99_ms"], 2),
        "as_of_vs_raw_read": round(
            as_of["median_ms"] / max(results["as_of_raw_read"]["median_ms"], 0.001), 2
        ),
        "fold_vs_raw_read": round(replay["fold_events_per_s"] / replay["raw_sqlite_rows_per_s"], 3),
        "rebuild_vs_raw_read": round(replay["rebuild_events_per_s"] / replay["raw_sqlite_rows_per_s"], 4),
    }
    results["targets"] = TARGETS
    # A latency measured while calls failed is not met: failures are left out of the percentiles.
    results["met"] = {
        "check_p99_ms": check["p99_ms"] <= TARGETS["check_p99_ms"] and check["failures"] == 0,
        "batch_p99_ms": batch["p99_ms"] <= TARGETS["batch_p99_ms"] and batch["failures"] == 0,
        "as_of_ms": as_of["median_ms"] <= TARGETS["as_of_ms"],
        "replay_fold_events_per_s": replay["fold_events_per_s"] >= TARGETS["replay_fold_events_per_s"],
        "replay_rebuild_events_per_s": replay["rebuild_events_per_s"]
        >= TARGETS["replay_rebuild_events_per_s"],
    }
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return results


def report(results: dict[str, Any]) -> None:
    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<52} {value:>20}  {note}", file=sys.stderr)

    ratios = results["ratios"]
    print(f"consent benchmark ({results['machine']}):", file=sys.stderr)
    seeded = results["seed"]
    line(
        "seeded: subjects / their events / heavy subject",
        f"{results['subjects']:,} / {seeded['subject_events']:,} / {seeded['heavy_events']:,}",
        f"({seeded['seed_seconds']} s)",
    )
    for key, label, ratio, cpu in (
        (
            "bare_grpc_latency",
            f"bare grpc.aio unary at {results['check_rate_per_s']}/s (floor): p50 / p99",
            "",
            "service_cpu_us_per_call",
        ),
        (
            "who_am_i_latency",
            f"WhoAmI at {results['check_rate_per_s']}/s (baseline): p50 / p99",
            "",
            "service_cpu_us_per_call",
        ),
        (
            "check_latency",
            f"CheckConsent at {results['check_rate_per_s']}/s: p50 / p99",
            f"{ratios['check_p99_vs_who_am_i']}x WhoAmI p99, {ratios['check_p99_vs_bare_grpc']}x bare gRPC p99, "
            f"{ratios['check_cpu_vs_bare_grpc']}x its CPU",
            "service_cpu_us_per_check",
        ),
        (
            "batch_latency",
            f"CheckConsentBatch of {results['batch']}, one at a time: p50 / p99",
            f"{ratios['batch_p99_vs_who_am_i']}x WhoAmI p99",
            "service_cpu_us_per_check",
        ),
    ):
        lat = results[key]
        line(
            label,
            f"{lat['p50_ms']} / {lat['p99_ms']} ms",
            f"{ratio} ({lat[cpu]} µs service CPU per {'call' if 'call' in cpu else 'check'}; "
            f"{lat['requests']} calls, {lat['failures']} failed"
            + "".join(f", {n} {kind}" for kind, n in lat["errors"].items())
            + ")",
        )
    cap = results["capacity"]
    cpu = cap["service_cpu_us_per_call"]
    line(
        f"closed loop, {cap['clients']} callers: WhoAmI / CheckConsent",
        f"{cap['who_am_i_per_s']:,} / {cap['check_per_s']:,} per s",
        f"what the service sustains ({cpu['who_am_i']} / {cpu['check']} µs service CPU per call)",
    )
    raw = results["as_of_raw_read"]
    line(f"raw SQLite read of the heavy stream ({raw['rows']:,} rows, baseline)", f"{raw['median_ms']} ms")
    as_of = results["as_of"]
    line(
        f"ConsentAsOf, {as_of['events_replayed']:,} events: median / max",
        f"{as_of['median_ms']} / {as_of['max_ms']} ms",
        f"{ratios['as_of_vs_raw_read']}x raw read",
    )
    replay = results["replay"]
    line(
        f"raw SQLite read of all {replay['events_in_log']:,} rows (baseline)",
        f"{replay['raw_sqlite_rows_per_s']:,}/s",
    )
    line(
        f"fold (LedgerState.apply) of {replay['ledger_events_folded']:,} ledger events",
        f"{replay['fold_events_per_s']:,}/s",
        f"{ratios['fold_vs_raw_read']}x raw read",
    )
    line(
        f"Projector.rebuild of the read model ({replay['rebuild_events']:,} events)",
        f"{replay['rebuild_events_per_s']:,}/s",
        f"{ratios['rebuild_vs_raw_read']}x raw read",
    )
    line("load average (1, 5, 15 min) at the end", " ".join(str(x) for x in results["load_average"]))
    say_targets(results["met"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=1000, help="ordinary subjects (9 events each)")
    parser.add_argument(
        "--events", type=int, default=10_000, help="ledger events of the heavy subject (audit replay)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each fixed-rate phase")
    parser.add_argument("--repeats", type=int, default=3, help="replay runs; the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.subjects < 1 or args.events < 1 or args.seconds <= 0 or args.repeats < 1:
        parser.error("--subjects, --events, --seconds and --repeats must be positive")
    results = run(args.subjects, args.events, args.seconds, args.repeats)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
