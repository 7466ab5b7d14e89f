"""Journeys benchmark: identity's events entering journeys, the latency from an event to the
MessageSent of a send step, the sender's rate through the sandbox provider with every message's
consent checked by a real consent service, a crowd of waiting instances and the process's memory,
and ten thousand timers due in the same second — each figure beside a floor measured in the same run.

    python bench/journeys.py [--profiles N] [--waiting N] [--timers N] [--sends N]
                             [--latency-seconds S] [--quick] [--json]
    onefold bench journeys --json

The system: the journeys application (`JourneysApplication`) exactly as `bootstrap.compose` builds
it — its log and read model on a fresh SQLite file, the sandbox provider on every channel (its own
SQLite file, each kept send sealed under the profile's key), the consent client with the service
credential, default pacing (no caps, no quiet hours) — in this process, on the wall clock. Consent is
the real service (`python -m onefold.consent`, a subprocess on its own SQLite file with a real
nats-server), its model deploy/examples/consent.yaml set through SetModel and marketing on email
granted through GrantConsent to nine profiles in ten (the tenth has none: its messages are
suppressed, as in life). No segments service runs: the bench's journeys name no segment, so
applying them asks consent alone for the purposes they may name.

Identity's events are `EventEnvelope`s as the identity subscriber hands them to
`Runs.handle_identity`: a TraitsUpdated per profile (email, firstName: what the template and the
address need) and EventResolved track events, each batch in one store transaction with the
subscriber's tracking row, run on the service's writer thread as the subscriber runs it. Their
payloads are not sealed (opening them is the subscriber's work before the handler). The sender is
`Sender.send_due()` (one batch of up to 256 queued messages: one CheckConsentBatch, render, the
sandbox, the outcomes recorded), the timers the service's own loop (`run_timers`: `fire_due` through
`projector.write`, 500 instances a transaction).

Three journeys, published together with their template:

- `cart_reminder`: entered on "Product Added" (one instance per cart_id), a send step (email,
  purpose marketing, template with the person's firstName and the cart's id) and nothing more;
- `browse_follow_up`: entered on "Product Viewed", then a wait of a day: the waiting crowd;
- `flash_sale`: entered on "Flash Sale Viewed", then a wait of a few seconds, set from the entry
  rate just measured so the whole cohort is in before its timers come due.

Phases:

- profiles: `--profiles` TraitsUpdated through the handler (the facts sealed per profile), and
  their consent granted through consent's API (not timed against a target);
- waiting: `--waiting` profiles enter `browse_follow_up` through the handler in batches of
  ENTRY_BATCH: entries/s and service CPU µs per entry beside the floor (raw `sqlite3.executemany` of
  as many rows of the envelopes' size, a commit per batch, WAL and synchronous=FULL as the store,
  in the same directory); the process's RSS before and after, and from their difference the RSS
  at 1,000,000 waiting instances (extrapolated linearly unless measured there: `at_target_size`;
  the store's bounded caches — 10,000 data keys, 100,000 stream versions — fill as the crowd
  grows, so an extrapolation from below those bounds over-states); the database's size likewise;
- timers: `--timers` profiles enter `flash_sale` in ONE handler transaction, so every timer is
  due at the same microsecond (a "09:00 in everyone's time zone" in miniature); the service's timer
  loop runs on the real clock; for each instance, when its exit was appended (recorded_at) minus
  the due moment, and when the last of them was visible to a reader (polled every 20 ms);
- latency: "Product Added" events produced at LATENCY_RATE/s by a thread into a queue; a
  consumer takes what is waiting (up to the subscriber's 256) and runs the handler's transaction
  on the writer, as the subscriber does after a fetch; the service's sender loop runs beside it,
  woken by each queue. Latency = when a reader first saw the MessageSent (a poller thread reading
  the log every POLL_SECONDS: an upper bound) minus the moment the event was produced; also to its
  append (recorded_at). `path` in the JSON says what this leaves out. CPU µs per entry: this
  process's (the entry and its send, with the bench's producer and reader: an upper bound) and
  consent's;
- sends: `--sends` messages queued (entries with the sender stopped), then `send_due()` until
  none is left: sends/s (MessageSent only) and messages handled/s, the service CPU µs per message
  (this process: the sender, its writer and the sandbox) and consent's (its process) beside it.
  Floors: a bare authenticated CheckConsentBatch of 256 checks round trip (the consent answer
  alone, one batch at a time), the sandbox provider's own send rate (`SandboxProvider.send`, 256 at
  a time as the sender gathers them: sealing and keeping only), and raw `sqlite3.executemany` of
  the rows the sender appends (MessageSent and MessageDelivered, at their stored size);
- memory: the process's RSS (VmRSS) after each phase and its peak (VmHWM). The process is the
  service's code plus the bench's generator, producer and poller (a few MB): an upper bound of the
  service's. Consent's RSS is reported beside it, not in it.

Targets (a 2-core machine; issue 15): event -> MessageSent p99 <= 100 ms at 500 entries/s;
1,000,000 waiting instances in <= 300 MB RSS; 10,000 timers due in the same second all fired within
5 s; >= 2,000 sends/s through the sandbox with consent checks. `met` says which were met (a figure
measured at a smaller size than the target's is not met: see `at_target_size`).
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
import statistics
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

import sqlalchemy as sa
import yaml
from google.protobuf.message import Message
from rich.progress import Progress

from onefold.cli.consent import model_from_document
from onefold.cli.journeys_yaml import journey_from_document, template_from_document
from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.models import from_micros, to_micros
from onefold.eventlog.service import EventSourcedService, ServiceLog
from onefold.eventlog.subscriber import SubscriberSettings
from onefold.journeys.adapters.providers.base import Message as ProviderMessage
from onefold.journeys.adapters.read_model import instances, outbox
from onefold.journeys.application import JourneysApplication
from onefold.journeys.application.sender import SEND_BATCH
from onefold.journeys.bootstrap import compose
from onefold.journeys.domain.definitions import Known
from onefold.journeys.domain.instance import instance_stream
from onefold.journeys.settings import JourneysSettings
from onefold.platform.client import authenticated_channel
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.measure import cpu_seconds, memory_mb, percentile, progress, say, say_targets
from onefold.testing.processes import ServiceProcess

if str(Path(__file__).resolve().parent) not in sys.path:  # `onefold bench` loads this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _in_process import compose_here, next_batch, start_consent  # (bench/_in_process.py)

T = TypeVar("T")
WORKSPACE = "bench"
UPSTREAM = "identity"
SUBSCRIBER_BATCH = SubscriberSettings().batch_size
ENTRY_BATCH = 1000  # entries per handler transaction while building the waiting crowd
LATENCY_RATE = 500  # entries per second in the latency phase
POLL_SECONDS = 0.005  # the latency phase's reader of the log
TIMER_POLL_SECONDS = 0.02
GRANT_CLIENTS = 8
NO_CONSENT_EVERY = 10  # one profile in ten has no marketing consent
MODEL_FILE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "consent.yaml"
PROOF = consent_pb2.Proof(
    notice_id="privacy", notice_version="1", source="preference_centre", collection_point="bench"
)
SEND_JOURNEY = "cart_reminder"
WAIT_JOURNEY = "browse_follow_up"
TIMER_JOURNEY = "flash_sale"
TARGETS = {
    "sent_p99_ms": 100.0,
    "waiting_rss_mb": 300.0,
    "timers_fired_s": 5.0,
    "sends_per_s": 2000,
}
TARGET_SIZES = {"waiting_instances": 1_000_000, "timers": 10_000, "latency_rate_per_s": LATENCY_RATE}

TEMPLATE = {
    "kind": "Template",
    "name": "cart_reminder",
    "channel": "email",
    "subject": "{{ traits.firstName }}, your cart is waiting",
    "text": "Hello {{ traits.firstName }},\n\nYou left something in your cart ({{ event.cart_id }}).\n",
    "html": "<p>Hello {{ traits.firstName }},</p><p>You left something in your cart "
    "(<code>{{ event.cart_id }}</code>).</p>",
}


def journey_documents(timer_wait_seconds: int) -> dict[str, dict[str, Any]]:
    """The bench's journeys in the YAML form `onefold apply` reads."""
    return {
        SEND_JOURNEY: {
            "kind": "Journey",
            "name": SEND_JOURNEY,
            "entry": {"event": "Product Added", "entity_key": "cart_id", "reentry": "after_exit"},
            "steps": [
                {
                    "name": "remind",
                    "send": {"channel": "email", "template": "cart_reminder", "purpose": "marketing"},
                }
            ],
        },
        WAIT_JOURNEY: {
            "kind": "Journey",
            "name": WAIT_JOURNEY,
            "entry": {"event": "Product Viewed"},
            "steps": [{"name": "a_day_later", "wait": "1d"}],
        },
        TIMER_JOURNEY: {
            "kind": "Journey",
            "name": TIMER_JOURNEY,
            "entry": {"event": "Flash Sale Viewed"},
            "steps": [{"name": "sale_ends", "wait": f"{timer_wait_seconds}s"}],
        },
    }


