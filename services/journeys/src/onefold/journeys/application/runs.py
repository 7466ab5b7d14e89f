"""People moving through journeys: entries (an event, a segment change, the API), the events that
move or end their instances, timers firing, consent withdrawn, archive and erasure — all on the
writer thread, a batch at a time.

Each pass loads the instances it needs and the profiles' facts once, decides in memory with the
pure domain (domain/instance.py), folds each decision's events into the instance it holds so the
next input of the same batch sees them, and records everything through the projector at the end,
in the one transaction (with the subscriber's tracking row, for an upstream batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.consent.v1 import consent_pb2
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.segments.v1 import segments_pb2
from onefold.eventlog.folded import FoldedStreams
from onefold.eventlog.models import NewEvent, RecordedEvent, from_micros, to_micros
from onefold.eventlog.service import Duty, ServiceLog
from onefold.eventlog.streams import PARTITION_KEY
from onefold.journeys.adapters.profile_facts import MutableFacts, ProfileFacts
from onefold.journeys.adapters.read_model import catalog, instances, outbox
from onefold.journeys.application.catalog import Clock, Journeys, Running
from onefold.journeys.domain import instance as decide
from onefold.journeys.domain.definitions import CompiledJourney, Json, Observed
from onefold.journeys.domain.instance import Instance, instance_stream, subject_of
from onefold.platform.errors import NotFound
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.journeys")
TIMER_BATCH = 500

_EVENT_TYPES = {
    ingest_pb2.EVENT_TYPE_TRACK: "track",
    ingest_pb2.EVENT_TYPE_PAGE: "page",
    ingest_pb2.EVENT_TYPE_SCREEN: "screen",
    ingest_pb2.EVENT_TYPE_IDENTIFY: "identify",
}
# Consent's channel names, as a journey's Channel.
_CONSENT_CHANNELS = {
    "": pb.CHANNEL_UNSPECIFIED,
    "email": pb.CHANNEL_EMAIL,
    "sms": pb.CHANNEL_SMS,
    "push": pb.CHANNEL_PUSH,
    "wechat": pb.CHANNEL_WECHAT,
}

InstanceKey = tuple[str, str, str]  # (journey, profile id, entity key) within a workspace


def _by_name(*messages: type[Message]) -> dict[str, type[Message]]:
    return {m.DESCRIPTOR.full_name: m for m in messages}


# What each upstream's subscriber fetches (by subject) and handles: the other events are never read.
IDENTITY_TYPES = _by_name(
    identity_pb2.EventResolved,
    identity_pb2.TraitsUpdated,
    identity_pb2.ProfileErased,
    identity_pb2.ProfilesMerged,
)
SEGMENTS_TYPES = _by_name(segments_pb2.SegmentEntered, segments_pb2.SegmentExited, segments_pb2.TagChanged)
CONSENT_TYPES = _by_name(
    consent_pb2.ConsentWithdrawn, consent_pb2.ConsentExpired, consent_pb2.ObjectionRecorded
)


def observed(message: identity_pb2.EventResolved) -> Observed:
    """The journey's view of an opened EventResolved (the skew-corrected time, else received)."""
    e = message.event
    stamp = e.timestamp if e.HasField("timestamp") else e.received_at
    name = e.event if e.type == ingest_pb2.EVENT_TYPE_TRACK else e.name
    return Observed(
        _EVENT_TYPES.get(e.type, ""),
        name,
        MessageToDict(e.properties),
        message.event_id,
        stamp.ToDatetime(tzinfo=UTC),
    )


