"""One person's run through a journey: the fold of an instance's events, and the decisions on it.

An instance is a (journey, profile, entity key): one per profile, or one per value of the entry
trigger's `entity_key` property (each cart its own). Its stream holds every entry, each numbered
(`entry_seq`), so re-entry rules can look at what came before. An instance runs the version it
entered with; the caller passes that version's compiled graph (`catalog.Catalog.version`).

Every decision is a pure function of (instance, journey, now, facts about the profile) returning
the events to record, all occurring at `now`; nothing is sent here. A decision runs the steps that
take no time (branch, split, send, update trait, exit) one after the other until the instance
waits, completes or exits — the journey was checked to have no loop without a wait, so this ends.
A send only queues the message (`MessageQueued`, with a deterministic id); the application asks
consent and a provider, and records `MessageSent` or `MessageSuppressed`; a restart that finds a
queued message re-sends it under the same id, which providers deduplicate.

Events keyed by the trigger's entity key (a cart's "Order Completed") reach only the instance with
the same key; an event that does not carry the key property concerns every instance of the profile.

Which came first, an awaited event or its timeout, is decided by when each happened: an event that
occurred before the timeout wins even if it arrives after the timer is due but before it fired; an
event that occurred at or after the timeout leaves the instance to its timer. Likewise an event
that arrives late but occurred before the entry (or before the wait began) concerns the instance
no more than it would have on time.

An instance runs the version it entered with: the decisions on an entered instance refuse the
graph of any other version (a caller's mistake that would move people onto steps they never saw).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.journeys.domain.definitions import (
    AllOf,
    AnyOf,
    BranchStep,
    CompiledJourney,
    Condition,
    EntryPropertyIs,
    ExitStep,
    InSegment,
    Json,
    Not,
    Observed,
    OnEvent,
    OnSchedule,
    OnSegment,
    SendStep,
    SplitArm,
    SplitStep,
    TagIs,
    TraitIs,
    UpdateTraitStep,
    WaitFor,
    WaitForEventStep,
    WaitUntilLocal,
    kind_of,
    known_zone,
    read_path,
)

Timed = tuple[datetime, Message]  # an event of the instance's stream and when it occurred

COMPLETED = "completed"


def instance_stream(workspace: str, journey: str, profile_id: str, entity_key: str) -> str:
    return f"journeys-instance:{workspace}:{journey}:{profile_id}:{entity_key}"


def subject_of(workspace: str, profile_id: str) -> str:
    """The data subject whose key seals an instance's personal fields."""
    return f"{workspace}:j:{profile_id}"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the decisions may know about the profile, looked up by the application."""

    traits: Mapping[str, Json] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    time_zone: str = ""  # IANA; "" or unknown: the journey's


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    step: str
    channel: pb.Channel.ValueType
    purpose: str
    template: str
    status: str  # "queued", "sent", "suppressed", "delivered", "failed"


@dataclass
class Instance(Handlers):
    """The latest entry of a (journey, profile, entity key), folded; `entry_seq` 0: never entered."""

    ref: pb.InstanceRef = field(default_factory=pb.InstanceRef)
    active: bool = False
    entered_at: datetime | None = None
    exited_at: datetime | None = None
    exit_reason: str = ""
    step: str = ""
    step_since: datetime | None = None
    fires_at: datetime | None = None  # the pending timer: a wait ends, or a wait's timeout
    entered_by: str = ""  # the upstream event that caused the entry ("" = schedule, API)
    properties: dict[str, Json] = field(default_factory=dict)  # the entry event's
    arm: str = ""
    control: bool = False
    messages: dict[str, QueuedMessage] = field(default_factory=dict)  # by message id, this entry's
    goals: dict[str, float] = field(default_factory=dict)  # reached this entry: revenue by goal

    @property
    def entry_seq(self) -> int:
        return self.ref.entry_seq

    @staticmethod
    def fold(events: Iterable[Timed]) -> Instance:
        instance = Instance()
        for at, message in events:
            instance.apply(at, message)
        return instance

    def apply(self, at: datetime, message: Message) -> None:
        self.dispatch(message, at, message)

    @handles(pb.JourneyEntered)
    def _entered(self, at: datetime, message: pb.JourneyEntered) -> None:
        # A new entry starts afresh; only its number tells it from the earlier ones.
        self.ref = pb.InstanceRef()
        self.ref.CopyFrom(message.instance)
        self.active, self.entered_at, self.exited_at, self.exit_reason = True, at, None, ""
        self.step, self.step_since, self.fires_at = "", None, None
        self.entered_by = message.cause_event_id
        self.properties = MessageToDict(message.properties)
        self.arm, self.control = "", False
        self.messages, self.goals = {}, {}

    @handles(pb.StepEntered)
    def _step(self, at: datetime, message: pb.StepEntered) -> None:
        if self._current(message.instance):
            self.step, self.step_since, self.fires_at = message.step, at, None

    @handles(pb.WaitScheduled)
    def _wait(self, at: datetime, message: pb.WaitScheduled) -> None:
        if self._current(message.instance):
            self.fires_at = message.fires_at.ToDatetime(tzinfo=UTC)

    @handles(pb.SplitAssigned)
    def _split(self, at: datetime, message: pb.SplitAssigned) -> None:
        if self._current(message.instance):
            self.arm, self.control = message.arm, message.control

    @handles(pb.MessageQueued)
    def _queued(self, at: datetime, message: pb.MessageQueued) -> None:
        if self._current(message.instance):
            self.messages[message.message_id] = QueuedMessage(
                message.step, message.channel, message.purpose, message.template, "queued"
            )

    @handles(pb.MessageSent, pb.MessageSuppressed, pb.MessageDelivered, pb.MessageFailed)
    def _message(
        self,
        at: datetime,
        message: pb.MessageSent | pb.MessageSuppressed | pb.MessageDelivered | pb.MessageFailed,
    ) -> None:
        known = self.messages.get(message.message_id)
        if known is not None and self._current(message.instance):
            self.messages[message.message_id] = replace(known, status=MESSAGE_OUTCOME[type(message)])

    @handles(pb.MessageDeferred)
    def _deferred(self, at: datetime, message: pb.MessageDeferred) -> None:
        """Nothing changes: a deferred message is still queued, to be tried at `until`."""

    @handles(pb.TraitUpdateRequested)
    def _trait(self, at: datetime, message: pb.TraitUpdateRequested) -> None:
        """Nothing to keep: identity applies the trait; the event is the request's record."""

    @handles(pb.GoalReached)
    def _goal(self, at: datetime, message: pb.GoalReached) -> None:
        if self._current(message.instance):
            self.goals[message.goal] = message.revenue

    @handles(pb.JourneyExited)
    def _exited(self, at: datetime, message: pb.JourneyExited) -> None:
        if self._current(message.instance):
            self.active, self.exited_at, self.exit_reason = False, at, message.reason
            self.fires_at = None

    def _current(self, ref: pb.InstanceRef) -> bool:
        # Late provider callbacks of an earlier entry must not touch the current one.
        return ref.entry_seq == self.ref.entry_seq

    def pending(self) -> list[str]:
        """Queued messages not yet sent or suppressed (what a restart re-sends), in queue order."""
        return [message_id for message_id, m in self.messages.items() if m.status == "queued"]

    def to_proto(self) -> pb.Instance:
        view = pb.Instance(
            ref=self.ref,
            status=pb.INSTANCE_STATUS_ACTIVE if self.active else pb.INSTANCE_STATUS_EXITED,
            step=self.step,
            exit_reason=self.exit_reason,
            arm=self.arm,
            control=self.control,
            goals=sorted(self.goals),
            messages=[
                pb.MessageState(
                    message_id=message_id,
                    step=m.step,
                    channel=m.channel,
                    template=m.template,
                    status=m.status,
                )
                for message_id, m in self.messages.items()
            ],
        )
        for name, moment in (
            ("fires_at", self.fires_at),
            ("entered_at", self.entered_at),
            ("exited_at", self.exited_at),
        ):
            if moment is not None:
                getattr(view, name).FromDatetime(moment)
        return view


