"""Whole-pipeline benchmark: every service as its own process under `onefold up`, events POSTed to
ingest's HTTP API at a steady rate, and what the pipeline does with them measured from the outside —
the lag of each stage over time, the latency of an event to EventResolved, SegmentEntered,
MessageSent and a webhook delivery, profile and consent reads while the load runs (beside the same
reads with no load), each service process's CPU µs per event and RSS.

    python bench/pipeline.py [--rate R] [--seconds S] [--users N] [--batch B]
                             [--profile-rate R] [--consent-rate R] [--workers SPEC] [--quick]
                             [--json] [--html PATH]
    onefold bench pipeline --json --html pipeline.html
    onefold bench pipeline --json --workers identity=2,segments=2   # the same with worker processes

The system: `onefold up --port-base 0` (a subprocess: nats-server with JetStream and the six
services, each its own process, on free ports) in a fresh temporary data dir, then with the CLI:
deploy/examples/consent.yaml, segments.yaml, journeys.yaml (`--publish`), a probe journey of this
bench (`pipeline_probe`: entered on "Probe Cart Added", one instance per cart_id, a send step at once —
email, purpose marketing, the example's `cart_reminder` template; the example's abandoned_cart waits
until 09:00 before it sends, so it cannot be timed here) and a destination `crm` (purpose marketing:
"Order Completed" with revenue >= 100, mapped with its order_id, and big_spenders_90d) whose webhook
is a receiver process of this bench (this file with `--receiver`: a minimal asyncio HTTP/1.1 server
recording the wall-clock arrival of every order_id it is sent). A source `web` gives the write key.

Probe people: `--seconds` + 2 people identified with an email and a first name before the load, their
profiles read back and marketing (every channel) granted to each through consent's GrantConsent.

Phases:

- baseline reads: for BASELINE_SECONDS with no load, identity's GetProfile (by profile id, the probe
  people in turn) at `--profile-rate`/s and consent's CheckConsent (marketing on email) at
  `--consent-rate`/s, each from its own thread, paced (a call starts at its slot, or at once when the
  previous one ended late: `late_starts`); latency = the call's round trip (p50/p95/p99);
- sustained load: `--rate` events/s for `--seconds` s from one producer thread in this process, in
  POSTs of `--batch` events to `/v1/batch` (one POST every batch/rate seconds; behind schedule it
  posts at once, and when the time is up it stops: `accepted` below `offered` means the producer —
  i.e. ingest's answers — could not keep the rate, `kept_up` false). The events, over `--users` people: identify (email, firstName, plan) 20%, "Product
  Added" with a cart_id 40%, "Order Completed" with revenue 10-300 and an order_id 40%. Accepted =
  the sum of the answers' `accepted`. Meanwhile the same reads as the baseline, and every second:
  each service's event log head (EventLogService.Head: the position of its last appended event) and
  one probe per stage, each in its own POST of one event:
  - resolved: an identify of a new person; done when identity's GetProfile finds them (the profile
    exists: identity's EventResolved of it is in its read model);
  - segment: an "Order Completed" of revenue 5,000 by a probe person not yet a big spender; done when
    segments' GetProfileSegments lists big_spenders_90d (SegmentEntered);
  - delivered: that same order; done when the receiver recorded its order_id (the destination's
    event delivery; its arrival time is the receiver's time.time());
  - sent: a "Probe Cart Added" with a new cart_id by a probe person; done when journeys' GetInstance
    of pipeline_probe shows the cart's message "sent" or "delivered" (MessageSent; "suppressed" or
    "failed" is counted as failed).
  Latency = when it was seen done minus when its POST began. One poller thread reads the oldest
  POLL_OLDEST undone probes of each stage every POLL_SECONDS: a probe's time is an upper bound (by a
  poll interval, more when probes queue behind an older one);
- drain: after the producer stops, the backlogs and heads are read every second until every
  backlog has been zero and no head has moved for STABLE_SECONDS and every probe is done (or
  DRAIN_TIMEOUT): each stage's `drain_s` = when it last had a backlog or moved its head minus the
  end of the load — the lag at the end;
- CPU and memory: each service's processes' (its worker processes together, with `--workers`) and
  nats-server's CPU time (utime + stime from /proc/PID/stat) from just before the load to the end of the drain, and its VmRSS and VmHWM after
  the drain. CPU µs per event = CPU seconds x 1e6 / events accepted; it includes the reads and probes
  served meanwhile (a few % of the calls at the default rates: an upper bound). Net of the reads:
  each process's CPU share in the baseline phase (its idle loops, and the reads it served), times
  the measured span, taken off first — per service and in total; the stable figure when other work
  shares the machine and the drain's length varies;
- producer floor: after the drain, the same producer POSTing batches back to back for FLOOR_SECONDS
  (ingest's HTTP accept rate from one client: what this producer can reach at all).

Lag over time, two ways: each service's backlog in events, sampled every second from its
EventLogService.Lag (its own events not yet relayed, plus each upstream's events not yet applied:
pending delivery or in flight), and the latency of the probe sent at each second (a stage's lag as
time). The log heads are reported beside them, as growth per second.

Targets (a 2-core machine; issue 17): the whole pipeline >= 5,000 events/s sustained with bounded
lag (every stage drained within LAG_BOUND_S of the end of the load); <= 400 µs of total service CPU
per event; GetProfile p99 <= 10 ms and CheckConsent p99 <= 2 ms while the load runs; every service
process <= 300 MB RSS (its peak, VmHWM). `met` says which were met; a sustained rate is only met if
the producer offered and ingest accepted that rate.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.contracts.eventlog.v1 import eventlog_pb2, eventlog_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.contracts.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from onefold.contracts.segments.v1 import segments_pb2, segments_pb2_grpc
from onefold.testing.measure import cpu_seconds, memory_mb, percentile, say

if str(Path(__file__).resolve().parent) not in sys.path:  # `onefold bench` loads this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import _http_receiver as http_receiver  # (bench/_http_receiver.py: the receiver process)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "deploy" / "examples"
ONEFOLD = [sys.executable, "-m", "onefold.cli"]
TOKEN = re.compile(r"ofk_[0-9a-f]{16}_[A-Za-z0-9_-]+")
SERVICES = ("ingest", "identity", "consent", "segments", "journeys", "destinations")
STAGES = ("resolved", "segment", "sent", "delivered")
STAGE_NAMES = {
    "resolved": "event -> EventResolved",
    "segment": "event -> SegmentEntered",
    "sent": "event -> MessageSent",
    "delivered": "event -> webhook delivery",
}
PROBE_JOURNEY = "pipeline_probe"
BIG_SPENDERS = "big_spenders_90d"
BASELINE_SECONDS = 5.0
POLL_SECONDS = 0.05
POLL_OLDEST = 4
STABLE_SECONDS = 3
DRAIN_TIMEOUT = 180.0
FLOOR_SECONDS = 3.0
LAG_BOUND_S = 10.0
TARGETS = {
    "sustained_events_per_s": 5000,
    "total_service_cpu_us_per_event": 400.0,
    "get_profile_p99_ms": 10.0,
    "check_consent_p99_ms": 2.0,
    "process_rss_mb": 300.0,
}

PROBE_FILE = f"""\
kind: Journey
name: {PROBE_JOURNEY}
description: The pipeline bench's probe, a reminder sent at once
entry: {{event: Probe Cart Added, entity_key: cart_id, reentry: after_exit}}
steps:
  - name: remind
    send: {{channel: email, template: cart_reminder, purpose: marketing}}