@dataclass
class _Pass:
    """One batch's work on one workspace."""

    workspace: str
    now: datetime
    instances: dict[InstanceKey, Instance] = field(default_factory=dict)
    # The stream version each held instance was folded through when loaded (0: a new stream).
    versions: dict[InstanceKey, int] = field(default_factory=dict)
    facts: dict[str, MutableFacts] = field(default_factory=dict)
    facts_changed: set[str] = field(default_factory=set)
    events: list[NewEvent] = field(default_factory=list)
    # Profiles erased before this pass: their keys are gone, so nothing new is recorded about them
    # (an upstream event of theirs still in flight is set aside instead of failing its whole batch).
    erased: set[str] = field(default_factory=set)
    # Profiles this pass erases: their instances (personal data opened) are not kept past it.
    erasing: set[str] = field(default_factory=set)
    # Profiles whose every instance was loaded (by `_open`): one of theirs not held has no events.
    all_loaded: set[str] = field(default_factory=set)

    def record(
        self, instance: Instance, profile_id: str, key: InstanceKey, decided: Iterable[Message]
    ) -> None:
        if profile_id in self.erased:
            return
        for message in decided:
            instance.apply(self.now, message)
            self.events.append(
                NewEvent(
                    stream_id=instance_stream(self.workspace, key[0], profile_id, key[2]),
                    message=message,
                    subject=subject_of(self.workspace, profile_id),
                    workspace=self.workspace,
                    occurred_at=self.now,
                    metadata={PARTITION_KEY: profile_id},
                )
            )


