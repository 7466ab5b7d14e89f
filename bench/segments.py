"""Segments benchmark: identity's events folded by the segments service's subscriber handler over
100 realistic definitions, the latency from an event to its SegmentEntered, a time-driven exit on
the real clock, the backfill of a new definition over the history, and the process's memory — each
figure beside a floor measured in the same run.

    python bench/segments.py [--profiles N] [--events N] [--definitions N] [--backfill-events N]
                             [--latency-seconds S] [--timer-window S] [--quick] [--json]
    onefold bench segments --json

The system: the segments application (`SegmentsApplication`, the one the service composes) on a
fresh SQLite file with its real log, read model, sealed per-profile state and history, in this
process, on the wall clock. Identity's events are `EventEnvelope`s as the identity subscriber
hands them to `ProfileFolds.handle_identity`: EventResolved (track events of a shop: product
views, carts, orders, searches, sign-ins, emails opened, with 3-6 properties each) and
TraitsUpdated (plan, country, city, age, opt-in, source, language), one store transaction per batch
with the subscriber's tracking row, as the subscriber commits them. Their payloads are not sealed
(identity seals the personal fields; opening them is the subscriber's work before the handler).
Events go to profiles unevenly (a quarter of the profiles get about half of the events).

Definitions (`definitions()`, applied through `Definitions.apply` as `onefold apply` does, in an
order where what a definition reads exists): computed traits (sum, count, avg, max, last, most
frequent, unique count; all-time and windowed), segments "performed within" windows with property
filters, "performed N times", "did not ... after", negations, tags on traits (rules and copied
values), two lifecycle stages, segments on computed traits, and segments reading other segments and
tags. `--definitions` keeps the first N.

Phases:

- build: every profile's first event (its state sealed under a new data key, all definitions
  evaluated once), then the rest of `--events`' history share, through the same handler in batches
  of BUILD_BATCH (the fastest honest path: the real fold, seal and writes); how long it took;
- throughput: `--events` live events (timestamped now) through the handler in batches of the
  subscriber's size (256), the envelopes built between batches and not timed: events/s over the
  handler's wall time, the process CPU µs per event (`time.process_time`, handler only). Floor: raw
  `sqlite3.executemany` of as many rows of the same size (the serialized envelopes) into a table of
  the same shape, a commit per batch (WAL, synchronous=FULL, as the store), in the same directory;
- latency: events paced at LATENCY_RATE/s by a producer thread into a queue; a consumer takes what
  is waiting (up to 256) and runs the handler's transaction, as the subscriber does after a fetch.
  Latency = the commit that appended the SegmentEntered minus the moment the event was produced,
  for every SegmentEntered caused in the phase (read back from the log by cause_event_id).
  `path` in the JSON says what this leaves out: NATS delivery to the subscriber and the outbox
  relay's publish of the SegmentEntered;
- timer: TIMER_PROFILES profiles perform the event of `flash_sale_viewers` (performed within
  `--timer-window` s) at once; the service's own timer loop (`run_timers`, on its writer) runs on
  the real clock; delay = when the SegmentExited was appended (its occurred_at, the loop's clock
  when it fired) minus the window's expiry, and when it was visible to a reader (polled);
- backfill: history grown to `--backfill-events` records (what the handler wrote so far, then
  more sealed blocks written by `ProfileStates.append_history`, the handler's own writer of
  history, over the same profiles), then a new definition needing history (`spend_90d`, a
  windowed sum) set through `Definitions.apply`, and its backfill pages run to the end as the
  service's backfill loop runs them: records/s, and the time at 10,000,000 records (measured when
  the run had that many, else extrapolated: `extrapolated`). Floor: a raw read of every history
  block (sqlite3, no opening);
- memory: the process's RSS (VmRSS) after each phase and its peak (VmHWM). The process is the
  service's code plus the bench's generator (a few MB): an upper bound of the service's.

Targets (a 2-core machine): 100 definitions over 1,000,000 profiles: >= 10,000 events/s through
the consumer; SegmentEntered p99 <= 50 ms at 1,000 events/s; a time-driven exit within 1 s of the
expiry; a backfill over 10,000,000 events <= 120 s; <= 300 MB RSS. `met` in the JSON says which
were met (a figure measured at a smaller size than the target's is not met: see `at_target_size`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
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
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.message import Message

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog import EventStore
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.models import from_micros, to_micros
from onefold.eventlog.service import ServiceLog
from onefold.eventlog.subscriber import SubscriberSettings
from onefold.platform.database import create_engine
from onefold.segments.adapters.profile_states import history as history_table
from onefold.segments.adapters.read_model import SegmentsReadModel
from onefold.segments.application import SegmentsApplication
from onefold.segments.domain.definitions import SECOND
from onefold.segments.domain.events import REGISTRY
from onefold.segments.domain.fold import Resolved, record_of, resolved
from onefold.testing.measure import memory_mb, percentile, progress, say, say_targets

T = TypeVar("T")
WORKSPACE = "bench"
UPSTREAM = "identity"
HOUR = 3600 * SECOND
DAY = 24 * HOUR
SUBSCRIBER_BATCH = SubscriberSettings().batch_size
BUILD_BATCH = 1000  # profiles' first events per transaction while building state
HISTORY_BLOCK = 10  # records per sealed block when growing the history for the backfill
HISTORY_SPAN = 60 * DAY  # the built history's events are spread over this past
LATENCY_RATE = 1000  # events per second in the latency phase
TIMER_PROFILES = 50
BACKFILL_TARGET_EVENTS = 10_000_000
TARGETS = {
    "throughput_events_per_s": 10_000,
    "entered_p99_ms": 50.0,
    "timer_exit_delay_s": 1.0,
    "backfill_10m_seconds": 120.0,
    "rss_mb": 300.0,
}
TARGET_SIZES = {"profiles": 1_000_000, "definitions": 100}

CATEGORIES = ("electronics", "books", "fashion", "home", "garden", "toys", "sports", "beauty", "food", "auto")
CAMPAIGNS = tuple(f"spring_{i}" for i in range(10))
COUNTRIES = ("GB", "FR", "DE", "ES", "IT", "US", "CA", "BR", "JP", "AU")
REGIONS = {"emea": ["GB", "FR", "DE", "ES", "IT"], "amer": ["US", "CA", "BR"], "apac": ["JP", "AU"]}
PLANS = ("free", "basic", "gold", "platinum")
# (event, share of the events); TraitsUpdated takes the rest.
EVENT_MIX = (
    ("Product Viewed", 0.40),
    ("Searched", 0.10),
    ("Added To Cart", 0.10),
    ("Email Opened", 0.08),
    ("Signed In", 0.08),
    ("Order Completed", 0.05),
    ("Email Clicked", 0.03),
    ("Support Ticket Opened", 0.01),
    ("Support Ticket Closed", 0.01),
)
TIMER_EVENT = "Flash Sale Viewed"
TIMER_SEGMENT = "flash_sale_viewers"


# --- definitions ----------------------------------------------------------------------------------


def duration(micros: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=micros // SECOND, nanos=(micros % SECOND) * 1000)


def value(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int | float):
        out.number_value = v
    else:
        out.string_value = v
    return out


def predicate(op: str, v: Any = None, values: Sequence[Any] = ()) -> pb.Predicate:
    p = pb.Predicate(op=pb.Operator.Value(f"OPERATOR_{op}"))
    if v is not None:
        p.value.CopyFrom(value(v))
    p.values.extend(value(x) for x in values)
    return p


def events_named(name: str, *where: tuple[str, str, Any]) -> pb.EventFilter:
    out = pb.EventFilter(type="track", event=name)
    for path, op, v in where:
        out.where.add(path=path, predicate=predicate(op, v))
    return out


def performed(
    name: str, *where: tuple[str, str, Any], within: int = 0, min_count: int = 0, max_count: int = 0
) -> pb.Condition:
    p = pb.Performed(event=events_named(name, *where), min_count=min_count, max_count=max_count)
    if within:
        p.within.CopyFrom(duration(within))
    return pb.Condition(performed=p)


def not_after(after: str, then_not: str, within: int) -> pb.Condition:
    return pb.Condition(
        not_performed_after=pb.NotPerformedAfter(
            after=events_named(after), then_not=events_named(then_not), within=duration(within)
        )
    )


def trait_is(path: str, op: str, v: Any = None, values: Sequence[Any] = ()) -> pb.Condition:
    return pb.Condition(trait=pb.TraitTest(trait=path, predicate=predicate(op, v, values)))


def computed_is(name: str, op: str, v: Any) -> pb.Condition:
    return pb.Condition(computed_trait=pb.ComputedTraitTest(computed_trait=name, predicate=predicate(op, v)))


def tag_is(name: str, op: str | None = None, v: Any = None, values: Sequence[Any] = ()) -> pb.Condition:
    test = pb.TagTest(tag=name)
    if op is not None:
        test.predicate.CopyFrom(predicate(op, v, values))
    return pb.Condition(tag=test)


def all_of(*conditions: pb.Condition) -> pb.Condition:
    return pb.Condition(all_of=pb.Conditions(conditions=list(conditions)))


def negated(condition: pb.Condition) -> pb.Condition:
    return pb.Condition(negated=condition)


def in_segment(name: str) -> pb.Condition:
    return pb.Condition(in_segment=name)


def segment(name: str, condition: pb.Condition) -> pb.Definition:
    return pb.Definition(name=name, segment=pb.Segment(condition=condition))


def tag(name: str, *rules: tuple[pb.Condition, str], copy_trait: str = "") -> pb.Definition:
    return pb.Definition(
        name=name,
        tag=pb.Tag(rules=[pb.Tag.Rule(when=w, value=v) for w, v in rules], copy_trait=copy_trait),
    )


def computed(name: str, aggregation: str, event: str, prop: str = "", window: int = 0) -> pb.Definition:
    trait = pb.ComputedTrait(
        event=events_named(event),
        aggregation=pb.Aggregation.Value(f"AGGREGATION_{aggregation}"),
        property=prop,
    )
    if window:
        trait.window.CopyFrom(duration(window))
    return pb.Definition(name=name, computed_trait=trait)


def definitions(timer_window: int) -> list[pb.Definition]:
    """The workspace's 100 definitions, each after what it reads."""
    out = [
        computed("lifetime_spend", "SUM", "Order Completed", "total"),
        computed("spend_30d", "SUM", "Order Completed", "total", 30 * DAY),
        computed("orders_count", "COUNT", "Order Completed"),
        computed("orders_90d", "COUNT", "Order Completed", window=90 * DAY),
        computed("views_7d", "COUNT", "Product Viewed", window=7 * DAY),
        computed("avg_order", "AVG", "Order Completed", "total"),
        computed("max_order", "MAX", "Order Completed", "total"),
        computed("last_category", "LAST", "Product Viewed", "category"),
        computed("favourite_category", "MOST_FREQUENT", "Product Viewed", "category"),
        computed("categories_30d", "UNIQUE_COUNT", "Product Viewed", "category", 30 * DAY),
        computed("emails_opened_30d", "COUNT", "Email Opened", window=30 * DAY),
        computed("searches_7d", "COUNT", "Searched", window=7 * DAY),
    ]
    for category in CATEGORIES:
        out.append(
            segment(
                f"viewed_{category}_7d",
                performed("Product Viewed", ("category", "EQ", category), within=7 * DAY),
            )
        )
        out.append(
            segment(
                f"frequent_{category}",
                performed(
                    "Product Viewed",
                    ("category", "EQ", category),
                    ("price", "GE", 20),
                    within=30 * DAY,
                    min_count=3,
                ),
            )
        )
    for campaign in CAMPAIGNS:
        out.append(
            segment(
                f"opened_{campaign}", performed("Email Opened", ("campaign", "EQ", campaign), within=14 * DAY)
            )
        )
    out += [
        tag(
            "plan_tier",
            (trait_is("plan", "IN", values=["gold", "platinum"]), "premium"),
            (trait_is("plan", "EQ", "basic"), "paying"),
            (trait_is("plan", "EXISTS"), "free"),
        ),
        tag("country", copy_trait="country"),
        tag("city", copy_trait="city"),
        tag("source", copy_trait="source"),
        tag("language", copy_trait="language"),
        tag("region", *((trait_is("country", "IN", values=c), region) for region, c in REGIONS.items())),
        tag(
            "age_band",
            (trait_is("age", "LT", 25), "under_25"),
            (trait_is("age", "LT", 40), "25_39"),
            (trait_is("age", "LT", 60), "40_59"),
            (trait_is("age", "EXISTS"), "60_plus"),
        ),
        tag("marketable", (trait_is("email_opt_in", "EQ", True), "yes")),
        tag("paid_plan", (trait_is("plan", "IN", values=["basic", "gold", "platinum"]), "yes")),
        tag("young_premium", (all_of(trait_is("age", "LT", 30), trait_is("plan", "EQ", "platinum")), "yes")),
        segment("cart_abandoned_1h", not_after("Added To Cart", "Order Completed", HOUR)),
        segment("cart_abandoned_1d", not_after("Added To Cart", "Order Completed", DAY)),
        segment("cart_abandoned_3d", not_after("Added To Cart", "Order Completed", 3 * DAY)),
        segment("browse_abandoned_1d", not_after("Product Viewed", "Added To Cart", DAY)),
        segment("search_no_view_1h", not_after("Searched", "Product Viewed", HOUR)),
        segment("ticket_unresolved_2d", not_after("Support Ticket Opened", "Support Ticket Closed", 2 * DAY)),
        segment("signed_in_no_view_1d", not_after("Signed In", "Product Viewed", DAY)),
        segment("email_not_clicked_3d", not_after("Email Opened", "Email Clicked", 3 * DAY)),
        pb.Definition(name="stage", lifecycle=pb.Lifecycle()),
        pb.Definition(name="stage_relative", lifecycle=pb.Lifecycle(relative=1.5)),
        segment("big_spenders", computed_is("lifetime_spend", "GE", 500)),
        segment("spent_100_30d", computed_is("spend_30d", "GE", 100)),
        segment("repeat_buyers", computed_is("orders_count", "GE", 2)),
        segment("loyal", computed_is("orders_90d", "GE", 5)),
        segment("engaged_browsers", computed_is("views_7d", "GE", 10)),
        segment("high_aov", computed_is("avg_order", "GE", 150)),
        segment("explorers", computed_is("categories_30d", "GE", 4)),
        segment("email_engaged", computed_is("emails_opened_30d", "GE", 3)),
        segment("heavy_searchers", computed_is("searches_7d", "GE", 5)),
        segment("whales", computed_is("max_order", "GE", 1000)),
        segment("active_1d", performed("Signed In", within=DAY)),
        segment("active_7d", performed("Signed In", within=7 * DAY)),
        segment("purchased_7d", performed("Order Completed", within=7 * DAY)),
        segment("purchased_30d", performed("Order Completed", within=30 * DAY)),
        segment("recent_searchers", performed("Searched", within=DAY)),
        segment("support_contact_30d", performed("Support Ticket Opened", within=30 * DAY)),
        segment("inactive_30d", negated(performed("Signed In", within=30 * DAY))),
        segment("never_purchased", negated(performed("Order Completed"))),
        segment("multi_session", performed("Signed In", within=30 * DAY, min_count=5)),
        segment("one_time_buyers", performed("Order Completed", min_count=1, max_count=1)),
        segment("premium_viewers", performed("Product Viewed", ("price", "GE", 200), within=30 * DAY)),
        segment("coupon_users", performed("Order Completed", ("coupon", "EXISTS", None), within=90 * DAY)),
        segment("app_signins", performed("Signed In", ("method", "EQ", "app"), within=30 * DAY)),
        segment("big_carts", performed("Added To Cart", ("quantity", "GE", 3), within=7 * DAY)),
        segment("search_heavy_1d", performed("Searched", within=DAY, min_count=3)),
        segment("zero_result_searchers", performed("Searched", ("results", "EQ", 0), within=7 * DAY)),
        segment("eur_buyers", performed("Order Completed", ("currency", "EQ", "EUR"), within=90 * DAY)),
        segment(TIMER_SEGMENT, performed(TIMER_EVENT, within=timer_window)),
        segment("vip", all_of(in_segment("big_spenders"), tag_is("plan_tier", "EQ", "premium"))),
        segment(
            "at_risk_vip", all_of(in_segment("vip"), tag_is("stage", "IN", values=["churning", "dormant"]))
        ),
        segment("abandoners_marketable", all_of(in_segment("cart_abandoned_1d"), tag_is("marketable"))),
        segment("win_back", all_of(in_segment("inactive_30d"), in_segment("repeat_buyers"))),
        segment(
            "electronics_fans_emea",
            all_of(in_segment("frequent_electronics"), tag_is("region", "EQ", "emea")),
        ),
        segment("browsers_not_buyers", all_of(in_segment("engaged_browsers"), in_segment("never_purchased"))),
        segment(
            "young_big_spenders", all_of(in_segment("big_spenders"), tag_is("age_band", "EQ", "under_25"))
        ),
        segment("email_vip", all_of(in_segment("vip"), in_segment("email_engaged"))),
        segment("lapsed_loyal", all_of(in_segment("loyal"), negated(in_segment("active_7d")))),
        segment("fashion_beauty", all_of(in_segment("frequent_fashion"), in_segment("frequent_beauty"))),
    ]
    return out


