"""Destinations benchmark: identity's events routed into deliveries, webhook deliveries to a local
receiver, the latency from an event to its arrival at the receiver while the deliverer runs as the
service runs it, an audience synced into a PostgreSQL table, and the process's memory — each figure
beside a floor measured in the same run.

    python bench/destinations.py [--quick] [--json] [--routed N] [--webhook N]
                                 [--latency-seconds S] [--memberships N] [--profiles N]
    onefold bench destinations --json

The system: the destinations application (`DestinationsApplication`) exactly as `bootstrap.compose`
builds it — its log and read model on a fresh SQLite file, the consent client with the service
credential — in this process, on the wall clock. Consent is the real service (`python -m
onefold.consent`, a subprocess on its own SQLite file with a real nats-server), its model
deploy/examples/consent.yaml set through SetModel and the purpose `personalisation` granted through
GrantConsent to every profile of the bench (`--profiles`; so no delivery is suppressed and every
one must arrive). No segments service runs: what a destination may name is consent's purposes and
the bench's segments (`destinations.known` replaced, as the application tests do). The webhook
receiver is a separate process (this file with `--receiver`: a minimal asyncio HTTP/1.1 server with
keep-alive that parses each body, records the first arrival (time.time()) of each delivery id,
counts duplicates and requests without a `webhook-signature`, and answers 200; it verifies no
signature: its CPU is measured and reported, so it is seen not to be the bottleneck). The table
destination's database is a fresh PostgreSQL database (`--postgres-url`, default
$ONEFOLD_TEST_POSTGRES_URL or postgresql://postgres@127.0.0.1:5432/test) created and dropped by the
bench, its URL given through the environment variable the definition names (`url_env`).

Upstream events are `EventEnvelope`s as the subscribers hand them to the router: EventResolved
"Order Completed" track events (a few properties: order_id, total, currency, items, coupon) and
SegmentEntered memberships, each batch in ONE store transaction on the writer thread
(`log.writer.run(log.projector.write, lambda conn: handler(conn, envelopes))`; the subscriber's
tracking row is left out). Their payloads are not sealed (opening them is the subscriber's work).
Each phase applies its own destination and archives the one before it, so the deliverer sees only
the phase's deliveries.

Phases:

- routing: `--routed` events through `router.handle_identity` in batches of SUBSCRIBER_BATCH for
  one webhook destination (a mapping of three fields): routed events/s and this process's CPU µs
  per event beside the floor: raw `sqlite3.executemany` of as many rows as the DeliveryQueued
  events stored (their stored, sealed payloads), a commit per batch, WAL and synchronous=FULL as
  the store, in the same directory;
- webhook: `--webhook` deliveries queued (routing, not timed), then `deliverer.deliver_due()` (a
  batch of up to 1000: one CheckConsentBatch round — two calls of consent's 500 at once — while
  the payloads are read and opened, the target, the outcomes recorded) until none is queued; for batch_size=1 and
  batch_size=100 (max_in_flight 16 both; a round's deliveries are split into lanes by person
  first, so a request carries at most batch_size: `mean_deliveries_per_request`): deliveries/s,
  this process's CPU µs per delivery, and consent's and the receiver's CPU beside it. Exactly once is checked: the receiver's unique ids
  == the deliveries, no duplicates. Floors: a raw httpx.AsyncClient POST loop at the same
  concurrency to the same receiver with bodies of the same size (requests/s; no signing, no log)
  and a bare CheckConsentBatch of DELIVERY_BATCH checks round trip (`Upstream.check_consent`, the
  deliverer's own client: the consent answer alone);
- latency: EventResolved made beforehand, then produced at LATENCY_RATE/s for `--latency-seconds`
  by a thread into a queue; a consumer takes what is waiting (up to SUBSCRIBER_BATCH) into the router on the writer,
  as the subscriber does after a fetch; the deliverer runs as the service runs it
  (`application.run_deliverer(lambda: True)`, woken by the router) to a webhook destination with
  the default batch_size=1, then again with batch_size=100 (a request carries what is queued when
  the deliverer wakes, up to 100: batching adds no wait). Latency = the receiver's time.time() at arrival minus the producer's
  time.time() at production (one machine, one clock): p50/p95/p99/max; also production to the
  router's commit. CPU µs per event: this process's (router, deliverer, and the producer thread's
  pacing: an upper bound), consent's and the receiver's;
- audience: `--memberships` SegmentEntered (`--profiles` profiles times as many segments as needed,
  each (profile, segment) once: the table's key) routed through `router.handle_segments` in
  batches of SUBSCRIBER_BATCH for a table destination, then `deliver_due()` until none is queued:
  memberships/s for routing and delivery separately and end to end, and the seconds for 1,000,000
  (extrapolated linearly unless measured there: `at_target_size`; an under-estimate while a
  delivery round's cost grows with what is queued). The table is checked to hold
  every membership. Floor: raw psycopg `executemany` of as many (profile_id, segment, entered_at)
  rows into a table of the same shape, a commit per DELIVERY_BATCH, and a single COPY of them;
- memory: the process's RSS (VmRSS) after each phase and its peak (VmHWM): the service's code plus
  the bench's generators (an upper bound). Consent's and the receiver's RSS are reported beside it.

What the path leaves out: NATS delivery to the subscriber (and its tracking row), the outbox relay
publishing what destinations appends, TLS to the receiver, a receiver that verifies signatures or
stores anything, and a remote database (PostgreSQL is on this machine).

Targets (a 2-core machine; issue 16): >= 5,000 webhook deliveries/s to a local receiver (met by
either batch size, with exactly-once; `webhook_met_by` says which); event -> delivered p99 <= 200 ms
at 1,000 events/s; an audience sync of 1,000,000 memberships to a PostgreSQL table <= 60 s. `met`
says which were met (a figure measured at a smaller size than the target's is not met: see
`at_target_size`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import sqlalchemy as sa
from rich.progress import Progress

from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.segments.v1 import segments_pb2
from onefold.destinations.adapters.read_model import outbox
from onefold.destinations.application import DestinationsApplication
from onefold.destinations.application.deliverer import DELIVERY_BATCH
from onefold.destinations.bootstrap import compose
from onefold.destinations.domain.definitions import MAX_SEGMENTS, Known
from onefold.destinations.domain.routing import delivery_id
from onefold.destinations.settings import DestinationsSettings
from onefold.eventlog.models import from_micros
from onefold.eventlog.service import EventSourcedService, ServiceLog
from onefold.eventlog.subscriber import SubscriberSettings
from onefold.platform.client import authenticated_channel
from onefold.platform.database import normalise_url
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.peer_calls import ConsentCheck
from onefold.testing.measure import cpu_seconds, memory_mb, percentile, progress, say, say_targets
from onefold.testing.postgres import temporary_database
from onefold.testing.processes import ServiceProcess

if str(Path(__file__).resolve().parent) not in sys.path:  # `onefold bench` loads this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import _http_receiver as http_receiver  # (bench/_http_receiver.py: the receiver process)
import journeys  # (bench/journeys.py: its raw-insert floor, envelopes, consent's model)
from _in_process import Consent, compose_here, next_batch, start_consent  # (bench/_in_process.py)

T = TypeVar("T")
SUBSCRIBER_BATCH = SubscriberSettings().batch_size
WORKSPACE = "bench"
PURPOSE = "personalisation"
AUDIENCE_ENV = "ONEFOLD_BENCH_AUDIENCE_URL"
LATENCY_RATE = 1000  # events per second in the latency phase
MAX_IN_FLIGHT = 16
STALL_SECONDS = 10.0  # the latency phase gives up when nothing arrived for this long
GRANT_CLIENTS = 8
CONSENT_FLOOR_ROUNDS = 20
HTTP_FLOOR_REQUESTS = 10_000  # at most; the webhook phase's size when smaller
TARGETS = {"webhook_deliveries_per_s": 5000, "delivered_p99_ms": 200.0, "audience_sync_s": 60.0}
TARGET_SIZES = {"memberships": 1_000_000, "latency_rate_per_s": LATENCY_RATE}


# --- the receiver (a separate process: this file with --receiver) ----------------------------------


class _Receiver:
    """Counts deliveries by id (first arrival, time.time()); answers 200 to every POST."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        self.unsigned = 0
        self.requests: dict[str, int] = {}

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        now = time.time()
        self.requests[path] = self.requests.get(path, 0) + 1
        if method == "POST" and path == "/hooks":
            if "webhook-signature" not in headers:
                self.unsigned += 1
            document = json.loads(body)
            for delivery in document.get("batch", [document]):
                if delivery["id"] in self.arrivals:
                    self.duplicates += 1
                else:
                    self.arrivals[delivery["id"]] = now
            return b"{}"
        if path == "/stats":
            return json.dumps(
                {
                    "unique": len(self.arrivals),
                    "duplicates": self.duplicates,
                    "unsigned": self.unsigned,
                    "requests": self.requests,
                }
            ).encode()
        if path == "/arrivals":
            return json.dumps(self.arrivals).encode()
        if path == "/reset":
            self.__init__()  # type: ignore[misc]
        return b"{}"