# --- identity's events ----------------------------------------------------------------------------


class Traffic:
    """Identity's events (seeded): a profile's traits, and track events with properties of a shop."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.carts = 0

    @staticmethod
    def profile_id(kind: str, index: int) -> str:
        return f"{kind}{index:07d}"

    def traits(self, profile_id: str) -> EventEnvelope:
        message = identity_pb2.TraitsUpdated(
            profile_id=profile_id, workspace=WORKSPACE, evidence_event_id=str(uuid.uuid4())
        )
        message.traits.update(
            {
                "email": f"{profile_id}@mail.example",
                "firstName": self.rng.choice(("Ada", "Li", "Mei", "Jonas", "Amara", "Noor", "Kenji")),
                "plan": self.rng.choice(("free", "basic", "gold")),
            }
        )
        return envelope(message, wall_clock())

    def product_added(self, profile_id: str) -> tuple[str, EventEnvelope]:
        """(the cart id, the event): every cart is new, so every event enters `cart_reminder`."""
        self.carts += 1
        cart_id = f"cart-{self.carts}"
        properties = {
            "cart_id": cart_id,
            "product_id": f"sku-{self.rng.randrange(50_000)}",
            "price": round(self.rng.lognormvariate(3.5, 1.0), 2),
            "quantity": self.rng.choice((1, 1, 2, 3)),
            "currency": "EUR",
        }
        return cart_id, self.track(profile_id, "Product Added", properties)

    def viewed(self, profile_id: str, name: str = "Product Viewed") -> EventEnvelope:
        properties = {
            "product_id": f"sku-{self.rng.randrange(50_000)}",
            "category": self.rng.choice(("books", "garden", "toys", "beauty")),
            "price": round(self.rng.lognormvariate(3.5, 1.0), 2),
            "url": f"https://shop.example/p/{self.rng.randrange(50_000)}",
        }
        return self.track(profile_id, name, properties)

    @staticmethod
    def track(profile_id: str, name: str, properties: dict[str, Any]) -> EventEnvelope:
        at = wall_clock()
        event = ingest_pb2.TrackingEvent(type=ingest_pb2.EVENT_TYPE_TRACK, event=name)
        event.timestamp.FromDatetime(from_micros(at))
        event.properties.update(properties)
        message = identity_pb2.EventResolved(
            profile_id=profile_id, workspace=WORKSPACE, event_id=str(uuid.uuid4()), event=event
        )
        return envelope(message, at)


def envelope(message: Message, at: int) -> EventEnvelope:
    out = EventEnvelope(
        event_id=str(uuid.uuid4()),
        type=message.DESCRIPTOR.full_name,
        workspace=WORKSPACE,
        payload=message.SerializeToString(),
    )
    out.occurred_at.FromDatetime(from_micros(at))
    return out


def wall_clock() -> int:
    return to_micros(datetime.now(UTC))


# --- the system under test ------------------------------------------------------------------------


@dataclass
class System:
    service: EventSourcedService[JourneysApplication]
    loop: asyncio.AbstractEventLoop
    directory: Path
    nats: NatsServerProcess
    consent: ServiceProcess
    admin_token: str  # the bench's own credential at consent: the model, the grants
    service_token: str  # journeys' credential at consent (as `onefold up` gives it)
    upstream_position: int = 0

    @property
    def app(self) -> JourneysApplication:
        return self.service.application

    @property
    def log(self) -> ServiceLog:
        return self.service.log

    @property
    def database(self) -> Path:
        return self.directory / "journeys" / "journeys.db"

    def sync(self, use_case: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(use_case, self.loop).result()

    def handle(self, envelopes: Sequence[EventEnvelope]) -> None:
        """One subscriber batch on the writer thread: the handler and the tracking row in one store
        transaction."""
        self.upstream_position += len(envelopes)
        self.sync(self.log.writer.run(self._apply, envelopes, self.upstream_position))

    def _apply(self, envelopes: Sequence[EventEnvelope], position: int) -> None:
        store = self.log.store
        with store.transaction() as conn:
            self.app.runs.handle_identity(conn, envelopes)
            store.record_tracking(conn, UPSTREAM, position, envelopes[-1].event_id)

    def consent_cpu_seconds(self) -> float:
        assert self.consent.process is not None
        return cpu_seconds(self.consent.process.pid)

    def consent_rss_mb(self) -> float:
        assert self.consent.process is not None
        for line in Path(f"/proc/{self.consent.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def close(self) -> None:
        async def stop() -> None:
            await self.app.channels.aclose()
            await self.app.sender.upstream.peers.close()
            await self.log.writer.stop()

        try:
            self.sync(stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.log.store.engine.dispose()
        finally:
            self.consent.stop()
            self.nats.stop()


def start_system(directory: Path) -> System:
    """nats-server, the consent service (a subprocess) and the journeys application composed by its
    bootstrap, in this process, with consent's address and a service credential it accepts."""
    consent = start_consent(directory, WORKSPACE, "journeys to consent")
    try:
        service, loop = compose_here("journeys", compose, [JourneysSettings], directory, consent)
    except BaseException:
        consent.stop()
        raise
    system = System(
        service, loop, directory, consent.nats, consent.process, consent.admin_token, consent.service_token
    )
    upstream = system.app.sender.upstream

    async def purposes_only(workspace: str) -> Known:
        """What a journey may name, asked of consent alone: no segments service runs here, and the
        bench's journeys name no segment."""
        stub = consent_pb2_grpc.ConsentServiceStub(upstream.peers.channel("consent"))
        model = await stub.GetModel(
            consent_pb2.GetModelRequest(), metadata=upstream.peers.acting_for(workspace), timeout=30
        )
        return Known(segments=frozenset(), purposes=frozenset(p.purpose_id for p in model.purposes))

    system.app.journeys.known = purposes_only
    return system


