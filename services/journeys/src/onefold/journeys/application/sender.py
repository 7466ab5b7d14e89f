"""Sending what the journeys queued: consent asked first, pacing, the template rendered, the
provider called, the outcome recorded — a batch at a time, on the leader.

A message is queued (`MessageQueued`, with its deterministic id) by the step that decided it,
before any provider is called. The sender takes queued messages whose moment has come, asks
consent for all of them in one `CheckConsentBatch` per workspace (DENY → `MessageSuppressed` with
the reason and the ledger evidence; consent unreachable → nothing is sent, the batch is tried
again), paces the allowed ones (quiet hours defer, caps suppress), renders and sends them, and
records `MessageSent` (with the consent evidence) and `MessageDelivered`, or `MessageFailed`.

A crash after the provider answered and before the outcome was recorded leaves the message
queued: it is sent again under the same id, which every provider deduplicates (the sandbox keeps
one row per id, SMTP carries it as Message-ID, HTTP as Idempotency-Key) — so a restart never
delivers twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.consent.v1 import consent_pb2
from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.models import NewEvent, from_micros, to_micros
from onefold.eventlog.service import Duty, ServiceLog
from onefold.eventlog.streams import PARTITION_KEY
from onefold.journeys.adapters.profile_facts import MutableFacts, ProfileFacts
from onefold.journeys.adapters.providers import base as provider
from onefold.journeys.adapters.providers.factory import Channels
from onefold.journeys.adapters.read_model import outbox
from onefold.journeys.adapters.templates import EmailTemplate, Templates, TemplateVariables
from onefold.journeys.adapters.upstream import Upstream
from onefold.journeys.application.catalog import Clock, Journeys
from onefold.journeys.domain.definitions import channel_name, known_zone
from onefold.journeys.domain.instance import instance_stream, subject_of
from onefold.journeys.domain.pacing import Capped, DeferUntil, PacingPolicy, pace
from onefold.platform.errors import InvalidArgument
from onefold.platform.peer_calls import ConsentCheck
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.journeys")
SEND_BATCH = 256
IDLE_WAIT_SECONDS = 30.0
RETRY_WAIT_SECONDS = 5.0
# Where each channel's address is found among the profile's traits (the first present wins).
ADDRESS_TRAITS: dict[int, tuple[str, ...]] = {
    pb.CHANNEL_EMAIL: ("email",),
    pb.CHANNEL_SMS: ("phone", "mobile"),
    pb.CHANNEL_PUSH: ("push_token", "device_token"),
    pb.CHANNEL_WECHAT: ("wechat_openid", "openid"),
}


@dataclass(frozen=True)
class Queued:
    """An outbox row: one message to try."""

    message_id: str
    ref: pb.InstanceRef
    step: str
    channel: int
    purpose: str
    template: str


@dataclass(frozen=True)
class BatchContext:
    """What a batch's messages are decided and rendered with, read once for the whole batch."""

    facts: dict[str, MutableFacts]  # by profile id
    history: dict[tuple[str, int], list[datetime]]  # sends of the last week, by (profile id, channel)
    templates: dict[str, pb.Template | None]  # by name; None: no longer exists
    entry_properties: dict[tuple[str, int], dict[str, Any]]  # by (instance stream, entry_seq)


def _queued(row: Any) -> Queued:
    return Queued(
        message_id=row.message_id,
        ref=pb.InstanceRef(
            workspace=row.workspace,
            journey=row.journey,
            version=row.version,
            profile_id=row.profile_id,
            entity_key=row.entity_key,
            entry_seq=row.entry_seq,
        ),
        step=row.step,
        channel=row.channel,
        purpose=row.purpose,
        template=row.template,
    )


def _stream(queued: Queued) -> str:
    ref = queued.ref
    return instance_stream(ref.workspace, ref.journey, ref.profile_id, ref.entity_key)


