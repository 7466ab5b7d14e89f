"""Segments definitions as YAML (docs/segments.md): `kind: Segment | Tag | ComputedTrait | Lifecycle |
Rfm` documents to `onefold.segments.v1.Definition` and back.

One document per definition, its kind in `kind` and the kind's fields beside the common ones (name,
description, evaluation, schedule, time_zone):

    kind: Segment
    name: big_spenders
    condition:
      all_of:
        - computed_trait: spend_90d
          gte: 1000
        - not: {tag: lifecycle_stage, in: [lost]}

A mistake is one sentence naming the document and the YAML path (`condition.all_of[1].not.in`).
Keys may be written snake_case or camelCase (`min_count`, `minCount`). The conversion back
(`definition_document`) writes the same form, so `onefold segments get NAME` reads as applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from onefold.cli.output import CliError
from onefold.contracts.segments.v1 import segments_pb2 as pb

KINDS = {
    "Segment": "segment",
    "Tag": "tag",
    "ComputedTrait": "computed_trait",
    "Lifecycle": "lifecycle",
    "Rfm": "rfm",
}
DOCUMENT_KINDS = {field: kind for kind, field in KINDS.items()}
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
COMMON_KEYS = ("kind", "api_version", "name", "description", "evaluation", "schedule", "time_zone")
KIND_KEYS = {
    "segment": ("condition",),
    "tag": ("rules", "copy_trait"),
    "computed_trait": ("event", "aggregation", "property", "window"),
    "lifecycle": (
        "purchases",
        "churning_after",
        "dormant_after",
        "lost_after",
        "relative",
        "reactivated_for",
    ),
    "rfm": ("purchases", "lookback", "cut_offs", "cells"),
}
EVALUATIONS = {"realtime": pb.EVALUATION_REALTIME, "batch": pb.EVALUATION_BATCH}
OPERATORS = {
    "eq": pb.OPERATOR_EQ,
    "ne": pb.OPERATOR_NE,
    "gt": pb.OPERATOR_GT,
    "gte": pb.OPERATOR_GE,
    "lt": pb.OPERATOR_LT,
    "lte": pb.OPERATOR_LE,
    "in": pb.OPERATOR_IN,
    "not_in": pb.OPERATOR_NOT_IN,
    "contains": pb.OPERATOR_CONTAINS,
    "starts_with": pb.OPERATOR_STARTS_WITH,
    "exists": pb.OPERATOR_EXISTS,
    "not_exists": pb.OPERATOR_NOT_EXISTS,
}
# The proto's own spellings are accepted too.
OPERATOR_ALIASES = {
    "ge": "gte",
    "le": "lte",
    "==": "eq",
    "!=": "ne",
    ">": "gt",
    ">=": "gte",
    "<": "lt",
    "<=": "lte",
}
OPERATOR_NAMES = {value: name for name, value in OPERATORS.items()}
AGGREGATIONS = {
    name.removeprefix("AGGREGATION_").lower(): value
    for name, value in pb.Aggregation.items()
    if value != pb.AGGREGATION_UNSPECIFIED
}
AGGREGATION_NAMES = {value: name for name, value in AGGREGATIONS.items()}
EVENT_TYPES = ("track", "page", "screen", "identify")
LEAVES = ("trait", "computed_trait", "tag", "in_segment", "performed", "not_performed_after")
GROUPS = ("all_of", "any_of", "not")
PREDICATE_KEYS = ("op", "value", "values")
DURATION_UNITS = {"w": 7 * 86_400, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+)(ms|w|d|h|m|s)")
NANOS = 1_000_000_000


@dataclass(frozen=True)
class DefinitionSpec:
    """One definition document of a file: where it is (for messages) and the definition."""

    where: str
    definition: pb.Definition

    def references(self) -> set[str]:
        """The other definitions it reads (a preview of one needs those stored first)."""
        return set(_references(self.definition))


# --- reading YAML --------------------------------------------------------------------------------


def snake(key: Any) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", str(key)).lower()


class YamlPath:
    """Where a value is, for one sentence: the document, then the YAML path inside it."""

    def __init__(self, document: str, parts: tuple[str, ...] = ()) -> None:
        self.document = document
        self.parts = parts

    def key(self, name: str) -> YamlPath:
        return YamlPath(self.document, (*self.parts, f".{name}" if self.parts else name))

    def index(self, number: int) -> YamlPath:
        return YamlPath(self.document, (*self.parts, f"[{number}]"))

    def text(self) -> str:
        return "".join(self.parts)

    def error(self, message: str) -> CliError:
        path = self.text()
        return CliError(f"{self.document}: {path} {message}" if path else f"{self.document}: {message}")


def checked_mapping(value: Any, at: YamlPath, allowed: Iterable[str], what: str) -> dict[str, Any]:
    names = tuple(allowed)
    if not isinstance(value, dict):
        raise at.error(f"must be a mapping of {what} (got {shown(value)})")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = snake(key)
        if name not in names:
            raise at.key(str(key)).error(f"is not a known key here (expected one of: {', '.join(names)})")
        if name in out:
            raise at.key(str(key)).error("is given twice (under different spellings)")
        out[name] = item
    return out


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def text_at(value: Any, at: YamlPath, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise at.error("is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise at.error(f"must be text (got {shown(value)})")
    text = str(value).strip()
    if required and not text:
        raise at.error("is required")
    return text


def whole_number_at(value: Any, at: YamlPath, low: int = 0, high: int = 2**32 - 1) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise at.error(f"must be a whole number from {low} to {high} (got {shown(value)})")
    return value


def number_at(value: Any, at: YamlPath) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise at.error(f"must be a number (got {shown(value)})")
    return float(value)


def parse_duration(value: Any, at: YamlPath) -> duration_pb2.Duration:
    """ "30d", "24h", "15m", "90s", "1d12h", "500ms" (w = 7 days) to a Duration above zero."""
    text = value.strip().lower().replace(" ", "") if isinstance(value, str) else ""
    if not text or _DURATION.sub("", text) or not _DURATION.search(text):
        raise at.error(f"must be a duration like 30d, 24h or 15m (got {shown(value)})")
    nanos = 0
    for amount, unit in _DURATION.findall(text):
        nanos += int(amount) * (1_000_000 if unit == "ms" else DURATION_UNITS[unit] * NANOS)
    if nanos <= 0:
        raise at.error(f"must be longer than zero (got {shown(value)})")
    return duration_pb2.Duration(seconds=nanos // NANOS, nanos=nanos % NANOS)


def format_duration(duration: duration_pb2.Duration) -> str:
    """A Duration as parse_duration reads it, in its largest whole unit: 30d, 24h, 90m, 500ms."""
    nanos = duration.seconds * NANOS + duration.nanos
    for unit in ("w", "d", "h", "m", "s"):
        size = DURATION_UNITS[unit] * NANOS
        if nanos % size == 0:
            return f"{nanos // size}{unit}"
    return f"{nanos // 1_000_000}ms"


def scalar_at(value: Any, at: YamlPath) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=number_at(value, at))
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    raise at.error(f"must be a string, number or boolean (got {shown(value)})")


def _operator(name: Any, at: YamlPath) -> pb.Operator.ValueType:
    key = snake(name).strip().removeprefix("operator_")
    key = OPERATOR_ALIASES.get(key, key)
    if key not in OPERATORS:
        raise at.error(f"must be one of {', '.join(OPERATORS)} (got {shown(name)})")
    return OPERATORS[key]


def parse_predicate(fields: dict[str, Any], at: YamlPath) -> pb.Predicate:
    """A test, written `op: gte, value: 100` or short, as one operator key: `gte: 100`,
    `in: [a, b]`, `exists: true`."""
    if "op" in fields or "value" in fields or "values" in fields:
        extra = sorted(set(fields) - set(PREDICATE_KEYS))
        if extra:
            raise at.key(extra[0]).error("cannot stand beside op/value/values (write the test one way)")
        if "op" not in fields:
            raise at.key("op").error(f"is required beside value (one of: {', '.join(OPERATORS)})")
        op = _operator(fields["op"], at.key("op"))
        predicate = pb.Predicate(op=op)
        if "value" in fields:
            predicate.value.CopyFrom(scalar_at(fields["value"], at.key("value")))
        if "values" in fields:
            predicate.values.extend(_list_values(fields["values"], at.key("values")))
        return predicate
    if len(fields) != 1:
        names = ", ".join(sorted(fields)) or "nothing"
        raise at.error(f"needs one test such as `gte: 100` or `op: gte, value: 100` (got {names})")
    ((key, operand),) = fields.items()
    op = _operator(key, at.key(key))
    predicate = pb.Predicate(op=op)
    if op in (pb.OPERATOR_EXISTS, pb.OPERATOR_NOT_EXISTS):
        if operand is not True:
            raise at.key(key).error(f"is written `{key}: true` (got {shown(operand)})")
    elif op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        predicate.values.extend(_list_values(operand, at.key(key)))
    else:
        predicate.value.CopyFrom(scalar_at(operand, at.key(key)))
    return predicate


def _list_values(value: Any, at: YamlPath) -> list[struct_pb2.Value]:
    if not isinstance(value, list) or not value:
        raise at.error(f"must be a non-empty list (got {shown(value)})")
    return [scalar_at(item, at.index(i)) for i, item in enumerate(value)]


def _property_test(value: Any, at: YamlPath) -> pb.Predicate:
    """A `where` entry's test: a plain value means equal to it."""
    if isinstance(value, dict):
        return parse_predicate({snake(k): v for k, v in value.items()}, at)
    return pb.Predicate(op=pb.OPERATOR_EQ, value=scalar_at(value, at))