# --- measuring helpers ----------------------------------------------------------------------------


@dataclass
class Meter:
    """Wall and process CPU seconds spent inside `measure()` blocks only, and consent's CPU."""

    system: System
    wall: float = 0.0
    cpu: float = 0.0
    consent_cpu: float = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        wall, cpu, consent = time.perf_counter(), time.process_time(), self.system.consent_cpu_seconds()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.consent_cpu += self.system.consent_cpu_seconds() - consent


def database_mb(system: System) -> float:
    return round(sum(f.stat().st_size for f in system.database.parent.glob("journeys.db*")) / 2**20, 1)


def scalar(system: System, query: sa.Select[Any]) -> int:
    with system.log.store.engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def raw_insert_floor(directory: Path, payloads: Sequence[bytes], batch: int) -> dict[str, Any]:
    """sqlite3 executemany of `payloads` as rows of a table shaped like the log's, a commit per
    `batch`, WAL and synchronous=FULL as the store runs it, in the bench's directory."""
    path = directory / "floor.db"
    path.unlink(missing_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    now = wall_clock()
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(
            "CREATE TABLE events (position INTEGER PRIMARY KEY, event_id TEXT UNIQUE, stream_id TEXT, "
            "type TEXT, payload BLOB, occurred_at INTEGER)"
        )
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(payloads), batch):
            rows = [
                (str(uuid.uuid4()), f"stream-{i}", "onefold.bench.Row", payloads[i], now)
                for i in range(start, min(start + batch, len(payloads)))
            ]
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                "INSERT INTO events (event_id, stream_id, type, payload, occurred_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            connection.execute("COMMIT")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        connection.close()
        path.unlink(missing_ok=True)
    return {
        "rows": len(payloads),
        "batch": batch,
        "mean_row_bytes": round(statistics.fmean(len(p) for p in payloads)) if payloads else 0,
        "rows_per_s": round(len(payloads) / wall),
        "cpu_us_per_row": round(cpu / max(len(payloads), 1) * 1e6, 2),
    }