# What each provider-side event makes of a queued message: its status, and the stats' counter.
MESSAGE_OUTCOME: Mapping[type[Message], str] = {
    pb.MessageSent: "sent",
    pb.MessageSuppressed: "suppressed",
    pb.MessageDelivered: "delivered",
    pb.MessageFailed: "failed",
}


# ------------------------------------------------------------------------------------------------
# Entry.


def may_enter(instance: Instance, journey: CompiledJourney, now: datetime) -> str | None:
    """Why the profile may not enter (again) now, or None when it may. Whether the journey is
    published is the catalog's answer (`Catalog.running`), asked by the caller."""
    if instance.entry_seq == 0:
        return None
    rule = journey.entry
    if rule.reentry == pb.REENTRY_NEVER:
        return "reentry: never (entered before)"
    if rule.reentry == pb.REENTRY_AFTER_EXIT and instance.active:
        return "reentry: after exit (still in the journey)"
    assert instance.entered_at is not None  # entered before
    until = instance.entered_at + rule.cooldown
    if now < until:
        return f"cooldown until {until.isoformat()}"
    return None


def enter(
    instance: Instance,
    journey: CompiledJourney,
    now: datetime,
    facts: Facts,
    *,
    workspace: str,
    profile_id: str,
    entity_key: str = "",
    trigger: str,
    cause_event_id: str = "",
    properties: Mapping[str, Json] | None = None,
) -> list[Message]:
    """The events of entering (none when `may_enter` refuses): a running instance restarted by
    REENTRY_ALWAYS exits first ("restarted"), then the new entry runs from the start step."""
    if may_enter(instance, journey, now) is not None:
        return []
    events: list[Message] = []
    if instance.active:
        events += _stop(instance, "restarted", cause_event_id)
    ref = pb.InstanceRef(
        workspace=workspace,
        journey=journey.name,
        version=journey.version,
        profile_id=profile_id,
        entity_key=entity_key,
        entry_seq=instance.entry_seq + 1,
    )
    entered = pb.JourneyEntered(instance=ref, trigger=trigger, cause_event_id=cause_event_id)
    if properties:
        ParseDict(dict(properties), entered.properties)
    events.append(entered)
    state = Instance()
    state.apply(now, entered)
    return events + _advance(state, journey, journey.start, "", now, facts)