def _where(value: Any, at: YamlPath) -> list[pb.EventFilter.PropertyFilter]:
    if value is None:
        return []
    if not isinstance(value, dict) or not value:
        raise at.error(f"must map property paths to tests, e.g. {{total: {{gte: 50}}}} (got {shown(value)})")
    return [
        pb.EventFilter.PropertyFilter(path=str(path), predicate=_property_test(test, at.key(str(path))))
        for path, test in value.items()
    ]


def _event_type(value: Any, at: YamlPath) -> str:
    kind = text_at(value, at).lower()
    if kind and kind not in EVENT_TYPES:
        raise at.error(f"must be one of {', '.join(EVENT_TYPES)} (got {shown(value)})")
    return "" if kind == "track" else kind


def parse_event_filter(value: Any, at: YamlPath) -> pb.EventFilter:
    """An event: its name alone ("Order Completed"), or {type, event, where}."""
    if isinstance(value, str):
        return pb.EventFilter(event=text_at(value, at, required=True))
    fields = checked_mapping(value, at, ("type", "event", "where"), "type, event, where")
    return pb.EventFilter(
        type=_event_type(fields.get("type"), at.key("type")),
        event=text_at(fields.get("event"), at.key("event")),
        where=_where(fields.get("where"), at.key("where")),
    )