# --- upstream events ------------------------------------------------------------------------------


def profile_id(index: int) -> str:
    return f"p{index:07d}"


def segment_name(index: int) -> str:
    return f"audience_{index:03d}"


class Traffic:
    """Identity's and segments' events (seeded)."""

    def __init__(self, seed: int, profiles: int) -> None:
        self.rng = random.Random(seed)
        self.profiles = profiles
        self.orders = 0

    def order(self) -> tuple[str, Any]:
        """(the EventResolved's event id: the delivery's cause, its envelope)."""
        self.orders += 1
        properties = {
            "order_id": f"o-{self.orders}-{self.rng.randrange(1 << 30)}",
            "total": round(self.rng.lognormvariate(3.5, 1.0), 2),
            "currency": "EUR",
            "items": self.rng.choice((1, 1, 2, 3, 5)),
            "coupon": self.rng.choice(("", "SPRING10", "WELCOME")),
        }
        at = journeys.wall_clock()
        event = ingest_pb2.TrackingEvent(
            type=ingest_pb2.EVENT_TYPE_TRACK, event="Order Completed", message_id=str(uuid.uuid4())
        )
        event.timestamp.FromDatetime(from_micros(at))
        event.properties.update(properties)
        cause = str(uuid.uuid4())
        message = identity_pb2.EventResolved(
            profile_id=profile_id(self.rng.randrange(self.profiles)),
            workspace=WORKSPACE,
            event_id=cause,
            event=event,
        )
        return cause, journeys.envelope(message, at)

    def membership(self, index: int) -> tuple[str, str]:
        """The index-th (profile, segment): each once, profile by profile through a segment."""
        return profile_id(index % self.profiles), segment_name(index // self.profiles)

    def entered(self, index: int) -> Any:
        person, segment = self.membership(index)
        message = segments_pb2.SegmentEntered(profile_id=person, workspace=WORKSPACE, segment=segment)
        return journeys.envelope(message, journeys.wall_clock())


# --- the system under test ------------------------------------------------------------------------


@dataclass
class System:
    service: EventSourcedService[DestinationsApplication]
    loop: asyncio.AbstractEventLoop
    directory: Path
    nats: NatsServerProcess
    consent: ServiceProcess
    receiver: subprocess.Popen[str]
    receiver_url: str
    admin_token: str
    segments: frozenset[str]
    http: Any = None  # an httpx.Client to the receiver's control paths
    active: str = ""  # the destination of the running phase

    @property
    def app(self) -> DestinationsApplication:
        return self.service.application

    @property
    def log(self) -> ServiceLog:
        return self.service.log

    def sync(self, use_case: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(use_case, self.loop).result()

    def route(self, handler: Any, envelopes: Sequence[Any]) -> None:
        """One subscriber batch on the writer thread, in one store transaction."""
        self.sync(self.log.writer.run(self.log.projector.write, lambda conn: handler(conn, envelopes)))

    def consent_cpu_seconds(self) -> float:
        assert self.consent.process is not None
        return cpu_seconds(self.consent.process.pid)

    def receiver_cpu_seconds(self) -> float:
        return cpu_seconds(self.receiver.pid)

    def receiver_call(self, path: str) -> Any:
        return self.http.get(self.receiver_url.removesuffix("/hooks") + path).json()

    def use(self, destination: Any) -> str:
        """Apply the phase's destination and archive the one before; its signing secret."""
        applied = self.sync(self.app.destinations.apply(WORKSPACE, [destination], "bench"))
        if self.active:
            self.sync(self.app.set_status(WORKSPACE, self.active, pb.DESTINATION_STATUS_ARCHIVED, "bench"))
        self.active = destination.name
        return str(applied.applied[0].signing_secret)

    def close(self) -> None:
        async def stop() -> None:
            await self.app.aclose()
            await self.app.deliverer.upstream.peers.close()
            await self.log.writer.stop()

        try:
            self.sync(stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.log.store.engine.dispose()
            if self.http is not None:
                self.http.close()
        finally:
            self.receiver.terminate()
            self.receiver.wait(10)
            self.consent.stop()
            self.nats.stop()


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    process, port = http_receiver.start(Path(__file__).resolve())
    return process, f"http://127.0.0.1:{port}/hooks"


def start_system(directory: Path, audience_url: str, segments: frozenset[str]) -> System:
    """nats-server, the consent service (a subprocess), the receiver (a subprocess) and the
    destinations application composed by its bootstrap, in this process, with consent's address
    and a service credential it accepts."""
    consent = start_consent(directory, WORKSPACE, "destinations")
    try:
        receiver, receiver_url = start_receiver()
    except BaseException:
        consent.stop()
        raise
    try:
        return compose_system(directory, audience_url, segments, consent, (receiver, receiver_url))
    except BaseException:
        receiver.terminate()
        consent.stop()
        raise


def compose_system(
    directory: Path,
    audience_url: str,
    segments: frozenset[str],
    consent: Consent,
    receiving: tuple[subprocess.Popen[str], str],
) -> System:
    receiver, receiver_url = receiving
    os.environ[AUDIENCE_ENV] = audience_url  # read by the deliverer when composed (the definition's url_env)
    service, loop = compose_here("destinations", compose, [DestinationsSettings], directory, consent)
    system = System(
        service,
        loop,
        directory,
        consent.nats,
        consent.process,
        receiver,
        receiver_url,
        consent.admin_token,
        segments,
    )
    system.http = httpx.Client(timeout=60)
    upstream = system.app.deliverer.upstream

    async def known(workspace: str) -> Known:
        """Consent's purposes and the bench's segments: no segments service runs here."""
        stub = consent_pb2_grpc.ConsentServiceStub(upstream.peers.channel("consent"))
        model = await stub.GetModel(
            consent_pb2.GetModelRequest(), metadata=upstream.peers.acting_for(workspace), timeout=30
        )
        return Known(purposes=frozenset(p.purpose_id for p in model.purposes), segments=segments)

    system.app.destinations.known = known
    return system


def grant_consent(system: System, profiles: int) -> float:
    """The model, then PURPOSE granted to every profile through consent's API; the seconds taken."""

    async def grant(report: Progress) -> None:
        async with authenticated_channel(system.consent.target, system.admin_token) as channel:
            stub = consent_pb2_grpc.ConsentServiceStub(channel)
            await stub.SetModel(consent_pb2.SetModelRequest(model=journeys.load_model()), timeout=30)
            task = report.add_task("grants", total=profiles)

            async def client(offset: int) -> None:
                for i in range(offset, profiles, GRANT_CLIENTS):
                    await stub.GrantConsent(
                        consent_pb2.GrantConsentRequest(
                            subject=identity_pb2.ProfileRef(profile_id=profile_id(i)),
                            purpose_ids=[PURPOSE],
                            proof=journeys.PROOF,
                        ),
                        timeout=30,
                    )
                    report.advance(task)

            await asyncio.gather(*(client(c) for c in range(GRANT_CLIENTS)))

    started = time.perf_counter()
    with progress("consent granted") as bar:
        system.sync(grant(bar))
    return round(time.perf_counter() - started, 1)


def webhook_destination(system: System, name: str, batch_size: int) -> Any:
    return pb.Destination(
        name=name,
        purpose=PURPOSE,
        webhook=pb.Webhook(url=system.receiver_url, batch_size=batch_size, max_in_flight=MAX_IN_FLIGHT),
        events=[
            pb.EventFlow(
                type="track",
                name="Order Completed",
                mapping={
                    "order": "properties.order_id",
                    "total": "properties.total",
                    "currency": "properties.currency",
                },
            )
        ],
    )


# --- measuring helpers ----------------------------------------------------------------------------


@dataclass
class Meter:
    """Wall and CPU seconds inside `measure()` blocks: this process's, consent's, the receiver's."""

    system: System
    wall: float = 0.0
    cpu: float = 0.0
    consent_cpu: float = 0.0
    receiver_cpu: float = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        s = self.system
        wall, cpu = time.perf_counter(), time.process_time()
        consent, receiver = s.consent_cpu_seconds(), s.receiver_cpu_seconds()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.consent_cpu += s.consent_cpu_seconds() - consent
        self.receiver_cpu += s.receiver_cpu_seconds() - receiver


def us_per(seconds: float, count: int) -> float:
    return round(seconds / max(count, 1) * 1e6, 1)


def statuses(system: System, destination: str) -> dict[str, int]:
    with system.log.store.engine.connect() as conn:
        return {
            str(status): int(n)
            for status, n in conn.execute(
                sa.select(outbox.c.status, sa.func.count())
                .where((outbox.c.workspace == WORKSPACE) & (outbox.c.destination == destination))
                .group_by(outbox.c.status)
            )
        }


def deliver_all(system: System, meter: Meter, total: int, what: str) -> tuple[int, int]:
    """`deliver_due()` until it finds nothing: (deliveries tried, rounds)."""
    handled = rounds = 0
    with progress(what) as bar:
        task = bar.add_task(what, total=total)
        while True:
            with meter.measure():
                done = system.sync(system.app.deliverer.deliver_due())
            if not done:
                return handled, rounds
            handled += done
            rounds += 1
            bar.update(task, completed=handled)


def route_orders(system: System, traffic: Traffic, count: int, meter: Meter | None, what: str) -> list[str]:
    """`count` orders routed in subscriber batches; their causes (EventResolved event ids)."""
    causes: list[str] = []
    with progress(what) as bar:
        task = bar.add_task(what, total=count)
        for start in range(0, count, SUBSCRIBER_BATCH):
            made = [traffic.order() for _ in range(min(SUBSCRIBER_BATCH, count - start))]
            causes += [cause for cause, _ in made]
            envelopes = [envelope for _, envelope in made]
            if meter is None:
                system.route(system.app.router.handle_identity, envelopes)
            else:
                with meter.measure():
                    system.route(system.app.router.handle_identity, envelopes)
            bar.advance(task, len(envelopes))
    return causes


# --- phases ---------------------------------------------------------------------------------------


def routing_phase(system: System, traffic: Traffic, count: int) -> dict[str, Any]:
    system.use(webhook_destination(system, "routed", 1))
    head = system.log.store.head_position()
    meter = Meter(system)
    route_orders(system, traffic, count, meter, "events routed")
    queued_type = pb.DeliveryQueued.DESCRIPTOR.full_name
    payloads = [e.payload for e in system.log.store.iter_all(after_position=head) if e.type == queued_type]
    return {
        "events": count,
        "queued": statuses(system, "routed").get("queued", 0),
        "batch": SUBSCRIBER_BATCH,
        "router_seconds": round(meter.wall, 2),
        "events_per_s": round(count / meter.wall),
        "service_cpu_us_per_event": us_per(meter.cpu, count),
        "floor": journeys.raw_insert_floor(system.directory, payloads, SUBSCRIBER_BATCH),
        "memory": memory_mb(),
    }


def webhook_phase(system: System, traffic: Traffic, count: int, batch_size: int) -> dict[str, Any]:
    name = f"hook{batch_size}"
    system.use(webhook_destination(system, name, batch_size))
    route_orders(system, traffic, count, None, f"deliveries queued for {name}")
    system.receiver_call("/reset")
    meter = Meter(system)
    handled, rounds = deliver_all(system, meter, count, f"delivered (batch_size={batch_size})")
    stats = system.receiver_call("/stats")
    delivered = statuses(system, name).get("delivered", 0)
    return {
        "deliveries": count,
        "batch_size": batch_size,
        "max_in_flight": MAX_IN_FLIGHT,
        "tried": handled,
        "delivered": delivered,
        "received_unique": stats["unique"],
        "received_duplicates": stats["duplicates"],
        "unsigned_requests": stats["unsigned"],
        "requests": stats["requests"].get("/hooks", 0),
        "mean_deliveries_per_request": round(count / max(stats["requests"].get("/hooks", 0), 1), 1),
        "exactly_once": stats["unique"] == count == delivered and stats["duplicates"] == 0,
        "rounds": rounds,
        "deliverer_seconds": round(meter.wall, 2),
        "deliveries_per_s": round(handled / meter.wall),
        "service_cpu_us_per_delivery": us_per(meter.cpu, handled),
        "consent_cpu_us_per_delivery": us_per(meter.consent_cpu, handled),
        "receiver_cpu_us_per_delivery": us_per(meter.receiver_cpu, handled),
        "service_cpu_share": round(meter.cpu / meter.wall, 2),
        "receiver_cpu_share": round(meter.receiver_cpu / meter.wall, 2),
        "memory": memory_mb(),
    }


def http_floor(system: System, count: int) -> dict[str, Any]:
    """A raw httpx.AsyncClient POST loop, MAX_IN_FLIGHT at once, bodies the size of one delivery."""
    body = json.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": "event",
            "destination": "hook1",
            "profileId": profile_id(1),
            "name": "Order Completed",
            "occurredAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": {"currency": "EUR", "order": "o-1-123456789", "total": 33.12},
        },
        separators=(",", ":"),
    ).encode()
    url = system.receiver_url.removesuffix("/hooks") + "/floor"

    async def run() -> float:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=MAX_IN_FLIGHT)) as client:
            pending = iter(range(count))

            async def worker() -> None:
                for _ in pending:
                    response = await client.post(
                        url, content=body, headers={"content-type": "application/json"}
                    )
                    response.raise_for_status()

            await client.post(url, content=body)
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(MAX_IN_FLIGHT)))
            return time.perf_counter() - started

    cpu, receiver = time.process_time(), system.receiver_cpu_seconds()
    wall = system.sync(run())
    cpu, receiver = time.process_time() - cpu, system.receiver_cpu_seconds() - receiver
    return {
        "requests": count,
        "concurrency": MAX_IN_FLIGHT,
        "body_bytes": len(body),
        "requests_per_s": round(count / wall),
        "client_cpu_us_per_request": us_per(cpu, count),
        "receiver_cpu_us_per_request": us_per(receiver, count),
    }


