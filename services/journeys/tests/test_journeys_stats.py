"""A journey's counters (the read model's tally, summed by the stats query) and its uplift over the
control group: instances' events recorded through the real write path into a SQLite log."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from journeys_domain_builders import NO_FACTS, T0, Run, cart_journey, compiled, track

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog import EventStore
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.models import NewEvent, to_micros
from onefold.eventlog.service import ServiceLog
from onefold.journeys.adapters.read_model import JourneysReadModel, entries, instances, outbox, tally
from onefold.journeys.application.queries import Queries
from onefold.journeys.domain import instance as decide
from onefold.journeys.domain.catalog import definition_stream
from onefold.journeys.domain.events import REGISTRY
from onefold.journeys.domain.instance import instance_stream, subject_of
from onefold.journeys.domain.stats import uplift
from onefold.platform.database import create_engine
from onefold.platform.errors import NotFound

HOUR = timedelta(hours=1)


class Stats:
    """The journeys log and read model on a fresh database: events recorded, stats read back."""

    def __init__(self, url: str) -> None:
        store = EventStore(
            create_engine(url),
            service="journeys",
            registry=REGISTRY,
            keys=KeyEncryptionKey.generate(),
        )
        store.create_schema()
        self.log = ServiceLog(store, projections=[JourneysReadModel()])
        self.queries = Queries(self.log)
        self.known: set[str] = set()

    def apply(self, at: datetime, message: Message) -> None:
        self.record([(at, message)])

    def record(self, timed: Iterable[tuple[datetime, Message]]) -> None:
        events = []
        for at, message in timed:
            ref: pb.InstanceRef = message.instance  # type: ignore[attr-defined]
            if ref.journey not in self.known:  # the stats of a journey the catalog knows
                self.known.add(ref.journey)
                saved = pb.JourneyDraftSaved(
                    workspace=ref.workspace, journey=pb.Journey(name=ref.journey, version=1)
                )
                events.append(
                    NewEvent(
                        definition_stream(ref.workspace, ref.journey),
                        saved,
                        workspace=ref.workspace,
                        occurred_at=at,
                    )
                )
            events.append(
                NewEvent(
                    instance_stream(ref.workspace, ref.journey, ref.profile_id, ref.entity_key),
                    message,
                    subject=subject_of(ref.workspace, ref.profile_id),
                    workspace=ref.workspace,
                    occurred_at=at,
                )
            )
        self.log.projector.write(lambda conn: self.log.projector.record(conn, events))

    def report(self, journey: str, version: int = 0) -> pb.JourneyStatsResponse:
        return asyncio.run(self.queries.stats("acme", journey, version))


@pytest.fixture
def stats(tmp_path: Path) -> Iterator[Stats]:
    made = Stats(f"sqlite:///{tmp_path / 'journeys.db'}")
    yield made
    made.log.store.engine.dispose()


def test_counters_per_journey_and_step(stats: Stats) -> None:
    for profile, ordered in (("p-1", True), ("p-2", False)):
        run = Run(compiled(cart_journey()), profile)
        run.enter(T0, entity_key="c-1")
        run.record(T0 + HOUR, decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS))
        if ordered:
            order = track("Order Completed", T0 + 2 * HOUR, cart_id="c-1", revenue=40)
            run.record(
                T0 + 2 * HOUR, decide.on_event(run.instance, run.graph, order, T0 + 2 * HOUR, NO_FACTS)
            )
        else:
            (pending,) = run.instance.pending()
            run.record(T0 + HOUR, [pb.MessageSent(instance=run.instance.ref, message_id=pending)])
            run.record(T0 + HOUR, [pb.MessageFailed(instance=run.instance.ref, message_id=pending)])
        stats.record(run.log)
    report = stats.report("abandoned_cart")
    assert (report.entered, report.exited, report.active, report.converted) == (2, 1, 1, 1)
    assert report.revenue == 40 and dict(report.exits_by_reason) == {"exit_rule: ordered": 1}
    steps = {s.step: s for s in report.steps}
    assert steps["hold"].entered == 2
    assert (steps["remind"].queued, steps["remind"].sent, steps["remind"].suppressed) == (2, 1, 1)
    assert steps["remind"].failed == 1 and steps["later"].entered == 2
    assert not report.HasField("uplift")  # no split, no control group
    assert stats.report("abandoned_cart", version=2).entered == 0
    with pytest.raises(NotFound):
        stats.report("other")


def test_uplift_is_the_difference_of_conversions_with_a_normal_interval() -> None:
    measured = uplift(treated=1000, treated_converted=150, control=500, control_converted=50)
    assert measured is not None
    assert measured.uplift == pytest.approx(0.05)
    half = 1.959963984540054 * math.sqrt(0.15 * 0.85 / 1000 + 0.1 * 0.9 / 500)
    low, high = measured.interval
    assert (low, high) == (pytest.approx(0.05 - half), pytest.approx(0.05 + half))
    assert low > 0  # significant at 95%
    assert uplift(10, 1, 0, 0) is None and uplift(0, 0, 10, 1) is None


def test_uplift_from_split_assignments_and_goals(stats: Stats) -> None:
    ref = {"workspace": "acme", "journey": "promo", "version": 1, "entity_key": ""}
    for i, (control, converted) in enumerate(
        [(False, True), (False, False), (True, False), (True, True), (True, False)]
    ):
        instance = pb.InstanceRef(profile_id=f"p-{i}", entry_seq=1, **ref)
        stats.apply(T0, pb.JourneyEntered(instance=instance))
        stats.apply(T0, pb.SplitAssigned(instance=instance, step="pick", arm="x", control=control))
        if converted:
            stats.apply(T0, pb.GoalReached(instance=instance, goal="buy", revenue=10))
    report = stats.report("promo")
    assert (report.uplift.treated, report.uplift.treated_converted) == (2, 1)
    assert (report.uplift.control, report.uplift.control_converted) == (3, 1)
    assert report.uplift.uplift == pytest.approx(0.5 - 1 / 3)
    assert report.uplift.ci_low < report.uplift.uplift < report.uplift.ci_high
    assert report.revenue == 20 and report.converted == 2


def _stamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _life() -> list[tuple[datetime, Message]]:
    """Two entries of one instance with everything that changes its rows, late answers to the first
    entry among the second's events, and another instance's."""
    ref = {"workspace": "acme", "journey": "promo", "version": 1, "profile_id": "p-1", "entity_key": ""}
    first, second = pb.InstanceRef(entry_seq=1, **ref), pb.InstanceRef(entry_seq=2, **ref)
    other = pb.InstanceRef(entry_seq=1, **{**ref, "profile_id": "p-2"})
    messages: list[Message] = [
        pb.JourneyEntered(instance=first),
        pb.StepEntered(instance=first, step="hold"),
        pb.WaitScheduled(instance=first, step="hold", fires_at=_stamp(T0 + HOUR)),
        pb.SplitAssigned(instance=first, step="pick", arm="x", control=False),
        pb.StepEntered(instance=first, step="remind"),
        pb.MessageQueued(instance=first, step="remind", message_id="m-1", template="t", purpose="p"),
        pb.MessageDeferred(instance=first, message_id="m-1", until=_stamp(T0 + 2 * HOUR)),
        pb.MessageSent(instance=first, message_id="m-1"),
        pb.TraitUpdateRequested(instance=first, step="remind"),
        pb.GoalReached(instance=first, goal="buy", revenue=10),
        pb.GoalReached(instance=first, goal="buy", revenue=5),  # converts once, adds revenue
        pb.JourneyExited(instance=first, reason="goal"),
        pb.JourneyEntered(instance=second),
        pb.StepEntered(instance=second, step="hold"),
        pb.MessageDelivered(instance=first, message_id="m-1"),  # a late answer to the first entry
        pb.StepEntered(instance=first, step="late"),  # the first entry's: leaves the row alone
        pb.GoalReached(instance=first, goal="buy", revenue=1),
        pb.WaitScheduled(instance=second, step="hold", fires_at=_stamp(T0 + 3 * HOUR)),
        pb.SplitAssigned(instance=second, step="pick", arm="x", control=True),
        pb.GoalReached(instance=second, goal="buy", revenue=2),
        pb.MessageQueued(instance=other, step="remind", message_id="m-2", template="t", purpose="p"),
        pb.MessageSuppressed(instance=other, message_id="m-2"),
        pb.MessageFailed(instance=first, message_id="m-unknown"),  # no row: counted nowhere
        # Events of an entry and a message before they are made find no row: they change nothing.
        pb.GoalReached(instance=other, goal="buy", revenue=3),
        pb.SplitAssigned(instance=other, step="pick", arm="x", control=True),
        pb.MessageSent(instance=other, message_id="m-3"),
        pb.JourneyEntered(instance=other),
        pb.MessageQueued(instance=other, step="remind", message_id="m-3", template="t", purpose="p"),
    ]
    return [(T0 + i * timedelta(minutes=1), message) for i, message in enumerate(messages)]


def _rows(stats: Stats) -> dict[str, list[tuple[object, ...]]]:
    with stats.log.store.engine.connect() as conn:
        return {
            table.name: sorted(tuple(row) for row in conn.execute(sa.select(table)))
            for table in (instances, entries, outbox, tally)
        }


@pytest.mark.parametrize("batch", [len(_life()), 5, 2])
def test_a_batch_writes_the_rows_its_events_one_by_one_write(
    tmp_path: Path, database_url: str, batch: int
) -> None:
    """The read model buffers a batch's rows and writes them in `flush` (on SQLite and PostgreSQL):
    whatever the batches, the rows are those of recording each event on its own."""
    life = _life()
    one_by_one, batched = Stats(f"sqlite:///{tmp_path / 'one.db'}"), Stats(database_url)
    for timed in life:
        one_by_one.apply(*timed)
    for start in range(0, len(life), batch):
        batched.record(life[start : start + batch])
    expected = _rows(one_by_one)
    assert _rows(batched) == expected
    instance = expected["journeys_instances"][0]  # p-1's second entry, waiting
    assert instance[4:] == (1, 2, True, "hold", to_micros(T0 + 3 * HOUR), to_micros(life[12][0]))
    for made in (one_by_one, batched):
        made.log.store.engine.dispose()