def backfill_definition() -> pb.Definition:
    """A definition set after the history exists, reading a feature no other definition keeps."""
    return computed("spend_90d", "SUM", "Order Completed", "total", 90 * DAY)


# --- identity's events ----------------------------------------------------------------------------


class Traffic:
    """Identity's events for `profiles` profiles (seeded): track events of a shop and traits."""

    def __init__(self, profiles: int, seed: int) -> None:
        self.profiles = profiles
        self.rng = random.Random(seed)
        self.names = [name for name, _ in EVENT_MIX]
        cumulative, total = [], 0.0
        for _, share in EVENT_MIX:
            total += share
            cumulative.append(total)
        self.cumulative = cumulative

    def profile_id(self, index: int) -> str:
        return f"p{index:08d}"

    def some_profile(self) -> str:
        """A quarter of the profiles get about half of the events."""
        return self.profile_id(int(self.profiles * self.rng.random() ** 2))

    def properties(self, name: str) -> dict[str, Any]:
        rng = self.rng
        if name == "Product Viewed":
            return {
                "product_id": f"sku-{rng.randrange(50_000)}",
                "category": rng.choice(CATEGORIES),
                "price": round(rng.lognormvariate(3.5, 1.0), 2),
                "brand": f"brand-{rng.randrange(300)}",
                "currency": "EUR",
                "url": f"https://shop.example/p/{rng.randrange(50_000)}",
            }
        if name == "Added To Cart":
            return {
                "product_id": f"sku-{rng.randrange(50_000)}",
                "category": rng.choice(CATEGORIES),
                "price": round(rng.lognormvariate(3.5, 1.0), 2),
                "quantity": rng.choice((1, 1, 1, 2, 3)),
            }
        if name == "Order Completed":
            out: dict[str, Any] = {
                "order_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "total": round(rng.lognormvariate(4.5, 0.9), 2),
                "currency": rng.choice(("EUR", "EUR", "GBP", "USD")),
                "items": rng.randrange(1, 6),
            }
            if rng.random() < 0.2:
                out["coupon"] = f"SAVE{rng.randrange(5, 30)}"
            return out
        if name == "Searched":
            return {"query": f"term {rng.randrange(5000)}", "results": rng.randrange(0, 200)}
        if name in ("Email Opened", "Email Clicked"):
            return {"campaign": rng.choice(CAMPAIGNS), "channel": "email"}
        if name == "Signed In":
            return {"method": rng.choice(("app", "web", "sso"))}
        return {"priority": rng.choice(("low", "normal", "high"))}

    def traits(self) -> dict[str, Any]:
        rng = self.rng
        country = rng.choice(COUNTRIES)
        return {
            "plan": rng.choice(PLANS),
            "country": country,
            "city": f"{country.lower()}-city-{rng.randrange(50)}",
            "age": rng.randrange(18, 80),
            "email_opt_in": rng.random() < 0.6,
            "source": rng.choice(("organic", "ads", "referral", "partner")),
            "language": rng.choice(("en", "fr", "de", "es", "it", "ja", "pt")),
        }

    def event(self, profile_id: str, at: int, name: str | None = None) -> EventEnvelope:
        """One identity envelope about `profile_id` happening at `at` (µs): an EventResolved, or
        (when no name is asked for) sometimes a TraitsUpdated."""
        if name is None:
            draw = self.rng.random()
            name = next((n for n, c in zip(self.names, self.cumulative, strict=True) if draw < c), None)
        if name is None:
            message: Message = identity_pb2.TraitsUpdated(
                profile_id=profile_id, workspace=WORKSPACE, evidence_event_id=str(uuid.uuid4())
            )
            message.traits.update(self.traits())  # type: ignore[attr-defined]
        else:
            track = ingest_pb2.TrackingEvent(type=ingest_pb2.EVENT_TYPE_TRACK, event=name)
            track.timestamp.FromDatetime(from_micros(at))
            track.properties.update(self.properties(name))
            message = identity_pb2.EventResolved(
                profile_id=profile_id, workspace=WORKSPACE, event_id=str(uuid.uuid4()), event=track
            )
        out = EventEnvelope(
            event_id=str(uuid.uuid4()),
            type=message.DESCRIPTOR.full_name,
            workspace=WORKSPACE,
            payload=message.SerializeToString(),
        )
        out.occurred_at.FromDatetime(from_micros(at))
        return out

    def past(self, now: int) -> int:
        return now - int(self.rng.random() * HISTORY_SPAN)