# --- conditions ----------------------------------------------------------------------------------


def parse_condition(value: Any, at: YamlPath) -> pb.Condition:
    if not isinstance(value, dict):
        raise at.error(f"must be a condition: a mapping with one of {', '.join((*GROUPS, *LEAVES))}")
    fields = {snake(k): v for k, v in value.items()}
    if len(fields) != len(value):
        raise at.error("has a key given twice (under different spellings)")
    tests = [k for k in (*GROUPS, *LEAVES) if k in fields]
    if len(tests) != 1:
        found = ", ".join(tests) if tests else ", ".join(str(k) for k in value) or "nothing"
        raise at.error(f"needs exactly one of {', '.join((*GROUPS, *LEAVES))} (got {found})")
    test = tests[0]
    rest = {k: v for k, v in fields.items() if k != test}
    here = at.key(test)
    if test in ("all_of", "any_of"):
        _no_more(rest, at)
        items = fields[test]
        if not isinstance(items, list) or not items:
            raise here.error("must be a non-empty list of conditions")
        group = pb.Conditions(conditions=[parse_condition(c, here.index(i)) for i, c in enumerate(items)])
        return pb.Condition(all_of=group) if test == "all_of" else pb.Condition(any_of=group)
    if test == "not":
        _no_more(rest, at)
        return pb.Condition(negated=parse_condition(fields["not"], here))
    if test == "in_segment":
        _no_more(rest, at)
        return pb.Condition(in_segment=text_at(fields[test], here, required=True))
    if test == "performed":
        _no_more(rest, at)
        return pb.Condition(performed=_performed(fields[test], here))
    if test == "not_performed_after":
        _no_more(rest, at)
        return pb.Condition(not_performed_after=_not_performed_after(fields[test], here))
    name = text_at(fields[test], here, required=True)
    if test == "tag":
        tag = pb.TagTest(tag=name)
        if rest:
            tag.predicate.CopyFrom(parse_predicate(rest, at))
        return pb.Condition(tag=tag)
    if not rest:
        raise at.error(f"needs a test beside {test}, e.g. `gte: 100` or `exists: true`")
    if test == "trait":
        return pb.Condition(trait=pb.TraitTest(trait=name, predicate=parse_predicate(rest, at)))
    return pb.Condition(
        computed_trait=pb.ComputedTraitTest(computed_trait=name, predicate=parse_predicate(rest, at))
    )