def enters_on_event(journey: CompiledJourney, event: Observed) -> bool:
    trigger = journey.entry.trigger
    return isinstance(trigger, OnEvent) and trigger.event.matches(event)


def enters_on_segment(journey: CompiledJourney, segment: str, *, exited: bool) -> bool:
    """Whether the profile entering (or, `exited`, leaving) `segment` enters the journey."""
    trigger = journey.entry.trigger
    return isinstance(trigger, OnSegment) and trigger.segment == segment and trigger.on_exit == exited


def next_scheduled_entry(journey: CompiledJourney, after: datetime) -> datetime | None:
    """When a scheduled journey next enters its audience, strictly after `after` (UTC); None when
    it never will again (a one-off already past) or is not scheduled. Cron runs on the wall clock
    of the schedule's time zone, so "0 9 * * *" stays at 09:00 there across daylight saving."""
    trigger = journey.entry.trigger
    if not isinstance(trigger, OnSchedule):
        return None
    if trigger.once_at is not None:
        return trigger.once_at if trigger.once_at > after else None
    local = after.astimezone(ZoneInfo(trigger.time_zone))
    following: datetime = croniter(trigger.cron, local).get_next(datetime)
    return following.astimezone(UTC)


def entity_key_of(journey: CompiledJourney, event: Observed) -> str:
    """The instance an entry event opens: the value of the trigger's entity key property ("" when
    the journey keys instances by profile only, or the event lacks it)."""
    if not journey.entity_key:
        return ""
    value = read_path(event.properties, journey.entity_key)
    return "" if value is None or isinstance(value, (dict, list)) else _text(value)