"""

DESTINATION_FILE = """\
kind: Destination
name: crm
description: Large orders and big spenders, to the bench's receiver
purpose: marketing
webhook: {{url: "{url}"}}
events:
  - type: track
    name: Order Completed
    where: [{{field: properties.revenue, op: gte, value: 100}}]
    mapping: {{order_id: properties.order_id, revenue: properties.revenue}}
segments: [big_spenders_90d]
"""


# --- the receiver (a separate process: this file with --receiver) ----------------------------------


def _order_ids(document: Any) -> Iterator[str]:
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "order_id" and isinstance(value, str):
                yield value
            else:
                yield from _order_ids(value)
    elif isinstance(document, list):
        for value in document:
            yield from _order_ids(value)


class _Receiver:
    """Records the first arrival (time.time()) of every order_id POSTed to it; answers 200."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        now = time.time()
        if method == "POST":
            self.requests += 1
            with contextlib.suppress(ValueError):
                for order in _order_ids(json.loads(body)):
                    self.arrivals.setdefault(order, now)
            return b"{}"
        if path.startswith("/arrivals"):
            prefix = path.partition("?prefix=")[2]
            return json.dumps({k: v for k, v in self.arrivals.items() if k.startswith(prefix)}).encode()
        if path == "/stats":
            return json.dumps({"orders": len(self.arrivals), "requests": self.requests}).encode()
        return b"{}"


# --- /proc ------------------------------------------------------------------------------------------


def process_pids(data_dir: Path) -> dict[str, int]:
    """Every process `onefold up` runs, by name ("segments", "segments-2" for a second worker, "nats"),
    as its endpoints file lists them (kept current across restarts)."""
    state = json.loads((data_dir / "run" / "endpoints.json").read_text())
    return {name: int(pid) for name, pid in state["pids"].items()}


def service_of(process: str) -> str:
    """The service a process belongs to: "segments-2" is a worker of segments."""
    return process.split("-")[0]


# --- the system -------------------------------------------------------------------------------------


@dataclass
class System:
    directory: Path
    up: subprocess.Popen[bytes]
    receiver: subprocess.Popen[str]
    receiver_url: str
    token: str
    endpoints: dict[str, Any]
    pids: dict[str, int]
    write_key: str = ""
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def batch_url(self) -> str:
        return f"{self.endpoints['http']['ingest']}/v1/batch"

    def channel(self, service: str) -> grpc.Channel:
        if service not in self.channels:
            self.channels[service] = grpc.insecure_channel(self.endpoints["services"][service])
        return self.channels[service]

    def cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [*ONEFOLD, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "ONEFOLD_TOKEN": self.token, "COLUMNS": "250"},
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"onefold {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def receiver_get(self, path: str) -> Any:
        return httpx.get(self.receiver_url.removesuffix("/hooks") + path, timeout=30).json()

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGINT)
            try:
                self.up.wait(60)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait(10)
        self.receiver.terminate()
        self.receiver.wait(10)


