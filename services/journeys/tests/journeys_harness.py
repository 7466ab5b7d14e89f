"""The journeys application as its tests drive it (the fixtures are in conftest.py): on a real
SQLite log with a controllable clock, the real channels, and the REAL consent service composed in
process answering every CheckConsent and GetModel journeys makes.

- the `consent` fixture (conftest.py) is onefold.testing.consent's, with purpose `marketing` on email
  and sms;
- `JourneysHarness`: delivers upstream envelopes as the subscribers do (the handler in one writer
  transaction: `deliver`, `track`, `traits`, `segment_entered`, `segment_exited`, `consent_event`),
  runs the loops' work once (`fire_timers`, `send_due`, `advance`) and reads back (`instance`,
  `history`, `events`, `outbox`, `sandbox`, `stats`).
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
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.segments.v1 import segments_pb2
from onefold.eventlog import EventStore
from onefold.journeys.adapters.providers.sandbox import SandboxSend
from onefold.journeys.adapters.read_model import outbox
from onefold.journeys.application import JourneysApplication
from onefold.journeys.domain.instance import instance_stream

WORKSPACE = "acme"
ACTOR = "cred-test"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday, 08:00 UTC


class Clock:
    """The application's clock: set and moved by the test."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now


# ------------------------------------------------------------------------------------------ journeys


def journey(data: dict[str, Any]) -> pb.Journey:
    """A Journey from its JSON form (durations as "3600s", enums as the proto spells them)."""
    return ParseDict(data, pb.Journey())


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
class JourneysHarness:
    app: JourneysApplication
    clock: Clock
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def store(self) -> EventStore:
        return self.app.log.store

    async def close(self) -> None:
        """Stop as the service does (idempotent: a test may close one early, for a restart)."""
        closers, self.closers = self.closers, []
        for close in closers:
            await close()

    # -------------------------------------------------------------------------- definitions

    async def apply(
        self, *journeys: pb.Journey, templates: tuple[pb.Template, ...] = (), publish: bool = True
    ) -> pb.ApplyJourneysResponse:
        return await self.app.journeys.apply(WORKSPACE, journeys, templates, ACTOR, publish=publish)

    # -------------------------------------------------------------------------- upstream events

    async def deliver(self, handler: Callable[..., None], *envelopes: EventEnvelope) -> None:
        """One subscriber batch: the handler in one writer transaction, as the subscriber runs it."""
        await self.app.log.writer.run(self.app.log.projector.write, lambda conn: handler(conn, envelopes))

    def resolved(self, profile_id: str, name: str, **properties: Any) -> EventEnvelope:
        """Identity's envelope of a track event of `profile_id`, resolved now."""
        event = ingest_pb2.TrackingEvent(type=ingest_pb2.EVENT_TYPE_TRACK, event=name)
        event.timestamp.FromDatetime(self.clock.now)
        event.properties.update(properties)
        resolved = identity_pb2.EventResolved(
            profile_id=profile_id, workspace=WORKSPACE, event_id=str(uuid.uuid4()), event=event
        )
        return envelope(resolved, self.clock.now)

    async def track(self, profile_id: str, name: str, **properties: Any) -> str:
        """Identity resolved a track event of `profile_id` now (a batch of its own); its event id."""
        delivered = self.resolved(profile_id, name, **properties)
        await self.deliver(self.app.runs.handle_identity, delivered)
        return identity_pb2.EventResolved.FromString(delivered.payload).event_id

    async def traits(self, profile_id: str, **traits: Any) -> None:
        message = identity_pb2.TraitsUpdated(
            profile_id=profile_id, workspace=WORKSPACE, evidence_event_id=str(uuid.uuid4())
        )
        message.traits.update(traits)
        await self.deliver(self.app.runs.handle_identity, envelope(message, self.clock.now))

    async def segment_entered(self, profile_id: str, segment: str) -> None:
        message = segments_pb2.SegmentEntered(profile_id=profile_id, workspace=WORKSPACE, segment=segment)
        await self.deliver(self.app.runs.handle_segments, envelope(message, self.clock.now))

    async def segment_exited(self, profile_id: str, segment: str) -> None:
        message = segments_pb2.SegmentExited(profile_id=profile_id, workspace=WORKSPACE, segment=segment)
        await self.deliver(self.app.runs.handle_segments, envelope(message, self.clock.now))

    async def consent_event(self, delivered: EventEnvelope) -> None:
        await self.deliver(self.app.runs.handle_consent, delivered)

    # -------------------------------------------------------------------------- the loops' work

    async def fire_timers(self) -> int:
        return await self.app.log.writer.run(self.app.log.projector.write, self.app.runs.fire_due)

    async def send_due(self) -> int:
        return await self.app.sender.send_due()

    async def advance(self, by: timedelta) -> None:
        """Time passes: the timers due fire and the messages due are tried, as the loops would."""
        self.clock.advance(by)
        await self.fire_timers()
        await self.send_due()

    # -------------------------------------------------------------------------- reading back

    async def instance(self, journey_name: str, profile_id: str, entity_key: str = "") -> pb.Instance:
        return await self.app.queries.instance(WORKSPACE, journey_name, profile_id, entity_key)

    async def history(
        self, journey_name: str, profile_id: str, entity_key: str = ""
    ) -> list[pb.InstanceHistoryResponse.Entry]:
        found = await self.app.queries.history(WORKSPACE, journey_name, profile_id, entity_key)
        return list(found.entries)

    def events(self, journey_name: str, profile_id: str, entity_key: str = "") -> list[Message]:
        stream = instance_stream(WORKSPACE, journey_name, profile_id, entity_key)
        return [self.store.decode(e) for e in self.store.read_stream(stream)]

    def outbox(self, profile_id: str) -> list[str]:
        """The statuses of the profile's messages, in the order they were queued."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(outbox.c.status)
                .where((outbox.c.workspace == WORKSPACE) & (outbox.c.profile_id == profile_id))
                .order_by(outbox.c.queued_at_us)
            )
            return [str(status) for (status,) in rows]

    async def sandbox(self, profile_id: str) -> list[SandboxSend]:
        return await self.app.channels.sandbox.sends(WORKSPACE, profile_id)

    async def stats(self, journey_name: str) -> pb.JourneyStatsResponse:
        return await self.app.queries.stats(WORKSPACE, journey_name, 0)


JourneysFactory = Callable[..., JourneysHarness]
