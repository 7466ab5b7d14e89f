"""Journeys checked and compiled into an immutable graph of steps.

A journey is code (`onefold apply -f journey.yaml`), so every mistake comes back at once, each as a
field path and a reason a person can act on (`steps[2].send.next: no step named "sms"`), and never
quoting a personal value. What a journey may name from elsewhere — segments, consent purposes,
message templates — is given by the caller (`Known`): the domain does no I/O.

Checked here, once: names, every edge (`next`, arms, `on_event`, `on_timeout`, `start`) names a
step, every step is reachable from the start, no loop can run without passing a wait (it would spin
forever in one transaction), durations are positive, split percentages sum to 100, cron
expressions and time zones parse, predicates are well formed. The instance decisions
(instance.py) then trust the compiled form.

An empty edge ("") means the instance has completed: a send or a wait at the end of a journey needs
no explicit exit step.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.json_format import MessageToDict

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.segments.v1 import segments_pb2 as spb
from onefold.platform.errors import InvalidArgument

Json = Any  # None | bool | float | str | list[Json] | dict[str, Json]: a google.protobuf.Value as Python
Scalar = None | bool | float | str

NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
LOCAL_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
EVENT_TYPES = ("track", "page", "screen", "identify")
WAIT_KINDS = frozenset({"wait", "wait_for_event"})

_ORDERING = frozenset({spb.OPERATOR_GT, spb.OPERATOR_GE, spb.OPERATOR_LT, spb.OPERATOR_LE})
_NO_OPERAND = frozenset({spb.OPERATOR_EXISTS, spb.OPERATOR_NOT_EXISTS})
_LIST_OPERAND = frozenset({spb.OPERATOR_IN, spb.OPERATOR_NOT_IN})


# ------------------------------------------------------------------------------------------------
# Problems.


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # e.g. "steps[2].send.next"
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class InvalidJourney(InvalidArgument):
    """A journey with problems: the message lists them all; `violations` carries them as field paths."""

    def __init__(self, name: str, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        listed = "; ".join(str(problem) for problem in self.problems)
        super().__init__(
            f"journey {quoted(name)} is not valid: {listed}",
            violations=[(problem.path, problem.reason) for problem in self.problems],
        )


@dataclass(frozen=True, slots=True)
class Known:
    """What a journey may name outside itself: the workspace's live segments, its consent purposes
    and the message templates the channels can render."""

    segments: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    templates: Mapping[str, int] = field(default_factory=dict)  # name -> the Channel it renders for


# ------------------------------------------------------------------------------------------------
# Compiled building blocks.


@dataclass(frozen=True, slots=True)
class Check:
    """A compiled Predicate; operands are scalars."""

    op: int
    value: Scalar = None
    values: tuple[Scalar, ...] = ()

    def holds(self, found: Json) -> bool:
        """As segments reads the same Predicate: a missing value (None) passes NOT_EXISTS only, so
        "plan NE gold" does not hold for a profile without a plan."""
        if self.op == spb.OPERATOR_EXISTS:
            return found is not None
        if self.op == spb.OPERATOR_NOT_EXISTS:
            return found is None
        if found is None:
            return False
        if self.op == spb.OPERATOR_EQ:
            return _equal(found, self.value)
        if self.op == spb.OPERATOR_NE:
            return not _equal(found, self.value)
        if self.op == spb.OPERATOR_IN:
            return any(_equal(found, v) for v in self.values)
        if self.op == spb.OPERATOR_NOT_IN:
            return not any(_equal(found, v) for v in self.values)
        if self.op == spb.OPERATOR_CONTAINS:
            if isinstance(found, str):
                return isinstance(self.value, str) and self.value in found
            return isinstance(found, list) and any(_equal(item, self.value) for item in found)
        if self.op == spb.OPERATOR_STARTS_WITH:
            return isinstance(found, str) and isinstance(self.value, str) and found.startswith(self.value)
        return _ordered(self.op, found, self.value)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events count: type, name ("" = any) and property tests that must all hold."""

    type: str = "track"
    name: str = ""
    where: tuple[tuple[str, Check], ...] = ()

    def matches(self, event: Observed) -> bool:
        if event.type != self.type or (self.name and event.name != self.name):
            return False
        return all(check.holds(read_path(event.properties, path)) for path, check in self.where)