# ------------------------------------------------------------------------------------------------
# Time and events.


def on_timer(instance: Instance, journey: CompiledJourney, now: datetime, facts: Facts) -> list[Message]:
    """The instance's timer, if it is due: a wait ends, or a wait for an event times out."""
    if not instance.active or instance.fires_at is None or now < instance.fires_at:
        return []
    _same_version(instance, journey)
    step = journey.steps[instance.step]
    if isinstance(step, WaitForEventStep):
        return _advance(instance, journey, step.on_timeout, "timeout", now, facts)
    assert isinstance(step, (WaitFor, WaitUntilLocal)), f"step {step.name!r} does not wait"
    return _advance(instance, journey, step.next, "", now, facts)


def on_event(
    instance: Instance, journey: CompiledJourney, event: Observed, now: datetime, facts: Facts
) -> list[Message]:
    """A profile's event: goals first (a purchase that ends the journey still converts it), then exit
    rules, then the wait for an event it may end.

    A goal with a conversion window counts within the window even after the instance has ended
    (a welcome series completes when its last message is queued; the purchase comes days later),
    and for control instances, which end at their split: that is the baseline of the uplift. A goal
    without a window counts while the instance runs. Goals count for the latest entry.

    The event the instance entered with is not one of its run: given here too (a consumer passing
    every event on, a redelivery) it changes nothing, where it would otherwise meet the instance's
    own exit rules and goals as if it had come after the entry."""
    if instance.entry_seq == 0 or not _concerns(instance, journey, event):
        return []
    if event.event_id and event.event_id == instance.entered_by:
        return []
    _same_version(instance, journey)
    assert instance.entered_at is not None
    if event.at < instance.entered_at:
        return []
    events: list[Message] = []
    for goal in journey.goals:
        if goal.name in instance.goals or not goal.event.matches(event):
            continue
        if goal.window is None and not instance.active:
            continue
        if goal.window is not None and event.at > instance.entered_at + goal.window:
            continue
        events.append(
            pb.GoalReached(
                instance=instance.ref,
                goal=goal.name,
                revenue=_revenue(event, goal.revenue_property),
                cause_event_id=event.event_id,
            )
        )
        if goal.exit_on_reach and instance.active:
            return events + _stop(instance, f"goal: {goal.name}", event.event_id)
    if not instance.active:
        return events
    for rule in journey.exit_rules:
        if rule.event.matches(event):
            return events + _stop(instance, f"exit_rule: {rule.reason}", event.event_id)
    step = journey.steps.get(instance.step)
    if (
        isinstance(step, WaitForEventStep)
        and instance.fires_at is not None
        and instance.step_since is not None
        and instance.step_since <= event.at < instance.fires_at
        and step.event.matches(event)
    ):
        events += _advance(instance, journey, step.on_event, "event", now, facts)
    return events


def _same_version(instance: Instance, journey: CompiledJourney) -> None:
    if (instance.ref.journey, instance.ref.version) != (journey.name, journey.version):
        raise ValueError(
            f"the instance runs {instance.ref.journey} version {instance.ref.version}, "
            f"not {journey.name} version {journey.version}"
        )


def _concerns(instance: Instance, journey: CompiledJourney, event: Observed) -> bool:
    if not journey.entity_key:
        return True
    value = read_path(event.properties, journey.entity_key)
    return value is None or _text(value) == instance.ref.entity_key


# ------------------------------------------------------------------------------------------------
# Ending and stopping.


def erase(instance: Instance) -> list[Message]:
    """The profile is being erased: its unsent messages stop (also those of an instance that has
    ended) and the instance exits."""
    return _stop(instance, "erased")


def archive(instance: Instance) -> list[Message]:
    """The journey was archived: its unsent messages stop and its instances in flight exit."""
    return _stop(instance, "archived")