def wall_clock() -> int:
    return to_micros(datetime.now(UTC))


# --- the system under test ------------------------------------------------------------------------


@dataclass
class System:
    log: ServiceLog
    app: SegmentsApplication
    loop: asyncio.AbstractEventLoop
    database: Path
    upstream_position: int = 0

    @property
    def store(self) -> EventStore:
        return self.log.store

    def sync(self, use_case: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(use_case, self.loop).result()

    def handle(self, envelopes: Sequence[EventEnvelope]) -> None:
        """One subscriber batch: the handler and the tracking row in one store transaction."""
        self.upstream_position += len(envelopes)
        with self.store.transaction() as conn:
            self.app.profiles.handle_identity(conn, envelopes)
            self.store.record_tracking(conn, UPSTREAM, self.upstream_position, envelopes[-1].event_id)

    def run_backfills(self, report: Callable[[int, int], None] | None = None) -> int:
        """Every unfinished backfill's pages, as the service's backfill loop runs them; pages run."""
        pages = 0
        with self.store.engine.connect() as conn:
            running = self.app.states.unfinished_backfills(conn)
        for backfill in running:
            while not backfill.finished:
                backfill = self.log.projector.write(
                    functools.partial(self.app.profiles.backfill_page, backfill=backfill)
                )
                pages += 1
                if report is not None:
                    report(backfill.events_done, backfill.events_total)
        return pages

    def close(self) -> None:
        self.sync(self.log.writer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.store.engine.dispose()


def start_system(directory: Path) -> System:
    database = directory / "segments.db"
    store = EventStore(
        create_engine(f"sqlite:///{database}"),
        service="segments",
        registry=REGISTRY,
        keys=KeyEncryptionKey.generate(),
    )
    store.create_schema()
    log = ServiceLog(store, projections=[SegmentsReadModel()])
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="segments-bench-loop", daemon=True).start()
    return System(log, SegmentsApplication(log, clock=wall_clock), loop, database)


# --- measuring helpers ----------------------------------------------------------------------------


@dataclass
class Meter:
    """Wall and process CPU seconds spent inside `measure()` blocks only."""

    wall: float = 0.0
    cpu: float = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu


def count_events(system: System, event_type: str, after_position: int = 0) -> int:
    with system.store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM events WHERE type = :type AND position > :after"),
                {"type": event_type, "after": after_position},
            ).scalar()
            or 0
        )