# --- setup ----------------------------------------------------------------------------------------


def load_model() -> consent_pb2.ConsentModel:
    document = yaml.safe_load(MODEL_FILE.read_text(encoding="utf-8"))
    return model_from_document(document, str(MODEL_FILE), MODEL_FILE.parent)


def granted(index: int) -> bool:
    return index % NO_CONSENT_EVERY != NO_CONSENT_EVERY - 1


async def grant_consent(system: System, profiles: int, report: Progress) -> None:
    """The model, then marketing on email granted to nine profiles in ten, through consent's API."""
    async with authenticated_channel(system.consent.target, system.admin_token) as channel:
        stub = consent_pb2_grpc.ConsentServiceStub(channel)
        await stub.SetModel(consent_pb2.SetModelRequest(model=load_model()), timeout=30)
        wanted = [i for i in range(profiles) if granted(i)]
        task = report.add_task("grants", total=len(wanted))

        async def client(offset: int) -> None:
            for i in wanted[offset::GRANT_CLIENTS]:
                await stub.GrantConsent(
                    consent_pb2.GrantConsentRequest(
                        subject=identity_pb2.ProfileRef(profile_id=Traffic.profile_id("p", i)),
                        purpose_ids=["marketing"],
                        channels=["email"],
                        proof=PROOF,
                    ),
                    timeout=30,
                )
                report.advance(task)

        await asyncio.gather(*(client(c) for c in range(GRANT_CLIENTS)))


def apply_journeys(system: System, timer_wait_seconds: int, names: Sequence[str]) -> None:
    documents = journey_documents(timer_wait_seconds)
    journeys = [journey_from_document(documents[name], "bench") for name in names]
    template = template_from_document(TEMPLATE, "bench")
    system.sync(system.app.journeys.apply(WORKSPACE, journeys, [template], "bench", publish=True))


def profiles_phase(system: System, traffic: Traffic, profiles: int) -> dict[str, Any]:
    """Every profile's traits through the handler, and consent granted to nine in ten."""
    started = time.perf_counter()
    with progress("consent granted") as bar:
        system.sync(grant_consent(system, profiles, bar))
    granted_seconds = time.perf_counter() - started
    meter = Meter(system)
    with progress("profiles' traits") as bar:
        task = bar.add_task("traits", total=profiles)
        for start in range(0, profiles, ENTRY_BATCH):
            ids = range(start, min(start + ENTRY_BATCH, profiles))
            envelopes = [traffic.traits(Traffic.profile_id("p", i)) for i in ids]
            with meter.measure():
                system.handle(envelopes)
            bar.advance(task, len(envelopes))
    return {
        "profiles": profiles,
        "with_consent": sum(1 for i in range(profiles) if granted(i)),
        "grants_seconds": round(granted_seconds, 1),
        "traits_per_s": round(profiles / meter.wall),
        "traits_cpu_us_per_profile": round(meter.cpu / profiles * 1e6, 1),
    }


# --- phases ---------------------------------------------------------------------------------------


def waiting_phase(system: System, traffic: Traffic, count: int) -> dict[str, Any]:
    """`count` people enter a journey that waits a day; the memory and disk they take."""
    before, database_before = memory_mb(), database_mb(system)
    meter = Meter(system)
    with progress("waiting instances") as bar:
        task = bar.add_task("waiting", total=count)
        for start in range(0, count, ENTRY_BATCH):
            ids = range(start, min(start + ENTRY_BATCH, count))
            envelopes = [traffic.viewed(Traffic.profile_id("w", i)) for i in ids]
            with meter.measure():
                system.handle(envelopes)
            bar.advance(task, len(envelopes))
    after, database_after = memory_mb(), database_mb(system)
    waiting = scalar(
        system,
        sa.select(sa.func.count())
        .select_from(instances)
        .where(
            (instances.c.journey == WAIT_JOURNEY) & instances.c.active & instances.c.fires_at_us.is_not(None)
        ),
    )
    per_instance_mb = max(0.0, after["rss_mb"] - before["rss_mb"]) / max(waiting, 1)
    # Made after the RSS was read: the floor's rows are the bench's memory, not the service's.
    payloads = [traffic.viewed(Traffic.profile_id("w", i)).SerializeToString() for i in range(count)]
    target = TARGET_SIZES["waiting_instances"]
    return {
        "instances": waiting,
        "batch": ENTRY_BATCH,
        "handler_seconds": round(meter.wall, 1),
        "entries_per_s": round(count / meter.wall),
        "service_cpu_us_per_entry": round(meter.cpu / count * 1e6, 1),
        "rss_before_mb": before["rss_mb"],
        "rss_after_mb": after["rss_mb"],
        "rss_kb_per_instance": round(per_instance_mb * 1024, 3),
        "rss_at_1m_mb": round(before["rss_mb"] + per_instance_mb * target, 1),
        "database_mb": database_after,
        "database_at_1m_mb": round(
            database_before + (database_after - database_before) / max(waiting, 1) * target
        ),
        "extrapolated": waiting < target,
        "floor": raw_insert_floor(system.directory, payloads, ENTRY_BATCH),
        "memory": memory_mb(),
    }


