"""Reads: an instance where it stands, its history with the consent evidence of each send (why a
person did or did not get a message), and a journey's results. Each on its own connection, never
waiting behind a write."""

from __future__ import annotations

import asyncio
from collections import Counter

import sqlalchemy as sa
from google.protobuf.message import Message

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.service import ServiceLog
from onefold.journeys.adapters.read_model import JOURNEY_LEVEL, catalog, entries, tally
from onefold.journeys.domain.definitions import channel_name
from onefold.journeys.domain.instance import Instance, instance_stream
from onefold.journeys.domain.stats import uplift
from onefold.platform.errors import NotFound

STEP_COUNTERS = ("entered", "queued", "sent", "suppressed", "delivered", "failed")
EXIT_PREFIX = "exit:"


def _detail(message: Message) -> tuple[str, str, str, str]:
    """(step, message id, detail for people, consent evidence id) of one instance event."""
    if isinstance(message, pb.JourneyEntered):
        return "", "", f"entered by {message.trigger}", ""
    if isinstance(message, pb.StepEntered):
        return message.step, "", f"{message.kind} step" + (f" (via {message.via})" if message.via else ""), ""
    if isinstance(message, pb.WaitScheduled):
        return message.step, "", f"waits until {message.fires_at.ToJsonString()} ({message.reason})", ""
    if isinstance(message, pb.SplitAssigned):
        held = ", held out (control)" if message.control else ""
        return message.step, "", f"arm {message.arm} (bucket {message.bucket}){held}", ""
    if isinstance(message, pb.MessageQueued):
        channel = channel_name(message.channel)
        return message.step, message.message_id, f"{channel} {message.template} for {message.purpose}", ""
    if isinstance(message, pb.MessageSent):
        return "", message.message_id, "sent: consent allowed it", message.consent_evidence_id
    if isinstance(message, pb.MessageSuppressed):
        return "", message.message_id, f"suppressed: {message.reason}", message.consent_evidence_id
    if isinstance(message, pb.MessageDeferred):
        return "", message.message_id, f"deferred until {message.until.ToJsonString()} ({message.reason})", ""
    if isinstance(message, pb.MessageDelivered):
        return "", message.message_id, "delivered", ""
    if isinstance(message, pb.MessageFailed):
        return "", message.message_id, f"failed: {message.provider_error}", ""
    if isinstance(message, pb.TraitUpdateRequested):
        return message.step, "", f"asked identity to set trait {message.trait}", ""
    if isinstance(message, pb.GoalReached):
        return "", "", f"goal {message.goal} reached", ""
    if isinstance(message, pb.JourneyExited):
        return "", "", f"exited: {message.reason}", ""
    return "", "", "", ""


class Queries:
    def __init__(self, log: ServiceLog) -> None:
        self.log = log

    def _events(
        self, workspace: str, journey: str, profile_id: str, entity_key: str
    ) -> list[tuple[object, Message]]:
        store = self.log.store
        stream = instance_stream(workspace, journey, profile_id, entity_key)
        return [(e, store.decode(e)) for e in store.read_stream(stream)]

    async def instance(self, workspace: str, journey: str, profile_id: str, entity_key: str) -> pb.Instance:
        def read() -> pb.Instance:
            store = self.log.store
            stream = instance_stream(workspace, journey, profile_id, entity_key)
            instance = Instance()
            for event in store.read_stream(stream):
                instance.apply(event.occurred_at, store.decode(event))
            if not instance.entry_seq:
                raise NotFound("this profile never entered this journey (with this entity key)")
            return instance.to_proto()

        return await asyncio.to_thread(read)

    async def history(
        self, workspace: str, journey: str, profile_id: str, entity_key: str
    ) -> pb.InstanceHistoryResponse:
        def read() -> pb.InstanceHistoryResponse:
            store = self.log.store
            stream = instance_stream(workspace, journey, profile_id, entity_key)
            response = pb.InstanceHistoryResponse()
            for event in store.read_stream(stream):
                message = store.decode(event)
                step, message_id, detail, evidence = _detail(message)
                ref = getattr(message, "instance", None)  # every instance event has it
                entry = response.entries.add(
                    entry_seq=ref.entry_seq if ref is not None else 0,
                    event=message.DESCRIPTOR.name,
                    step=step,
                    message_id=message_id,
                    detail=detail,
                    consent_evidence_id=evidence,
                )
                entry.at.FromDatetime(event.occurred_at)
            if not response.entries:
                raise NotFound("this profile never entered this journey (with this entity key)")
            return response

        return await asyncio.to_thread(read)

    async def stats(self, workspace: str, journey: str, version: int) -> pb.JourneyStatsResponse:
        return await asyncio.to_thread(self._stats, workspace, journey, version)

    def _stats(self, workspace: str, journey: str, version: int) -> pb.JourneyStatsResponse:
        chosen = (tally.c.workspace == workspace) & (tally.c.journey == journey)
        entry_chosen = (entries.c.workspace == workspace) & (entries.c.journey == journey)
        if version:
            chosen &= tally.c.version == version
            entry_chosen &= entries.c.version == version
        with self.log.store.engine.connect() as conn:
            known = conn.execute(
                sa.select(catalog.c.name).where(
                    (catalog.c.workspace == workspace) & (catalog.c.name == journey)
                )
            ).first()
            if known is None:
                raise NotFound(f"no journey named {journey!r}")
            counted = conn.execute(
                sa.select(tally.c.step, tally.c.counter, sa.func.sum(tally.c.value))
                .where(chosen)
                .group_by(tally.c.step, tally.c.counter)
            ).all()
            groups = conn.execute(
                sa.select(entries.c.held_out, entries.c.converted, sa.func.count())
                .where(entry_chosen & entries.c.held_out.is_not(None))
                .group_by(entries.c.held_out, entries.c.converted)
            ).all()
        journey_level: Counter[str] = Counter()
        revenue = 0.0
        steps: dict[str, Counter[str]] = {}
        for step, counter, value in counted:
            if step == JOURNEY_LEVEL:
                if counter == "revenue":
                    revenue = float(value)
                else:
                    journey_level[str(counter)] += int(value)
            else:
                steps.setdefault(str(step), Counter())[str(counter)] += int(value)
        exits = {
            c.removeprefix(EXIT_PREFIX): n for c, n in journey_level.items() if c.startswith(EXIT_PREFIX)
        }
        exited = sum(exits.values())
        response = pb.JourneyStatsResponse(
            journey=journey,
            entered=journey_level["entered"],
            active=journey_level["entered"] - exited,
            exited=exited,
            converted=journey_level["converted"],
            revenue=revenue,
            exits_by_reason=exits,
            steps=[
                pb.StepStats(step=step, **{name: counted[name] for name in STEP_COUNTERS})
                for step, counted in sorted(steps.items())
            ],
        )
        by_group: Counter[tuple[bool, bool]] = Counter()
        for held_out, converted, n in groups:
            by_group[(bool(held_out), bool(converted))] += int(n)
        measured = uplift(
            by_group[(False, False)] + by_group[(False, True)],
            by_group[(False, True)],
            by_group[(True, False)] + by_group[(True, True)],
            by_group[(True, True)],
        )
        if measured is not None:
            response.uplift.CopyFrom(measured.to_proto())
        return response
