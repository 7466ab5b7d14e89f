"""Journeys and message templates as YAML (docs/journeys.md): `kind: Journey` and `kind: Template`
documents to `onefold.journeys.v1.Journey` / `Template` and back.

    kind: Journey
    name: abandoned_cart
    entry: {event: Product Added, entity_key: cart_id, reentry: after_exit}
    steps:
      - name: next_morning
        wait: {until: "09:00"}
        next: reminder
      - name: reminder
        send: {channel: email, template: cart_reminder, purpose: marketing}

Events, conditions and their tests are spelt as segments' YAML spells them (segments_yaml.py reads
them here too); durations as 30m, 2h, 1d. A step's `next` stands beside its kind (the proto keeps it
inside the kind). A mistake is one sentence naming the document and the YAML path; the conversion
back (`journey_document`, `template_document`) writes the same form, so `onefold journeys get NAME`
reads as applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict

from onefold.cli.output import CliError
from onefold.cli.segments_yaml import (
    NAME,
    YamlPath,
    checked_mapping,
    event_filter_document,
    format_duration,
    parse_duration,
    parse_event_filter,
    parse_predicate,
    predicate_document,
    shown,
    snake,
    text_at,
    whole_number_at,
)
from onefold.contracts.journeys.v1 import journeys_pb2 as pb

KINDS = ("Journey", "Template")
CHANNELS = {
    name.removeprefix("CHANNEL_").lower(): value
    for name, value in pb.Channel.items()
    if value != pb.CHANNEL_UNSPECIFIED
}
CHANNEL_NAMES = {value: name for name, value in CHANNELS.items()}
REENTRIES = {
    name.removeprefix("REENTRY_").lower(): value
    for name, value in pb.Reentry.items()
    if value != pb.REENTRY_UNSPECIFIED
}
REENTRY_NAMES = {value: name for name, value in REENTRIES.items()}
STATUS_NAMES = {
    value: name.removeprefix("JOURNEY_STATUS_").lower()
    for name, value in pb.JourneyStatus.items()
    if value != pb.JOURNEY_STATUS_UNSPECIFIED
}

JOURNEY_KEYS = (
    "kind",
    "api_version",
    "name",
    "description",
    "time_zone",
    "entry",
    "start",
    "steps",
    "exit_rules",
    "goals",
)
TEMPLATE_KEYS = ("kind", "api_version", "name", "channel", "subject", "text", "html")
TRIGGERS = ("event", "segment", "schedule", "api")
ENTRY_KEYS = (*TRIGGERS, "entity_key", "on_exit", "reentry", "cooldown")
SCHEDULE_KEYS = ("cron", "time_zone", "once_at", "segment")
STEP_KINDS = ("wait", "wait_for_event", "branch", "split", "send", "update_trait", "exit")
# The kinds whose proto message has one `next`; the others lead on through their own fields.
KINDS_WITH_NEXT = ("wait", "send", "update_trait")
STEP_KEYS = ("name", *STEP_KINDS, "next")
CONDITION_TESTS = ("all_of", "any_of", "not", "trait", "tag", "in_segment", "entry_property")
LOCAL_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")

Choice = TypeVar("Choice")  # an enum's value type: Channel, Reentry


@dataclass(frozen=True)
class JourneySpec:
    """One Journey document of a file: where it is (for messages) and the journey."""

    where: str
    journey: pb.Journey

    @property
    def label(self) -> str:
        return f"journey/{self.journey.name}"


@dataclass(frozen=True)
class TemplateSpec:
    """One Template document of a file: where it is (for messages) and the template."""

    where: str
    template: pb.Template

    @property
    def label(self) -> str:
        return f"template/{self.template.name}"


@dataclass(frozen=True)
class JourneyDocuments:
    """A file's journeys and templates: applied in one request, all or none."""

    journeys: list[JourneySpec] = field(default_factory=list)
    templates: list[TemplateSpec] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.journeys or self.templates)


# --- reading YAML --------------------------------------------------------------------------------