def timers_phase(system: System, traffic: Traffic, count: int, entries_per_s: float) -> dict[str, Any]:
    """`count` timers due at the same microsecond, fired by the service's own loop."""
    # Long enough for the whole cohort's one transaction to commit before its timers come due.
    wait_seconds = max(2, round(2 * count / max(entries_per_s, 1.0)) + 1)
    apply_journeys(system, wait_seconds, [TIMER_JOURNEY])
    head = system.log.store.head_position()
    envelopes = [traffic.viewed(Traffic.profile_id("t", i), "Flash Sale Viewed") for i in range(count)]
    loop = asyncio.run_coroutine_threadsafe(system.app.run_timers(lambda: True), system.loop)
    try:
        started = time.perf_counter()
        system.handle(envelopes)
        entered_seconds = time.perf_counter() - started
        cohort = (instances.c.journey == TIMER_JOURNEY) & instances.c.active
        with system.log.store.engine.connect() as conn:
            earliest, latest = conn.execute(
                sa.select(sa.func.min(instances.c.fires_at_us), sa.func.max(instances.c.fires_at_us)).where(
                    cohort
                )
            ).one()
        due = int(earliest)
        committed_before_due = wall_clock() < due
        exited_type = pb.JourneyExited.DESCRIPTOR.full_name
        visible_at = float("nan")
        deadline = time.perf_counter() + wait_seconds + 120
        with progress(f"{count:,} timers due in {wait_seconds} s") as bar:
            task = bar.add_task("timers", total=count)
            while time.perf_counter() < deadline:
                exited = count_events(system, exited_type, head)
                bar.update(task, completed=exited)
                if exited >= count:
                    visible_at = wall_clock()
                    break
                time.sleep(TIMER_POLL_SECONDS)
    finally:
        loop.cancel()
    fired = [
        (to_micros(e.recorded_at) - due) / 1e6
        for e in system.log.store.iter_all(after_position=head)
        if e.type == exited_type and e.stream_id.startswith(f"journeys-instance:{WORKSPACE}:{TIMER_JOURNEY}:")
    ]
    return {
        "timers": count,
        "wait_s": wait_seconds,
        "entered_in_one_transaction_s": round(entered_seconds, 2),
        "due_spread_ms": round((int(latest) - due) / 1000, 3),
        "committed_before_due": committed_before_due,
        "fired": len(fired),
        "first_fired_after_due_s": round(min(fired, default=float("nan")), 3),
        "all_fired_after_due_s": round(max(fired, default=float("nan")), 3),
        "all_visible_after_due_s": round((visible_at - due) / 1e6, 3),
        "poll_interval_s": TIMER_POLL_SECONDS,
        "memory": memory_mb(),
    }


def count_events(system: System, event_type: str, after_position: int) -> int:
    return scalar(
        system,
        sa.select(sa.func.count())
        .select_from(sa.table("events", sa.column("type"), sa.column("position")))
        .where(sa.column("type") == event_type, sa.column("position") > after_position),
    )


class SentReader(threading.Thread):
    """Reads the log every POLL_SECONDS (its own read-only connection): when each MessageSent was
    first seen, and its recorded_at (the append), by instance stream."""

    def __init__(self, database: Path, after_position: int) -> None:
        super().__init__(name="journeys-bench-reader", daemon=True)
        self.database = database
        self.position = after_position
        self.seen: dict[str, tuple[float, int]] = {}  # stream -> (seen at, recorded at), wall µs
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            while not self.stopping.is_set():
                rows = connection.execute(
                    "SELECT position, stream_id, type, recorded_at FROM events WHERE position > ? "
                    "ORDER BY position",
                    (self.position,),
                ).fetchall()
                now = wall_clock()
                for position, stream, kind, recorded in rows:
                    self.position = position
                    if kind == pb.MessageSent.DESCRIPTOR.full_name:
                        self.seen.setdefault(stream, (now, int(recorded)))
                self.stopping.wait(POLL_SECONDS)
        finally:
            connection.close()