def _no_more(rest: dict[str, Any], at: YamlPath) -> None:
    if rest:
        raise at.key(sorted(rest)[0]).error("cannot stand beside it (a condition tests one thing)")


def _performed(value: Any, at: YamlPath) -> pb.Performed:
    if isinstance(value, str):
        return pb.Performed(event=pb.EventFilter(event=text_at(value, at, required=True)))
    allowed = ("type", "event", "where", "min_count", "max_count", "within")
    fields = checked_mapping(value, at, allowed, ", ".join(allowed))
    performed = pb.Performed(
        event=pb.EventFilter(
            type=_event_type(fields.get("type"), at.key("type")),
            event=text_at(fields.get("event"), at.key("event")),
            where=_where(fields.get("where"), at.key("where")),
        ),
        min_count=whole_number_at(fields.get("min_count"), at.key("min_count")),
        max_count=whole_number_at(fields.get("max_count"), at.key("max_count")),
    )
    if fields.get("within") is not None:
        performed.within.CopyFrom(parse_duration(fields["within"], at.key("within")))
    return performed


def _not_performed_after(value: Any, at: YamlPath) -> pb.NotPerformedAfter:
    fields = checked_mapping(value, at, ("after", "then_not", "within"), "after, then_not, within")
    for key in ("after", "then_not", "within"):
        if fields.get(key) is None:
            raise at.key(key).error("is required")
    return pb.NotPerformedAfter(
        after=parse_event_filter(fields["after"], at.key("after")),
        then_not=parse_event_filter(fields["then_not"], at.key("then_not")),
        within=parse_duration(fields["within"], at.key("within")),
    )


# --- definitions ---------------------------------------------------------------------------------