class Sender:
    def __init__(
        self,
        log_: ServiceLog,
        journeys: Journeys,
        facts: ProfileFacts,
        upstream: Upstream,
        channels: Channels,
        renderer: Templates,
        policy: PacingPolicy,
        clock: Clock,
    ) -> None:
        self.log = log_
        self.journeys = journeys
        self.facts = facts
        self.upstream = upstream
        self.channels = channels
        self.renderer = renderer
        self.policy = policy
        self.clock = clock
        # On the leader: send what is due, then sleep until the next deferred message or a queue.
        self.duty = Duty(
            "journeys.sender", self._round, idle_seconds=IDLE_WAIT_SECONDS, retry_seconds=RETRY_WAIT_SECONDS
        )

    def wake(self) -> None:
        """Messages were queued (called from the writer thread)."""
        self.duty.wake()

    async def _round(self) -> float | None:
        """Send what is due; seconds until the next deferred message (None: none queued)."""
        try:
            if await self.send_due() >= SEND_BATCH:
                return 0.0
        except grpc.aio.AioRpcError as exc:  # consent unreachable: nothing is sent unchecked
            log.warning("journeys.consent_unreachable", code=exc.code().name)
            return RETRY_WAIT_SECONDS
        upcoming = await asyncio.to_thread(self._next_try)
        return None if upcoming is None else (upcoming - self.clock()).total_seconds()

    def _next_try(self) -> datetime | None:
        with self.log.store.engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.func.min(outbox.c.try_at_us)).where(outbox.c.status == "queued")
            ).scalar()
        return None if found is None else from_micros(int(found))

    async def send_due(self) -> int:
        """One batch: how many queued messages were handled (sent, suppressed, deferred, failed)."""
        now = self.clock()
        due = await asyncio.to_thread(self._due, now)
        for workspace in dict.fromkeys(q.ref.workspace for q in due):
            await self._send_workspace(workspace, [q for q in due if q.ref.workspace == workspace], now)
        return len(due)

    def _due(self, now: datetime) -> list[Queued]:
        query = (
            sa.select(outbox)
            .where((outbox.c.status == "queued") & (outbox.c.try_at_us <= to_micros(now)))
            .order_by(outbox.c.try_at_us)
            .limit(SEND_BATCH)
        )
        with self.log.store.engine.connect() as conn:
            return [_queued(row) for row in conn.execute(query)]

    async def _send_workspace(self, workspace: str, due: Sequence[Queued], now: datetime) -> None:
        checks = [ConsentCheck(q.ref.profile_id, q.purpose, channel_name(q.channel)) for q in due]
        answers = await self.upstream.check_consent(workspace, checks)
        context = await asyncio.to_thread(self._context, workspace, due, now)
        facts, history = context.facts, context.history
        outcomes: list[tuple[Queued, Message]] = []
        sending: list[tuple[Queued, consent_pb2.CheckConsentResponse, provider.Message]] = []
        for queued, answer in zip(due, answers, strict=True):
            if answer.decision != consent_pb2.DECISION_ALLOW:
                reason = (
                    consent_pb2.DecisionReason.Name(answer.reason).removeprefix("DECISION_REASON_").lower()
                )
                outcomes.append(
                    (
                        queued,
                        pb.MessageSuppressed(
                            instance=queued.ref,
                            message_id=queued.message_id,
                            reason=f"consent: {reason}",
                            consent_evidence_id=answer.evidence.event_id,
                        ),
                    )
                )
                continue
            person = facts[queued.ref.profile_id]
            # The zone the decisions see: the latest event's, else the `timezone` trait (the
            # event's alone missed the trait, and quiet hours were then read in UTC).
            zone_name = person.frozen().time_zone
            zone = ZoneInfo(zone_name) if zone_name and known_zone(zone_name) else ZoneInfo("UTC")
            sent_before = history.get((queued.ref.profile_id, queued.channel), [])
            decision = pace(now, zone, channel_name(queued.channel), sent_before, self.policy)
            if isinstance(decision, DeferUntil):
                until = pb.MessageDeferred(
                    instance=queued.ref, message_id=queued.message_id, reason="quiet hours"
                )
                until.until.FromDatetime(decision.at)
                outcomes.append((queued, until))
                continue
            if isinstance(decision, Capped):
                outcomes.append(
                    (
                        queued,
                        pb.MessageSuppressed(
                            instance=queued.ref,
                            message_id=queued.message_id,
                            reason=f"frequency cap: {decision.reason}",
                        ),
                    )
                )
                continue
            try:
                message = await asyncio.to_thread(self._render, workspace, queued, person, context)
            except InvalidArgument as problem:
                outcomes.append(
                    (
                        queued,
                        pb.MessageFailed(
                            instance=queued.ref,
                            message_id=queued.message_id,
                            provider_error=str(problem)[:200],
                        ),
                    )
                )
                continue
            sending.append((queued, answer, message))
            # Counted now, so a second message of the batch to the same person meets the cap.
            history.setdefault((queued.ref.profile_id, queued.channel), []).append(now)
        deliveries = await asyncio.gather(*(self.channels.send(m) for _, _, m in sending))
        for (queued, answer, message), delivery in zip(sending, deliveries, strict=True):
            if delivery.status == provider.DeliveryStatus.DELIVERED:
                outcomes.append(
                    (
                        queued,
                        pb.MessageSent(
                            instance=queued.ref,
                            message_id=queued.message_id,
                            consent_evidence_id=answer.evidence.event_id,
                            provider_message_id=delivery.provider_message_id,
                            recipient=message.to,
                        ),
                    )
                )
                outcomes.append(
                    (queued, pb.MessageDelivered(instance=queued.ref, message_id=queued.message_id))
                )
            else:  # retried by the provider's policy already: this is its last word
                outcomes.append(
                    (
                        queued,
                        pb.MessageFailed(
                            instance=queued.ref, message_id=queued.message_id, provider_error=delivery.error
                        ),
                    )
                )
        if outcomes:
            await self.log.writer.run(
                self.log.projector.write, lambda conn: self._record(conn, workspace, outcomes, now)
            )

    def _context(self, workspace: str, due: Sequence[Queued], now: datetime) -> BatchContext:
        """The facts of the batch's people and their sends of the last week, per channel; the
        templates and entry properties the messages are rendered with. One connection for the batch:
        read per message, they were two queries (and a connection) a message."""
        ids = sorted({q.ref.profile_id for q in due})
        since = to_micros(now - timedelta(days=7))
        with self.log.store.engine.connect() as conn:
            facts = self.facts.load(conn, workspace, ids)
            rows = conn.execute(
                sa.select(outbox.c.profile_id, outbox.c.channel, outbox.c.sent_at_us).where(
                    (outbox.c.workspace == workspace)
                    & outbox.c.profile_id.in_(ids)
                    & (outbox.c.sent_at_us >= since)
                )
            ).all()
            templates = {
                name: self.journeys.template(conn, workspace, name) for name in {q.template for q in due}
            }
            entry_properties = self._entry_properties(conn, due)
        history: dict[tuple[str, int], list[datetime]] = {}
        for profile_id, channel, sent_at in rows:
            history.setdefault((str(profile_id), int(channel)), []).append(from_micros(int(sent_at)))
        return BatchContext(facts, history, templates, entry_properties)

    def _render(
        self, workspace: str, queued: Queued, person: MutableFacts, context: BatchContext
    ) -> provider.Message:
        template = context.templates[queued.template]
        if template is None:
            raise InvalidArgument(f"template {queued.template!r} no longer exists")
        address = next(
            (person.traits[t] for t in ADDRESS_TRAITS[queued.channel] if person.traits.get(t)), None
        )
        if not isinstance(address, str):
            wanted = " or ".join(ADDRESS_TRAITS[queued.channel])
            raise InvalidArgument(
                f"the profile has no {wanted} trait to send {channel_name(queued.channel)} to"
            )
        variables = TemplateVariables(
            profile_id=queued.ref.profile_id,
            journey_id=queued.ref.journey,
            message_id=queued.message_id,
            traits=person.traits,
            event=context.entry_properties.get((_stream(queued), queued.ref.entry_seq), {}),
        )
        channel = channel_name(queued.channel)
        if queued.channel == pb.CHANNEL_EMAIL:
            email = self.renderer.render_email(
                self.renderer.compile_email(
                    EmailTemplate(template.name, template.subject, template.text, template.html)
                ),
                variables,
            )
            return provider.Message(
                queued.message_id,
                workspace,
                queued.ref.profile_id,
                channel,
                address,
                email.subject,
                email.text,
                email.html,
            )
        text = self.renderer.render_text(
            self.renderer.compile_text(template.name, "text", template.text), variables
        )
        title = (
            self.renderer.render_text(
                self.renderer.compile_text(template.name, "subject", template.subject), variables
            )
            if template.subject
            else ""
        )
        return provider.Message(
            queued.message_id, workspace, queued.ref.profile_id, channel, address, title, text
        )

    def _entry_properties(
        self, conn: Connection, due: Sequence[Queued]
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """The properties of the events the messages' instances entered with (sealed in their
        JourneyEntered), by (instance stream, entry_seq)."""
        store = self.log.store
        wanted = {(_stream(q), q.ref.entry_seq) for q in due}
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for event in store.read_streams(
            sorted({stream for stream, _ in wanted}),
            types=[pb.JourneyEntered.DESCRIPTOR.full_name],
            conn=conn,
        ):
            entered = store.decode(event, conn=conn)
            assert isinstance(entered, pb.JourneyEntered)
            key = (event.stream_id, entered.instance.entry_seq)
            if key in wanted:
                found[key] = MessageToDict(entered.properties)
        return found

    def _record(
        self, conn: Connection, workspace: str, outcomes: Sequence[tuple[Queued, Message]], now: datetime
    ) -> None:
        """Record the outcomes; a message stopped meanwhile (a withdrawal, an exit) is not
        suppressed or deferred again — what was sent is recorded whatever happened meanwhile."""
        ids = list({q.message_id for q, _ in outcomes})
        still_queued = {
            str(m)
            for (m,) in conn.execute(
                sa.select(outbox.c.message_id).where(
                    outbox.c.message_id.in_(ids) & (outbox.c.status == "queued")
                )
            )
        }
        events = []
        for queued, message in outcomes:
            if queued.message_id not in still_queued and not isinstance(
                message, pb.MessageSent | pb.MessageDelivered
            ):
                continue
            ref = queued.ref
            events.append(
                NewEvent(
                    stream_id=instance_stream(workspace, ref.journey, ref.profile_id, ref.entity_key),
                    message=message,
                    subject=subject_of(workspace, ref.profile_id),
                    workspace=workspace,
                    occurred_at=now,
                    metadata={PARTITION_KEY: ref.profile_id},
                )
            )
        self.log.projector.record(conn, events)