def latency_phase(system: System, traffic: Traffic, profiles: int, seconds: float) -> dict[str, Any]:
    """Entries at LATENCY_RATE/s with the sender loop running; from each event to its MessageSent."""
    total = max(1, int(LATENCY_RATE * seconds))
    produced: queue.Queue[tuple[int, str, EventEnvelope] | None] = queue.Queue()
    # Only the producer thread draws from its own generator (random.Random is not shared).
    producer_traffic = Traffic(seed=traffic.rng.randrange(1 << 30))
    producer_traffic.carts = 10**9  # carts of its own
    producing: list[float] = []  # the producer's first and last moment

    def produce() -> None:
        begin = time.perf_counter()
        producing.append(begin)
        for i in range(total):
            delay = begin + i / LATENCY_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            index = producer_traffic.rng.randrange(profiles)
            profile_id = Traffic.profile_id("p", index)
            cart_id, event = producer_traffic.product_added(profile_id)
            stream = instance_stream(WORKSPACE, SEND_JOURNEY, profile_id, cart_id)
            produced.put((wall_clock(), stream if granted(index) else "", event))
        producing.append(time.perf_counter())
        produced.put(None)

    reader = SentReader(system.database, system.log.store.head_position())
    sender = asyncio.run_coroutine_threadsafe(system.app.run_sender(lambda: True), system.loop)
    producer = threading.Thread(target=produce, name="journeys-bench-producer", daemon=True)
    produced_at: dict[str, int] = {}  # instance stream (of a profile with consent) -> produced, µs
    committed: list[float] = []  # ms from produced to the entry's commit, every event
    batch_sizes: list[int] = []
    wall, cpu, consent_cpu = time.perf_counter(), time.process_time(), system.consent_cpu_seconds()
    reader.start()
    try:
        with progress(f"entries at {LATENCY_RATE}/s, the sender running") as bar:
            task = bar.add_task("latency", total=total)
            producer.start()
            finished = False
            while not finished:
                batch, finished = next_batch(produced, SUBSCRIBER_BATCH)
                if not batch:
                    continue
                system.handle([event for _, _, event in batch])
                done = wall_clock()
                for moment, stream, _ in batch:
                    committed.append((done - moment) / 1000)
                    if stream:
                        produced_at[stream] = moment
                batch_sizes.append(len(batch))
                bar.advance(task, len(batch))
        producer.join()
        deadline = time.perf_counter() + 30
        while len(reader.seen) < len(produced_at) and time.perf_counter() < deadline:
            time.sleep(0.05)
    finally:
        sender.cancel()
        reader.stopping.set()
        reader.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    consent_cpu = system.consent_cpu_seconds() - consent_cpu
    visible = [(reader.seen[s][0] - t) / 1000 for s, t in produced_at.items() if s in reader.seen]
    appended = [(reader.seen[s][1] - t) / 1000 for s, t in produced_at.items() if s in reader.seen]
    return {
        "path": (
            "in-process: producer thread -> queue -> batches of up to "
            f"{SUBSCRIBER_BATCH} -> handle_identity + tracking row in one store transaction on the "
            "writer (MessageQueued) -> the sender loop woken: CheckConsentBatch to the consent "
            "process over gRPC, render, the sandbox (sealed, kept), MessageSent recorded -> seen by a "
            f"reader polling the log every {POLL_SECONDS * 1000:g} ms; excludes NATS delivery to the "
            "subscriber and the outbox relay's publish of the MessageSent"
        ),
        "rate_per_s": LATENCY_RATE,
        # Below the rate when the producer thread was starved of the GIL by the service.
        "produced_per_s": round(total / max(producing[-1] - producing[0], 1e-9)),
        "entries": total,
        "with_consent": len(produced_at),
        "sent": len(visible),
        "sent_p50_ms": round(percentile(visible, 50), 1),
        "sent_p99_ms": round(percentile(visible, 99), 1),
        "sent_max_ms": round(max(visible, default=float("nan")), 1),
        "appended_p99_ms": round(percentile(appended, 99), 1),
        "entry_committed_p99_ms": round(percentile(committed, 99), 1),
        "mean_batch": round(statistics.fmean(batch_sizes), 1) if batch_sizes else 0,
        # The entry and its send, with the bench's producer and reader threads: an upper bound.
        "process_cpu_us_per_entry": round(cpu / total * 1e6, 1),
        "consent_cpu_us_per_entry": round(consent_cpu / total * 1e6, 1),
        "process_cpu_share": round(cpu / wall, 2),
        "memory": memory_mb(),
    }


def queue_messages(system: System, traffic: Traffic, profiles: int, count: int) -> list[str]:
    """`count` messages queued (entries with the sender stopped); the streams of those with consent."""
    streams: list[str] = []
    with progress("messages queued") as bar:
        task = bar.add_task("queue", total=count)
        for start in range(0, count, SUBSCRIBER_BATCH):
            envelopes = []
            for _ in range(min(SUBSCRIBER_BATCH, count - start)):
                index = traffic.rng.randrange(profiles)
                profile_id = Traffic.profile_id("p", index)
                cart_id, event = traffic.product_added(profile_id)
                envelopes.append(event)
                if granted(index):
                    streams.append(instance_stream(WORKSPACE, SEND_JOURNEY, profile_id, cart_id))
            system.handle(envelopes)
            bar.advance(task, len(envelopes))
    return streams


def sends_phase(system: System, traffic: Traffic, profiles: int, count: int) -> dict[str, Any]:
    """`count` queued messages through `send_due()` until none is left."""
    since = wall_clock()
    expected = len(queue_messages(system, traffic, profiles, count))
    head = system.log.store.head_position()
    meter = Meter(system)
    batches = 0
    with progress("messages sent") as bar:
        task = bar.add_task("sends", total=count)
        handled = 0
        while True:
            with meter.measure():
                done = system.sync(system.app.sender.send_due())
            if not done:
                break
            handled += done
            batches += 1
            bar.update(task, completed=handled)
    with system.log.store.engine.connect() as conn:
        statuses: dict[str, int] = {
            str(status): int(n)
            for status, n in conn.execute(
                sa.select(outbox.c.status, sa.func.count())
                .where((outbox.c.journey == SEND_JOURNEY) & (outbox.c.queued_at_us >= since))
                .group_by(outbox.c.status)
            )
        }
    sender_payloads = [
        e.payload
        for e in system.log.store.iter_all(after_position=head)
        if e.type in (pb.MessageSent.DESCRIPTOR.full_name, pb.MessageDelivered.DESCRIPTOR.full_name)
    ]
    sent = len(sender_payloads) // 2
    return {
        "messages": handled,
        "with_consent": expected,
        "sent": sent,
        "suppressed": statuses.get("suppressed", 0),
        "batches": batches,
        "batch": SEND_BATCH,
        "sender_seconds": round(meter.wall, 2),
        "sends_per_s": round(sent / meter.wall),
        "messages_per_s": round(handled / meter.wall),
        "service_cpu_us_per_message": round(meter.cpu / max(handled, 1) * 1e6, 1),
        "consent_cpu_us_per_message": round(meter.consent_cpu / max(handled, 1) * 1e6, 1),
        "service_cpu_share": round(meter.cpu / meter.wall, 2),
        "floor": raw_insert_floor(system.directory, sender_payloads, 2 * SEND_BATCH),
        "memory": memory_mb(),
    }


