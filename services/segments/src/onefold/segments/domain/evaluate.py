"""One definition evaluated for one profile at one moment: its value, why, and when it next changes.

Evaluation is a pure function of the profile's traits, its accumulators (features.py), the outputs
of the definitions it reads (evaluated before it, in topological order) and `now`. Alongside the
value it returns:

- **reasons**: the leaves that decided the value, written out ("trait plan EQ \"gold\"",
  "performed \"Order Completed\" >= 3 within 30d") with what they observed. A node's reasons explain
  *its* truth value: a leaf that failed reads "not …", a negation passes its child's reasons up, an
  `all_of` that failed gives its failing children, an `any_of` that held gives its holding children.
  The observed values are personal (SegmentEntered stores them encrypted); the leaf texts hold only
  the definition's own constants.
- **due**: the next moment the value may change by time alone — the earliest moment any leaf
  would flip. Every leaf is evaluated (no short-circuit) so that a leaf hidden behind a false one
  still sets its timer; a timer that fires without a change is harmless, a missed one is not.

Predicates (the design's semantics): numbers compare as numbers (1 == 1.0; a boolean is never a
number), strings exactly, a boolean only with a boolean. A missing or null value satisfies only
NOT_EXISTS: "plan NE gold" does not hold for a profile without a plan (say `negated` for that).
GT/GE/LT/LE compare two numbers or two strings (ISO dates order as text); CONTAINS holds for a string
containing the string, or a list holding an equal element; STARTS_WITH for strings only. Paths are
dotted into objects ("address.city").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain import lifecycle, rfm
from onefold.segments.domain.definitions import (
    AllOf,
    AnyOf,
    Check,
    Compiled,
    ComputedLeaf,
    ComputedSpec,
    CutOffs,
    Feature,
    Filter,
    Json,
    LifecycleSpec,
    Micros,
    Node,
    Not,
    NotAfterLeaf,
    PerformedLeaf,
    RfmSpec,
    SegmentLeaf,
    SegmentSpec,
    TagLeaf,
    TagSpec,
    TraitLeaf,
    Window,
    format_duration,
    format_number,
)
from onefold.segments.domain.features import (
    Accumulator,
    AfterAcc,
    AllTimeAcc,
    Event,
    PurchasesAcc,
    RecentAcc,
    WindowAcc,
    is_number,
    read_path,
    to_value,
)


@dataclass(frozen=True, slots=True)
class Reason:
    condition: str
    observed: Json = None

    def to_proto(self) -> pb.Reason:
        reason = pb.Reason(condition=self.condition)
        reason.observed.CopyFrom(to_value(self.observed))
        return reason


@dataclass(frozen=True, slots=True)
class Answer:
    value: Json  # None: not a member / no tag / no value
    reasons: tuple[Reason, ...] = ()
    due: Micros | None = None


@dataclass(frozen=True, slots=True)
class View:
    """What a definition may read."""

    traits: Mapping[str, Json]
    features: Mapping[Feature, Accumulator]
    outputs: Mapping[str, Json]  # definition -> its current value (None / absent: none)
    now: Micros
    rfm_boundaries: Mapping[str, CutOffs]


# ------------------------------------------------------------------------------------------------
# Predicates and filters.


def holds(test: Check, observed: Json) -> bool:
    """Whether `observed` satisfies `test` (module docstring)."""
    op = test.op
    if op == pb.OPERATOR_EXISTS:
        return observed is not None
    if op == pb.OPERATOR_NOT_EXISTS:
        return observed is None
    if observed is None:
        return False
    if op == pb.OPERATOR_EQ:
        return equal(observed, test.value)
    if op == pb.OPERATOR_NE:
        return not equal(observed, test.value)
    if op == pb.OPERATOR_IN:
        return any(equal(observed, v) for v in test.values)
    if op == pb.OPERATOR_NOT_IN:
        return not any(equal(observed, v) for v in test.values)
    if op == pb.OPERATOR_CONTAINS:
        if isinstance(observed, str):
            return isinstance(test.value, str) and test.value in observed
        if isinstance(observed, list):
            return any(equal(item, test.value) for item in observed)
        return False
    if op == pb.OPERATOR_STARTS_WITH:
        return isinstance(observed, str) and isinstance(test.value, str) and observed.startswith(test.value)
    operand = test.value
    if is_number(observed) and is_number(operand):
        left, right = float(observed), float(operand)  # type: ignore[arg-type]
    elif isinstance(observed, str) and isinstance(operand, str):
        left, right = observed, operand  # type: ignore[assignment]
    else:
        return False
    if op == pb.OPERATOR_GT:
        return left > right
    if op == pb.OPERATOR_GE:
        return left >= right
    if op == pb.OPERATOR_LT:
        return left < right
    if op == pb.OPERATOR_LE:
        return left <= right
    return False


def equal(a: Json, b: Json) -> bool:
    if is_number(a) and is_number(b):
        return float(a) == float(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def matches(f: Filter, event: Event) -> bool:
    """Whether an event counts for a filter: its type, its name ("" = any) and every `where`."""
    if event.type != f.type or (f.name and event.name != f.name):
        return False
    return all(holds(test, read_path(event.properties, path)) for path, test in f.where)


# ------------------------------------------------------------------------------------------------
# Conditions.


def condition(node: Node, view: View) -> tuple[bool, list[Reason], Micros | None]:
    """(holds, reasons explaining that, the earliest moment a leaf flips by time alone)."""
    if isinstance(node, AllOf | AnyOf):
        results = [condition(child, view) for child in node.children]
        due = _earliest(r[2] for r in results)
        if isinstance(node, AllOf):
            value = all(r[0] for r in results)
            chosen = results if value else [r for r in results if not r[0]]
        else:
            value = any(r[0] for r in results)
            chosen = [r for r in results if r[0]] if value else results
        return value, [reason for r in chosen for reason in r[1]], due
    if isinstance(node, Not):
        value, reasons, due = condition(node.child, view)
        return not value, reasons, due
    value, text, observed, due = _leaf(node, view)
    return value, [Reason(text if value else f"not {text}", observed)], due


def _leaf(node: Node, view: View) -> tuple[bool, str, Json, Micros | None]:
    now = view.now
    if isinstance(node, TraitLeaf):
        observed = read_path(view.traits, node.path)
        return holds(node.test, observed), f"trait {node.path} {node.test.text()}", observed, None
    if isinstance(node, ComputedLeaf):
        observed = view.outputs.get(node.name)
        return holds(node.test, observed), f"computed_trait {node.name} {node.test.text()}", observed, None
    if isinstance(node, TagLeaf):
        observed = view.outputs.get(node.name)
        if node.test is None:
            return observed is not None, f"tag {node.name} set", observed, None
        return holds(node.test, observed), f"tag {node.name} {node.test.text()}", observed, None
    if isinstance(node, SegmentLeaf):
        member = bool(view.outputs.get(node.name))
        return member, f"in_segment {node.name}", member, None
    if isinstance(node, PerformedLeaf):
        acc = view.features[node.feature]
        assert isinstance(acc, RecentAcc)
        count = acc.count(now, node.within)
        value = count >= node.min_count and (not node.max_count or count <= node.max_count)
        text = f"performed {node.feature.filter.text()} >= {node.min_count}"
        if node.max_count:
            text += f" <= {node.max_count}"
        if node.within:
            text += f" within {format_duration(node.within)}"
        # The count is exact up to what the test needs (the feature keeps max(N, M + 1) times).
        ranks = (node.min_count, node.max_count + 1) if node.max_count else (node.min_count,)
        return value, text, float(count), acc.next_change(now, node.within, ranks)
    if isinstance(node, NotAfterLeaf):
        after = view.features[node.feature]
        assert isinstance(after, AfterAcc)
        text = (
            f"did {node.feature.after.text()} then not {node.feature.then_not.text()}"
            f" within {format_duration(node.within)}"
        )
        since = after.pending()
        observed = iso(since) if since is not None else None
        return after.holds(now, node.within), text, observed, after.next_change(now, node.within)
    raise TypeError(f"not a leaf: {type(node).__name__}")


def _earliest(moments: Iterable[Micros | None]) -> Micros | None:
    return min((m for m in moments if m is not None), default=None)


# ------------------------------------------------------------------------------------------------
# Definitions.


def evaluate(compiled: Compiled, view: View) -> Answer:
    """The definition's value for the profile at `view.now`: a segment's membership (True / None),
    a tag's value (a non-empty string / None), a computed trait's value (None: none)."""
    spec = compiled.spec
    if isinstance(spec, SegmentSpec):
        value, reasons, due = condition(spec.condition, view)
        return Answer(True if value else None, tuple(reasons), due)
    if isinstance(spec, TagSpec):
        return _tag(spec, view)
    if isinstance(spec, ComputedSpec):
        return computed_value(spec, view.features[spec.feature], view.now)
    if isinstance(spec, LifecycleSpec):
        acc = view.features[spec.feature]
        assert isinstance(acc, PurchasesAcc)
        stage, explained, due = lifecycle.stage(spec, acc, view.now)
        return Answer(stage, tuple(Reason(text, observed) for text, observed in explained), due)
    if isinstance(spec, RfmSpec):
        acc = view.features[spec.feature]
        assert isinstance(acc, PurchasesAcc)
        cut_offs = spec.cut_offs or view.rfm_boundaries.get(compiled.name)
        cell, explained, due = rfm.evaluate(spec, acc, view.now, cut_offs)
        return Answer(cell, tuple(Reason(text, observed) for text, observed in explained), due)
    raise TypeError(f"unknown definition kind {type(spec).__name__}")


def computed_value(spec: ComputedSpec, acc: Accumulator, now: Micros) -> Answer:
    if isinstance(spec.feature, Window):
        assert isinstance(acc, WindowAcc)
        return Answer(acc.aggregate(spec.aggregation, now), (), acc.next_change(now))
    assert isinstance(acc, AllTimeAcc)
    return Answer(acc.aggregate(spec.aggregation))


def _tag(spec: TagSpec, view: View) -> Answer:
    if spec.copy_trait:
        observed = read_path(view.traits, spec.copy_trait)
        text = tag_text(observed)
        return Answer(text, (Reason(f"trait {spec.copy_trait}", observed),) if text else ())
    chosen: Answer | None = None
    dues: list[Micros | None] = []
    for when, value in spec.rules:
        held, reasons, due = condition(when, view)
        dues.append(due)
        if held and chosen is None:
            chosen = Answer(value, tuple(reasons))
    due = _earliest(dues)
    return Answer(chosen.value, chosen.reasons, due) if chosen else Answer(None, (), due)


def tag_text(value: Json) -> str | None:
    """A trait's value as a tag's value: strings as they are, numbers as written, booleans as
    true/false; anything else (an object, a list, an empty string) is no tag."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return format_number(float(value))
    if isinstance(value, str) and value:
        return value
    return None


def iso(moment: Micros) -> str:
    """A moment as RFC 3339 in UTC, to the microsecond."""
    return (_EPOCH + timedelta(microseconds=moment)).isoformat().replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