class Runs:
    def __init__(self, log_: ServiceLog, journeys: Journeys, facts: ProfileFacts, clock: Clock) -> None:
        self.log = log_
        self.journeys = journeys
        self.facts = facts
        self.clock = clock
        # On the leader: fire timers at their moment (sleeping until the earliest, woken early when
        # a batch schedules a wait or a journey is published).
        self.timers = Duty("journeys.timers", self._timers_round)
        # Instances folded in earlier passes: a person's ended instances are not read again per event.
        self.folded: FoldedStreams[Instance] = FoldedStreams(log_.store)
        self.on_queued: Callable[[], None] = lambda: None  # the sender's wake-up, set by the application

    # -------------------------------------------------------------------------- a pass

    def _open(
        self,
        conn: Connection,
        workspace: str,
        profile_ids: Iterable[str],
        instances_of: Iterable[str] | None = None,
    ) -> _Pass:
        """A pass over `profile_ids` (their facts, which are erased) with every instance of
        `instances_of` (default: of all of them) folded. Folding an instance reads and opens its
        whole stream, so a pass loads only the profiles whose instances its inputs can move or
        enter; another instance is read when asked for (`_instance`)."""
        work = _Pass(workspace, self.clock())
        ids = list(dict.fromkeys(profile_ids))
        work.facts = self.facts.load(conn, workspace, ids)
        subjects = {subject_of(workspace, p): p for p in ids}
        work.erased = {subjects[s] for s in self.log.store.erased_subjects(conn, subjects)}
        loaded = ids if instances_of is None else list(dict.fromkeys(instances_of))
        if loaded:
            rows = conn.execute(
                sa.select(instances.c.journey, instances.c.profile_id, instances.c.entity_key).where(
                    (instances.c.workspace == workspace) & instances.c.profile_id.in_(loaded)
                )
            ).all()
            self._load(conn, work, [(str(j), str(p), str(k)) for j, p, k in rows])
        work.all_loaded.update(loaded)
        return work

    def _load(self, conn: Connection, work: _Pass, keys: Sequence[InstanceKey]) -> None:
        """Fold the instances of `keys` not yet held, from their streams, in one read of the streams
        that moved since they were last folded."""
        wanted = {instance_stream(work.workspace, *key): key for key in keys if key not in work.instances}
        store = self.log.store

        def fold(events: Sequence[RecordedEvent]) -> Instance:
            instance = Instance()
            for event in events:
                instance.apply(event.occurred_at, store.decode(event, conn=conn))
            return instance

        folded = self.folded.load(conn, list(wanted), fold)
        for stream_id, key in wanted.items():
            found = folded.get(stream_id)
            work.instances[key] = found.state if found is not None else Instance()
            work.versions[key] = found.version if found is not None else 0

    def _instance(self, conn: Connection, work: _Pass, key: InstanceKey) -> Instance:
        if key not in work.instances:
            if key[1] in work.all_loaded:
                # The read model lists every instance ever entered and `_open` loaded the profile's:
                # this one is new, its stream empty. Reading it anyway cost a query per entry. (A
                # read model behind the log is refused when the pass records: ProjectionBehind.)
                work.instances[key] = Instance()
                work.versions[key] = 0
            else:
                self._load(conn, work, [key])
        return work.instances[key]

    def _profile_instances(self, work: _Pass, profile_id: str) -> list[tuple[InstanceKey, Instance]]:
        return [(key, i) for key, i in work.instances.items() if key[1] == profile_id and i.entry_seq]

    def _finish(self, conn: Connection, work: _Pass) -> None:
        self.facts.save(conn, work.workspace, {p: work.facts[p] for p in work.facts_changed})
        self._keep(work, self.log.projector.record(conn, work.events))
        if any(isinstance(e.message, pb.MessageQueued) for e in work.events):
            self.on_queued()
        if any(isinstance(e.message, pb.WaitScheduled) for e in work.events):
            self._poke()

    def _keep(self, work: _Pass, recorded: Sequence[RecordedEvent]) -> None:
        """The instances this pass moved are kept as it folded them, so the next pass need not read
        back what it wrote — unless something else wrote to the stream since it was loaded (its
        events would be missing here: the stream is read again)."""
        last: dict[str, RecordedEvent] = {}
        appended: dict[str, int] = {}
        for event in recorded:
            last[event.stream_id] = event
            appended[event.stream_id] = appended.get(event.stream_id, 0) + 1
        for key, instance in work.instances.items():
            if key[1] in work.erasing or key[1] in work.erased:
                continue
            stream_id = instance_stream(work.workspace, *key)
            newest = last.get(stream_id)
            if newest is not None and newest.stream_version == work.versions[key] + appended[stream_id]:
                self.folded.keep(instance, newest)

    # -------------------------------------------------------------------------- entering

    def _enter(
        self,
        conn: Connection,
        work: _Pass,
        journey: CompiledJourney,
        profile_id: str,
        entity_key: str,
        *,
        trigger: str,
        cause_event_id: str = "",
        properties: dict[str, Json] | None = None,
    ) -> tuple[Instance, str]:
        """Enter `profile_id` into the running `journey`; (the instance, why not or "")."""
        key = (journey.name, profile_id, entity_key)
        instance = self._instance(conn, work, key)
        if profile_id in work.erased:
            return instance, "the profile was erased"
        refused = decide.may_enter(instance, journey, work.now)
        if refused is not None:
            return instance, refused
        decided = decide.enter(
            instance,
            journey,
            work.now,
            work.facts.setdefault(profile_id, MutableFacts()).frozen(),
            workspace=work.workspace,
            profile_id=profile_id,
            entity_key=entity_key,
            trigger=trigger,
            cause_event_id=cause_event_id,
            properties=properties,
        )
        work.record(instance, profile_id, key, decided)
        return instance, ""

    async def enter_by_api(
        self, workspace: str, name: str, profile_id: str, entity_key: str, properties: dict[str, Json]
    ) -> pb.EnterJourneyResponse:
        def work_on(conn: Connection) -> pb.EnterJourneyResponse:
            running = {r.name: r.journey for r in self.journeys.running(conn, workspace)}
            if name not in running:
                if self.journeys.status(conn, workspace, name) == pb.JOURNEY_STATUS_UNSPECIFIED:
                    raise NotFound(f"no journey named {name!r}")
                return pb.EnterJourneyResponse(entered=False, refused="not published")
            work = self._open(conn, workspace, [profile_id])
            instance, refused = self._enter(
                conn, work, running[name], profile_id, entity_key, trigger="api", properties=properties
            )
            self._finish(conn, work)
            return pb.EnterJourneyResponse(entered=not refused, refused=refused, instance=instance.to_proto())

        return await self.log.writer.run(self.log.projector.write, work_on)

    def enter_scheduled(
        self, conn: Connection, *, workspace: str, name: str, profile_ids: Sequence[str]
    ) -> int:
        """A scheduled run's page of its audience entered (each person's re-entry rules apply);
        how many entered. A journey no longer running enters nobody."""
        running = {r.name: r.journey for r in self.journeys.running(conn, workspace)}
        journey = running.get(name)
        if journey is None:
            return 0
        work = self._open(conn, workspace, profile_ids)
        entered = sum(
            1 for p in profile_ids if not self._enter(conn, work, journey, p, "", trigger="schedule")[1]
        )
        self._finish(conn, work)
        return entered

    # -------------------------------------------------------------------------- upstream: identity

    def handle_identity(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """Identity's events: resolved events enter journeys and move instances; traits are kept as
        facts (a merge moves the merged profile's to the survivor); an erased profile's instances
        stop."""
        parsed = [IDENTITY_TYPES[e.type].FromString(e.payload) for e in envelopes if e.type in IDENTITY_TYPES]
        for workspace in dict.fromkeys(m.workspace for m in parsed):  # type: ignore[attr-defined]
            mine = [m for m in parsed if m.workspace == workspace]  # type: ignore[attr-defined]
            profile_ids: list[str] = []
            for message in mine:
                if isinstance(message, identity_pb2.ProfilesMerged):
                    profile_ids += [message.survivor_id, message.merged_id]
                elif isinstance(message, identity_pb2.ProfileErased):  # with the ids merged into it
                    profile_ids += [message.profile_id, *message.profile_ids]
                else:
                    profile_ids.append(message.profile_id)  # type: ignore[attr-defined]
            # Traits and merges touch facts only: resolved events and erasures move instances.
            moved: list[str] = []
            for message in mine:
                if isinstance(message, identity_pb2.EventResolved):
                    moved.append(message.profile_id)
                elif isinstance(message, identity_pb2.ProfileErased):
                    moved += [message.profile_id, *message.profile_ids]
            work = self._open(conn, workspace, profile_ids, instances_of=moved)
            running = {r.name: r for r in self.journeys.running(conn, workspace)}
            for message in mine:
                if isinstance(message, identity_pb2.EventResolved) and message.profile_id:
                    self._resolved(conn, work, running, message)
                elif isinstance(message, identity_pb2.TraitsUpdated):
                    facts = work.facts.setdefault(message.profile_id, MutableFacts())
                    facts.traits.update(MessageToDict(message.traits))
                    work.facts_changed.add(message.profile_id)
                elif isinstance(message, identity_pb2.ProfileErased):
                    self._erase(conn, work, [message.profile_id, *message.profile_ids])
                elif isinstance(message, identity_pb2.ProfilesMerged):
                    self._merge_facts(work, message.survivor_id, message.merged_id)
            self._finish(conn, work)
            if merged := [m.merged_id for m in mine if isinstance(m, identity_pb2.ProfilesMerged)]:
                self.facts.delete(conn, workspace, merged)

    @staticmethod
    def _merge_facts(work: _Pass, survivor_id: str, merged_id: str) -> None:
        """What journeys knew of the merged profile (an anonymous visitor's traits, say) now belongs
        to the survivor, whose own values win. Its instances stay under the id they entered with."""
        gone = work.facts.pop(merged_id, MutableFacts())
        work.facts_changed.discard(merged_id)
        kept = work.facts.setdefault(survivor_id, MutableFacts())
        kept.traits = {**gone.traits, **kept.traits}
        kept.tags = {**gone.tags, **kept.tags}
        kept.segments |= gone.segments
        kept.time_zone = kept.time_zone or gone.time_zone
        work.facts_changed.add(survivor_id)

    def _resolved(
        self, conn: Connection, work: _Pass, live: dict[str, Running], message: identity_pb2.EventResolved
    ) -> None:
        profile_id = message.profile_id
        event = observed(message)
        facts = work.facts.setdefault(profile_id, MutableFacts())
        zone = message.event.context.fields.get("timezone")
        if zone is not None and zone.string_value and zone.string_value != facts.time_zone:
            facts.time_zone = zone.string_value
            work.facts_changed.add(profile_id)
        for key, instance in self._profile_instances(work, profile_id):
            if key[0] not in live:
                continue  # paused or archived: nothing advances
            journey = self.journeys.compiled(conn, work.workspace, key[0], instance.ref.version)
            decided = decide.on_event(instance, journey, event, work.now, facts.frozen())
            work.record(instance, profile_id, key, decided)
        for entry in live.values():
            if decide.enters_on_event(entry.journey, event):
                entity_key = decide.entity_key_of(entry.journey, event)
                self._enter(
                    conn,
                    work,
                    entry.journey,
                    profile_id,
                    entity_key,
                    trigger="event",
                    cause_event_id=event.event_id,
                    properties=dict(event.properties),
                )

    # -------------------------------------------------------------------------- upstream: segments

    def handle_segments(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """Segments' changes: memberships and tags kept as facts; entering or leaving a segment
        enters the journeys triggered by it."""
        parsed = [
            (e.event_id, SEGMENTS_TYPES[e.type].FromString(e.payload))
            for e in envelopes
            if e.type in SEGMENTS_TYPES
        ]
        for workspace in dict.fromkeys(m.workspace for _, m in parsed):  # type: ignore[attr-defined]
            mine = [(i, m) for i, m in parsed if m.workspace == workspace]  # type: ignore[attr-defined]
            running = self.journeys.running(conn, workspace)
            # Only a profile entering a journey here needs its instances (tags and memberships
            # are facts).
            entering = [
                m.profile_id
                for _, m in mine
                if isinstance(m, segments_pb2.SegmentEntered | segments_pb2.SegmentExited)
                and any(
                    decide.enters_on_segment(
                        entry.journey, m.segment, exited=isinstance(m, segments_pb2.SegmentExited)
                    )
                    for entry in running
                )
            ]
            work = self._open(
                conn,
                workspace,
                [m.profile_id for _, m in mine],  # type: ignore[attr-defined]
                instances_of=entering,
            )
            for event_id, message in mine:
                profile_id: str = message.profile_id  # type: ignore[attr-defined]
                facts = work.facts.setdefault(profile_id, MutableFacts())
                work.facts_changed.add(profile_id)
                if isinstance(message, segments_pb2.TagChanged):
                    if message.value:
                        facts.tags[message.tag] = message.value
                    else:
                        facts.tags.pop(message.tag, None)
                    continue
                assert isinstance(message, segments_pb2.SegmentEntered | segments_pb2.SegmentExited)
                exited = isinstance(message, segments_pb2.SegmentExited)
                (facts.segments.discard if exited else facts.segments.add)(message.segment)
                for entry in running:
                    if decide.enters_on_segment(entry.journey, message.segment, exited=exited):
                        self._enter(
                            conn,
                            work,
                            entry.journey,
                            profile_id,
                            "",
                            trigger="segment_exit" if exited else "segment_entry",
                            cause_event_id=event_id,
                        )
            self._finish(conn, work)

    # -------------------------------------------------------------------------- upstream: consent

    def handle_consent(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """A withdrawal, an expiry or an objection stops the messages queued for that purpose (and
        channel) at once; CheckConsent before each send catches everything else."""
        stops: list[tuple[str, str, str, str, str]] = []  # workspace, profile, purpose, channel, evidence
        for envelope in envelopes:
            message: consent_pb2.ConsentWithdrawn | consent_pb2.ConsentExpired | consent_pb2.ObjectionRecorded
            if envelope.type == consent_pb2.ConsentWithdrawn.DESCRIPTOR.full_name:
                message = consent_pb2.ConsentWithdrawn.FromString(envelope.payload)
                channel = message.channel
            elif envelope.type == consent_pb2.ConsentExpired.DESCRIPTOR.full_name:
                message = consent_pb2.ConsentExpired.FromString(envelope.payload)
                channel = message.channel
            elif envelope.type == consent_pb2.ObjectionRecorded.DESCRIPTOR.full_name:
                message = consent_pb2.ObjectionRecorded.FromString(envelope.payload)
                channel = ""
            else:
                continue
            stops.append(
                (message.workspace, message.profile_id, message.purpose_id, channel, envelope.event_id)
            )
        for workspace in dict.fromkeys(s[0] for s in stops):
            mine = [s for s in stops if s[0] == workspace]
            work = self._open(conn, workspace, [s[1] for s in mine])
            for _, profile_id, purpose, channel, evidence in mine:
                if channel not in _CONSENT_CHANNELS:
                    continue  # a channel journeys never sends on
                for key, instance in self._profile_instances(work, profile_id):
                    decided = decide.withdraw_consent(instance, purpose, _CONSENT_CHANNELS[channel], evidence)
                    work.record(instance, profile_id, key, decided)
            self._finish(conn, work)

    # -------------------------------------------------------------------------- timers

    def fire_due(self, conn: Connection) -> int:
        """Advance every instance of a running journey whose timer is due (up to TIMER_BATCH)."""
        now = self.clock()
        rows = conn.execute(
            sa.select(
                instances.c.workspace, instances.c.journey, instances.c.profile_id, instances.c.entity_key
            )
            .where(instances.c.fires_at_us <= to_micros(now))
            .order_by(instances.c.fires_at_us)
            .limit(TIMER_BATCH * 4)
        ).all()
        fired = 0
        for workspace in dict.fromkeys(str(r[0]) for r in rows):
            live = {r.name for r in self.journeys.running(conn, workspace)}
            keys = [(str(j), str(p), str(k)) for w, j, p, k in rows if w == workspace and j in live]
            keys = keys[: TIMER_BATCH - fired]
            if not keys:
                continue
            work = _Pass(workspace, now)
            work.facts = self.facts.load(conn, workspace, [k[1] for k in keys])
            self._load(conn, work, keys)
            for key in keys:
                instance = work.instances[key]
                journey = self.journeys.compiled(conn, workspace, key[0], instance.ref.version)
                decided = decide.on_timer(instance, journey, now, work.facts[key[1]].frozen())
                work.record(instance, key[1], key, decided)
                fired += 1
            self._finish(conn, work)
        return fired

    def earliest_timer(self) -> datetime | None:
        """The next due timer of a running journey (paused journeys' timers wait for publish)."""
        query = (
            sa.select(sa.func.min(instances.c.fires_at_us))
            .select_from(
                instances.join(
                    catalog,
                    (catalog.c.workspace == instances.c.workspace) & (catalog.c.name == instances.c.journey),
                )
            )
            .where(catalog.c.status == pb.JOURNEY_STATUS_PUBLISHED)
        )
        with self.log.store.engine.connect() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else from_micros(int(found))

    async def _timers_round(self) -> float | None:
        """Fire what is due; seconds until the earliest timer left (None: none)."""
        fired = await self.log.writer.run(self.log.projector.write, self.fire_due)
        if fired >= TIMER_BATCH:
            return 0.0
        earliest = await asyncio.to_thread(self.earliest_timer)
        return None if earliest is None else (earliest - self.clock()).total_seconds()

    def _poke(self) -> None:
        """A batch scheduled a wait: the timer duty plans again, once the batch has committed."""
        self.log.after_commit(self.timers.wake)

    def wake_timers(self) -> None:
        """A journey was published or resumed: its due timers fire now."""
        self.timers.wake()

    # -------------------------------------------------------------------------- archive, erasure

    def archive_instances(self, conn: Connection, workspace: str, name: str) -> None:
        """The journey was archived: every instance in flight exits, its unsent messages stop."""
        in_flight = sa.select(instances.c.profile_id, instances.c.entity_key).where(
            (instances.c.workspace == workspace) & (instances.c.journey == name) & instances.c.active
        )
        # Also the instances that have ended with a message still queued (a last send deferred to
        # the end of quiet hours): selecting the active ones only let such a message go out after
        # the archive.
        still_sending = sa.select(outbox.c.profile_id, outbox.c.entity_key).where(
            (outbox.c.workspace == workspace) & (outbox.c.journey == name) & (outbox.c.status == "queued")
        )
        rows = conn.execute(sa.union(in_flight, still_sending)).all()
        work = _Pass(workspace, self.clock())
        keys = [(name, str(p), str(k)) for p, k in rows]
        self._load(conn, work, keys)
        for key in keys:
            work.record(work.instances[key], key[1], key, decide.archive(work.instances[key]))
        self._finish(conn, work)

    def _erase(self, conn: Connection, work: _Pass, profile_ids: Sequence[str]) -> None:
        for profile_id in profile_ids:
            work.erasing.add(profile_id)
            held = self._profile_instances(work, profile_id)
            self.folded.forget([instance_stream(work.workspace, *key) for key, _ in held])
            for key, instance in held:
                work.record(instance, profile_id, key, decide.erase(instance))
            work.facts.pop(profile_id, None)
            work.facts_changed.discard(profile_id)

    def erase(self, conn: Connection, *, workspace: str, profile_ids: Sequence[str]) -> int:
        """A data-subject erasure: every instance stops (recorded, with reason "erased"), the facts
        go, and the profiles' keys are shredded — their instances' personal fields read as erased.
        Returns how many instances were stopped."""
        work = self._open(conn, workspace, profile_ids)
        self._erase(conn, work, profile_ids)
        stopped = sum(1 for e in work.events if isinstance(e.message, pb.JourneyExited))
        self._finish(conn, work)
        self.facts.delete(conn, workspace, profile_ids)
        for profile_id in profile_ids:
            self.log.store.erase_subject(subject_of(workspace, profile_id), conn=conn)
        return stopped