@dataclass(frozen=True, slots=True)
class Observed:
    """An event as the journey sees it (from identity's resolved events or the API)."""

    type: str
    name: str
    properties: Mapping[str, Json]
    event_id: str
    at: datetime


# Conditions.


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    part: Condition


@dataclass(frozen=True, slots=True)
class TraitIs:
    path: str
    check: Check


@dataclass(frozen=True, slots=True)
class TagIs:
    tag: str
    check: Check | None  # None: the tag has any value


@dataclass(frozen=True, slots=True)
class InSegment:
    segment: str


@dataclass(frozen=True, slots=True)
class EntryPropertyIs:
    path: str
    check: Check


Condition = AllOf | AnyOf | Not | TraitIs | TagIs | InSegment | EntryPropertyIs


# Steps. `next` "" = the instance completes there.


@dataclass(frozen=True, slots=True)
class WaitFor:
    name: str
    duration: timedelta
    next: str


@dataclass(frozen=True, slots=True)
class WaitUntilLocal:
    name: str
    hour: int
    minute: int
    next: str


@dataclass(frozen=True, slots=True)
class WaitForEventStep:
    name: str
    event: Filter
    timeout: timedelta
    on_event: str
    on_timeout: str


@dataclass(frozen=True, slots=True)
class BranchStep:
    name: str
    arms: tuple[tuple[Condition, str], ...]
    otherwise: str


@dataclass(frozen=True, slots=True)
class SplitArm:
    name: str
    percent: int
    next: str
    control: bool


@dataclass(frozen=True, slots=True)
class SplitStep:
    name: str
    arms: tuple[SplitArm, ...]


@dataclass(frozen=True, slots=True)
class SendStep:
    name: str
    channel: pb.Channel.ValueType
    template: str
    purpose: str
    next: str


@dataclass(frozen=True, slots=True)
class UpdateTraitStep:
    name: str
    trait: str
    value: Json
    next: str


@dataclass(frozen=True, slots=True)
class ExitStep:
    name: str
    reason: str


Step = (
    WaitFor
    | WaitUntilLocal
    | WaitForEventStep
    | BranchStep
    | SplitStep
    | SendStep
    | UpdateTraitStep
    | ExitStep
)


def kind_of(step: Step) -> str:
    """The step's kind as the proto spells it (StepEntered.kind)."""
    return _KINDS[type(step)]


_KINDS: Mapping[type, str] = {
    WaitFor: "wait",
    WaitUntilLocal: "wait",
    WaitForEventStep: "wait_for_event",
    BranchStep: "branch",
    SplitStep: "split",
    SendStep: "send",
    UpdateTraitStep: "update_trait",
    ExitStep: "exit",
}


# Entry.


@dataclass(frozen=True, slots=True)
class OnEvent:
    event: Filter
    entity_key: str  # "" = one instance per profile


@dataclass(frozen=True, slots=True)
class OnSegment:
    segment: str
    on_exit: bool


@dataclass(frozen=True, slots=True)
class OnSchedule:
    cron: str  # "" = once, at `once_at`
    time_zone: str
    once_at: datetime | None
    segment: str  # "" = every profile of the workspace


@dataclass(frozen=True, slots=True)
class OnApi:
    pass


Trigger = OnEvent | OnSegment | OnSchedule | OnApi


@dataclass(frozen=True, slots=True)
class EntryRule:
    trigger: Trigger
    reentry: pb.Reentry.ValueType
    cooldown: timedelta


@dataclass(frozen=True, slots=True)
class ExitRule:
    event: Filter
    reason: str


@dataclass(frozen=True, slots=True)
class Goal:
    name: str
    event: Filter
    window: timedelta | None  # None: while the instance runs
    revenue_property: str
    exit_on_reach: bool