def withdraw_consent(instance: Instance, purpose: str, channel: int, evidence_id: str) -> list[Message]:
    """Consent to `purpose` was withdrawn (on `channel`; CHANNEL_UNSPECIFIED: on every channel):
    the messages queued for it and not yet sent stop. The instance itself goes on."""
    return [
        pb.MessageSuppressed(
            instance=instance.ref,
            message_id=message_id,
            reason="consent withdrawn",
            consent_evidence_id=evidence_id,
        )
        for message_id in instance.pending()
        if instance.messages[message_id].purpose == purpose
        and channel in (pb.CHANNEL_UNSPECIFIED, instance.messages[message_id].channel)
    ]


def _exit(instance: Instance, reason: str, cause_event_id: str = "") -> list[Message]:
    """The instance ends where the journey ends (completion, an exit step, a control arm): what it
    queued on the way is still sent."""
    return [pb.JourneyExited(instance=instance.ref, reason=reason, cause_event_id=cause_event_id)]


def _stop(instance: Instance, reason: str, cause_event_id: str = "") -> list[Message]:
    """The instance is stopped from outside its path (an exit rule, a goal, archive, erasure, a
    restart): what it has not sent yet is suppressed — a reminder queued before the purchase that
    ended the journey must not go out after it — and, if it still runs, it exits."""
    suppressed: list[Message] = [
        pb.MessageSuppressed(instance=instance.ref, message_id=message_id, reason=f"stopped: {reason}")
        for message_id in instance.pending()
    ]
    return suppressed + (_exit(instance, reason, cause_event_id) if instance.active else [])


# ------------------------------------------------------------------------------------------------
# Running the steps.


def _advance(
    instance: Instance, journey: CompiledJourney, target: str, via: str, now: datetime, facts: Facts
) -> list[Message]:
    """Run from `target` until the instance waits, completes or exits. `instance` is not changed:
    the events are applied to a copy, so the later steps see the earlier ones (queued messages)."""
    state = replace(instance, messages=dict(instance.messages), goals=dict(instance.goals))
    events: list[Message] = []

    def record(*messages: Message) -> None:
        for message in messages:
            state.apply(now, message)
            events.append(message)

    ref = instance.ref
    # Each step is entered at most once per decision: there is no loop without a wait.
    for _ in range(len(journey.steps) + 1):
        if not target:
            record(*_exit(state, COMPLETED))
            return events
        step = journey.steps[target]
        record(pb.StepEntered(instance=ref, step=step.name, kind=kind_of(step), via=via))
        if isinstance(step, WaitFor):
            record(_scheduled(ref, step.name, now + step.duration, "duration"))
            return events
        if isinstance(step, WaitUntilLocal):
            zone = facts.time_zone if facts.time_zone and known_zone(facts.time_zone) else journey.time_zone
            record(
                _scheduled(ref, step.name, next_local_time(now, zone, step.hour, step.minute), "local_time")
            )
            return events
        if isinstance(step, WaitForEventStep):
            record(_scheduled(ref, step.name, now + step.timeout, "event_timeout"))
            return events
        if isinstance(step, BranchStep):
            target, via = step.otherwise, "otherwise"
            for i, (condition, then) in enumerate(step.arms):
                if holds(condition, facts, state.properties):
                    target, via = then, f"arm {i}"
                    break
        elif isinstance(step, SplitStep):
            chosen = bucket(journey.name, ref.profile_id, ref.entity_key)
            arm = split_arm(step.arms, chosen)
            record(
                pb.SplitAssigned(
                    instance=ref, step=step.name, arm=arm.name, control=arm.control, bucket=chosen
                )
            )
            if arm.control:
                # Held out: it sends nothing more; its goals still count within their windows.
                record(*_exit(state, "control"))
                return events
            target, via = arm.next, f"split {arm.name}"
        elif isinstance(step, SendStep):
            record(
                pb.MessageQueued(
                    instance=ref,
                    step=step.name,
                    message_id=message_id(ref, step.name),
                    channel=step.channel,
                    purpose=step.purpose,
                    template=step.template,
                )
            )
            target, via = step.next, ""
        elif isinstance(step, UpdateTraitStep):
            requested = pb.TraitUpdateRequested(instance=ref, step=step.name, trait=step.trait)
            ParseDict(step.value, requested.value)
            record(requested)
            target, via = step.next, ""
        else:
            assert isinstance(step, ExitStep)
            record(*_exit(state, step.reason))
            return events
    raise AssertionError(f"journey {journey.name!r} looped without a wait (it was compiled unchecked)")