def consent_floor(system: System, profiles: int, batches: int) -> dict[str, Any]:
    """Bare CheckConsentBatch round trips of SEND_BATCH checks, one at a time, with journeys'
    service credential acting for the workspace: the consent answer alone."""
    rng = random.Random(5)
    requests = [
        consent_pb2.CheckConsentBatchRequest(
            checks=[
                consent_pb2.CheckConsentRequest(
                    subject=identity_pb2.ProfileRef(
                        profile_id=Traffic.profile_id("p", rng.randrange(profiles))
                    ),
                    purpose_id="marketing",
                    channel="email",
                )
                for _ in range(SEND_BATCH)
            ]
        )
        for _ in range(batches)
    ]

    async def run() -> list[float]:
        async with authenticated_channel(
            system.consent.target, system.service_token, workspace=WORKSPACE
        ) as channel:
            stub = consent_pb2_grpc.ConsentServiceStub(channel)
            for request in requests[:3]:
                await stub.CheckConsentBatch(request, timeout=30)
            times = []
            for request in requests:
                started = time.perf_counter()
                await stub.CheckConsentBatch(request, timeout=30)
                times.append((time.perf_counter() - started) * 1000)
            return times

    consent_cpu = system.consent_cpu_seconds()
    times = system.sync(run())
    consent_cpu = system.consent_cpu_seconds() - consent_cpu
    return {
        "batches": batches,
        "checks_per_batch": SEND_BATCH,
        "p50_ms": round(percentile(times, 50), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "checks_per_s": round(batches * SEND_BATCH / (sum(times) / 1000)),
        "consent_cpu_us_per_check": round(consent_cpu / (batches * SEND_BATCH) * 1e6, 1),
    }


def sandbox_floor(system: System, profiles: int, count: int) -> dict[str, Any]:
    """The sandbox provider's own sends (sealed under the profile's key, kept), SEND_BATCH gathered
    at a time as the sender gathers them."""
    sandbox = system.app.channels.sandbox
    messages = [
        ProviderMessage(
            message_id=f"msg_floor{i}",
            workspace=WORKSPACE,
            profile_id=Traffic.profile_id("p", i % profiles),
            channel="email",
            to=f"{Traffic.profile_id('p', i % profiles)}@mail.example",
            subject="Ada, your cart is waiting",
            text="Hello Ada,\n\nYou left something in your cart (cart-1).\n",
            html="<p>Hello Ada,</p><p>You left something in your cart (<code>cart-1</code>).</p>",
        )
        for i in range(count)
    ]

    async def run() -> int:
        delivered = 0
        for start in range(0, count, SEND_BATCH):
            deliveries = await asyncio.gather(
                *(sandbox.send(m) for m in messages[start : start + SEND_BATCH])
            )
            delivered += sum(1 for d in deliveries if d.status == "delivered")
        return delivered

    wall, cpu = time.perf_counter(), time.process_time()
    delivered = system.sync(run())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "sends": count,
        "delivered": delivered,
        "sends_per_s": round(count / wall),
        "cpu_us_per_send": round(cpu / count * 1e6, 1),
    }


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    profiles: int
    waiting: int
    timers: int
    sends: int
    latency_seconds: float