@dataclass(frozen=True, slots=True)
class CompiledJourney:
    name: str
    version: int
    entry: EntryRule
    start: str
    steps: Mapping[str, Step]  # read-only
    exit_rules: tuple[ExitRule, ...]
    goals: tuple[Goal, ...]
    time_zone: str

    @property
    def entity_key(self) -> str:
        """The event property that keys instances ("" = one per profile)."""
        return self.entry.trigger.entity_key if isinstance(self.entry.trigger, OnEvent) else ""


# ------------------------------------------------------------------------------------------------
# Checking and compiling.


def validate(journey: pb.Journey, known: Known | None) -> list[Problem]:
    """Every problem of `journey`, in field order then graph problems; [] when it is valid.
    `known` None trusts its references (a stored version was checked when it was applied)."""
    return _Checker(known).journey(journey)[1]


def compile_journey(journey: pb.Journey, known: Known | None = None) -> CompiledJourney:
    """The journey's immutable graph; raises InvalidJourney listing every problem."""
    compiled, problems = _Checker(known).journey(journey)
    if problems or compiled is None:
        raise InvalidJourney(journey.name, problems)
    return compiled


class _Checker:
    """Walks one journey, collecting problems (field paths) and compiling what it can."""

    def __init__(self, known: Known | None) -> None:
        self.known = known
        self.problems: list[Problem] = []

    def fail(self, path: str, reason: str) -> None:
        self.problems.append(Problem(path, reason))

    def journey(self, j: pb.Journey) -> tuple[CompiledJourney | None, list[Problem]]:
        if not NAME.fullmatch(j.name):
            self.fail("name", "must match [a-z][a-z0-9_]{0,62}")
        if j.time_zone and not known_zone(j.time_zone):
            self.fail("time_zone", "not an IANA time zone (e.g. Asia/Shanghai)")
        entry = self.entry(j.entry) if j.HasField("entry") else None
        if not j.HasField("entry"):
            self.fail("entry", "required: how people enter")
        steps: dict[str, Step] = {}
        indexes: dict[str, int] = {}
        if not j.steps:
            self.fail("steps", "a journey needs at least one step")
        for i, s in enumerate(j.steps):
            path = f"steps[{i}]"
            if not NAME.fullmatch(s.name):
                self.fail(f"{path}.name", "must match [a-z][a-z0-9_]{0,62}")
            elif s.name in indexes:
                self.fail(f"{path}.name", f"steps[{indexes[s.name]}] has this name already")
            compiled = self.step(s, path)
            if compiled is not None and s.name not in indexes:
                steps[s.name] = compiled
            indexes.setdefault(s.name, i)
        start = j.start or (j.steps[0].name if j.steps else "")
        if j.start and j.start not in indexes:
            self.fail("start", f"no step named {quoted(j.start)}")
        # The graph as written (first step of each name, edges to existing steps only): unreachable
        # steps and loops are found even when some steps failed to compile.
        graph: dict[str, tuple[str, ...]] = {}
        waiting: set[str] = set()
        for i, s in enumerate(j.steps):
            targets = self.edges(s, f"steps[{i}]", indexes)
            if indexes.get(s.name) == i:
                graph[s.name] = targets
                if s.WhichOneof("kind") in WAIT_KINDS:
                    waiting.add(s.name)
        exit_rules = tuple(
            ExitRule(
                self.filter(rule.event, f"exit_rules[{i}].event", required=True),
                rule.reason or f"exit rule: {rule.event.event or rule.event.type}",
            )
            for i, rule in enumerate(j.exit_rules)
        )
        goals = self.goals(j.goals)
        self.graph(graph, waiting, start, indexes)
        if self.problems or entry is None:
            return None, self.problems
        return (
            CompiledJourney(
                name=j.name,
                version=j.version,
                entry=entry,
                start=start,
                steps=MappingProxyType(steps),
                exit_rules=exit_rules,
                goals=goals,
                time_zone=j.time_zone or "UTC",
            ),
            [],
        )

    # Entry.

    def entry(self, e: pb.Entry) -> EntryRule | None:
        kind = e.WhichOneof("trigger")
        trigger: Trigger | None = None
        if kind == "event":
            entity_key = e.event.entity_key
            if entity_key:
                self.dotted(entity_key, "entry.event.entity_key")
            trigger = OnEvent(self.filter(e.event.event, "entry.event.event", required=True), entity_key)
        elif kind == "segment":
            self.segment(e.segment.segment, "entry.segment.segment")
            trigger = OnSegment(e.segment.segment, e.segment.on_exit)
        elif kind == "schedule":
            trigger = self.schedule(e.schedule)
        elif kind == "api":
            trigger = OnApi()
        else:
            self.fail("entry.trigger", "set one of event, segment, schedule, api")
        cooldown = self.duration(e.cooldown, "entry.cooldown") if e.HasField("cooldown") else timedelta(0)
        if e.reentry not in pb.Reentry.values():
            self.fail("entry.reentry", "must be NEVER, AFTER_EXIT or ALWAYS")
        if trigger is None:
            return None
        return EntryRule(trigger, e.reentry or pb.REENTRY_NEVER, cooldown)

    def schedule(self, s: pb.ScheduleTrigger) -> OnSchedule:
        path = "entry.schedule"
        cron = s.cron.strip()
        if bool(cron) == s.HasField("once_at"):
            self.fail(path, "set exactly one of cron and once_at")
        if cron and (len(cron.split()) not in (5, 6) or not croniter.is_valid(cron)):
            self.fail(f"{path}.cron", "must be a cron expression of 5 (or 6) fields")
        if s.time_zone and not known_zone(s.time_zone):
            self.fail(f"{path}.time_zone", "not an IANA time zone (e.g. Asia/Shanghai)")
        if s.segment:
            self.segment(s.segment, f"{path}.segment")
        once_at = s.once_at.ToDatetime(tzinfo=UTC) if s.HasField("once_at") else None
        return OnSchedule(cron, s.time_zone or "UTC", once_at, s.segment)

    # Steps.

    def step(self, s: pb.Step, path: str) -> Step | None:
        kind = s.WhichOneof("kind")
        if kind == "wait":
            return self.wait(s.name, s.wait, f"{path}.wait")
        if kind == "wait_for_event":
            w = s.wait_for_event
            event = self.filter(w.event, f"{path}.wait_for_event.event", required=True)
            timeout = timedelta(0)
            if not w.HasField("timeout"):
                self.fail(f"{path}.wait_for_event.timeout", "required: how long to wait for the event")
            else:
                timeout = self.duration(w.timeout, f"{path}.wait_for_event.timeout")
            return WaitForEventStep(s.name, event, timeout, w.on_event, w.on_timeout)
        if kind == "branch":
            b = s.branch
            if not b.arms:
                self.fail(f"{path}.branch.arms", "a branch needs at least one arm")
            arms: list[tuple[Condition, str]] = []
            for i, arm in enumerate(b.arms):
                where = f"{path}.branch.arms[{i}].when"
                if not arm.HasField("when"):
                    self.fail(where, "required")
                else:
                    arms.append((self.condition(arm.when, where), arm.next))
            return BranchStep(s.name, tuple(arms), b.otherwise)
        if kind == "split":
            return self.split(s.name, s.split, f"{path}.split")
        if kind == "send":
            return self.send(s.name, s.send, f"{path}.send")
        if kind == "update_trait":
            u = s.update_trait
            self.dotted(u.trait, f"{path}.update_trait.trait")
            if not u.HasField("value"):
                self.fail(f"{path}.update_trait.value", "required (null clears the trait)")
            return UpdateTraitStep(s.name, u.trait, MessageToDict(u.value), u.next)
        if kind == "exit":
            return ExitStep(s.name, s.exit.reason or "completed")
        self.fail(path, "set one of wait, wait_for_event, branch, split, send, update_trait, exit")
        return None

    def wait(self, name: str, w: pb.Wait, path: str) -> Step | None:
        until = w.WhichOneof("until")
        if until == "duration":
            return WaitFor(name, self.duration(w.duration, f"{path}.duration"), w.next)
        if until == "local_time":
            matched = LOCAL_TIME.fullmatch(w.local_time)
            if matched is None:
                self.fail(f"{path}.local_time", 'must be a 24-hour time of day "HH:MM" (e.g. "09:30")')
                return None
            return WaitUntilLocal(name, int(matched[1]), int(matched[2]), w.next)
        self.fail(path, "set one of duration, local_time")
        return None

    def split(self, name: str, s: pb.Split, path: str) -> SplitStep:
        if not s.arms:
            self.fail(f"{path}.arms", "a split needs at least one arm")
        names: set[str] = set()
        arms: list[SplitArm] = []
        for i, arm in enumerate(s.arms):
            where = f"{path}.arms[{i}]"
            if not NAME.fullmatch(arm.name):
                self.fail(f"{where}.name", "must match [a-z][a-z0-9_]{0,62}")
            elif arm.name in names:
                self.fail(f"{where}.name", "another arm of this split has this name")
            names.add(arm.name)
            if arm.percent == 0 or arm.percent > 100:
                self.fail(f"{where}.percent", "must be between 1 and 100")
            if arm.control and arm.next:
                self.fail(f"{where}.next", "a control arm is held out: it leads nowhere")
            arms.append(SplitArm(arm.name, arm.percent, arm.next, arm.control))
        total = sum(arm.percent for arm in s.arms)
        if s.arms and total != 100:
            self.fail(f"{path}.arms", f"percentages must sum to 100, not {total}")
        return SplitStep(name, tuple(arms))

    def send(self, name: str, s: pb.Send, path: str) -> SendStep:
        if s.channel == pb.CHANNEL_UNSPECIFIED or s.channel not in pb.Channel.values():
            self.fail(f"{path}.channel", "required: email, sms, push or wechat")
        if not s.template:
            self.fail(f"{path}.template", "required")
        elif self.known is not None and s.template not in self.known.templates:
            self.fail(f"{path}.template", f"no template named {quoted(s.template)}")
        elif self.known is not None and s.channel and self.known.templates[s.template] != s.channel:
            made_for = channel_name(self.known.templates[s.template])
            self.fail(
                f"{path}.template",
                f"template {quoted(s.template)} is for {made_for}, not {channel_name(s.channel)}",
            )
        if not s.purpose:
            self.fail(f"{path}.purpose", "required: the consent purpose the message is sent for")
        elif self.known is not None and s.purpose not in self.known.purposes:
            self.fail(f"{path}.purpose", f"no consent purpose named {quoted(s.purpose)}")
        return SendStep(name, s.channel, s.template, s.purpose, s.next)

    def edges(self, s: pb.Step, path: str, steps: Mapping[str, int]) -> tuple[str, ...]:
        """The steps `s` leads to; an edge to no step is a problem (and left out)."""
        kind = s.WhichOneof("kind")
        named: list[tuple[str, str]] = []
        if kind in ("wait", "send", "update_trait"):
            named.append(("next", getattr(s, kind).next))
        elif kind == "wait_for_event":
            named += [("on_event", s.wait_for_event.on_event), ("on_timeout", s.wait_for_event.on_timeout)]
        elif kind == "branch":
            named += [(f"arms[{i}].next", arm.next) for i, arm in enumerate(s.branch.arms)]
            named.append(("otherwise", s.branch.otherwise))
        elif kind == "split":
            named += [(f"arms[{i}].next", arm.next) for i, arm in enumerate(s.split.arms)]
        for field_name, target in named:
            if target and target not in steps:
                self.fail(f"{path}.{kind}.{field_name}", f"no step named {quoted(target)}")
        return tuple(target for _, target in named if target in steps)

    def graph(
        self, graph: Mapping[str, tuple[str, ...]], waiting: set[str], start: str, indexes: Mapping[str, int]
    ) -> None:
        """Unreachable steps, and loops that would run without ever waiting."""
        reached: set[str] = set()
        todo = [start] if start in graph else []
        while todo:
            current = todo.pop()
            if current not in reached:
                reached.add(current)
                todo.extend(graph[current])
        for name in sorted(set(graph) - reached, key=indexes.__getitem__):
            self.fail(f"steps[{indexes[name]}]", f"step {quoted(name)} is unreachable from {quoted(start)}")
        for cycle in _loops_without_wait(graph, waiting):
            self.fail(f"steps[{indexes[cycle[0]]}]", "a loop without a wait: " + " -> ".join(cycle))

    # Conditions and filters.

    def condition(self, c: pb.Condition, path: str) -> Condition:
        test = c.WhichOneof("test")
        if test in ("all_of", "any_of"):
            group = c.all_of if test == "all_of" else c.any_of
            if not group.conditions:
                self.fail(f"{path}.{test}.conditions", "needs at least one condition")
            parts = tuple(
                self.condition(part, f"{path}.{test}.conditions[{i}]")
                for i, part in enumerate(group.conditions)
            )
            return AllOf(parts) if test == "all_of" else AnyOf(parts)
        if test == "negated":
            return Not(self.condition(c.negated, f"{path}.negated"))
        if test == "trait":
            self.dotted(c.trait.trait, f"{path}.trait.trait")
            return TraitIs(c.trait.trait, self.predicate(c.trait.predicate, f"{path}.trait.predicate"))
        if test == "tag":
            if not c.tag.tag.strip():
                self.fail(f"{path}.tag.tag", "required")
            check = (
                self.predicate(c.tag.predicate, f"{path}.tag.predicate")
                if c.tag.HasField("predicate")
                else None
            )
            return TagIs(c.tag.tag, check)
        if test == "in_segment":
            self.segment(c.in_segment, f"{path}.in_segment")
            return InSegment(c.in_segment)
        if test == "entry_property":
            p = c.entry_property
            self.dotted(p.path, f"{path}.entry_property.path")
            return EntryPropertyIs(p.path, self.predicate(p.predicate, f"{path}.entry_property.predicate"))
        self.fail(path, "set one of all_of, any_of, negated, trait, tag, in_segment, entry_property")
        return AllOf(())

    def dotted(self, property_path: str, path: str) -> None:
        """A trait or property path: names joined by dots, into nested objects ("address.city")."""
        if not property_path:
            self.fail(path, "required")
        elif any(not part.strip() for part in property_path.split(".")):
            self.fail(path, 'must be names joined by dots (e.g. "address.city")')

    def segment(self, name: str, path: str) -> None:
        if not name:
            self.fail(path, "required: a segment's name")
        elif self.known is not None and name not in self.known.segments:
            self.fail(path, f"no segment named {quoted(name)}")

    def predicate(self, p: spb.Predicate, path: str) -> Check:
        op = p.op
        if op == spb.OPERATOR_UNSPECIFIED or op not in spb.Operator.values():
            self.fail(f"{path}.op", "required")
            return Check(spb.OPERATOR_EXISTS)
        if op in _NO_OPERAND:
            if p.HasField("value") or p.values:
                self.fail(f"{path}.value", "EXISTS and NOT_EXISTS take no value")
            return Check(op)
        if op in _LIST_OPERAND:
            if p.HasField("value"):
                self.fail(f"{path}.value", "IN and NOT_IN take `values`, not `value`")
            if not p.values:
                self.fail(f"{path}.values", "needs at least one value")
            values = tuple(self.scalar(v, f"{path}.values[{i}]") for i, v in enumerate(p.values))
            return Check(op, None, values)
        if p.values:
            self.fail(f"{path}.values", "only IN and NOT_IN take `values`")
        if not p.HasField("value"):
            self.fail(f"{path}.value", "required")
            return Check(op)
        value = self.scalar(p.value, f"{path}.value")
        if op in _ORDERING and not isinstance(value, (float, str)):
            self.fail(f"{path}.value", "GT, GE, LT, LE compare numbers or strings")
        if op == spb.OPERATOR_STARTS_WITH and not isinstance(value, str):
            self.fail(f"{path}.value", "STARTS_WITH takes a string")
        return Check(op, value)

    def scalar(self, value: struct_pb2.Value, path: str) -> Scalar:
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            return value.string_value
        if kind == "number_value":
            if not math.isfinite(value.number_value):
                self.fail(path, "must be a finite number")
            return value.number_value
        if kind == "bool_value":
            return value.bool_value
        self.fail(path, "must be a string, number or boolean")
        return None

    def filter(self, f: spb.EventFilter, path: str, *, required: bool = False) -> Filter:
        kind = f.type or "track"
        if kind not in EVENT_TYPES:
            self.fail(f"{path}.type", f"must be one of {', '.join(EVENT_TYPES)}")
        if required and kind == "track" and not f.event:
            self.fail(f"{path}.event", "required: the track event's name")
        where: list[tuple[str, Check]] = []
        for i, clause in enumerate(f.where):
            self.dotted(clause.path, f"{path}.where[{i}].path")
            where.append((clause.path, self.predicate(clause.predicate, f"{path}.where[{i}].predicate")))
        return Filter(kind, f.event, tuple(where))

    def duration(self, d: duration_pb2.Duration, path: str) -> timedelta:
        if d.seconds < 0 or d.nanos < 0 or (d.seconds == 0 and d.nanos == 0):
            self.fail(path, "must be longer than zero")
        return d.ToTimedelta()

    def goals(self, goals: Iterable[pb.Goal]) -> tuple[Goal, ...]:
        compiled: list[Goal] = []
        names: set[str] = set()
        for i, g in enumerate(goals):
            path = f"goals[{i}]"
            if not NAME.fullmatch(g.name):
                self.fail(f"{path}.name", "must match [a-z][a-z0-9_]{0,62}")
            elif g.name in names:
                self.fail(f"{path}.name", "another goal has this name")
            names.add(g.name)
            event = self.filter(g.event, f"{path}.event", required=True)
            if g.revenue_property:
                self.dotted(g.revenue_property, f"{path}.revenue_property")
            window = (
                self.duration(g.conversion_window, f"{path}.conversion_window")
                if g.HasField("conversion_window")
                else None
            )
            compiled.append(Goal(g.name, event, window, g.revenue_property, g.exit_on_reach))
        return tuple(compiled)