# --- phases ---------------------------------------------------------------------------------------


def apply_definitions(system: System, wanted: Sequence[pb.Definition]) -> dict[str, Any]:
    started = time.perf_counter()
    for definition in wanted:
        system.sync(system.app.definitions.apply(WORKSPACE, definition, "bench"))
    system.run_backfills()
    return {"definitions": len(wanted), "seconds": round(time.perf_counter() - started, 2)}


def build(system: System, traffic: Traffic, history_events: int) -> dict[str, Any]:
    """Every profile's first event, then `history_events` more over the past, through the handler."""
    now = wall_clock()
    meter = Meter()
    with progress("building profiles' state") as bar:
        task = bar.add_task("build", total=traffic.profiles + history_events)
        for start in range(0, traffic.profiles, BUILD_BATCH):
            ids = range(start, min(start + BUILD_BATCH, traffic.profiles))
            envelopes = [traffic.event(traffic.profile_id(i), traffic.past(now)) for i in ids]
            with meter.measure():
                system.handle(envelopes)
            bar.advance(task, len(envelopes))
        for start in range(0, history_events, BUILD_BATCH):
            count = min(BUILD_BATCH, history_events - start)
            envelopes = [traffic.event(traffic.some_profile(), traffic.past(now)) for _ in range(count)]
            with meter.measure():
                system.handle(envelopes)
            bar.advance(task, count)
    events = traffic.profiles + history_events
    with system.store.engine.connect() as conn:
        states = system.app.states.count(conn, WORKSPACE)
    return {
        "profiles": states,
        "events": events,
        "batch": BUILD_BATCH,
        "handler_seconds": round(meter.wall, 1),
        "events_per_s": round(events / meter.wall),
        "cpu_us_per_event": round(meter.cpu / events * 1e6, 1),
        "memory": memory_mb(),
    }


