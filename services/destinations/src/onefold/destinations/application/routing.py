"""Upstream changes queued as deliveries: identity's resolved events and trait changes, segments'
entries and exits — each batch on the writer thread, in the subscriber's transaction, against the
workspace's destinations (domain/routing.py decides) — and erasures, which drop what was queued
for the person and queue a deletion for every destination that received them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.segments.v1 import segments_pb2
from onefold.destinations.adapters.read_model import backfills, outbox, recipients
from onefold.destinations.application.catalog import Clock, Destinations
from onefold.destinations.domain import routing
from onefold.destinations.domain.definitions import definition_stream
from onefold.eventlog.models import NewEvent
from onefold.eventlog.service import ServiceLog
from onefold.eventlog.streams import PARTITION_KEY

_EVENT_TYPES = {
    ingest_pb2.EVENT_TYPE_TRACK: "track",
    ingest_pb2.EVENT_TYPE_PAGE: "page",
    ingest_pb2.EVENT_TYPE_SCREEN: "screen",
    ingest_pb2.EVENT_TYPE_IDENTIFY: "identify",
}
# Fields of a resolved event that are ingest's bookkeeping, not the customer's event.
_INTERNAL_FIELDS = ("consent", "sourceId", "extra", "sentAt", "receivedAt", "originalTimestamp")


# What the router reads of each upstream (the subscriptions fetch only these).
IDENTITY_TYPES: dict[str, type[Message]] = {
    m.DESCRIPTOR.full_name: m
    for m in (identity_pb2.EventResolved, identity_pb2.TraitsUpdated, identity_pb2.ProfileErased)
}
SEGMENTS_TYPES: dict[str, type[segments_pb2.SegmentEntered | segments_pb2.SegmentExited]] = {
    m.DESCRIPTOR.full_name: m for m in (segments_pb2.SegmentEntered, segments_pb2.SegmentExited)
}


def subject_of(workspace: str, profile_id: str) -> str:
    """The data subject whose key seals what a delivery sends about a person."""
    return f"{workspace}:d:{profile_id}"


def delivery_stream(workspace: str, destination: str, profile_id: str) -> str:
    return f"destinations-delivery:{workspace}:{destination}:{profile_id}"


def segment_spec(event: ingest_pb2.TrackingEvent) -> dict[str, Any]:
    """A resolved event in the Segment spec's shape (camelCase; `type` as track, page, …)."""
    shaped: dict[str, Any] = MessageToDict(event)
    shaped["type"] = _EVENT_TYPES.get(event.type, "")
    for internal in _INTERNAL_FIELDS:
        shaped.pop(internal, None)
    return shaped