def is_definition(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") in KINDS


def definition_from_document(document: Any, where: str) -> pb.Definition:
    at = YamlPath(where)
    if not isinstance(document, dict):
        raise at.error(f"must be a mapping with kind: {' | '.join(KINDS)}")
    kind = KINDS.get(str(document.get("kind")))
    if kind is None:
        raise at.key("kind").error(f"must be one of {', '.join(KINDS)} (got {shown(document.get('kind'))})")
    name = text_at(document.get("name"), at.key("name"), required=True)
    if not NAME.fullmatch(name):
        raise at.key("name").error(
            f"must be lower case letters, digits and _ starting with a letter, at most 63 (got {shown(name)})"
        )
    at = YamlPath(f"{where} ({name})")
    fields = checked_mapping(document, at, (*COMMON_KEYS, *KIND_KEYS[kind]), f"a {document['kind']}")
    definition = pb.Definition(
        name=name,
        description=text_at(fields.get("description"), at.key("description")),
        schedule=text_at(fields.get("schedule"), at.key("schedule")),
        time_zone=text_at(fields.get("time_zone"), at.key("time_zone")),
    )
    if fields.get("evaluation") is not None:
        evaluation = text_at(fields["evaluation"], at.key("evaluation")).lower()
        if evaluation not in EVALUATIONS:
            raise at.key("evaluation").error(f"must be realtime or batch (got {shown(fields['evaluation'])})")
        definition.evaluation = EVALUATIONS[evaluation]
    PARSERS[kind](definition, fields, at)
    return definition


def _segment(definition: pb.Definition, fields: dict[str, Any], at: YamlPath) -> None:
    if fields.get("condition") is None:
        raise at.key("condition").error("is required")
    definition.segment.condition.CopyFrom(parse_condition(fields["condition"], at.key("condition")))


def _tag(definition: pb.Definition, fields: dict[str, Any], at: YamlPath) -> None:
    rules, copy_trait = fields.get("rules"), fields.get("copy_trait")
    if (rules is None) == (copy_trait is None):
        raise at.error("a Tag needs either rules (a value per condition) or copy_trait (a trait's own value)")
    if copy_trait is not None:
        definition.tag.copy_trait = text_at(copy_trait, at.key("copy_trait"), required=True)
        return
    here = at.key("rules")
    if not isinstance(rules, list) or not rules:
        raise here.error("must be a non-empty list of {value, when}")
    for i, rule in enumerate(rules):
        fields_i = checked_mapping(rule, here.index(i), ("value", "when"), "value, when")
        if fields_i.get("when") is None:
            raise here.index(i).key("when").error("is required")
        definition.tag.rules.add(
            value=text_at(fields_i.get("value"), here.index(i).key("value"), required=True),
            when=parse_condition(fields_i["when"], here.index(i).key("when")),
        )


def _computed_trait(definition: pb.Definition, fields: dict[str, Any], at: YamlPath) -> None:
    for key in ("event", "aggregation"):
        if fields.get(key) is None:
            raise at.key(key).error("is required")
    aggregation = snake(fields["aggregation"]).removeprefix("aggregation_")
    if aggregation not in AGGREGATIONS:
        raise at.key("aggregation").error(
            f"must be one of {', '.join(AGGREGATIONS)} (got {shown(fields['aggregation'])})"
        )
    trait = definition.computed_trait
    trait.event.CopyFrom(parse_event_filter(fields["event"], at.key("event")))
    trait.aggregation = AGGREGATIONS[aggregation]
    trait.property = text_at(fields.get("property"), at.key("property"))
    if fields.get("window") is not None:
        trait.window.CopyFrom(parse_duration(fields["window"], at.key("window")))


def _purchases(value: Any, at: YamlPath) -> pb.Purchases:
    fields = checked_mapping(value, at, ("event", "revenue_property"), "event, revenue_property")
    purchases = pb.Purchases(
        revenue_property=text_at(fields.get("revenue_property"), at.key("revenue_property"))
    )
    if fields.get("event") is not None:
        purchases.event.CopyFrom(parse_event_filter(fields["event"], at.key("event")))
    return purchases


def _lifecycle(definition: pb.Definition, fields: dict[str, Any], at: YamlPath) -> None:
    lifecycle = definition.lifecycle
    lifecycle.SetInParent()
    if fields.get("purchases") is not None:
        lifecycle.purchases.CopyFrom(_purchases(fields["purchases"], at.key("purchases")))
    for key in ("churning_after", "dormant_after", "lost_after", "reactivated_for"):
        if fields.get(key) is not None:
            getattr(lifecycle, key).CopyFrom(parse_duration(fields[key], at.key(key)))
    if fields.get("relative") is not None:
        lifecycle.relative = number_at(fields["relative"], at.key("relative"))


def _rfm(definition: pb.Definition, fields: dict[str, Any], at: YamlPath) -> None:
    rfm = definition.rfm
    rfm.SetInParent()
    if fields.get("purchases") is not None:
        rfm.purchases.CopyFrom(_purchases(fields["purchases"], at.key("purchases")))
    if fields.get("lookback") is not None:
        rfm.lookback.CopyFrom(parse_duration(fields["lookback"], at.key("lookback")))
    if fields.get("cut_offs") is not None:
        here = at.key("cut_offs")
        measures = ("recency_days", "frequency", "monetary")
        cut_offs = checked_mapping(fields["cut_offs"], here, measures, ", ".join(measures))
        rfm.cut_offs.SetInParent()
        for measure in measures:
            values = cut_offs.get(measure)
            if not isinstance(values, list) or len(values) != 4:
                raise here.key(measure).error(
                    f"must be a list of 4 ascending boundaries (got {shown(values)})"
                )
            getattr(rfm.cut_offs, measure).extend(
                number_at(v, here.key(measure).index(i)) for i, v in enumerate(values)
            )
    if fields.get("cells") is not None:
        here = at.key("cells")
        if not isinstance(fields["cells"], list) or not fields["cells"]:
            raise here.error("must be a non-empty list of {name, recency, frequency}")
        for i, cell in enumerate(fields["cells"]):
            cell_fields = checked_mapping(
                cell, here.index(i), ("name", "recency", "frequency"), "name, recency, frequency"
            )
            r_low, r_high = _score_range(cell_fields.get("recency"), here.index(i).key("recency"))
            f_low, f_high = _score_range(cell_fields.get("frequency"), here.index(i).key("frequency"))
            rfm.cells.add(
                name=text_at(cell_fields.get("name"), here.index(i).key("name"), required=True),
                recency_min=r_low,
                recency_max=r_high,
                frequency_min=f_low,
                frequency_max=f_high,
            )


def _score_range(value: Any, at: YamlPath) -> tuple[int, int]:
    """A score 1-5 (`5`) or a range of them (`[1, 2]`)."""
    if isinstance(value, list) and len(value) == 2:
        return whole_number_at(value[0], at.index(0), 1, 5), whole_number_at(value[1], at.index(1), 1, 5)
    if isinstance(value, int) and not isinstance(value, bool):
        score = whole_number_at(value, at, 1, 5)
        return score, score
    raise at.error(f"must be a score 1-5 or a range [low, high] (got {shown(value)})")


PARSERS: dict[str, Callable[[pb.Definition, dict[str, Any], YamlPath], None]] = {
    "segment": _segment,
    "tag": _tag,
    "computed_trait": _computed_trait,
    "lifecycle": _lifecycle,
    "rfm": _rfm,
}


def parse_definition_documents(documents: list[Any], where: str) -> list[DefinitionSpec]:
    """The file's definition documents in the file's order, each named `where (document N)` when
    the file has several (the service checks them together, so their order does not matter)."""
    specs = [
        DefinitionSpec(
            where if len(documents) == 1 else f"{where} (document {number})",
            definition_from_document(
                document, where if len(documents) == 1 else f"{where} (document {number})"
            ),
        )
        for number, document in enumerate(documents, start=1)
        if is_definition(document)
    ]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.definition.name in seen:
            raise CliError(
                f"{spec.where}: name {spec.definition.name!r} is also used by {seen[spec.definition.name]}"
            )
        seen[spec.definition.name] = spec.where
    return specs


def _references(definition: pb.Definition) -> Iterable[str]:
    def condition(c: pb.Condition) -> Iterable[str]:
        which = c.WhichOneof("test")
        if which in ("all_of", "any_of"):
            for child in getattr(c, which).conditions:
                yield from condition(child)
        elif which == "negated":
            yield from condition(c.negated)
        elif which == "computed_trait":
            yield c.computed_trait.computed_trait
        elif which == "tag":
            yield c.tag.tag
        elif which == "in_segment":
            yield c.in_segment

    if definition.WhichOneof("kind") == "segment":
        yield from condition(definition.segment.condition)
    elif definition.WhichOneof("kind") == "tag":
        for rule in definition.tag.rules:
            yield from condition(rule.when)


# --- server field paths --------------------------------------------------------------------------

_SERVER_PATH = (
    (re.compile(r"^definition\.(segment|tag|computed_trait|lifecycle|rfm)\."), ""),
    (re.compile(r"^definition\."), ""),
    (re.compile(r"\.conditions\["), "["),
    (re.compile(r"\.negated\b"), ".not"),
    (re.compile(r"\b(trait|computed_trait|tag)\.\1\b"), r"\1"),
    (re.compile(r"\.(trait|computed_trait|tag)\.predicate\b"), ""),
    (re.compile(r"\.where\[(\d+)\]\.(path|predicate)"), r".where[\1]"),
    (re.compile(r"^condition\.predicate\b"), "condition"),
    (re.compile(r"\.performed\.event\.(event|type|where)"), r".performed.\1"),
)


def yaml_path(field: str) -> str:
    """A field path of the service's violations (`definition.segment.condition.all_of.conditions[0]
    .performed.within`) as the YAML document writes it (`condition.all_of[0].performed.within`)."""
    path = field
    for pattern, replacement in _SERVER_PATH:
        path = pattern.sub(replacement, path)
    return path


# --- back to YAML --------------------------------------------------------------------------------


def definition_document(definition: pb.Definition) -> dict[str, Any]:
    """The YAML document of a stored definition (what `onefold apply -f` reads back to it), with
    the server's version facts after it."""
    kind = definition.WhichOneof("kind") or ""
    document: dict[str, Any] = {"kind": DOCUMENT_KINDS.get(kind, kind), "name": definition.name}
    if definition.description:
        document["description"] = definition.description
    if definition.evaluation == pb.EVALUATION_BATCH:
        document["evaluation"] = "batch"
    if definition.schedule:
        document["schedule"] = definition.schedule
    if definition.time_zone:
        document["time_zone"] = definition.time_zone
    if kind == "segment":
        document["condition"] = condition_document(definition.segment.condition)
    elif kind == "tag":
        if definition.tag.copy_trait:
            document["copy_trait"] = definition.tag.copy_trait
        else:
            document["rules"] = [
                {"value": rule.value, "when": condition_document(rule.when)} for rule in definition.tag.rules
            ]
    elif kind == "computed_trait":
        trait = definition.computed_trait
        document["event"] = event_filter_document(trait.event)
        document["aggregation"] = AGGREGATION_NAMES.get(trait.aggregation, str(trait.aggregation))
        if trait.property:
            document["property"] = trait.property
        if trait.HasField("window"):
            document["window"] = format_duration(trait.window)
    elif kind == "lifecycle":
        lifecycle = definition.lifecycle
        if lifecycle.HasField("purchases"):
            document["purchases"] = _purchases_document(lifecycle.purchases)
        for key in ("churning_after", "dormant_after", "lost_after", "reactivated_for"):
            if lifecycle.HasField(key):
                document[key] = format_duration(getattr(lifecycle, key))
        if lifecycle.relative:
            document["relative"] = lifecycle.relative
    elif kind == "rfm":
        rfm = definition.rfm
        if rfm.HasField("purchases"):
            document["purchases"] = _purchases_document(rfm.purchases)
        if rfm.HasField("lookback"):
            document["lookback"] = format_duration(rfm.lookback)
        if rfm.HasField("cut_offs"):
            document["cut_offs"] = {
                measure: [_plain_number(v) for v in getattr(rfm.cut_offs, measure)]
                for measure in ("recency_days", "frequency", "monetary")
            }
        if rfm.cells:
            document["cells"] = [
                {
                    "name": cell.name,
                    "recency": _range_document(cell.recency_min, cell.recency_max),
                    "frequency": _range_document(cell.frequency_min, cell.frequency_max),
                }
                for cell in rfm.cells
            ]
    return document


def _range_document(low: int, high: int) -> int | list[int]:
    return low if low == high else [low, high]


def _plain_number(value: float) -> int | float:
    return int(value) if value == int(value) and abs(value) < 2**53 else value


def plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return _plain_number(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def predicate_document(predicate: pb.Predicate) -> dict[str, Any]:
    """The short form: one operator key."""
    name = OPERATOR_NAMES.get(predicate.op, str(predicate.op))
    if predicate.op in (pb.OPERATOR_EXISTS, pb.OPERATOR_NOT_EXISTS):
        return {name: True}
    if predicate.op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        return {name: [plain_value(v) for v in predicate.values]}
    return {name: plain_value(predicate.value)}


def event_filter_document(event: pb.EventFilter) -> str | dict[str, Any]:
    if not event.type and not event.where:
        return event.event
    document: dict[str, Any] = {}
    if event.type:
        document["type"] = event.type
    if event.event:
        document["event"] = event.event
    if event.where:
        document["where"] = {w.path: predicate_document(w.predicate) for w in event.where}
    return document


def _purchases_document(purchases: pb.Purchases) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if purchases.HasField("event"):
        document["event"] = event_filter_document(purchases.event)
    if purchases.revenue_property:
        document["revenue_property"] = purchases.revenue_property
    return document


def condition_document(condition: pb.Condition) -> dict[str, Any]:
    which = condition.WhichOneof("test")
    if which in ("all_of", "any_of"):
        return {which: [condition_document(c) for c in getattr(condition, which).conditions]}
    if which == "negated":
        return {"not": condition_document(condition.negated)}
    if which == "trait":
        return {"trait": condition.trait.trait, **predicate_document(condition.trait.predicate)}
    if which == "computed_trait":
        test = condition.computed_trait
        return {"computed_trait": test.computed_trait, **predicate_document(test.predicate)}
    if which == "tag":
        tag: dict[str, Any] = {"tag": condition.tag.tag}
        if condition.tag.HasField("predicate"):
            tag.update(predicate_document(condition.tag.predicate))
        return tag
    if which == "in_segment":
        return {"in_segment": condition.in_segment}
    if which == "performed":
        performed = condition.performed
        document: dict[str, Any] = {}
        if performed.event.type:
            document["type"] = performed.event.type
        if performed.event.event:
            document["event"] = performed.event.event
        if performed.event.where:
            document["where"] = {w.path: predicate_document(w.predicate) for w in performed.event.where}
        if performed.min_count:
            document["min_count"] = performed.min_count
        if performed.max_count:
            document["max_count"] = performed.max_count
        if performed.HasField("within"):
            document["within"] = format_duration(performed.within)
        return {"performed": document}
    if which == "not_performed_after":
        then = condition.not_performed_after
        return {
            "not_performed_after": {
                "after": event_filter_document(then.after),
                "then_not": event_filter_document(then.then_not),
                "within": format_duration(then.within),
            }
        }
    return {}