def run(sizes: Sizes, seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "sizes": sizes.__dict__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)} GiB, "
        f"{platform.python_implementation()} {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
    }
    traffic = Traffic(seed)
    with tempfile.TemporaryDirectory(prefix="onefold-bench-journeys-") as tmp:
        say("starting nats-server and the consent service ...")
        system = start_system(Path(tmp))
        try:
            results["memory_at_start"] = memory_mb()
            say(f"profiles: {sizes.profiles:,} with traits, consent for nine in ten ...")
            results["profiles"] = profiles_phase(system, traffic, sizes.profiles)
            apply_journeys(system, 2, [SEND_JOURNEY, WAIT_JOURNEY])  # consent's model is set now
            say(f"waiting: {sizes.waiting:,} instances waiting a day ...")
            results["waiting"] = waiting_phase(system, traffic, sizes.waiting)
            say(f"timers: {sizes.timers:,} due in the same second ...")
            results["timers"] = timers_phase(
                system, traffic, sizes.timers, results["waiting"]["entries_per_s"]
            )
            say(f"latency: {LATENCY_RATE} entries/s for {sizes.latency_seconds} s, the sender running ...")
            results["latency"] = latency_phase(system, traffic, sizes.profiles, sizes.latency_seconds)
            say("floors: CheckConsentBatch alone, the sandbox alone ...")
            results["consent_floor"] = consent_floor(
                system, sizes.profiles, max(5, sizes.sends // SEND_BATCH)
            )
            results["sandbox_floor"] = sandbox_floor(system, sizes.profiles, min(sizes.sends, 5 * SEND_BATCH))
            say(f"sends: {sizes.sends:,} queued messages through send_due() ...")
            results["sends"] = sends_phase(system, traffic, sizes.profiles, sizes.sends)
            results["database_mb"] = database_mb(system)
            results["consent_rss_mb"] = system.consent_rss_mb()
        finally:
            system.close()
    results["memory"] = memory_mb()
    sends, waiting = results["sends"], results["waiting"]
    results["ratios"] = {
        "entries_vs_raw_insert": round(waiting["entries_per_s"] / waiting["floor"]["rows_per_s"], 3),
        "sends_vs_sandbox_alone": round(sends["sends_per_s"] / results["sandbox_floor"]["sends_per_s"], 3),
        "sends_vs_consent_alone": round(
            sends["messages_per_s"] / results["consent_floor"]["checks_per_s"], 3
        ),
        "sender_rows_vs_raw_insert": round(2 * sends["sends_per_s"] / sends["floor"]["rows_per_s"], 3),
    }
    results["targets"] = TARGETS
    results["at_target_size"] = {
        "waiting_instances": not waiting["extrapolated"],
        "timers": results["timers"]["timers"] >= TARGET_SIZES["timers"],
    }
    latency, timers = results["latency"], results["timers"]
    results["met"] = {
        "sent_p99_ms": latency["sent"] == latency["with_consent"] > 0
        and latency["sent_p99_ms"] <= TARGETS["sent_p99_ms"],
        "waiting_rss_mb": results["at_target_size"]["waiting_instances"]
        and results["memory"]["peak_rss_mb"] <= TARGETS["waiting_rss_mb"],
        "timers_fired_s": results["at_target_size"]["timers"]
        and timers["fired"] == timers["timers"]
        and timers["committed_before_due"]
        and timers["all_fired_after_due_s"] <= TARGETS["timers_fired_s"],
        "sends_per_s": sends["sent"] == sends["with_consent"]
        and sends["sends_per_s"] >= TARGETS["sends_per_s"],
    }
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    results["max_rss_mb_getrusage"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def report(results: dict[str, Any]) -> None:
    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<62} {value:>22}  {note}", file=sys.stderr)

    print(f"journeys benchmark ({results['machine']}):", file=sys.stderr)
    profiles = results["profiles"]
    line(
        f"profiles: {profiles['profiles']:,} traits, {profiles['with_consent']:,} with consent",
        f"{profiles['traits_per_s']:,}/s",
        f"{profiles['traits_cpu_us_per_profile']} CPU µs/profile, grants {profiles['grants_seconds']} s",
    )
    waiting, floor = results["waiting"], results["waiting"]["floor"]
    line(
        f"waiting: {waiting['instances']:,} instances entered, batches of {waiting['batch']}",
        f"{waiting['entries_per_s']:,}/s",
        f"{waiting['service_cpu_us_per_entry']} CPU µs/entry, "
        f"{results['ratios']['entries_vs_raw_insert']}x raw insert",
    )
    line(f"raw sqlite3 executemany, {floor['rows']:,} rows (floor)", f"{floor['rows_per_s']:,}/s")
    line(
        "waiting: RSS before / after; at 1,000,000",
        f"{waiting['rss_before_mb']} / {waiting['rss_after_mb']}; {waiting['rss_at_1m_mb']} MB",
        ("extrapolated, " if waiting["extrapolated"] else "")
        + f"database {waiting['database_mb']} MB, at 1M {waiting['database_at_1m_mb']} MB",
    )
    timers = results["timers"]
    line(
        f"timers: {timers['fired']:,}/{timers['timers']:,} due at once, all fired after",
        f"{timers['all_fired_after_due_s']} s",
        f"first {timers['first_fired_after_due_s']} s, all visible {timers['all_visible_after_due_s']} s",
    )
    lat = results["latency"]
    line(
        f"MessageSent at {lat['rate_per_s']} entries/s ({lat['sent']:,} sent): p50 / p99",
        f"{lat['sent_p50_ms']} / {lat['sent_p99_ms']} ms",
        f"appended p99 {lat['appended_p99_ms']} ms, {lat['process_cpu_us_per_entry']} CPU µs/entry "
        f"(+ consent {lat['consent_cpu_us_per_entry']})",
    )
    cfloor, sfloor = results["consent_floor"], results["sandbox_floor"]
    line(
        f"CheckConsentBatch of {cfloor['checks_per_batch']} alone: p50 / p99 (floor)",
        f"{cfloor['p50_ms']} / {cfloor['p99_ms']} ms",
        f"{cfloor['checks_per_s']:,} checks/s",
    )
    line(
        f"the sandbox alone, {sfloor['sends']:,} sends (floor)",
        f"{sfloor['sends_per_s']:,}/s",
        f"{sfloor['cpu_us_per_send']} CPU µs/send",
    )
    sends = results["sends"]
    line(
        f"sends: {sends['messages']:,} messages ({sends['sent']:,} sent), send_due()",
        f"{sends['sends_per_s']:,}/s",
        f"{sends['service_cpu_us_per_message']} CPU µs/message (+ consent "
        f"{sends['consent_cpu_us_per_message']}), {sends['messages_per_s']:,} messages/s",
    )
    line(
        f"raw sqlite3 executemany of the sender's {sends['floor']['rows']:,} rows (floor)",
        f"{sends['floor']['rows_per_s']:,}/s",
    )
    mem = results["memory"]
    line(
        "RSS now / peak; consent's",
        f"{mem['rss_mb']} / {mem['peak_rss_mb']} MB",
        f"{results['consent_rss_mb']} MB",
    )
    say_targets(results["met"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--profiles", type=int, default=5000, help="profiles with traits (9 in 10 with consent)"
    )
    parser.add_argument("--waiting", type=int, default=20_000, help="instances left waiting a day")
    parser.add_argument("--timers", type=int, default=10_000, help="timers due at the same moment")
    parser.add_argument("--sends", type=int, default=20_000, help="queued messages in the sends phase")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of the latency phase")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of about a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        sizes = Sizes(profiles=200, waiting=2000, timers=300, sends=600, latency_seconds=2.0)
    else:
        sizes = Sizes(args.profiles, args.waiting, args.timers, args.sends, args.latency_seconds)
    if min(sizes.profiles, sizes.waiting, sizes.timers, sizes.sends) < 1 or sizes.latency_seconds <= 0:
        parser.error("--profiles, --waiting, --timers, --sends and --latency-seconds must be positive")
    results = run(sizes, args.seed)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