def throughput(system: System, traffic: Traffic, events: int) -> dict[str, Any]:
    meter = Meter()
    batches = 0
    with progress("live events through the handler") as bar:
        task = bar.add_task("throughput", total=events)
        for start in range(0, events, SUBSCRIBER_BATCH):
            count = min(SUBSCRIBER_BATCH, events - start)
            now = wall_clock()
            envelopes = [traffic.event(traffic.some_profile(), now - i) for i in range(count)]
            with meter.measure():
                system.handle(envelopes)
            batches += 1
            bar.advance(task, count)
    return {
        "events": events,
        "batch": SUBSCRIBER_BATCH,
        "batches": batches,
        "handler_seconds": round(meter.wall, 2),
        "events_per_s": round(events / meter.wall),
        "service_cpu_us_per_event": round(meter.cpu / events * 1e6, 1),
        "cpu_share": round(meter.cpu / meter.wall, 2),
        "memory": memory_mb(),
    }


def raw_insert_floor(directory: Path, traffic: Traffic, events: int) -> dict[str, Any]:
    """sqlite3 executemany of `events` rows (the serialized envelopes) into a table shaped like the
    log's, a commit per subscriber batch, WAL and synchronous=FULL as the store runs it."""
    now = wall_clock()
    payloads = [traffic.event(traffic.some_profile(), now).SerializeToString() for _ in range(events)]
    connection = sqlite3.connect(directory / "floor.db", isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(
            "CREATE TABLE events (position INTEGER PRIMARY KEY, event_id TEXT UNIQUE, stream_id TEXT, "
            "type TEXT, payload BLOB, occurred_at INTEGER)"
        )
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, events, SUBSCRIBER_BATCH):
            rows = [
                (str(uuid.uuid4()), f"profile-{i}", "onefold.identity.v1.EventResolved", payloads[i], now)
                for i in range(start, min(start + SUBSCRIBER_BATCH, events))
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
    return {
        "rows": events,
        "rows_per_s": round(events / wall),
        "cpu_us_per_row": round(cpu / events * 1e6, 2),
    }


def latency(system: System, traffic: Traffic, seconds: float) -> dict[str, Any]:
    """Events produced at LATENCY_RATE/s; the consumer handles what is waiting, up to a batch."""
    total = max(1, int(LATENCY_RATE * seconds))
    produced: queue.Queue[tuple[float, EventEnvelope] | None] = queue.Queue()
    # Only the producer thread draws from its own generator (random.Random is not shared).
    producer_traffic = Traffic(traffic.profiles, seed=traffic.rng.randrange(1 << 30))

    producing: list[float] = []  # the producer's first and last moment

    def produce() -> None:
        begin = time.perf_counter()
        producing.append(begin)
        for i in range(total):
            delay = begin + i / LATENCY_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            envelope = producer_traffic.event(producer_traffic.some_profile(), wall_clock())
            produced.put((time.perf_counter(), envelope))
        producing.append(time.perf_counter())
        produced.put(None)

    head = system.store.head_position()
    committed: dict[str, float] = {}  # the envelope's event id -> seconds from produced to committed
    batch_sizes: list[int] = []
    producer = threading.Thread(target=produce, name="segments-bench-producer", daemon=True)
    meter = Meter()
    with progress(f"events at {LATENCY_RATE}/s") as bar:
        task = bar.add_task("latency", total=total)
        producer.start()
        finished = False
        while not finished:
            items = [produced.get()]
            while len(items) < SUBSCRIBER_BATCH:
                try:
                    items.append(produced.get_nowait())
                except queue.Empty:
                    break
            if items[-1] is None:
                finished = True
            batch = [item for item in items if item is not None]
            if not batch:
                continue
            with meter.measure():
                system.handle([envelope for _, envelope in batch])
            done = time.perf_counter()
            for moment, envelope in batch:
                committed[envelope.event_id] = (done - moment) * 1000
            batch_sizes.append(len(batch))
            bar.advance(task, len(batch))
    producer.join()
    entered = [
        system.store.decode(e)
        for e in system.store.iter_all(after_position=head)
        if e.type == pb.SegmentEntered.DESCRIPTOR.full_name
    ]
    causes = [m.cause_event_id for m in entered if isinstance(m, pb.SegmentEntered)]
    latencies = [committed[c] for c in causes if c in committed]
    every = list(committed.values())
    return {
        "path": (
            "in-process: producer thread -> queue -> batches of up to "
            f"{SUBSCRIBER_BATCH} -> handle_identity + tracking row in one store transaction -> "
            "commit (the SegmentEntered appended to the segments log); excludes NATS delivery to the "
            "subscriber and the outbox relay's publish of the SegmentEntered to JetStream"
        ),
        "rate_per_s": LATENCY_RATE,
        # Below the rate when the producer thread was starved of the GIL by the handler.
        "produced_per_s": round(total / max(producing[-1] - producing[0], 1e-9)),
        "events": len(every),
        "segment_entered": len(latencies),
        "entered_p50_ms": round(percentile(latencies, 50), 2),
        "entered_p99_ms": round(percentile(latencies, 99), 2),
        "entered_max_ms": round(max(latencies, default=float("nan")), 2),
        "every_event_p99_ms": round(percentile(every, 99), 2),
        "mean_batch": round(statistics.fmean(batch_sizes), 1) if batch_sizes else 0,
        "service_cpu_us_per_event": round(meter.cpu / max(len(every), 1) * 1e6, 1),
        "handler_busy_share": round(meter.wall / max(seconds, 1e-9), 2),
    }


def timer(system: System, traffic: Traffic, window: int) -> dict[str, Any]:
    """A window of `window` µs expiring for TIMER_PROFILES profiles, on the real clock, with the
    service's timer loop running; from the expiry to the SegmentExited."""
    head = system.store.head_position()
    at = wall_clock()
    profiles = [traffic.profile_id(i) for i in range(min(TIMER_PROFILES, traffic.profiles))]
    system.handle([traffic.event(p, at, TIMER_EVENT) for p in profiles])
    expiry = at + window
    exited_type = pb.SegmentExited.DESCRIPTOR.full_name
    seen_at: dict[str, float] = {}  # stream -> wall µs when a reader first saw its exit
    fired_at: dict[str, int] = {}  # stream -> the exit's occurred_at (the loop's clock when it fired)
    timers = asyncio.run_coroutine_threadsafe(system.app.run_timers(lambda: True), system.loop)
    try:
        deadline = time.perf_counter() + window / 1e6 + 30
        while len(seen_at) < len(profiles) and time.perf_counter() < deadline:
            for event in system.store.iter_all(after_position=head):
                if event.type != exited_type or event.stream_id in seen_at:
                    continue
                message = system.store.decode(event)
                if isinstance(message, pb.SegmentExited) and message.segment == TIMER_SEGMENT:
                    seen_at[event.stream_id] = wall_clock()
                    fired_at[event.stream_id] = to_micros(event.occurred_at)
            time.sleep(0.01)
    finally:
        timers.cancel()
    fired = [(t - expiry) / 1e6 for t in fired_at.values()]
    seen = [(t - expiry) / 1e6 for t in seen_at.values()]
    return {
        "profiles": len(profiles),
        "window_s": window / 1e6,
        "exited": len(fired),
        "fired_after_expiry_max_s": round(max(fired, default=float("nan")), 3),
        "fired_after_expiry_median_s": round(statistics.median(fired), 3) if fired else float("nan"),
        "visible_after_expiry_max_s": round(max(seen, default=float("nan")), 3),
        "poll_interval_s": 0.01,
    }


def grow_history(system: System, traffic: Traffic, records: int) -> int:
    """Write `records` more history records (sealed blocks of HISTORY_BLOCK, a transaction per
    BUILD_BATCH profiles) with the handler's own history writer; returns how many were written."""
    if records <= 0:
        return 0
    now = wall_clock()
    written = 0
    with progress("growing the history") as bar:
        task = bar.add_task("history", total=records)
        while written < records:
            blocks: dict[str, list[pb.HistoryRecord]] = {}
            while written < records and len(blocks) < BUILD_BATCH:
                profile_id = traffic.some_profile()
                block = blocks.setdefault(profile_id, [])
                for _ in range(min(HISTORY_BLOCK, records - written)):
                    message = identity_pb2.EventResolved.FromString(
                        traffic.event(profile_id, traffic.past(now), "Order Completed").payload
                    )
                    item: Resolved = resolved(message, message.event_id)
                    block.append(record_of(item, ()))
                    written += 1
            with system.store.transaction() as conn:
                system.app.states.append_history(conn, WORKSPACE, blocks)
            bar.update(task, completed=written)
    return written


def history_records(system: System) -> int:
    with system.store.engine.connect() as conn:
        return system.app.states.history_records(conn, WORKSPACE)


def raw_history_read(database: Path) -> dict[str, Any]:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        started = time.perf_counter()
        records = blocks = 0
        cursor = connection.execute(
            f"SELECT profile_id, records, block FROM {history_table.name} ORDER BY seq"
        )
        while rows := cursor.fetchmany(5000):
            blocks += len(rows)
            records += sum(r[1] for r in rows)
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    return {"blocks": blocks, "records": records, "records_per_s": round(records / seconds)}


def backfill(system: System, traffic: Traffic, target_records: int) -> dict[str, Any]:
    before = history_records(system)
    added = grow_history(system, traffic, target_records - before)
    records = history_records(system)
    floor = raw_history_read(system.database)
    definition = backfill_definition()
    wall, cpu = time.perf_counter(), time.process_time()
    system.sync(system.app.definitions.apply(WORKSPACE, definition, "bench"))
    with progress(f"backfill of {definition.name}") as bar:
        task = bar.add_task("backfill", total=records)
        pages = system.run_backfills(lambda done, total: bar.update(task, completed=done, total=total))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rate = records / wall
    return {
        "definition": definition.name,
        "history_records": records,
        "history_from_handler": before,
        "history_added": added,
        "pages": pages,
        "seconds": round(wall, 2),
        "records_per_s": round(rate),
        "cpu_us_per_record": round(cpu / max(records, 1) * 1e6, 1),
        "seconds_at_10m": round(BACKFILL_TARGET_EVENTS / rate, 1),
        "extrapolated": records < BACKFILL_TARGET_EVENTS,
        "raw_read": floor,
        "memory": memory_mb(),
    }


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    profiles: int
    events: int
    definitions: int
    backfill_events: int
    latency_seconds: float
    timer_window_s: float
    history_events: int


def run(sizes: Sizes, seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "sizes": sizes.__dict__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)} GiB, "
        f"{platform.python_implementation()} {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
    }
    traffic = Traffic(sizes.profiles, seed)
    every = definitions(int(sizes.timer_window_s * SECOND))
    wanted = every[: sizes.definitions]
    if not any(d.name == TIMER_SEGMENT for d in wanted):  # the timer phase needs it
        wanted.append(next(d for d in every if d.name == TIMER_SEGMENT))
    with tempfile.TemporaryDirectory(prefix="onefold-bench-segments-") as tmp:
        directory = Path(tmp)
        system = start_system(directory)
        try:
            say(f"applying {len(wanted)} definitions ...")
            results["definitions"] = apply_definitions(system, wanted)
            say(f"building {sizes.profiles:,} profiles' state and {sizes.history_events:,} more events ...")
            results["build"] = build(system, traffic, sizes.history_events)
            say(f"throughput: {sizes.events:,} live events ...")
            results["throughput"] = throughput(system, traffic, sizes.events)
            results["throughput_floor"] = raw_insert_floor(directory, traffic, sizes.events)
            say(f"latency: {LATENCY_RATE}/s for {sizes.latency_seconds} s ...")
            results["latency"] = latency(system, traffic, sizes.latency_seconds)
            say(f"timer: a {sizes.timer_window_s} s window expiring ...")
            results["timer"] = timer(system, traffic, int(sizes.timer_window_s * SECOND))
            say(f"backfill over {sizes.backfill_events:,} history records ...")
            results["backfill"] = backfill(system, traffic, sizes.backfill_events)
            results["database_mb"] = round(
                sum(f.stat().st_size for f in directory.glob("segments.db*")) / 2**20
            )
        finally:
            system.close()
    results["memory"] = memory_mb()
    throughput_, floor = results["throughput"], results["throughput_floor"]
    results["ratios"] = {
        "throughput_vs_raw_insert": round(throughput_["events_per_s"] / floor["rows_per_s"], 3),
        "backfill_vs_raw_read": round(
            results["backfill"]["records_per_s"] / results["backfill"]["raw_read"]["records_per_s"], 3
        ),
    }
    results["targets"] = TARGETS
    results["at_target_size"] = {
        "profiles": results["build"]["profiles"] >= TARGET_SIZES["profiles"],
        "definitions": len(wanted) >= TARGET_SIZES["definitions"],
        "backfill_events": not results["backfill"]["extrapolated"],
    }
    full_size = results["at_target_size"]["profiles"] and results["at_target_size"]["definitions"]
    latency_ = results["latency"]
    timer_ = results["timer"]
    results["met"] = {
        "throughput_events_per_s": full_size
        and throughput_["events_per_s"] >= TARGETS["throughput_events_per_s"],
        "entered_p99_ms": full_size
        and latency_["segment_entered"] > 0
        and latency_["entered_p99_ms"] <= TARGETS["entered_p99_ms"],
        "timer_exit_delay_s": timer_["exited"] == timer_["profiles"]
        and timer_["fired_after_expiry_max_s"] <= TARGETS["timer_exit_delay_s"],
        "backfill_10m_seconds": results["backfill"]["seconds_at_10m"] <= TARGETS["backfill_10m_seconds"]
        and results["at_target_size"]["backfill_events"],
        "rss_mb": results["at_target_size"]["profiles"]
        and results["memory"]["peak_rss_mb"] <= TARGETS["rss_mb"],
    }
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    results["max_rss_mb_getrusage"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def report(results: dict[str, Any]) -> None:
    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<60} {value:>22}  {note}", file=sys.stderr)

    print(f"segments benchmark ({results['machine']}):", file=sys.stderr)
    build_, tp, floor = results["build"], results["throughput"], results["throughput_floor"]
    line(
        f"build: {build_['profiles']:,} profiles, {build_['events']:,} events",
        f"{build_['events_per_s']:,}/s",
        f"{build_['handler_seconds']} s, {build_['cpu_us_per_event']} CPU µs/event",
    )
    line(f"raw sqlite3 executemany, {floor['rows']:,} rows (floor)", f"{floor['rows_per_s']:,}/s")
    line(
        f"throughput: {tp['events']:,} events, batches of {tp['batch']}",
        f"{tp['events_per_s']:,}/s",
        f"{tp['service_cpu_us_per_event']} CPU µs/event, "
        f"{results['ratios']['throughput_vs_raw_insert']}x raw insert",
    )
    lat = results["latency"]
    line(
        f"SegmentEntered at {lat['rate_per_s']}/s ({lat['segment_entered']:,}): p50 / p99",
        f"{lat['entered_p50_ms']} / {lat['entered_p99_ms']} ms",
        f"every event p99 {lat['every_event_p99_ms']} ms, mean batch {lat['mean_batch']}, "
        f"{lat['service_cpu_us_per_event']} CPU µs/event",
    )
    tm = results["timer"]
    line(
        f"timer: {tm['exited']}/{tm['profiles']} exits after a {tm['window_s']} s window",
        f"{tm['fired_after_expiry_max_s']} s",
        f"late at most (visible {tm['visible_after_expiry_max_s']} s)",
    )
    bf = results["backfill"]
    line(
        f"backfill of {bf['definition']} over {bf['history_records']:,} records",
        f"{bf['records_per_s']:,}/s",
        f"{bf['seconds']} s; at 10M: {bf['seconds_at_10m']} s"
        + (" (extrapolated)" if bf["extrapolated"] else ""),
    )
    line("raw read of the history blocks (floor)", f"{bf['raw_read']['records_per_s']:,}/s")
    mem = results["memory"]
    line("RSS now / peak", f"{mem['rss_mb']} / {mem['peak_rss_mb']} MB")
    say_targets(results["met"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000, help="profiles with a state")
    parser.add_argument("--events", type=int, default=200_000, help="live events in the throughput phase")
    parser.add_argument("--definitions", type=int, default=100, help="definitions applied (the first N)")
    parser.add_argument(
        "--backfill-events", type=int, default=BACKFILL_TARGET_EVENTS, help="history records backfilled over"
    )
    parser.add_argument(
        "--history-events", type=int, default=0, help="events through the handler after the first per profile"
    )
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of the latency phase")
    parser.add_argument("--timer-window", type=float, default=2.0, help="seconds of the expiring window")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run well under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        sizes = Sizes(1000, 1000, args.definitions, 5000, 1.0, 1.0, 1000)
    else:
        sizes = Sizes(
            args.profiles,
            args.events,
            args.definitions,
            args.backfill_events,
            args.latency_seconds,
            args.timer_window,
            args.history_events,
        )
    if min(sizes.profiles, sizes.events, sizes.definitions, sizes.backfill_events) < 1:
        parser.error("--profiles, --events, --definitions and --backfill-events must be positive")
    results = run(sizes, args.seed)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
