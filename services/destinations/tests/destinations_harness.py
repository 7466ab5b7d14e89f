"""The destinations application as its tests drive it (the fixtures are in conftest.py): on a real
SQLite log with a controllable clock, the real targets, and the REAL consent service composed in
process answering every CheckConsent and GetModel destinations makes.

- the `consent` fixture (conftest.py) is onefold.testing.consent's, with purpose `crm_sync`;
- `DestinationsHarness`: delivers upstream envelopes as the subscribers do (the handler in one
  writer transaction: `track`, `traits`, `segment_entered`, `segment_exited`, `profile_erased`),
  runs the deliverer's round (`deliver_due`, `advance`) and reads back (`statuses`, `status`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.segments.v1 import segments_pb2
from onefold.destinations.adapters.read_model import outbox
from onefold.destinations.application import DestinationsApplication
from onefold.eventlog import EventStore

WORKSPACE = "acme"
ACTOR = "cred-test"
PURPOSE = "crm_sync"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class Clock:
    """The application's clock: set and moved by the test."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now


def destination(data: dict[str, Any]) -> pb.Destination:
    """A Destination from its JSON form (`purpose` defaults to the model's)."""
    return ParseDict({"purpose": PURPOSE, **data}, pb.Destination())


def envelope(message: Message, occurred_at: datetime) -> EventEnvelope:
    out = EventEnvelope(
        event_id=str(uuid.uuid4()),
        type=message.DESCRIPTOR.full_name,
        workspace=WORKSPACE,
        payload=message.SerializeToString(),
    )
    out.occurred_at.FromDatetime(occurred_at)
    return out


@dataclass
class DestinationsHarness:
    app: DestinationsApplication
    clock: Clock
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def store(self) -> EventStore:
        return self.app.log.store

    async def close(self) -> None:
        closers, self.closers = self.closers, []
        for close in closers:
            await close()

    async def apply(self, *destinations: pb.Destination) -> pb.ApplyDestinationsResponse:
        return await self.app.destinations.apply(WORKSPACE, destinations, ACTOR)

    # -------------------------------------------------------------------------- upstream events

    async def deliver(self, handler: Callable[..., None], *envelopes: EventEnvelope) -> None:
        await self.app.log.writer.run(self.app.log.projector.write, lambda conn: handler(conn, envelopes))

    def resolved(self, profile_id: str, name: str, **properties: Any) -> EventEnvelope:
        event = ingest_pb2.TrackingEvent(
            type=ingest_pb2.EVENT_TYPE_TRACK,
            event=name,
            message_id=str(uuid.uuid4()),
            user_id=f"user-{profile_id}",
        )
        event.timestamp.FromDatetime(self.clock.now)
        event.properties.update(properties)
        resolved = identity_pb2.EventResolved(
            profile_id=profile_id, workspace=WORKSPACE, event_id=str(uuid.uuid4()), event=event
        )
        return envelope(resolved, self.clock.now)

    async def track(self, profile_id: str, name: str, **properties: Any) -> None:
        await self.deliver(self.app.router.handle_identity, self.resolved(profile_id, name, **properties))

    async def traits(self, profile_id: str, **traits: Any) -> None:
        message = identity_pb2.TraitsUpdated(
            profile_id=profile_id, workspace=WORKSPACE, evidence_event_id=str(uuid.uuid4())
        )
        message.traits.update(traits)
        await self.deliver(self.app.router.handle_identity, envelope(message, self.clock.now))

    async def segment_entered(self, profile_id: str, segment: str) -> None:
        message = segments_pb2.SegmentEntered(profile_id=profile_id, workspace=WORKSPACE, segment=segment)
        await self.deliver(self.app.router.handle_segments, envelope(message, self.clock.now))

    async def segment_exited(self, profile_id: str, segment: str) -> None:
        message = segments_pb2.SegmentExited(profile_id=profile_id, workspace=WORKSPACE, segment=segment)
        await self.deliver(self.app.router.handle_segments, envelope(message, self.clock.now))

    async def profile_erased(self, profile_id: str) -> None:
        message = identity_pb2.ProfileErased(profile_id=profile_id, workspace=WORKSPACE)
        await self.deliver(self.app.router.handle_identity, envelope(message, self.clock.now))

    # -------------------------------------------------------------------------- the deliverer

    async def deliver_due(self) -> int:
        return await self.app.deliverer.deliver_due()

    async def advance(self, by: timedelta) -> int:
        self.clock.advance(by)
        return await self.deliver_due()

    # -------------------------------------------------------------------------- reading back

    def statuses(self, profile_id: str, destination_name: str | None = None) -> list[str]:
        """The statuses of the person's deliveries, in log order."""
        query = sa.select(outbox.c.status).where(
            (outbox.c.workspace == WORKSPACE) & (outbox.c.profile_id == profile_id)
        )
        if destination_name is not None:
            query = query.where(outbox.c.destination == destination_name)
        with self.store.engine.connect() as conn:
            return [str(s) for (s,) in conn.execute(query.order_by(outbox.c.position))]

    async def status(self, name: str) -> pb.DestinationHealth:
        [health] = (await self.app.queries.status(WORKSPACE, name)).destinations
        return health


DestinationsFactory = Callable[..., DestinationsHarness]