def _scheduled(ref: pb.InstanceRef, step: str, fires_at: datetime, reason: str) -> pb.WaitScheduled:
    scheduled = pb.WaitScheduled(instance=ref, step=step, reason=reason)
    scheduled.fires_at.FromDatetime(fires_at)
    return scheduled


def holds(condition: Condition, facts: Facts, properties: Mapping[str, Json]) -> bool:
    if isinstance(condition, AllOf):
        return all(holds(part, facts, properties) for part in condition.parts)
    if isinstance(condition, AnyOf):
        return any(holds(part, facts, properties) for part in condition.parts)
    if isinstance(condition, Not):
        return not holds(condition.part, facts, properties)
    if isinstance(condition, TraitIs):
        return condition.check.holds(read_path(facts.traits, condition.path))
    if isinstance(condition, TagIs):
        value = facts.tags.get(condition.tag) or None
        return value is not None if condition.check is None else condition.check.holds(value)
    if isinstance(condition, InSegment):
        return condition.segment in facts.segments
    assert isinstance(condition, EntryPropertyIs)
    return condition.check.holds(read_path(properties, condition.path))


# ------------------------------------------------------------------------------------------------
# Deterministic choices.


def _digest(*parts: str | int) -> bytes:
    # Each part length-prefixed: ("a:b", "c") and ("a", "b:c") must not collide.
    hasher = hashlib.sha256()
    for part in parts:
        encoded = str(part).encode()
        hasher.update(len(encoded).to_bytes(4, "big") + encoded)
    return hasher.digest()


def bucket(journey: str, profile_id: str, entity_key: str) -> int:
    """A stable bucket 0-99: the same person (and key) lands in the same split arm on every replay
    and in every version of the journey; 2**64 mod 100 makes the bias negligible."""
    return int.from_bytes(_digest(journey, profile_id, entity_key)[:8], "big") % 100


def split_arm(arms: Iterable[SplitArm], chosen: int) -> SplitArm:
    """The arm covering bucket `chosen`: arms take consecutive ranges of their percent, in order."""
    upper = 0
    last: SplitArm | None = None
    for arm in arms:
        upper += arm.percent
        last = arm
        if chosen < upper:
            return arm
    assert last is not None, "a split has arms"
    return last


def message_id(ref: pb.InstanceRef, step: str) -> str:
    """The id of the message a step sends in this entry of the instance: the same after a restart
    (providers deduplicate on it), different on a re-entry. The workspace is part of it, so two
    workspaces' profiles can never share an id."""
    digest = _digest(
        ref.workspace, ref.journey, ref.version, ref.profile_id, ref.entity_key, step, ref.entry_seq
    )
    return "msg_" + digest[:16].hex()


def next_local_time(now: datetime, time_zone: str, hour: int, minute: int) -> datetime:
    """The first moment at or after `now` when the clock in `time_zone` reads hour:minute, in UTC.
    A time skipped by a daylight-saving change falls at the same distance past the change (02:30
    on a spring-forward night is 03:30); a time repeated falls at its first occurrence."""
    zone = ZoneInfo(time_zone)
    today = now.astimezone(zone).date()
    for day in (today, today + timedelta(days=1), today + timedelta(days=2)):
        candidate = _at(day, hour, minute, zone)
        if candidate >= now:
            return candidate
    raise AssertionError("a time of day recurs within two days")


def _at(day: date, hour: int, minute: int, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=zone).astimezone(UTC)


def _revenue(event: Observed, property_path: str) -> float:
    if not property_path:
        return 0.0
    value = read_path(event.properties, property_path)
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0.0
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _text(value: Json) -> str:
    # A numeric key arrives as a float from JSON: 42.0 and "42" must name the same cart.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