class Router:
    def __init__(self, log_: ServiceLog, destinations: Destinations, clock: Clock) -> None:
        self.log = log_
        self.destinations = destinations
        self.clock = clock
        self.on_queued: Callable[[], None] = lambda: None  # the deliverer's wake-up, set by the application

    def handle_identity(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """Resolved events and trait changes routed; an erased profile's deliveries dropped and
        deletions queued."""
        parsed: list[tuple[str, Message]] = []  # (identity's event id, the message)
        for envelope in envelopes:
            kind = IDENTITY_TYPES.get(envelope.type)
            if kind is not None:
                parsed.append((envelope.event_id, kind.FromString(envelope.payload)))
        for workspace in dict.fromkeys(m.workspace for _, m in parsed):  # type: ignore[attr-defined]
            mine = [(i, m) for i, m in parsed if m.workspace == workspace]  # type: ignore[attr-defined]
            queue = _Queue(self, conn, workspace, [m.profile_id for _, m in mine])  # type: ignore[attr-defined]
            takes_events = any(d.events for d in queue.destinations)
            takes_traits = any(d.traits for d in queue.destinations)
            for event_id, message in mine:
                if (
                    isinstance(message, identity_pb2.EventResolved)
                    and message.profile_id
                    and takes_events
                    and routing.may_route(
                        queue.destinations,
                        _EVENT_TYPES.get(message.event.type, ""),
                        message.event.event or message.event.name,
                    )
                ):
                    event = segment_spec(message.event)
                    stamp = (
                        message.event.timestamp
                        if message.event.HasField("timestamp")
                        else message.event.received_at
                    )
                    at = stamp.ToDatetime(tzinfo=UTC)
                    # The ingest event's id: the same delivery however often identity resolves it.
                    queue.add(
                        message.profile_id,
                        message.event_id,
                        at,
                        routing.route_event(queue.destinations, event),
                    )
                elif isinstance(message, identity_pb2.TraitsUpdated) and takes_traits:
                    traits = MessageToDict(message.traits)
                    routed = routing.route_traits(queue.destinations, traits)
                    queue.add(message.profile_id, event_id, queue.now, routed)
                elif isinstance(message, identity_pb2.ProfileErased):
                    for profile_id in (message.profile_id, *message.profile_ids):
                        queue.erase(profile_id)
            queue.record()

    def handle_segments(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """Memberships entered and left, for the destinations that name the segment."""
        parsed: list[tuple[str, segments_pb2.SegmentEntered | segments_pb2.SegmentExited]] = []
        for envelope in envelopes:
            membership = SEGMENTS_TYPES.get(envelope.type)
            if membership is not None:
                parsed.append((envelope.event_id, membership.FromString(envelope.payload)))
        for workspace in dict.fromkeys(m.workspace for _, m in parsed):
            queue = _Queue(
                self, conn, workspace, [m.profile_id for _, m in parsed if m.workspace == workspace]
            )
            for event_id, message in parsed:
                if message.workspace == workspace:
                    entered = isinstance(message, segments_pb2.SegmentEntered)
                    routed = routing.route_membership(queue.destinations, message.segment, entered=entered)
                    queue.add(message.profile_id, event_id, queue.now, routed)
            queue.record()

    def backfill_page(
        self, conn: Connection, *, page: BackfillPage, members: Sequence[str], next_token: str
    ) -> None:
        """Queue a page of a segment's current members for the destination that newly named it,
        with the page recorded; nothing when the backfill moved on meanwhile (named again, or this
        page already recorded)."""
        still = conn.execute(
            sa.select(backfills.c.version, backfills.c.page_token, backfills.c.done).where(
                (backfills.c.workspace == page.workspace)
                & (backfills.c.destination == page.destination)
                & (backfills.c.segment == page.segment)
            )
        ).first()
        if still is None or tuple(still) != (page.version, page.page_token, False):
            return
        queue = _Queue(self, conn, page.workspace, members)
        taking = [d for d in queue.destinations if d.name == page.destination and page.segment in d.segments]
        queued = 0
        for profile_id in members if taking else ():
            entered = routing.Routed(page.destination, pb.DELIVERY_KIND_SEGMENT_ENTERED, page.segment, {})
            before = len(queue.events)
            queue.add(
                profile_id, f"backfill:{page.version}:{page.segment}:{profile_id}", queue.now, [entered]
            )
            queued += len(queue.events) - before
        recorded = pb.AudienceBackfillPage(
            workspace=page.workspace,
            destination=page.destination,
            segment=page.segment,
            version=page.version,
            members=queued,
            next_page_token=next_token if taking else "",
            done=not (next_token and taking),
        )
        queue.events.append(
            NewEvent(
                stream_id=definition_stream(page.workspace, page.destination),
                message=recorded,
                workspace=page.workspace,
                occurred_at=queue.now,
            )
        )
        queue.record()

    def erase(self, conn: Connection, workspace: str, profile_ids: Sequence[str]) -> dict[str, int]:
        """A data-subject erasure: queued deliveries dropped, a deletion queued per destination that
        received each person; returns the deletions queued for them, by destination — those of an
        earlier erasure included (identity's ProfileErased may arrive first: the request's
        confirmation still names every destination sent a deletion)."""
        queue = _Queue(self, conn, workspace, profile_ids)
        for profile_id in profile_ids:
            queue.erase(profile_id)
        queue.record()
        deletions = conn.execute(
            sa.select(outbox.c.destination, sa.func.count())
            .where(
                (outbox.c.workspace == workspace)
                & outbox.c.profile_id.in_(list(profile_ids))
                & (outbox.c.kind == pb.DELIVERY_KIND_DELETION)
            )
            .group_by(outbox.c.destination)
        )
        return {str(destination): int(count) for destination, count in deletions}


@dataclass(frozen=True)
class BackfillPage:
    """Where a destination's backfill of a segment stands: the page to queue next."""

    workspace: str
    destination: str
    segment: str
    version: int
    page_token: str


class _Queue:
    """One workspace's deliveries decided in one batch, recorded together at the end."""

    def __init__(self, router: Router, conn: Connection, workspace: str, profile_ids: Sequence[str]) -> None:
        self.router = router
        self.conn = conn
        self.workspace = workspace
        self.now = router.clock()
        self.destinations = router.destinations.receiving(conn, workspace)
        self.events: list[NewEvent] = []
        # Erased before this batch (an event of theirs still in flight: nothing is sent), or by it.
        subjects = {subject_of(workspace, p): p for p in profile_ids}
        self.erased: set[str] = {subjects[s] for s in router.log.store.erased_subjects(conn, subjects)}
        self.shredding: list[str] = []  # erased by this batch: their keys are shredded after it

    def add(self, profile_id: str, cause: str, at: datetime, routed: Sequence[routing.Routed]) -> None:
        if not routed or profile_id in self.erased:
            return
        subject = subject_of(self.workspace, profile_id)
        for r in routed:
            data = Struct()
            data.update(r.data)
            self.events.append(
                self._event(
                    profile_id,
                    r.destination,
                    pb.DeliveryQueued(
                        workspace=self.workspace,
                        destination=r.destination,
                        delivery_id=routing.delivery_id(self.workspace, r.destination, r.kind, cause),
                        profile_id=profile_id,
                        kind=r.kind,  # type: ignore[arg-type]
                        cause_event_id=cause,
                        name=r.name,
                        data=data,
                    ),
                    subject,
                    at,
                )
            )

    def erase(self, profile_id: str) -> None:
        """Drop what is queued for the person; a deletion to each destination that received them
        (once: a person erased before has no recipients left)."""
        if profile_id in self.shredding:
            return
        self.erased.add(profile_id)
        self.shredding.append(profile_id)
        received = [
            str(d)
            for (d,) in self.conn.execute(
                sa.select(recipients.c.destination).where(
                    (recipients.c.workspace == self.workspace) & (recipients.c.profile_id == profile_id)
                )
            )
        ]
        received += sorted({e.message.destination for e in self.events if e.message.profile_id == profile_id})  # type: ignore[attr-defined]
        received = sorted(set(received))
        self.events = [e for e in self.events if e.message.profile_id != profile_id]  # type: ignore[attr-defined]
        erased = pb.RecipientErased(workspace=self.workspace, profile_id=profile_id, destinations=received)
        self.events.append(
            NewEvent(
                stream_id=f"destinations-erasure:{self.workspace}:{profile_id}",
                message=erased,
                workspace=self.workspace,
                occurred_at=self.now,
                metadata={PARTITION_KEY: profile_id},
            )
        )
        for destination in received:
            deletion = pb.DeliveryQueued(
                workspace=self.workspace,
                destination=destination,
                delivery_id=routing.delivery_id(
                    self.workspace, destination, pb.DELIVERY_KIND_DELETION, profile_id
                ),
                profile_id=profile_id,
                kind=pb.DELIVERY_KIND_DELETION,
                name="",
            )
            # Nothing personal in it, so under no subject: the person's key is shredded next.
            self.events.append(self._event(profile_id, destination, deletion, "", self.now))

    def _event(
        self, profile_id: str, destination: str, message: pb.DeliveryQueued, subject: str, at: datetime
    ) -> NewEvent:
        message.occurred_at.FromDatetime(at)
        return NewEvent(
            stream_id=delivery_stream(self.workspace, destination, profile_id),
            message=message,
            subject=subject,
            workspace=self.workspace,
            occurred_at=self.now,
            metadata={PARTITION_KEY: profile_id},
        )

    def record(self) -> None:
        """Record the batch, then shred the keys of the people it erased."""
        if not self.events:
            return
        store = self.router.log.store
        self.router.log.projector.record(self.conn, self.events)
        for profile_id in self.shredding:
            store.erase_subject(subject_of(self.workspace, profile_id), conn=self.conn)
        self.router.on_queued()