def _loops_without_wait(graph: Mapping[str, tuple[str, ...]], waiting: set[str]) -> list[list[str]]:
    """Cycles among the steps that do not wait, each reported once (from its first step in name
    order): such a loop would run forever inside one decision."""
    instant = {name: targets for name, targets in graph.items() if name not in waiting}
    found: list[list[str]] = []
    reported: set[str] = set()
    for start in sorted(instant):
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        visited: set[str] = set()
        while stack:
            node, path = stack.pop()
            for target in instant[node]:
                if target == start and start not in reported:
                    found.append([*path, start])
                    reported.update(path)
                    stack.clear()
                    break
                if target in instant and target not in visited and target not in reported:
                    visited.add(target)
                    stack.append((target, [*path, target]))
    return found


# ------------------------------------------------------------------------------------------------
# Helpers shared with the decisions.


def quoted(name: str) -> str:
    """A name as problems and errors quote it: "sms"."""
    return json.dumps(name, ensure_ascii=False)


def channel_name(channel: int) -> str:
    """The Channel as YAML spells it: "email", "sms", "push", "wechat"."""
    if channel not in pb.Channel.values():
        return "?"
    return pb.Channel.Name(pb.Channel.ValueType(channel)).removeprefix("CHANNEL_").lower()


def known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def read_path(properties: Mapping[str, Json], path: str) -> Json:
    """A dotted path into nested objects ("order.total"); None when any part is missing."""
    current: Json = properties
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def _equal(found: Json, expected: Scalar) -> bool:
    # Booleans are not numbers here, although Python says True == 1.
    if isinstance(found, bool) or isinstance(expected, bool):
        return isinstance(found, bool) and isinstance(expected, bool) and found == expected
    return bool(found == expected)


def _ordered(op: int, found: Json, expected: Scalar) -> bool:
    numbers = (int, float)
    if isinstance(found, bool) or isinstance(expected, bool):
        return False
    comparable = (isinstance(found, numbers) and isinstance(expected, numbers)) or (
        isinstance(found, str) and isinstance(expected, str)
    )
    if not comparable:
        return False
    if op == spb.OPERATOR_GT:
        return bool(found > expected)
    if op == spb.OPERATOR_GE:
        return bool(found >= expected)
    if op == spb.OPERATOR_LT:
        return bool(found < expected)
    return bool(found <= expected)