def start_system(directory: Path, workers: str = "") -> System:
    receiver, port = http_receiver.start(Path(__file__).resolve())
    receiver_url = f"http://127.0.0.1:{port}/hooks"
    output = directory / "up.out"
    with output.open("wb") as out:
        up = subprocess.Popen(
            [
                *ONEFOLD,
                "up",
                "--data-dir",
                str(directory / "data"),
                "--port-base",
                "0",
                *(["--workers", workers] if workers else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    deadline = time.monotonic() + 180
    while "Ctrl-C stops everything" not in (text := output.read_text()):
        if up.poll() is not None or time.monotonic() > deadline:
            receiver.terminate()
            if up.poll() is None:
                up.kill()
            raise RuntimeError(f"onefold up did not start:\n{text}")
        time.sleep(0.2)
    endpoints = json.loads((directory / "data" / "run" / "endpoints.json").read_text())
    pids = process_pids(directory / "data")
    return System(directory, up, receiver, receiver_url, TOKEN.findall(text)[0], endpoints, pids)


def configure(system: System) -> None:
    system.cli("apply", "-f", str(EXAMPLES / "consent.yaml"))
    system.cli("apply", "-f", str(EXAMPLES / "segments.yaml"))
    system.cli("apply", "-f", str(EXAMPLES / "journeys.yaml"), "--publish")
    probe = system.directory / "probe-journey.yaml"
    probe.write_text(PROBE_FILE)
    system.cli("apply", "-f", str(probe), "--publish")
    destinations = system.directory / "destinations.yaml"
    destinations.write_text(DESTINATION_FILE.format(url=system.receiver_url))
    system.cli("apply", "-f", str(destinations))
    system.write_key = json.loads(system.cli("sources", "create", "web", "--json"))["write_key"]


def post(client: httpx.Client, system: System, events: list[dict[str, Any]]) -> int:
    answer = client.post(system.batch_url, json={"batch": events}, auth=(system.write_key, ""), timeout=60)
    if answer.status_code != 200:
        raise RuntimeError(f"ingest answered {answer.status_code}: {answer.text[:500]}")
    return int(answer.json()["accepted"])


def profile_ref(user: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type="user_id", value=user))


def find_profile(system: System, user: str) -> str:
    stub = identity_pb2_grpc.IdentityServiceStub(system.channel("identity"))
    try:
        found = stub.GetProfile(
            identity_pb2.GetProfileRequest(profile=profile_ref(user)), metadata=system.auth, timeout=10
        )
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return ""
        raise
    return str(found.profile_id)


def wait_until(probe: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return found


def probe_people(system: System, count: int, run_id: str) -> list[tuple[str, str]]:
    """`count` people identified with an email and consenting to marketing: (user_id, profile_id)."""
    users = [f"probe-{run_id}-{i}" for i in range(count)]
    with httpx.Client() as client:
        post(
            client,
            system,
            [
                {
                    "messageId": uuid.uuid4().hex,
                    "type": "identify",
                    "userId": user,
                    "traits": {"email": f"{user}@example.com", "firstName": f"Probe{i}"},
                }
                for i, user in enumerate(users)
            ],
        )
    profiles = [wait_until(lambda u=user: find_profile(system, u), f"{user}'s profile") for user in users]
    stub = consent_pb2_grpc.ConsentServiceStub(system.channel("consent"))
    for profile in profiles:
        stub.GrantConsent(
            consent_pb2.GrantConsentRequest(
                subject=identity_pb2.ProfileRef(profile_id=profile),
                purpose_ids=["marketing"],
                proof=consent_pb2.Proof(notice_id="privacy_en", notice_version="1", source="bench"),
            ),
            metadata=system.auth,
            timeout=30,
        )
    return list(zip(users, profiles, strict=True))


# --- reads ------------------------------------------------------------------------------------------


class Reader(threading.Thread):
    """One read kind at a paced rate: a call starts at its slot, or at once when the previous ended late."""

    def __init__(self, rate: float, call: Callable[[int], None]) -> None:
        super().__init__(daemon=True)
        self.rate, self.call = rate, call
        self.stop_event = threading.Event()
        self.latencies: list[float] = []
        self.errors = 0
        self.late_starts = 0
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        index = 0
        while not self.stop_event.is_set():
            slot = self.started_at + index / self.rate
            now = time.monotonic()
            if slot > now:
                self.stop_event.wait(slot - now)
                if self.stop_event.is_set():
                    break
            elif now - slot > 1 / self.rate:
                self.late_starts += 1
            began = time.perf_counter()
            try:
                self.call(index)
                self.latencies.append((time.perf_counter() - began) * 1000)
            except grpc.RpcError:
                self.errors += 1
            index += 1
        self.ended_at = time.monotonic()

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(30)
        wall = max(self.ended_at - self.started_at, 1e-9)
        return {
            "target_per_s": self.rate,
            "calls": len(self.latencies),
            "errors": self.errors,
            "late_starts": self.late_starts,
            "achieved_per_s": round(len(self.latencies) / wall, 1),
            **{f"p{q}_ms": round(percentile(self.latencies, q), 2) for q in (50, 95, 99)},
            "max_ms": round(max(self.latencies, default=float("nan")), 2),
        }


def start_readers(system: System, people: list[tuple[str, str]], args: argparse.Namespace) -> list[Reader]:
    identity = identity_pb2_grpc.IdentityServiceStub(system.channel("identity"))
    consent = consent_pb2_grpc.ConsentServiceStub(system.channel("consent"))
    profiles = [p for _, p in people]

    def get_profile(i: int) -> None:
        request = identity_pb2.GetProfileRequest(
            profile=identity_pb2.ProfileRef(profile_id=profiles[i % len(profiles)])
        )
        identity.GetProfile(request, metadata=system.auth, timeout=30)

    def check_consent(i: int) -> None:
        request = consent_pb2.CheckConsentRequest(
            subject=identity_pb2.ProfileRef(profile_id=profiles[i % len(profiles)]),
            purpose_id="marketing",
            channel="email",
        )
        consent.CheckConsent(request, metadata=system.auth, timeout=30)

    readers = [Reader(args.profile_rate, get_profile), Reader(args.consent_rate, check_consent)]
    for reader in readers:
        reader.start()
    return readers


def stop_readers(readers: list[Reader]) -> dict[str, Any]:
    return {"get_profile": readers[0].stop(), "check_consent": readers[1].stop()}


# --- heads and probes -------------------------------------------------------------------------------


def backlogs(system: System) -> tuple[dict[str, int], dict[str, int]]:
    """(head, backlog) per service from its EventLogService.Lag: the backlog is its own events not
    yet relayed plus each upstream's events not yet applied (pending delivery or in flight); -1 when
    the service did not answer."""
    heads, backlog = {}, {}
    for service in SERVICES:
        stub = eventlog_pb2_grpc.EventLogServiceStub(system.channel(service))
        try:
            answer = stub.Lag(eventlog_pb2.LagRequest(), metadata=system.auth, timeout=10)
        except grpc.RpcError:
            heads[service] = backlog[service] = -1
            continue
        heads[service] = int(answer.head_position)
        backlog[service] = max(0, answer.head_position - answer.published_position) + sum(
            c.pending + c.ack_pending for c in answer.consumers
        )
    return heads, backlog


@dataclass
class Probe:
    stage: str
    key: str  # the user, order id or cart id it waits for
    profile: str
    sent_at: float  # time.time() when its POST began
    done_at: float = 0.0
    failed: str = ""


class Prober:
    """Sends one probe per stage a second and polls the oldest undone ones of each stage."""

    def __init__(self, system: System, people: list[tuple[str, str]], run_id: str) -> None:
        self.system, self.people, self.run_id = system, people, run_id
        self.probes: list[Probe] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.client = httpx.Client()
        self.sent = 0
        self.identity = identity_pb2_grpc.IdentityServiceStub(system.channel("identity"))
        self.segments = segments_pb2_grpc.SegmentsServiceStub(system.channel("segments"))
        self.journeys = journeys_pb2_grpc.JourneysServiceStub(system.channel("journeys"))
        self.poller = threading.Thread(target=self.poll, daemon=True)
        self.poller.start()

    def send_round(self) -> None:
        i = self.sent
        if i >= len(self.people):
            return
        self.sent += 1
        user, profile = self.people[i]
        fresh = f"fresh-{self.run_id}-{i}"
        order, cart = f"probe-order-{self.run_id}-{i}", f"probe-cart-{self.run_id}-{i}"
        events = [
            ("resolved", fresh, "", {"type": "identify", "userId": fresh, "traits": {"plan": "probe"}}),
            (
                "segment",
                profile,
                profile,
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "properties": {"order_id": order, "revenue": 5000},
                },
            ),
            (
                "sent",
                cart,
                profile,
                {
                    "type": "track",
                    "userId": user,
                    "event": "Probe Cart Added",
                    "properties": {"cart_id": cart},
                },
            ),
        ]
        for stage, key, owner, event in events:
            sent_at = time.time()
            post(self.client, self.system, [{"messageId": uuid.uuid4().hex, **event}])
            with self.lock:
                self.probes.append(Probe(stage, key, owner, sent_at))
                if stage == "segment":  # the same order, delivered to the webhook receiver
                    self.probes.append(Probe("delivered", order, owner, sent_at))

    def check(self, probe: Probe) -> None:
        try:
            if probe.stage == "resolved":
                request = identity_pb2.GetProfileRequest(profile=profile_ref(probe.key))
                self.identity.GetProfile(request, metadata=self.system.auth, timeout=10)
                probe.done_at = time.time()
            elif probe.stage == "segment":
                found = self.segments.GetProfileSegments(
                    segments_pb2.GetProfileSegmentsRequest(profile_id=probe.profile),
                    metadata=self.system.auth,
                    timeout=10,
                )
                if any(m.segment == BIG_SPENDERS for m in found.segments):
                    probe.done_at = time.time()
            elif probe.stage == "sent":
                instance = self.journeys.GetInstance(
                    journeys_pb2.GetInstanceRequest(
                        journey=PROBE_JOURNEY, profile_id=probe.profile, entity_key=probe.key
                    ),
                    metadata=self.system.auth,
                    timeout=10,
                )
                status = instance.messages[0].status if instance.messages else ""
                if status in ("sent", "delivered"):
                    probe.done_at = time.time()
                elif status in ("suppressed", "failed"):
                    probe.done_at, probe.failed = time.time(), status
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def poll(self) -> None:
        while not self.stop_event.is_set():
            with self.lock:
                waiting = [p for p in self.probes if not p.done_at and p.stage != "delivered"]
            for stage in ("resolved", "segment", "sent"):
                for probe in [p for p in waiting if p.stage == stage][:POLL_OLDEST]:
                    with contextlib.suppress(grpc.RpcError):
                        self.check(probe)
            self.stop_event.wait(POLL_SECONDS)

    def collect_deliveries(self) -> None:
        arrivals = self.system.receiver_get(f"/arrivals?prefix=probe-order-{self.run_id}-")
        with self.lock:
            for probe in self.probes:
                if probe.stage == "delivered" and probe.key in arrivals:
                    probe.done_at = float(arrivals[probe.key])

    def undone(self) -> int:
        self.collect_deliveries()
        with self.lock:
            return sum(1 for p in self.probes if not p.done_at)

    def close(self) -> None:
        self.stop_event.set()
        self.poller.join(10)
        self.client.close()

    def results(self, load_began: float) -> dict[str, Any]:
        self.collect_deliveries()
        found: dict[str, Any] = {}
        for stage in STAGES:
            probes = [p for p in self.probes if p.stage == stage]
            done = [p for p in probes if p.done_at and not p.failed]
            latencies = [(p.done_at - p.sent_at) * 1000 for p in done]
            found[stage] = {
                "what": STAGE_NAMES[stage],
                "probes": len(probes),
                "done": len(done),
                "failed": sum(1 for p in probes if p.failed),
                "unfinished": sum(1 for p in probes if not p.done_at),
                **{f"p{q}_ms": round(percentile(latencies, q), 1) for q in (50, 95, 99)},
                "max_ms": round(max(latencies, default=float("nan")), 1),
                "over_time": [
                    [round(p.sent_at - load_began, 2), round((p.done_at - p.sent_at) * 1000, 1)] for p in done
                ],
            }
        return found


# --- the load ---------------------------------------------------------------------------------------


def make_events(rng: random.Random, users: int, count: int, run_id: str) -> list[dict[str, Any]]:
    events = []
    for _ in range(count):
        u = rng.randrange(users)
        user = f"user-{run_id}-{u}"
        roll = rng.random()
        if roll < 0.2:
            event: dict[str, Any] = {
                "type": "identify",
                "userId": user,
                "traits": {"email": f"{user}@example.com", "firstName": f"U{u}", "plan": "basic"},
            }
        elif roll < 0.6:
            event = {
                "type": "track",
                "userId": user,
                "event": "Product Added",
                "properties": {"cart_id": f"cart-{u}-{rng.randrange(4)}", "sku": f"sku-{rng.randrange(50)}"},
            }
        else:
            event = {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "properties": {"order_id": uuid.uuid4().hex[:16], "revenue": rng.randrange(10, 300)},
            }
        events.append({"messageId": uuid.uuid4().hex, **event})
    return events


class Producer(threading.Thread):
    """POSTs batches at `rate` events/s for `seconds` (or back to back: rate 0) from one client."""

    def __init__(
        self, system: System, args: argparse.Namespace, run_id: str, rate: float, seconds: float
    ) -> None:
        super().__init__(daemon=True)
        self.system, self.rate, self.seconds = system, rate, seconds
        self.batch, self.users, self.run_id = args.batch, args.users, run_id
        self.rng = random.Random(args.seed)
        self.accepted = self.posts = self.late_posts = 0
        self.post_ms: list[float] = []
        self.began = self.ended = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client() as client:
                self.began = time.monotonic()
                total = int(self.rate * self.seconds) if self.rate else 0
                while True:
                    if self.rate:
                        # The load lasts `seconds`: a producer behind schedule offers less, not longer.
                        if self.accepted >= total or time.monotonic() - self.began >= self.seconds:
                            break
                        slot = self.began + self.accepted / self.rate
                        now = time.monotonic()
                        if slot > now:
                            time.sleep(slot - now)
                        elif now - slot > self.batch / self.rate:
                            self.late_posts += 1
                        size = min(self.batch, total - self.accepted)
                    else:
                        if time.monotonic() - self.began >= self.seconds:
                            break
                        size = self.batch
                    events = make_events(self.rng, self.users, size, self.run_id)
                    began = time.perf_counter()
                    self.accepted += post(client, self.system, events)
                    self.post_ms.append((time.perf_counter() - began) * 1000)
                    self.posts += 1
        except BaseException as error:  # reported by the phase
            self.error = error
        self.ended = time.monotonic()

    def figures(self) -> dict[str, Any]:
        wall = max(self.ended - self.began, 1e-9)
        return {
            "accepted": self.accepted,
            "posts": self.posts,
            "batch": self.batch,
            "seconds": round(wall, 2),
            "offered": int(self.rate * self.seconds) if self.rate else None,
            "events_per_s": round(self.accepted / wall),
            "late_posts": self.late_posts,
            "post_p50_ms": round(percentile(self.post_ms, 50), 1),
            "post_p99_ms": round(percentile(self.post_ms, 99), 1),
        }


def cpu_snapshot(system: System) -> dict[str, float]:
    """CPU seconds per service (its worker processes together) and of nats-server."""
    spent: dict[str, float] = {}
    for name, pid in system.pids.items():
        spent[service_of(name)] = spent.get(service_of(name), 0.0) + cpu_seconds(pid)
    return spent


def sustained(
    system: System, people: list[tuple[str, str]], args: argparse.Namespace, run_id: str
) -> dict[str, Any]:
    cpu_before = cpu_snapshot(system)
    readers = start_readers(system, people, args)
    prober = Prober(system, people, run_id)
    samples: list[dict[str, Any]] = []
    start_heads, _ = backlogs(system)
    bench_cpu = time.process_time()
    began_wall, began = time.time(), time.monotonic()
    producer = Producer(system, args, run_id, args.rate, args.seconds)
    producer.start()
    next_tick = began

    def sample() -> tuple[dict[str, int], dict[str, int]]:
        heads, backlog = backlogs(system)
        samples.append(
            {
                "t": round(time.monotonic() - began, 2),
                "accepted": producer.accepted,
                **heads,
                "backlog": backlog,
            }
        )
        return heads, backlog

    while producer.is_alive():
        next_tick += 1.0
        prober.send_round()
        _, backlog = sample()
        say(f"load {samples[-1]['t']:.0f}s: accepted {producer.accepted:,}, backlog {backlog}")
        time.sleep(max(0.0, next_tick - time.monotonic()))
    load_ended = time.monotonic()
    bench_cpu = time.process_time() - bench_cpu  # the producer, readers and poller: on the same 2 cores
    if producer.error:
        raise RuntimeError(f"the producer failed: {producer.error}") from producer.error
    reads = stop_readers(readers)
    # Drain: sampled every second until every backlog has been zero and no head has moved for
    # STABLE_SECONDS, and every probe is done. A stage's drain time is when it last had a backlog
    # or moved its head.
    last_busy = {service: load_ended for service in SERVICES}
    previous, _ = backlogs(system)
    stable = 0
    settled_cpu: dict[str, float] | None = None
    settled_at = load_ended
    while time.monotonic() - load_ended < DRAIN_TIMEOUT:
        time.sleep(1.0)
        now_heads, backlog = sample()
        busy = [s for s in SERVICES if now_heads[s] != previous[s] or backlog[s] != 0]
        for service in busy:
            last_busy[service] = time.monotonic()
        previous = now_heads
        stable = 0 if busy else stable + 1
        if busy or settled_cpu is None:  # the CPU up to the last busy second, not the idle after
            settled_cpu, settled_at = cpu_snapshot(system), time.monotonic()
        undone = prober.undone()
        say(f"drain {time.monotonic() - load_ended:.0f}s: {undone} probes undone, backlog {backlog}")
        if stable >= STABLE_SECONDS and not undone:
            break
    drained = time.monotonic()
    prober.close()
    cpu_after = settled_cpu or cpu_snapshot(system)
    load = producer.figures()
    cpu = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_after}
    measured_s = settled_at - began
    services_cpu = sum(v for k, v in cpu.items() if k in SERVICES)
    accepted = max(load["accepted"], 1)
    return {
        "load": load,
        "target_rate_per_s": args.rate,
        "target_seconds": args.seconds,
        "kept_up": load["events_per_s"] >= 0.95 * args.rate,
        "bench_process_cpu_share": round(bench_cpu / max(load_ended - began, 1e-9), 2),
        "drain_s": {s: round(max(0.0, last_busy[s] - load_ended), 1) for s in SERVICES},
        "drain_timed_out": drained - load_ended >= DRAIN_TIMEOUT,
        "end_to_end_seconds": round(drained - began, 1),
        "samples": samples,
        "head_growth": {s: previous[s] - start_heads[s] for s in SERVICES},
        "probe_rounds": prober.sent,  # one a second while the load ran, fewer on a slow machine
        "probes": prober.results(began_wall),
        "reads": reads,
        "cpu_seconds": cpu,
        "cpu_us_per_event": {k: round(v * 1e6 / accepted) for k, v in cpu.items()},
        "total_service_cpu_us_per_event": round(services_cpu * 1e6 / accepted),
        "cpu_measured_seconds": round(measured_s, 1),
        "memory": {name: memory_mb(pid) for name, pid in system.pids.items()},
    }


def baseline_reads(system: System, people: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    """The reads with no load, and the services' CPU meanwhile (the reads' and the idle loops' cost)."""
    cpu_before, began = cpu_snapshot(system), time.monotonic()
    readers = start_readers(system, people, args)
    time.sleep(args.baseline_seconds)
    found = stop_readers(readers)
    wall, cpu_after = time.monotonic() - began, cpu_snapshot(system)
    found["service_cpu_share"] = round(sum(cpu_after[s] - cpu_before[s] for s in SERVICES) / wall, 3)
    found["cpu_share"] = {s: round((cpu_after[s] - cpu_before[s]) / wall, 4) for s in SERVICES}
    return found


def producer_floor(system: System, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    producer = Producer(system, args, f"floor-{run_id}", 0, FLOOR_SECONDS if not args.quick else 1.0)
    producer.run()
    if producer.error:
        raise RuntimeError(f"the producer failed: {producer.error}") from producer.error
    return producer.figures()


# --- run and report ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    directory = Path(tempfile.mkdtemp(prefix="onefold-bench-pipeline-"))
    try:
        say("starting onefold up (nats-server and six services) ...")
        started = time.monotonic()
        system = start_system(directory, args.workers)
        try:
            say(f"up in {time.monotonic() - started:.1f}s; applying the examples and the probe journey ...")
            configure(system)
            people = probe_people(system, int(args.seconds) + 2, run_id)
            say(f"{len(people)} probe people with consent; baseline reads for {args.baseline_seconds}s ...")
            baseline = baseline_reads(system, people, args)
            say(f"sustained load: {args.rate:,} events/s for {args.seconds}s ...")
            load = sustained(system, people, args, run_id)
            say("producer floor: POSTs back to back ...")
            floor = producer_floor(system, args, run_id)
            memory_after = {name: memory_mb(pid) for name, pid in system.pids.items()}
            restarted = process_pids(system.data_dir) != system.pids
        finally:
            system.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return results_of(args, baseline, load, floor, memory_after, restarted)


def results_of(
    args: argparse.Namespace,
    baseline: dict[str, Any],
    load: dict[str, Any],
    floor: dict[str, Any],
    memory_after: dict[str, Any],
    restarted: bool,
) -> dict[str, Any]:
    service_peak = max(m["peak_rss_mb"] for name, m in load["memory"].items() if service_of(name) in SERVICES)
    bounded = not load["drain_timed_out"] and max(load["drain_s"].values()) <= LAG_BOUND_S
    reads = load["reads"]
    services_cpu = sum(load["cpu_seconds"][s] for s in SERVICES)
    idle_cpu = baseline["service_cpu_share"] * load["cpu_measured_seconds"]
    net_us = round(max(0.0, services_cpu - idle_cpu) * 1e6 / max(load["load"]["accepted"], 1))
    # Per service likewise: a service's own baseline share taken off its CPU, so its figure does not
    # move with how long the drain (the slowest stage) kept every process's idle loops running.
    net_by_service = {
        s: round(
            max(0.0, load["cpu_seconds"][s] - baseline["cpu_share"][s] * load["cpu_measured_seconds"])
            * 1e6
            / max(load["load"]["accepted"], 1)
        )
        for s in SERVICES
    }
    figures = {
        "sustained_events_per_s": load["load"]["events_per_s"],
        "total_service_cpu_us_per_event": load["total_service_cpu_us_per_event"],
        "get_profile_p99_ms": reads["get_profile"]["p99_ms"],
        "check_consent_p99_ms": reads["check_consent"]["p99_ms"],
        "process_rss_mb": service_peak,
    }
    met = {
        "sustained_events_per_s": figures["sustained_events_per_s"] >= TARGETS["sustained_events_per_s"]
        and bounded,
        **{k: bool(figures[k] <= TARGETS[k]) for k in TARGETS if k != "sustained_events_per_s"},
    }
    return {
        "benchmark": "pipeline",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        "command": "onefold bench pipeline "
        + " ".join(sys.argv[1:] if sys.argv[0].endswith("pipeline.py") else []),
        "sizes": {
            "rate_per_s": args.rate,
            "seconds": args.seconds,
            "events": int(args.rate * args.seconds),
            "users": args.users,
            "batch": args.batch,
            "profile_reads_per_s": args.profile_rate,
            "consent_reads_per_s": args.consent_rate,
            "baseline_seconds": args.baseline_seconds,
            "quick": args.quick,
            "workers": args.workers or "one process per service",
        },
        "path": (
            "producer thread in the bench -> HTTP POST /v1/batch (one client, keep-alive) -> ingest -> "
            "JetStream -> identity -> segments, journeys, destinations (each its own process under "
            "`onefold up`) -> the webhook receiver process. Lag per stage = its backlog in events (Lag: "
            "not yet relayed + each upstream's pending and in flight), and the latency of the probe sent "
            "at that second; log heads count different events per service, so they are reported as "
            "growth, not subtracted. Resolved/segment/"
            "sent times are upper bounds by the poll interval (50 ms, oldest 4 undone probes per "
            "stage); delivered is the receiver's own clock. CPU per event includes the reads and "
            "probes served during the load. The bench's producer, readers and poller run in one "
            "Python process on the same 2 cores as the services."
        ),
        "baseline_reads": baseline,
        "sustained": load,
        "producer_floor": floor,
        "ratios": {
            "accepted_vs_producer_floor": round(
                load["load"]["events_per_s"] / max(floor["events_per_s"], 1), 2
            ),
            "get_profile_p99_vs_idle": round(
                reads["get_profile"]["p99_ms"] / max(baseline["get_profile"]["p99_ms"], 1e-9), 1
            ),
            "check_consent_p99_vs_idle": round(
                reads["check_consent"]["p99_ms"] / max(baseline["check_consent"]["p99_ms"], 1e-9), 1
            ),
        },
        # The services' CPU while only the reads ran (baseline), scaled to the measured span and
        # taken off: what the events themselves cost, beside the gross figure the target is held to.
        "total_service_cpu_us_per_event_net_of_reads": net_us,
        "cpu_us_per_event_net_of_reads": net_by_service,
        "lag_bounded": bounded,
        "lag_bound_s": LAG_BOUND_S,
        "services_restarted": restarted,
        "memory_after_floor": memory_after,
        "bench_process": memory_mb(),
        "figures": figures,
        "targets": TARGETS,
        "met": met,
    }


def report(results: dict[str, Any]) -> None:
    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<58} {value:>22}  {note}", file=sys.stderr)

    load = results["sustained"]
    print(f"pipeline benchmark ({results['machine']}):", file=sys.stderr)
    produced, floor = load["load"], results["producer_floor"]
    line(
        f"load: {results['sizes']['rate_per_s']:,}/s offered for {results['sizes']['seconds']}s, batches of "
        f"{produced['batch']}",
        f"{produced['events_per_s']:,}/s accepted",
        f"{produced['accepted']:,} events, late POSTs {produced['late_posts']}, POST p99 {produced['post_p99_ms']} ms",
    )
    line(
        "producer floor: POSTs back to back, one client",
        f"{floor['events_per_s']:,}/s",
        f"the bench process used {load['bench_process_cpu_share']} CPU during the load",
    )
    line(
        "drain after the load (s), per service",
        json.dumps(load["drain_s"]),
        f"bounded: {results['lag_bounded']}",
    )
    for probe in load["probes"].values():
        line(
            f"{probe['what']} ({probe['done']}/{probe['probes']} probes)",
            f"p50 {probe['p50_ms']} / p99 {probe['p99_ms']} ms",
            f"max {probe['max_ms']} ms, failed {probe['failed']}, unfinished {probe['unfinished']}",
        )
    for kind in ("get_profile", "check_consent"):
        under, idle = load["reads"][kind], results["baseline_reads"][kind]
        line(
            f"{kind} at {under['target_per_s']}/s under load (idle)",
            f"p50 {under['p50_ms']} / p99 {under['p99_ms']} ms",
            f"idle p50 {idle['p50_ms']} / p99 {idle['p99_ms']} ms; achieved {under['achieved_per_s']}/s",
        )
    line(
        "service CPU µs per event (total)",
        f"{load['total_service_cpu_us_per_event']:,}",
        json.dumps(load["cpu_us_per_event"]),
    )
    line(
        "  net of the reads' and idle CPU (baseline share x span)",
        f"{results['total_service_cpu_us_per_event_net_of_reads']:,}",
        f"baseline service CPU share {results['baseline_reads']['service_cpu_share']}, "
        f"span {load['cpu_measured_seconds']} s",
    )
    line(
        "  per service, net of its own baseline share",
        "",
        json.dumps(results["cpu_us_per_event_net_of_reads"]),
    )
    line("RSS / peak MB per process", "", json.dumps(load["memory"]))
    print(
        "  targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in results["met"].items()),
        file=sys.stderr,
    )


# --- the HTML report ----------------------------------------------------------------------------------

COLOURS = {
    "resolved": "#1f77b4",
    "segment": "#2ca02c",
    "sent": "#d62728",
    "delivered": "#9467bd",
    "ingest": "#8c564b",
    "identity": "#1f77b4",
    "consent": "#e377c2",
    "segments": "#2ca02c",
    "journeys": "#d62728",
    "destinations": "#9467bd",
}


def line_chart(series: dict[str, list[list[float]]], x_label: str, y_label: str) -> str:
    width, height, left, bottom = 720, 300, 60, 40
    points = [p for values in series.values() for p in values]
    x_max = max((p[0] for p in points), default=1.0) or 1.0
    y_max = max((p[1] for p in points), default=1.0) or 1.0
    plot_w, plot_h = width - left - 20, height - bottom - 20

    def xy(x: float, y: float) -> str:
        return f"{left + x / x_max * plot_w:.1f},{20 + plot_h - y / y_max * plot_h:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
        f'<line x1="{left}" y1="{20 + plot_h}" x2="{left + plot_w}" y2="{20 + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="20" x2="{left}" y2="{20 + plot_h}" stroke="#333"/>',
        f'<text x="{left + plot_w / 2}" y="{height - 5}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{20 + plot_h / 2}" transform="rotate(-90 12 {20 + plot_h / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>',
    ]
    for i in range(5):
        y = y_max * i / 4
        parts.append(
            f'<text x="{left - 4}" y="{20 + plot_h - plot_h * i / 4 + 4:.1f}" text-anchor="end">{y:,.0f}</text>'
        )
        x = x_max * i / 4
        parts.append(
            f'<text x="{left + plot_w * i / 4:.1f}" y="{20 + plot_h + 14}" text-anchor="middle">{x:,.0f}</text>'
        )
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS.get(name, "#555")
        if values:
            path = " ".join(xy(x, y) for x, y in sorted(values))
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        parts.append(
            f'<text x="{left + 10 + plot_w / len(series) * n:.0f}" y="14" fill="{colour}">'
            f"{html.escape(STAGE_NAMES.get(name, name))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(probes: dict[str, Any]) -> str:
    width, height, left, bottom = 720, 300, 60, 40
    plot_w, plot_h = width - left - 20, height - bottom - 30
    values = [(s, q, probes[s][f"p{q}_ms"]) for s in STAGES for q in (50, 95, 99)]
    finite = [v for _, _, v in values if v == v]
    y_max = max(finite, default=1.0) or 1.0
    bar = plot_w / (len(values) + len(STAGES))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
        f'<line x1="{left}" y1="{30 + plot_h}" x2="{left + plot_w}" y2="{30 + plot_h}" stroke="#333"/>',
        f'<text x="12" y="{30 + plot_h / 2}" transform="rotate(-90 12 {30 + plot_h / 2})" text-anchor="middle">ms</text>',
    ]
    x = left + bar / 2
    for stage in STAGES:
        for q in (50, 95, 99):
            value = probes[stage][f"p{q}_ms"]
            h = (value / y_max * plot_h) if value == value else 0
            opacity = {50: 0.45, 95: 0.7, 99: 1.0}[q]
            parts.append(
                f'<rect x="{x:.1f}" y="{30 + plot_h - h:.1f}" width="{bar * 0.9:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[stage]}" fill-opacity="{opacity}"><title>{STAGE_NAMES[stage]} p{q}: {value} ms</title></rect>'
            )
            parts.append(
                f'<text x="{x + bar * 0.45:.1f}" y="{26 + plot_h - h:.1f}" text-anchor="middle">{value:,.0f}</text>'
            )
            parts.append(f'<text x="{x + bar * 0.45:.1f}" y="{44 + plot_h}" text-anchor="middle">p{q}</text>')
            x += bar
        parts.append(
            f'<text x="{x - bar * 1.5:.1f}" y="{58 + plot_h}" text-anchor="middle" fill="{COLOURS[stage]}">{stage}</text>'
        )
        x += bar
    parts.append("</svg>")
    return "".join(parts)


def table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def write_html(results: dict[str, Any], path: Path) -> None:
    load = results["sustained"]
    probes = load["probes"]
    lag = {s: [[t, ms / 1000] for t, ms in probes[s]["over_time"]] for s in STAGES}
    samples = load["samples"]
    backlog = {s: [[x["t"], x["backlog"][s]] for x in samples if x["backlog"][s] >= 0] for s in SERVICES}
    growth_rows = []
    for previous, sample in itertools.pairwise(samples):
        span = max(sample["t"] - previous["t"], 1e-9)
        growth_rows.append(
            [sample["t"], sample["accepted"], *(round((sample[s] - previous[s]) / span) for s in SERVICES)]
        )
    target_rows = [
        [k, results["figures"][k], TARGETS[k], "met" if results["met"][k] else "NOT met"] for k in TARGETS
    ]
    probe_rows = [
        [
            STAGE_NAMES[s],
            p["probes"],
            p["done"],
            p["failed"],
            p["p50_ms"],
            p["p95_ms"],
            p["p99_ms"],
            p["max_ms"],
        ]
        for s, p in probes.items()
    ]
    read_rows = [
        [
            kind,
            r["target_per_s"],
            r["achieved_per_s"],
            results["baseline_reads"][kind]["p50_ms"],
            results["baseline_reads"][kind]["p99_ms"],
            r["p50_ms"],
            r["p99_ms"],
            r["late_starts"],
        ]
        for kind, r in load["reads"].items()
    ]
    process_rows = [
        [name, load["cpu_seconds"][name], load["cpu_us_per_event"][name], m["rss_mb"], m["peak_rss_mb"]]
        for name, m in load["memory"].items()
    ]
    produced, floor = load["load"], results["producer_floor"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Onefold pipeline benchmark</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}</style></head><body>
<h1>Onefold whole-pipeline benchmark</h1>
<p>{html.escape(results["machine"])} — {html.escape(results["command"])}</p>
<p>Offered {results["sizes"]["rate_per_s"]:,} events/s for {results["sizes"]["seconds"]} s; accepted
{produced["accepted"]:,} events at {produced["events_per_s"]:,}/s (producer floor, back to back:
{floor["events_per_s"]:,}/s). Drain after the load (s): {html.escape(json.dumps(load["drain_s"]))};
lag bounded (≤ {LAG_BOUND_S} s): {results["lag_bounded"]}.</p>
<h2>Targets</h2>{table(target_rows, ["figure", "measured", "target", ""])}
<h2>Lag per stage over time</h2><p>Latency (s) of the probe sent at each second of the load.</p>
{line_chart(lag, "seconds since the load began", "lag (s)")}
<h2>Backlog per service over time</h2><p>Events not yet relayed, plus each upstream's events not yet
applied (EventLogService.Lag), sampled every second through the load and the drain.</p>
{line_chart(backlog, "seconds since the load began", "backlog (events)")}
<h2>Latency percentiles per stage</h2>{bar_chart(probes)}
{table(probe_rows, ["stage", "probes", "done", "failed", "p50 ms", "p95 ms", "p99 ms", "max ms"])}
<h2>Reads, idle and under load</h2>
{table(read_rows, ["read", "target/s", "achieved/s", "idle p50", "idle p99", "load p50", "load p99", "late starts"])}
<h2>Processes</h2>
{table(process_rows, ["process", "CPU s", "CPU µs/event", "RSS MB", "peak RSS MB"])}
<h2>Event log heads: growth per second</h2>
{table(growth_rows, ["t (s)", "accepted", *SERVICES])}
<p>{html.escape(results["path"])}</p>
</body></html>
"""
    path.write_text(page)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second offered")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the sustained load")
    parser.add_argument("--users", type=int, default=2000, help="people the load's events are spread over")
    parser.add_argument("--batch", type=int, default=100, help="events per POST")
    parser.add_argument("--profile-rate", type=float, default=50.0, help="GetProfile calls per second")
    parser.add_argument("--consent-rate", type=float, default=100.0, help="CheckConsent calls per second")
    parser.add_argument("--baseline-seconds", type=float, default=BASELINE_SECONDS, help="idle reads")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small sizes: 100 events/s for 8 s")
    parser.add_argument(
        "--workers",
        default="",
        help="worker processes per service, as `onefold up --workers` (segments=2,...)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.receiver:
        http_receiver.serve(_Receiver)
        return 0
    if args.quick:
        args.rate, args.seconds, args.users, args.batch = 100.0, 8.0, 200, 20
        args.profile_rate, args.consent_rate, args.baseline_seconds = 20.0, 40.0, 2.0
    if min(args.rate, args.seconds, args.users, args.batch, args.profile_rate, args.consent_rate) <= 0:
        parser.error("sizes and rates must be positive")
    results = run(args)
    report(results)
    if args.html:
        write_html(results, args.html)
        say(f"HTML report: {args.html}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