def consent_floor(system: System, profiles: int, rounds: int) -> dict[str, Any]:
    """`Upstream.check_consent` of DELIVERY_BATCH checks (the deliverer's client alone), round by round."""
    rng = random.Random(5)
    checks = [
        [ConsentCheck(profile_id(rng.randrange(profiles)), PURPOSE) for _ in range(DELIVERY_BATCH)]
        for _ in range(rounds)
    ]
    upstream = system.app.deliverer.upstream

    async def run() -> list[float]:
        await upstream.check_consent(WORKSPACE, checks[0])
        times = []
        for batch in checks:
            started = time.perf_counter()
            answers = await upstream.check_consent(WORKSPACE, batch)
            times.append((time.perf_counter() - started) * 1000)
            assert all(a.decision == consent_pb2.DECISION_ALLOW for a in answers)
        return times

    consent_cpu = system.consent_cpu_seconds()
    times = system.sync(run())
    consent_cpu = system.consent_cpu_seconds() - consent_cpu
    return {
        "rounds": rounds,
        "checks_per_round": DELIVERY_BATCH,
        "p50_ms": round(percentile(times, 50), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "checks_per_s": round(rounds * DELIVERY_BATCH / (sum(times) / 1000)),
        "consent_cpu_us_per_check": us_per(consent_cpu, rounds * DELIVERY_BATCH),
    }


def latency_phase(system: System, traffic: Traffic, seconds: float, batch_size: int) -> dict[str, Any]:
    """Events at LATENCY_RATE/s with the deliverer running; from each event to its arrival."""
    name = f"live{batch_size}"
    system.use(webhook_destination(system, name, batch_size))
    system.receiver_call("/reset")
    total = max(1, int(LATENCY_RATE * seconds))
    produced: queue.Queue[tuple[float, str, Any] | None] = queue.Queue()
    producer_traffic = Traffic(seed=traffic.rng.randrange(1 << 30), profiles=traffic.profiles)
    producer_traffic.orders = 10**9  # orders of its own
    producing: list[float] = []
    # Made before the clock starts: upstream services make them, not this process.
    orders = [producer_traffic.order() for _ in range(total)]
    made = [(delivery_id(WORKSPACE, name, pb.DELIVERY_KIND_EVENT, cause), event) for cause, event in orders]

    def produce() -> None:
        begin = time.perf_counter()
        producing.append(begin)
        for i, (ident, event) in enumerate(made):
            delay = begin + i / LATENCY_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            produced.put((time.time(), ident, event))
        producing.append(time.perf_counter())
        produced.put(None)

    deliverer = asyncio.run_coroutine_threadsafe(system.app.run_deliverer(lambda: True), system.loop)
    producer = threading.Thread(target=produce, name="destinations-bench-producer", daemon=True)
    produced_at: dict[str, float] = {}
    committed: list[float] = []
    batch_sizes: list[int] = []
    wall, cpu = time.perf_counter(), time.process_time()
    consent_cpu, receiver_cpu = system.consent_cpu_seconds(), system.receiver_cpu_seconds()
    arrived = 0
    try:
        with progress(f"events at {LATENCY_RATE}/s, the deliverer running") as bar:
            task = bar.add_task("latency", total=total)
            producer.start()
            finished = False
            while not finished:
                batch, finished = next_batch(produced, SUBSCRIBER_BATCH)
                if not batch:
                    continue
                system.route(system.app.router.handle_identity, [event for _, _, event in batch])
                done = time.time()
                for moment, ident, _ in batch:
                    committed.append((done - moment) * 1000)
                    produced_at[ident] = moment
                batch_sizes.append(len(batch))
                bar.advance(task, len(batch))
        producer.join()
        # Until every delivery arrived, or none arrived for STALL_SECONDS (the deliverer may be
        # slower than the rate: what is behind drains, and its latency counts).
        stalled = time.perf_counter() + STALL_SECONDS
        while time.perf_counter() < stalled:
            now_arrived = system.receiver_call("/stats")["unique"]
            if now_arrived >= total:
                break
            if now_arrived > arrived:
                arrived, stalled = now_arrived, time.perf_counter() + STALL_SECONDS
            time.sleep(0.05)
    finally:
        deliverer.cancel()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    consent_cpu = system.consent_cpu_seconds() - consent_cpu
    receiver_cpu = system.receiver_cpu_seconds() - receiver_cpu
    arrivals: dict[str, float] = system.receiver_call("/arrivals")
    latencies = [(arrivals[i] - t) * 1000 for i, t in produced_at.items() if i in arrivals]
    stats = system.receiver_call("/stats")
    return {
        "path": (
            "in-process: producer thread -> queue -> batches of up to "
            f"{SUBSCRIBER_BATCH} -> handle_identity in one store transaction on the writer "
            "(DeliveryQueued) -> the deliverer loop woken: CheckConsentBatch to the consent process "
            "over gRPC, the payloads opened, a signed POST per delivery (16 in flight) to the "
            "receiver process, the outcomes recorded; latency = the receiver's time.time() at "
            "arrival - the producer's at production. Excludes NATS delivery to the subscriber, "
            "its tracking row, and TLS"
        ),
        "rate_per_s": LATENCY_RATE,
        "batch_size": batch_size,
        "produced_per_s": round(total / max(producing[-1] - producing[0], 1e-9)),
        "events": total,
        "arrived": len(latencies),
        "duplicates": stats["duplicates"],
        "delivered_p50_ms": round(percentile(latencies, 50), 1),
        "delivered_p95_ms": round(percentile(latencies, 95), 1),
        "delivered_p99_ms": round(percentile(latencies, 99), 1),
        "delivered_max_ms": round(max(latencies, default=float("nan")), 1),
        "routed_p99_ms": round(percentile(committed, 99), 1),
        "mean_batch": round(sum(batch_sizes) / len(batch_sizes), 1) if batch_sizes else 0,
        "process_cpu_us_per_event": us_per(cpu, total),
        "consent_cpu_us_per_event": us_per(consent_cpu, total),
        "receiver_cpu_us_per_event": us_per(receiver_cpu, total),
        "process_cpu_share": round(cpu / wall, 2),
        "memory": memory_mb(),
    }


def audience_phase(system: System, traffic: Traffic, count: int, audience_url: str) -> dict[str, Any]:
    segments = sorted({traffic.membership(i)[1] for i in range(0, count, traffic.profiles)})
    system.use(
        pb.Destination(
            name="audience",
            purpose=PURPOSE,
            table=pb.SqlTable(url_env=AUDIENCE_ENV, table="bench"),
            segments=segments,
        )
    )
    routing = Meter(system)
    with progress("memberships routed") as bar:
        task = bar.add_task("routed", total=count)
        for start in range(0, count, SUBSCRIBER_BATCH):
            envelopes = [traffic.entered(i) for i in range(start, min(start + SUBSCRIBER_BATCH, count))]
            with routing.measure():
                system.route(system.app.router.handle_segments, envelopes)
            bar.advance(task, len(envelopes))
    delivery = Meter(system)
    handled, rounds = deliver_all(system, delivery, count, "memberships delivered")
    engine = sa.create_engine(normalise_url(audience_url))
    try:
        with engine.connect() as conn:
            rows = int(conn.execute(sa.text("SELECT count(*) FROM bench_memberships")).scalar() or 0)
    finally:
        engine.dispose()
    delivered = statuses(system, "audience").get("delivered", 0)
    total_seconds = routing.wall + delivery.wall
    target = TARGET_SIZES["memberships"]
    return {
        "memberships": count,
        "profiles": traffic.profiles,
        "segments": len(segments),
        "delivered": delivered,
        "table_rows": rows,
        "rounds": rounds,
        "routing_seconds": round(routing.wall, 2),
        "routing_per_s": round(count / routing.wall),
        "routing_cpu_us_per_membership": us_per(routing.cpu, count),
        "delivery_seconds": round(delivery.wall, 2),
        "delivery_per_s": round(handled / delivery.wall),
        "delivery_cpu_us_per_membership": us_per(delivery.cpu, handled),
        "consent_cpu_us_per_membership": us_per(delivery.consent_cpu, handled),
        "end_to_end_seconds": round(total_seconds, 2),
        "end_to_end_per_s": round(count / total_seconds),
        "seconds_at_1m": round(total_seconds / count * target, 1),
        "extrapolated": count < target,
        "floor": postgres_floor(traffic, audience_url, count),
        "memory": memory_mb(),
    }


def postgres_floor(traffic: Traffic, audience_url: str, count: int) -> dict[str, Any]:
    """Raw psycopg: executemany of `count` membership rows, a commit per DELIVERY_BATCH; then COPY."""
    url = normalise_url(audience_url).replace("postgresql+psycopg://", "postgresql://", 1)
    now = datetime.now(UTC)
    rows = [(*traffic.membership(i), now) for i in range(count)]
    ddl = (
        "CREATE TABLE {} (profile_id VARCHAR(200) NOT NULL, segment VARCHAR(200) NOT NULL, "
        "entered_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (profile_id, segment))"
    )
    with psycopg.connect(url) as conn:
        conn.execute(ddl.format("floor_memberships"))
        conn.execute(ddl.format("floor_copy"))
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cursor:
            for start in range(0, count, DELIVERY_BATCH):
                cursor.executemany(
                    "INSERT INTO floor_memberships (profile_id, segment, entered_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (profile_id, segment) DO UPDATE SET entered_at = excluded.entered_at",
                    rows[start : start + DELIVERY_BATCH],
                )
                conn.commit()
        executemany_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with (
            conn.cursor() as cursor,
            cursor.copy("COPY floor_copy (profile_id, segment, entered_at) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        copy_seconds = time.perf_counter() - started
    return {
        "rows": count,
        "batch": DELIVERY_BATCH,
        "executemany_per_s": round(count / executemany_seconds),
        "executemany_seconds_at_1m": round(executemany_seconds / count * TARGET_SIZES["memberships"], 1),
        "copy_per_s": round(count / copy_seconds),
    }


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    profiles: int
    routed: int
    webhook: int
    latency_seconds: float
    memberships: int


def run(sizes: Sizes, seed: int, postgres_url: str) -> dict[str, Any]:
    results: dict[str, Any] = {
        "sizes": sizes.__dict__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)} GiB, "
        f"{platform.python_implementation()} {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
    }
    traffic = Traffic(seed, sizes.profiles)
    segments = frozenset(segment_name(i) for i in range(-(-sizes.memberships // sizes.profiles)))
    with (
        tempfile.TemporaryDirectory(prefix="onefold-bench-destinations-") as tmp,
        temporary_database(normalise_url(postgres_url), prefix="onefold_bench_destinations") as audience_url,
    ):
        say("starting nats-server, the consent service and the receiver ...")
        system = start_system(Path(tmp), audience_url, segments)
        try:
            results["memory_at_start"] = memory_mb()
            say(f"consent: {PURPOSE} granted to {sizes.profiles:,} profiles ...")
            results["grants_seconds"] = grant_consent(system, sizes.profiles)
            say(f"routing: {sizes.routed:,} events ...")
            results["routing"] = routing_phase(system, traffic, sizes.routed)
            say("floors: CheckConsentBatch alone, a raw httpx loop to the receiver ...")
            results["consent_floor"] = consent_floor(system, sizes.profiles, CONSENT_FLOOR_ROUNDS)
            results["http_floor"] = http_floor(system, min(sizes.webhook, HTTP_FLOOR_REQUESTS))
            for batch_size in (1, 100):
                say(f"webhook: {sizes.webhook:,} deliveries, batch_size={batch_size} ...")
                results[f"webhook_batch{batch_size}"] = webhook_phase(
                    system, traffic, sizes.webhook, batch_size
                )
            for batch_size in (1, 100):
                say(
                    f"latency: {LATENCY_RATE} events/s for {sizes.latency_seconds} s, batch_size={batch_size}, "
                    "the deliverer running ..."
                )
                results[f"latency_batch{batch_size}"] = latency_phase(
                    system, traffic, sizes.latency_seconds, batch_size
                )
            say(f"audience: {sizes.memberships:,} memberships to a PostgreSQL table ...")
            results["audience"] = audience_phase(system, traffic, sizes.memberships, audience_url)
            results["consent_rss_mb"] = memory_mb(system.consent.process.pid)["rss_mb"]  # type: ignore[union-attr]
            results["receiver_rss_mb"] = memory_mb(system.receiver.pid)["rss_mb"]
        finally:
            system.close()
            os.environ.pop(AUDIENCE_ENV, None)
    results["memory"] = memory_mb()
    hooks = {b: results[f"webhook_batch{b}"] for b in (1, 100)}
    best = max(hooks, key=lambda b: hooks[b]["deliveries_per_s"] if hooks[b]["exactly_once"] else -1)
    audience = results["audience"]
    lively = {b: results[f"latency_batch{b}"] for b in (1, 100)}
    quickest = min(
        lively,
        key=lambda b: lively[b]["delivered_p99_ms"] if lively[b]["arrived"] == lively[b]["events"] else 1e12,
    )
    latency = lively[quickest]
    results["latency_met_by"] = f"batch_size={quickest}"
    results["ratios"] = {
        "routing_vs_raw_insert": round(
            results["routing"]["events_per_s"] / results["routing"]["floor"]["rows_per_s"], 3
        ),
        "webhook_batch1_vs_raw_httpx": round(
            hooks[1]["deliveries_per_s"] / results["http_floor"]["requests_per_s"], 3
        ),
        "webhook_batch1_vs_consent_alone": round(
            hooks[1]["deliveries_per_s"] / results["consent_floor"]["checks_per_s"], 3
        ),
        "webhook_batch100_vs_consent_alone": round(
            hooks[100]["deliveries_per_s"] / results["consent_floor"]["checks_per_s"], 3
        ),
        "audience_delivery_vs_raw_executemany": round(
            audience["delivery_per_s"] / audience["floor"]["executemany_per_s"], 3
        ),
    }
    results["targets"] = TARGETS
    results["at_target_size"] = {"memberships": not audience["extrapolated"]}
    results["webhook_met_by"] = f"batch_size={best}"
    results["met"] = {
        "webhook_deliveries_per_s": hooks[best]["exactly_once"]
        and hooks[best]["deliveries_per_s"] >= TARGETS["webhook_deliveries_per_s"],
        "delivered_p99_ms": latency["arrived"] == latency["events"]
        and latency["delivered_p99_ms"] <= TARGETS["delivered_p99_ms"],
        "audience_sync_s": results["at_target_size"]["memberships"]
        and audience["table_rows"] == audience["memberships"]
        and audience["end_to_end_seconds"] <= TARGETS["audience_sync_s"],
    }
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    results["max_rss_mb_getrusage"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def report(results: dict[str, Any]) -> None:
    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<62} {value:>22}  {note}", file=sys.stderr)

    print(f"destinations benchmark ({results['machine']}):", file=sys.stderr)
    routing = results["routing"]
    line(
        f"routing: {routing['events']:,} events, batches of {routing['batch']}",
        f"{routing['events_per_s']:,}/s",
        f"{routing['service_cpu_us_per_event']} CPU µs/event, "
        f"{results['ratios']['routing_vs_raw_insert']}x raw insert",
    )
    line(
        f"raw sqlite3 executemany, {routing['floor']['rows']:,} rows (floor)",
        f"{routing['floor']['rows_per_s']:,}/s",
    )
    cfloor, hfloor = results["consent_floor"], results["http_floor"]
    line(
        f"CheckConsentBatch of {cfloor['checks_per_round']} alone: p50 / p99 (floor)",
        f"{cfloor['p50_ms']} / {cfloor['p99_ms']} ms",
        f"{cfloor['checks_per_s']:,} checks/s",
    )
    line(
        f"raw httpx POSTs, {hfloor['concurrency']} in flight (floor)",
        f"{hfloor['requests_per_s']:,}/s",
        f"client {hfloor['client_cpu_us_per_request']} CPU µs/request, "
        f"receiver {hfloor['receiver_cpu_us_per_request']}",
    )
    for batch_size in (1, 100):
        hook = results[f"webhook_batch{batch_size}"]
        line(
            f"webhook batch_size={batch_size}: {hook['received_unique']:,}/{hook['deliveries']:,} received once",
            f"{hook['deliveries_per_s']:,}/s",
            f"{hook['service_cpu_us_per_delivery']} CPU µs/delivery (+ consent "
            f"{hook['consent_cpu_us_per_delivery']}, receiver {hook['receiver_cpu_us_per_delivery']})",
        )
    for batch_size in (1, 100):
        lat = results[f"latency_batch{batch_size}"]
        line(
            f"delivered at {lat['rate_per_s']} events/s, batch_size={batch_size} "
            f"({lat['arrived']:,}/{lat['events']:,}): p50 / p99",
            f"{lat['delivered_p50_ms']} / {lat['delivered_p99_ms']} ms",
            f"p95 {lat['delivered_p95_ms']}, routed p99 {lat['routed_p99_ms']} ms, "
            f"{lat['process_cpu_us_per_event']} CPU µs/event (+ consent {lat['consent_cpu_us_per_event']})",
        )
    aud = results["audience"]
    line(
        f"audience: {aud['memberships']:,} memberships, routing / delivery",
        f"{aud['routing_per_s']:,} / {aud['delivery_per_s']:,}/s",
        f"end to end {aud['end_to_end_per_s']:,}/s, 1M in {aud['seconds_at_1m']} s"
        + (" (extrapolated)" if aud["extrapolated"] else ""),
    )
    line(
        "raw psycopg executemany / COPY (floor)",
        f"{aud['floor']['executemany_per_s']:,} / {aud['floor']['copy_per_s']:,}/s",
    )
    mem = results["memory"]
    line(
        "RSS now / peak; consent's, the receiver's",
        f"{mem['rss_mb']} / {mem['peak_rss_mb']} MB",
        f"{results['consent_rss_mb']} MB, {results['receiver_rss_mb']} MB",
    )
    say_targets(results["met"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=5000, help="profiles, all with consent")
    parser.add_argument("--routed", type=int, default=50_000, help="events in the routing phase")
    parser.add_argument("--webhook", type=int, default=50_000, help="deliveries per webhook configuration")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of the latency phase")
    parser.add_argument("--memberships", type=int, default=200_000, help="memberships synced to the table")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ONEFOLD_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server's admin URL: the bench creates and drops a database there",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of about a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.receiver:
        http_receiver.serve(_Receiver)
        return 0
    if args.quick:
        sizes = Sizes(profiles=500, routed=2000, webhook=2000, latency_seconds=3.0, memberships=5000)
    else:
        sizes = Sizes(args.profiles, args.routed, args.webhook, args.latency_seconds, args.memberships)
    if min(sizes.profiles, sizes.routed, sizes.webhook, sizes.memberships) < 1 or sizes.latency_seconds <= 0:
        parser.error("sizes must be positive")
    if -(-sizes.memberships // sizes.profiles) > MAX_SEGMENTS:
        # Each profile holds one membership of each segment, and one destination names the segments.
        parser.error(
            f"--memberships {sizes.memberships:,} needs more than {MAX_SEGMENTS} segments of "
            f"{sizes.profiles:,} profiles: give --profiles {-(-sizes.memberships // MAX_SEGMENTS)} or more"
        )
    results = run(sizes, args.seed, args.postgres_url)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