def is_journey_document(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") in KINDS


def parse_journey_documents(documents: list[Any], where: str) -> JourneyDocuments:
    """The file's Journey and Template documents in the file's order, each named `where (document
    N)` when the file has several; a name given twice (per kind) is refused."""
    parsed = JourneyDocuments()
    for number, document in enumerate(documents, start=1):
        if not is_journey_document(document):
            continue
        at = where if len(documents) == 1 else f"{where} (document {number})"
        if document["kind"] == "Journey":
            parsed.journeys.append(JourneySpec(at, journey_from_document(document, at)))
        else:
            parsed.templates.append(TemplateSpec(at, template_from_document(document, at)))
    for kind, named in (
        ("journey", [(s.where, s.journey.name) for s in parsed.journeys]),
        ("template", [(s.where, s.template.name) for s in parsed.templates]),
    ):
        seen: dict[str, str] = {}
        for at, name in named:
            if name in seen:
                raise CliError(f"{at}: {kind} name {name!r} is also used by {seen[name]}")
            seen[name] = at
    return parsed


def _name(document: dict[str, Any], at: YamlPath) -> str:
    name = text_at(document.get("name"), at.key("name"), required=True)
    if not NAME.fullmatch(name):
        raise at.key("name").error(
            f"must be lower case letters, digits and _ starting with a letter, at most 63 (got {shown(name)})"
        )
    return name


def journey_from_document(document: Any, where: str) -> pb.Journey:
    at = YamlPath(where)
    if not isinstance(document, dict):
        raise at.error("must be a mapping with kind: Journey")
    name = _name(document, at)
    at = YamlPath(f"{where} ({name})")
    fields = checked_mapping(document, at, JOURNEY_KEYS, "a Journey")
    journey = pb.Journey(
        name=name,
        description=text_at(fields.get("description"), at.key("description")),
        time_zone=text_at(fields.get("time_zone"), at.key("time_zone")),
        start=text_at(fields.get("start"), at.key("start")),
    )
    if fields.get("entry") is None:
        raise at.key("entry").error("is required (event, segment, schedule or api)")
    journey.entry.CopyFrom(_entry(fields["entry"], at.key("entry")))
    here = at.key("steps")
    journey.steps.extend(
        _step(item, here.index(i)) for i, item in enumerate(_list(fields.get("steps"), here, required=True))
    )
    here = at.key("exit_rules")
    journey.exit_rules.extend(
        _exit_rule(item, here.index(i)) for i, item in enumerate(_list(fields.get("exit_rules"), here))
    )
    here = at.key("goals")
    journey.goals.extend(
        _goal(item, here.index(i)) for i, item in enumerate(_list(fields.get("goals"), here))
    )
    return journey


def template_from_document(document: Any, where: str) -> pb.Template:
    at = YamlPath(where)
    if not isinstance(document, dict):
        raise at.error("must be a mapping with kind: Template")
    name = _name(document, at)
    at = YamlPath(f"{where} ({name})")
    fields = checked_mapping(document, at, TEMPLATE_KEYS, "a Template")
    if fields.get("channel") is None:
        raise at.key("channel").error(f"is required ({', '.join(CHANNELS)})")
    return pb.Template(
        name=name,
        channel=_choice(fields["channel"], CHANNELS, "channel_", at.key("channel")),
        subject=_body(fields.get("subject"), at.key("subject")),
        text=_body(fields.get("text"), at.key("text")),
        html=_body(fields.get("html"), at.key("html")),
    )


def _list(value: Any, at: YamlPath, *, required: bool = False) -> list[Any]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value:
        raise at.error(f"must be a non-empty list (got {shown(value)})")
    return value


def _body(value: Any, at: YamlPath) -> str:
    """A template's text as written: a block's indentation and final newline are the author's."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise at.error(f"must be text (got {shown(value)})")
    return value


def _flag(value: Any, at: YamlPath) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise at.error(f"must be true or false (got {shown(value)})")
    return value


def _choice(value: Any, choices: Mapping[str, Choice], proto_prefix: str, at: YamlPath) -> Choice:
    """One of `choices` by its short name (`after_exit`), or as the proto spells it (`REENTRY_AFTER_EXIT`)."""
    key = snake(text_at(value, at)).removeprefix(proto_prefix)
    if key not in choices:
        raise at.error(f"must be one of {', '.join(choices)} (got {shown(value)})")
    return choices[key]


def _timestamp(value: Any, at: YamlPath) -> timestamp_pb2.Timestamp:
    """A moment with its offset: YAML's own timestamp (2026-12-24T09:00:00+08:00) or ISO 8601 text."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    if not isinstance(moment, datetime):
        raise at.error(f"must be a time like 2026-12-24T09:00:00+08:00 (got {shown(value)})")
    if moment.tzinfo is None:
        raise at.error(f"needs its offset from UTC, e.g. Z or +08:00 (got {shown(value)})")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def json_value_at(value: Any, at: YamlPath) -> struct_pb2.Value:
    """Any JSON value (null, boolean, number, text, list, mapping) as a google.protobuf.Value."""
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise at.error(f"must be a finite number (got {shown(value)})")
        return struct_pb2.Value(number_value=float(value))
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    if isinstance(value, list):
        items = [json_value_at(item, at.index(i)) for i, item in enumerate(value)]
        return struct_pb2.Value(list_value=struct_pb2.ListValue(values=items))
    if isinstance(value, dict):
        mapping = struct_pb2.Struct()
        for key, item in value.items():
            mapping.fields[str(key)].CopyFrom(json_value_at(item, at.key(str(key))))
        return struct_pb2.Value(struct_value=mapping)
    if isinstance(value, date):
        raise at.error(f"must be JSON; write a date or time in quotes (got {shown(value)})")
    raise at.error(
        f"must be JSON: null, true/false, a number, text, a list or a mapping (got {shown(value)})"
    )


def _entry(value: Any, at: YamlPath) -> pb.Entry:
    """Exactly one trigger: `event` (+ `entity_key`), `segment` (+ `on_exit`), `schedule` or
    `api: true`; beside it `reentry` and `cooldown`."""
    fields = checked_mapping(value, at, ENTRY_KEYS, ", ".join(ENTRY_KEYS))
    triggers = [key for key in TRIGGERS if key in fields]
    if len(triggers) != 1:
        raise at.error(
            f"needs exactly one trigger of {', '.join(TRIGGERS)} (got {', '.join(triggers) or 'none'})"
        )
    trigger = triggers[0]
    for key, owner in (("entity_key", "event"), ("on_exit", "segment")):
        if key in fields and trigger != owner:
            raise at.key(key).error(f"belongs to the {owner} trigger, not to {trigger}")
    entry = pb.Entry()
    if trigger == "event":
        entry.event.event.CopyFrom(parse_event_filter(fields["event"], at.key("event")))
        entry.event.entity_key = text_at(fields.get("entity_key"), at.key("entity_key"))
    elif trigger == "segment":
        entry.segment.segment = text_at(fields["segment"], at.key("segment"), required=True)
        entry.segment.on_exit = _flag(fields.get("on_exit"), at.key("on_exit"))
    elif trigger == "schedule":
        entry.schedule.CopyFrom(_schedule(fields["schedule"], at.key("schedule")))
    else:
        if fields["api"] is not True:
            raise at.key("api").error(f"is written `api: true` (got {shown(fields['api'])})")
        entry.api.SetInParent()
    if fields.get("reentry") is not None:
        entry.reentry = _choice(fields["reentry"], REENTRIES, "reentry_", at.key("reentry"))
    if fields.get("cooldown") is not None:
        entry.cooldown.CopyFrom(parse_duration(fields["cooldown"], at.key("cooldown")))
    return entry


def _schedule(value: Any, at: YamlPath) -> pb.ScheduleTrigger:
    fields = checked_mapping(value, at, SCHEDULE_KEYS, ", ".join(SCHEDULE_KEYS))
    schedule = pb.ScheduleTrigger(
        cron=text_at(fields.get("cron"), at.key("cron")),
        time_zone=text_at(fields.get("time_zone"), at.key("time_zone")),
        segment=text_at(fields.get("segment"), at.key("segment")),
    )
    if fields.get("once_at") is not None:
        schedule.once_at.CopyFrom(_timestamp(fields["once_at"], at.key("once_at")))
    return schedule


def _step(value: Any, at: YamlPath) -> pb.Step:
    """`name`, exactly one kind, and `next` beside a wait, send or update_trait."""
    fields = checked_mapping(value, at, STEP_KEYS, "name, a step kind and next")
    step = pb.Step(name=text_at(fields.get("name"), at.key("name"), required=True))
    kinds = [key for key in STEP_KINDS if key in fields]
    if len(kinds) != 1:
        raise at.error(f"needs exactly one of {', '.join(STEP_KINDS)} (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    here = at.key(kind)
    if "next" in fields and kind not in KINDS_WITH_NEXT:
        raise at.key("next").error(f"is not for {kind} steps (they lead on through their own fields)")
    next_step = text_at(fields.get("next"), at.key("next"))
    if kind == "wait":
        step.wait.CopyFrom(_wait(fields["wait"], here))
        step.wait.next = next_step
    elif kind == "wait_for_event":
        step.wait_for_event.CopyFrom(_wait_for_event(fields["wait_for_event"], here))
    elif kind == "branch":
        step.branch.CopyFrom(_branch(fields["branch"], here))
    elif kind == "split":
        step.split.CopyFrom(_split(fields["split"], here))
    elif kind == "send":
        step.send.CopyFrom(_send(fields["send"], here))
        step.send.next = next_step
    elif kind == "update_trait":
        step.update_trait.CopyFrom(_update_trait(fields["update_trait"], here))
        step.update_trait.next = next_step
    else:
        step.exit.CopyFrom(_exit(fields["exit"], here))
    return step


def _wait(value: Any, at: YamlPath) -> pb.Wait:
    """A duration (`wait: 2h`) or the next local time of day (`wait: {until: "09:00"}`)."""
    if not isinstance(value, dict):
        return pb.Wait(duration=parse_duration(value, at))
    fields = checked_mapping(value, at, ("until",), "until")
    until = fields.get("until")
    if not isinstance(until, str) or not LOCAL_TIME.fullmatch(until.strip()):
        # YAML reads an unquoted 9:30 as the number 570: ask for quotes.
        raise at.key("until").error(
            f'must be a 24-hour time of day in quotes, e.g. "09:00" (got {shown(until)})'
        )
    return pb.Wait(local_time=until.strip())


def _wait_for_event(value: Any, at: YamlPath) -> pb.WaitForEvent:
    keys = ("event", "timeout", "on_event", "on_timeout")
    fields = checked_mapping(value, at, keys, ", ".join(keys))
    for key in ("event", "timeout"):
        if fields.get(key) is None:
            raise at.key(key).error("is required")
    return pb.WaitForEvent(
        event=parse_event_filter(fields["event"], at.key("event")),
        timeout=parse_duration(fields["timeout"], at.key("timeout")),
        on_event=text_at(fields.get("on_event"), at.key("on_event")),
        on_timeout=text_at(fields.get("on_timeout"), at.key("on_timeout")),
    )


def _branch(value: Any, at: YamlPath) -> pb.Branch:
    fields = checked_mapping(value, at, ("arms", "otherwise"), "arms, otherwise")
    branch = pb.Branch(otherwise=text_at(fields.get("otherwise"), at.key("otherwise")))
    here = at.key("arms")
    for i, arm in enumerate(_list(fields.get("arms"), here, required=True)):
        arm_fields = checked_mapping(arm, here.index(i), ("when", "next"), "when, next")
        if arm_fields.get("when") is None:
            raise here.index(i).key("when").error("is required")
        branch.arms.add(
            when=parse_journey_condition(arm_fields["when"], here.index(i).key("when")),
            next=text_at(arm_fields.get("next"), here.index(i).key("next")),
        )
    return branch


def _split(value: Any, at: YamlPath) -> pb.Split:
    fields = checked_mapping(value, at, ("arms",), "arms")
    split = pb.Split()
    here = at.key("arms")
    keys = ("name", "percent", "next", "control")
    for i, arm in enumerate(_list(fields.get("arms"), here, required=True)):
        arm_at = here.index(i)
        arm_fields = checked_mapping(arm, arm_at, keys, ", ".join(keys))
        split.arms.add(
            name=text_at(arm_fields.get("name"), arm_at.key("name"), required=True),
            percent=whole_number_at(arm_fields.get("percent"), arm_at.key("percent"), 0, 100),
            next=text_at(arm_fields.get("next"), arm_at.key("next")),
            control=_flag(arm_fields.get("control"), arm_at.key("control")),
        )
    return split


def _send(value: Any, at: YamlPath) -> pb.Send:
    keys = ("channel", "template", "purpose")
    fields = checked_mapping(value, at, keys, ", ".join(keys))
    if fields.get("channel") is None:
        raise at.key("channel").error(f"is required ({', '.join(CHANNELS)})")
    return pb.Send(
        channel=_choice(fields["channel"], CHANNELS, "channel_", at.key("channel")),
        template=text_at(fields.get("template"), at.key("template"), required=True),
        purpose=text_at(fields.get("purpose"), at.key("purpose"), required=True),
    )


def _update_trait(value: Any, at: YamlPath) -> pb.UpdateTrait:
    fields = checked_mapping(value, at, ("trait", "value"), "trait, value")
    if "value" not in fields:
        raise at.key("value").error("is required (null clears the trait)")
    return pb.UpdateTrait(
        trait=text_at(fields.get("trait"), at.key("trait"), required=True),
        value=json_value_at(fields["value"], at.key("value")),
    )


def _exit(value: Any, at: YamlPath) -> pb.Exit:
    """`exit: {reason: …}`, or `exit: {}` (or nothing) for "completed"."""
    if value is None:
        return pb.Exit()
    fields = checked_mapping(value, at, ("reason",), "reason")
    return pb.Exit(reason=text_at(fields.get("reason"), at.key("reason")))


def _exit_rule(value: Any, at: YamlPath) -> pb.ExitRule:
    fields = checked_mapping(value, at, ("event", "reason"), "event, reason")
    if fields.get("event") is None:
        raise at.key("event").error("is required")
    return pb.ExitRule(
        event=parse_event_filter(fields["event"], at.key("event")),
        reason=text_at(fields.get("reason"), at.key("reason")),
    )


def _goal(value: Any, at: YamlPath) -> pb.Goal:
    keys = ("name", "event", "window", "revenue_property", "exit_on_reach")
    fields = checked_mapping(value, at, keys, ", ".join(keys))
    if fields.get("event") is None:
        raise at.key("event").error("is required")
    goal = pb.Goal(
        name=text_at(fields.get("name"), at.key("name"), required=True),
        event=parse_event_filter(fields["event"], at.key("event")),
        revenue_property=text_at(fields.get("revenue_property"), at.key("revenue_property")),
        exit_on_reach=_flag(fields.get("exit_on_reach"), at.key("exit_on_reach")),
    )
    if fields.get("window") is not None:
        goal.conversion_window.CopyFrom(parse_duration(fields["window"], at.key("window")))
    return goal


def parse_journey_condition(value: Any, at: YamlPath) -> pb.Condition:
    """A condition as segments' YAML writes one (`{trait: plan, eq: gold}`, `all_of`, `not`, …),
    over the tests a journey has: also `entry_property` (the entry event's), no computed traits."""
    if not isinstance(value, dict):
        raise at.error(f"must be a condition: a mapping with one of {', '.join(CONDITION_TESTS)}")
    fields = {snake(key): item for key, item in value.items()}
    if len(fields) != len(value):
        raise at.error("has a key given twice (under different spellings)")
    tests = [key for key in CONDITION_TESTS if key in fields]
    if len(tests) != 1:
        found = ", ".join(tests) if tests else ", ".join(str(key) for key in value) or "nothing"
        raise at.error(f"needs exactly one of {', '.join(CONDITION_TESTS)} (got {found})")
    test = tests[0]
    rest = {key: item for key, item in fields.items() if key != test}
    here = at.key(test)
    if test in ("all_of", "any_of", "not", "in_segment") and rest:
        raise at.key(sorted(rest)[0]).error("cannot stand beside it (a condition tests one thing)")
    if test in ("all_of", "any_of"):
        items = _list(fields[test], here, required=True)
        group = pb.Conditions(
            conditions=[parse_journey_condition(c, here.index(i)) for i, c in enumerate(items)]
        )
        return pb.Condition(all_of=group) if test == "all_of" else pb.Condition(any_of=group)
    if test == "not":
        return pb.Condition(negated=parse_journey_condition(fields["not"], here))
    name = text_at(fields[test], here, required=True)
    if test == "in_segment":
        return pb.Condition(in_segment=name)
    if test == "tag":
        tag = pb.TagTest(tag=name)
        if rest:
            tag.predicate.CopyFrom(parse_predicate(rest, at))
        return pb.Condition(tag=tag)
    if not rest:
        raise at.error(f"needs a test beside {test}, e.g. `gte: 100` or `exists: true`")
    if test == "trait":
        return pb.Condition(trait=pb.TraitTest(trait=name, predicate=parse_predicate(rest, at)))
    return pb.Condition(entry_property=pb.PropertyTest(path=name, predicate=parse_predicate(rest, at)))


# --- server field paths --------------------------------------------------------------------------

_SERVER_PATH = (
    (re.compile(r"^entry\.trigger$"), "entry"),
    (re.compile(r"^entry\.event\.event\b"), "entry.event"),
    (re.compile(r"^entry\.event\.entity_key\b"), "entry.entity_key"),
    (re.compile(r"^entry\.segment\.segment\b"), "entry.segment"),
    (re.compile(r"^entry\.segment\.on_exit\b"), "entry.on_exit"),
    (re.compile(r"^(steps\[\d+\])\.(wait|send|update_trait)\.next\b"), r"\1.next"),
    (re.compile(r"^(steps\[\d+\])\.wait\.duration\b"), r"\1.wait"),
    (re.compile(r"^(steps\[\d+\])\.wait\.local_time\b"), r"\1.wait.until"),
    (re.compile(r"^(goals\[\d+\])\.conversion_window\b"), r"\1.window"),
    (re.compile(r"\.conditions\["), "["),
    (re.compile(r"\.negated\b"), ".not"),
    (re.compile(r"\.trait\.trait\b"), ".trait"),
    (re.compile(r"\.tag\.tag\b"), ".tag"),
    (re.compile(r"\.entry_property\.path\b"), ".entry_property"),
    (re.compile(r"\.(trait|tag|entry_property)\.predicate\b"), ""),
    (re.compile(r"\.where\[(\d+)\]\.(path|predicate)"), r".where[\1]"),
)


def yaml_path(field: str) -> str:
    """A field path of the service's violations inside one journey or template
    (`steps[3].branch.arms[0].when.negated.trait.predicate.value`) as its YAML document writes it
    (`steps[3].branch.arms[0].when.not.value`)."""
    path = field
    for pattern, replacement in _SERVER_PATH:
        path = pattern.sub(replacement, path)
    return path


# --- back to YAML --------------------------------------------------------------------------------


def journey_document(journey: pb.Journey) -> dict[str, Any]:
    """The YAML document of a stored journey (what `onefold apply -f` reads back to it); the
    server's version facts are left to the caller (a comment)."""
    document: dict[str, Any] = {"kind": "Journey", "name": journey.name}
    if journey.description:
        document["description"] = journey.description
    if journey.time_zone:
        document["time_zone"] = journey.time_zone
    document["entry"] = _entry_document(journey.entry)
    if journey.start:
        document["start"] = journey.start
    document["steps"] = [_step_document(step) for step in journey.steps]
    if journey.exit_rules:
        document["exit_rules"] = [
            {"event": event_filter_document(rule.event), **({"reason": rule.reason} if rule.reason else {})}
            for rule in journey.exit_rules
        ]
    if journey.goals:
        document["goals"] = [_goal_document(goal) for goal in journey.goals]
    return document


def template_document(template: pb.Template) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": "Template",
        "name": template.name,
        "channel": CHANNEL_NAMES.get(template.channel, str(template.channel)),
    }
    for key in ("subject", "text", "html"):
        if getattr(template, key):
            document[key] = getattr(template, key)
    return document


def _entry_document(entry: pb.Entry) -> dict[str, Any]:
    document: dict[str, Any] = {}
    trigger = entry.WhichOneof("trigger")
    if trigger == "event":
        document["event"] = event_filter_document(entry.event.event)
        if entry.event.entity_key:
            document["entity_key"] = entry.event.entity_key
    elif trigger == "segment":
        document["segment"] = entry.segment.segment
        if entry.segment.on_exit:
            document["on_exit"] = True
    elif trigger == "schedule":
        schedule: dict[str, Any] = {}
        for key in ("cron", "time_zone"):
            if getattr(entry.schedule, key):
                schedule[key] = getattr(entry.schedule, key)
        if entry.schedule.HasField("once_at"):
            schedule["once_at"] = entry.schedule.once_at.ToJsonString()
        if entry.schedule.segment:
            schedule["segment"] = entry.schedule.segment
        document["schedule"] = schedule
    elif trigger == "api":
        document["api"] = True
    if entry.reentry in REENTRY_NAMES:
        document["reentry"] = REENTRY_NAMES[entry.reentry]
    if entry.HasField("cooldown"):
        document["cooldown"] = format_duration(entry.cooldown)
    return document


def _step_document(step: pb.Step) -> dict[str, Any]:
    document: dict[str, Any] = {"name": step.name}
    kind = step.WhichOneof("kind")
    if kind == "wait":
        if step.wait.WhichOneof("until") == "local_time":
            document["wait"] = {"until": step.wait.local_time}
        else:
            document["wait"] = format_duration(step.wait.duration)
    elif kind == "wait_for_event":
        waiting = step.wait_for_event
        document["wait_for_event"] = {
            "event": event_filter_document(waiting.event),
            "timeout": format_duration(waiting.timeout),
            **({"on_event": waiting.on_event} if waiting.on_event else {}),
            **({"on_timeout": waiting.on_timeout} if waiting.on_timeout else {}),
        }
    elif kind == "branch":
        branch: dict[str, Any] = {
            "arms": [
                {"when": journey_condition_document(arm.when), "next": arm.next} for arm in step.branch.arms
            ]
        }
        if step.branch.otherwise:
            branch["otherwise"] = step.branch.otherwise
        document["branch"] = branch
    elif kind == "split":
        document["split"] = {"arms": [_split_arm_document(arm) for arm in step.split.arms]}
    elif kind == "send":
        document["send"] = {
            "channel": CHANNEL_NAMES.get(step.send.channel, str(step.send.channel)),
            "template": step.send.template,
            "purpose": step.send.purpose,
        }
    elif kind == "update_trait":
        document["update_trait"] = {
            "trait": step.update_trait.trait,
            "value": MessageToDict(step.update_trait.value),
        }
    elif kind == "exit":
        document["exit"] = {"reason": step.exit.reason} if step.exit.reason else {}
    if kind in KINDS_WITH_NEXT and getattr(step, kind).next:
        document["next"] = getattr(step, kind).next
    return document


def _split_arm_document(arm: pb.Split.Arm) -> dict[str, Any]:
    document: dict[str, Any] = {"name": arm.name, "percent": arm.percent}
    if arm.next:
        document["next"] = arm.next
    if arm.control:
        document["control"] = True
    return document


def _goal_document(goal: pb.Goal) -> dict[str, Any]:
    document: dict[str, Any] = {"name": goal.name, "event": event_filter_document(goal.event)}
    if goal.HasField("conversion_window"):
        document["window"] = format_duration(goal.conversion_window)
    if goal.revenue_property:
        document["revenue_property"] = goal.revenue_property
    if goal.exit_on_reach:
        document["exit_on_reach"] = True
    return document


def journey_condition_document(condition: pb.Condition) -> dict[str, Any]:
    test = condition.WhichOneof("test")
    if test in ("all_of", "any_of"):
        return {test: [journey_condition_document(c) for c in getattr(condition, test).conditions]}
    if test == "negated":
        return {"not": journey_condition_document(condition.negated)}
    if test == "trait":
        return {"trait": condition.trait.trait, **predicate_document(condition.trait.predicate)}
    if test == "tag":
        tag: dict[str, Any] = {"tag": condition.tag.tag}
        if condition.tag.HasField("predicate"):
            tag.update(predicate_document(condition.tag.predicate))
        return tag
    if test == "in_segment":
        return {"in_segment": condition.in_segment}
    if test == "entry_property":
        test_of = condition.entry_property
        return {"entry_property": test_of.path, **predicate_document(test_of.predicate)}
    return {}
