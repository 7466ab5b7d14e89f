"""Definitions checked and compiled: what each one needs from a profile's history, and what depends on it.

A workspace's definitions are code (`onefold apply -f segment.yaml`), so a mistake must come back as
a field path and a reason a person can act on, all of them at once, and never quote a personal value
(definitions hold only the author's constants, but an error message travels further than the
definition). Checking happens here, once; evaluation (evaluate.py) then trusts the compiled form.

Compiling turns each definition into:

- its **features**: canonical, hashable descriptions of the history a leaf or a computed trait needs
  (`Recent`, `Window`, `AllTime`, `After`, `Purchases`). Two definitions that need the same thing get
  equal features, so a profile keeps one accumulator for both (features.py);
- the profile traits it reads (by top-level key) and the other definitions it reads (`in_segment`,
  tag and computed-trait tests) — the edges of a graph that must have no cycle, evaluated in
  topological order. A tag test may also name a model tag (MODEL_TAGS: written back by the insights
  service's models, not defined here); a definition of the same name takes precedence over it;
- an index from each feature and trait key to the definitions it can change, followed by everything
  downstream of them, in topological order: one event re-evaluates only what it can affect.

Time is in integer microseconds throughout the domain (`Micros`): window edges are compared exactly,
with no floating-point rounding, and a timer lands on the exact moment a window expires.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from google.protobuf import duration_pb2, struct_pb2

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.platform.errors import InvalidArgument

Micros = int
Json = Any  # None | bool | float | str | list[Json] | dict[str, Json]: a google.protobuf.Value as Python
Scalar = None | bool | float | str

SECOND: Micros = 1_000_000
DAY: Micros = 86_400 * SECOND

NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
EVENT_TYPES = ("track", "page", "screen", "identify")
MAX_TAG_VALUE = 200
# The tags the insights service's models give profiles (its ProfileModelTagged events): a tag test may
# name them like a definition's tag. A definition of the same name is the profile's tag instead.
MODEL_TAGS = frozenset({"churn_risk", "behaviour_cluster", "category_affinity", "product_affinity"})
MAX_COUNT = 1000  # `performed ... at least/at most N`: the accumulator keeps N (or N+1) times per profile

DEFAULT_PURCHASE_EVENT = "Order Completed"
DEFAULT_REVENUE = ("revenue", "total")
DEFAULT_CHURNING = 60 * DAY
DEFAULT_DORMANT = 120 * DAY
DEFAULT_LOST = 365 * DAY
DEFAULT_REACTIVATED_FOR = 30 * DAY
DEFAULT_LOOKBACK = 365 * DAY

NUMERIC_AGGREGATIONS = frozenset(
    {
        pb.AGGREGATION_COUNT,
        pb.AGGREGATION_SUM,
        pb.AGGREGATION_AVG,
        pb.AGGREGATION_MIN,
        pb.AGGREGATION_MAX,
        pb.AGGREGATION_UNIQUE_COUNT,
    }
)
DISTINCT_AGGREGATIONS = frozenset({pb.AGGREGATION_MOST_FREQUENT, pb.AGGREGATION_UNIQUE_COUNT})

_ORDERING = frozenset({pb.OPERATOR_GT, pb.OPERATOR_GE, pb.OPERATOR_LT, pb.OPERATOR_LE})
_NO_OPERAND = frozenset({pb.OPERATOR_EXISTS, pb.OPERATOR_NOT_EXISTS})
_LIST_OPERAND = frozenset({pb.OPERATOR_IN, pb.OPERATOR_NOT_IN})


# ------------------------------------------------------------------------------------------------
# Compiled building blocks. Frozen and hashable: a feature is a dictionary key shared by definitions.


@dataclass(frozen=True, slots=True)
class Check:
    """A compiled Predicate. Operands are scalars (checked), so the test is hashable."""

    op: int
    value: Scalar = None
    values: tuple[Scalar, ...] = ()

    def text(self) -> str:
        name = pb.Operator.Name(self.op).removeprefix("OPERATOR_")  # type: ignore[arg-type]
        if self.op in _NO_OPERAND:
            return name
        if self.op in _LIST_OPERAND:
            return f"{name} [{', '.join(_literal(v) for v in self.values)}]"
        return f"{name} {_literal(self.value)}"

    def to_json(self) -> Json:
        return {"op": self.op, "value": self.value, "values": list(self.values)}

    @staticmethod
    def from_json(data: Json) -> Check:
        return Check(data["op"], data["value"], tuple(data["values"]))


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events count. `name` "" = any; `where` sorted, so equal filters are equal keys."""

    type: str = "track"
    name: str = ""
    where: tuple[tuple[str, Check], ...] = ()
    # Features (keys of every profile's accumulators) hash their filters on each lookup: computed once.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.type, self.name, self.where)))

    def __hash__(self) -> int:
        return self._hash

    def text(self) -> str:
        # A named track event reads as its quoted name; anything else says its type first.
        quoted = json.dumps(self.name, ensure_ascii=False)
        if self.name:
            label = quoted if self.type == "track" else f"{self.type} {quoted}"
        else:
            label = f"any {self.type}"
        for path, test in self.where:
            label += f" where {path} {test.text()}"
        return label

    def to_json(self) -> Json:
        return {"type": self.type, "name": self.name, "where": [[p, t.to_json()] for p, t in self.where]}

    @staticmethod
    def from_json(data: Json) -> Filter:
        return Filter(data["type"], data["name"], tuple((p, Check.from_json(t)) for p, t in data["where"]))


@dataclass(frozen=True, slots=True)
class Recent:
    """The latest `keep` matching event times: enough for "at least N / at most M within W" with
    keep = max(N, M + 1), for any W — so leaves with different windows share it."""

    filter: Filter
    keep: int


@dataclass(frozen=True, slots=True)
class Window:
    """Every matching event (time, property value) younger than `window`."""

    filter: Filter
    property: str
    window: Micros


@dataclass(frozen=True, slots=True)
class AllTime:
    """A running aggregate of a property over every matching event; `distinct` also counts values
    (MOST_FREQUENT, UNIQUE_COUNT), which costs memory, so only the aggregations that need it ask."""

    filter: Filter
    property: str
    distinct: bool


@dataclass(frozen=True, slots=True)
class After:
    """The latest `after` event and the latest `then_not` event."""

    after: Filter
    then_not: Filter


@dataclass(frozen=True, slots=True)
class Purchases:
    """Purchases: count, first, the latest 20 times (lifecycle); with `lookback`, also each purchase
    and its revenue within it (RFM). `revenue` are the properties read, first numeric one wins."""

    filter: Filter
    revenue: tuple[str, ...] = ()
    lookback: Micros = 0


Feature = Recent | Window | AllTime | After | Purchases


@dataclass(frozen=True, slots=True)
class TraitKey:
    """An index key, not an accumulator: the definitions reading a top-level trait."""

    name: str


# A workspace has a few hundred features at most, and every stored state names each of its
# accumulators by key: both directions are looked up per profile, so they are memoised.
@functools.lru_cache(maxsize=4096)
def feature_key(feature: Feature) -> str:
    """The feature's canonical text: the key of its accumulator in a stored ProfileState."""
    return json.dumps(_feature_json(feature), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=4096)
def feature_from_key(key: str) -> Feature:
    data = json.loads(key)
    kind = data["kind"]
    if kind == "recent":
        return Recent(Filter.from_json(data["filter"]), data["keep"])
    if kind == "window":
        return Window(Filter.from_json(data["filter"]), data["property"], data["window"])
    if kind == "all_time":
        return AllTime(Filter.from_json(data["filter"]), data["property"], data["distinct"])
    if kind == "after":
        return After(Filter.from_json(data["after"]), Filter.from_json(data["then_not"]))
    if kind == "purchases":
        return Purchases(Filter.from_json(data["filter"]), tuple(data["revenue"]), data["lookback"])
    raise ValueError(f"unknown feature kind {kind!r}")


def _feature_json(feature: Feature) -> Json:
    if isinstance(feature, Recent):
        return {"kind": "recent", "filter": feature.filter.to_json(), "keep": feature.keep}
    if isinstance(feature, Window):
        return {
            "kind": "window",
            "filter": feature.filter.to_json(),
            "property": feature.property,
            "window": feature.window,
        }
    if isinstance(feature, AllTime):
        return {
            "kind": "all_time",
            "filter": feature.filter.to_json(),
            "property": feature.property,
            "distinct": feature.distinct,
        }
    if isinstance(feature, After):
        return {"kind": "after", "after": feature.after.to_json(), "then_not": feature.then_not.to_json()}
    return {
        "kind": "purchases",
        "filter": feature.filter.to_json(),
        "revenue": list(feature.revenue),
        "lookback": feature.lookback,
    }


# Condition trees.


@dataclass(frozen=True, slots=True)
class AllOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class TraitLeaf:
    path: str
    test: Check


@dataclass(frozen=True, slots=True)
class ComputedLeaf:
    name: str
    test: Check


@dataclass(frozen=True, slots=True)
class TagLeaf:
    name: str
    test: Check | None  # None: the tag has any value


@dataclass(frozen=True, slots=True)
class SegmentLeaf:
    name: str


@dataclass(frozen=True, slots=True)
class PerformedLeaf:
    feature: Recent
    min_count: int
    max_count: int  # 0: no upper bound
    within: Micros  # 0: ever


@dataclass(frozen=True, slots=True)
class NotAfterLeaf:
    feature: After
    within: Micros


Leaf = TraitLeaf | ComputedLeaf | TagLeaf | SegmentLeaf | PerformedLeaf | NotAfterLeaf
Node = AllOf | AnyOf | Not | Leaf


# Definition kinds.


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    condition: Node


@dataclass(frozen=True, slots=True)
class TagSpec:
    rules: tuple[tuple[Node, str], ...]
    copy_trait: str = ""


@dataclass(frozen=True, slots=True)
class ComputedSpec:
    feature: Window | AllTime
    aggregation: int


@dataclass(frozen=True, slots=True)
class LifecycleSpec:
    feature: Purchases
    churning_after: Micros
    dormant_after: Micros
    lost_after: Micros
    relative: float
    reactivated_for: Micros


@dataclass(frozen=True, slots=True)
class CutOffs:
    """Four ascending boundaries per measure (recency in days)."""

    recency_days: tuple[float, float, float, float]
    frequency: tuple[float, float, float, float]
    monetary: tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Cell:
    name: str
    recency: tuple[int, int]
    frequency: tuple[int, int]


DEFAULT_CELLS = (
    Cell("Champions", (5, 5), (4, 5)),
    Cell("Loyal", (3, 4), (4, 5)),
    Cell("Potential Loyalists", (4, 5), (2, 3)),
    Cell("New", (5, 5), (1, 1)),
    Cell("Promising", (4, 4), (1, 1)),
    Cell("Need Attention", (3, 3), (3, 3)),
    Cell("About to Sleep", (3, 3), (1, 2)),
    Cell("At Risk", (1, 2), (3, 4)),
    Cell("Can't Lose", (1, 2), (5, 5)),
    Cell("Hibernating", (1, 2), (1, 2)),
)


@dataclass(frozen=True, slots=True)
class RfmSpec:
    feature: Purchases
    cut_offs: CutOffs | None  # None: workspace quintiles (Workspace.rfm_boundaries)
    cells: tuple[Cell, ...]


Spec = SegmentSpec | TagSpec | ComputedSpec | LifecycleSpec | RfmSpec


@dataclass(frozen=True, slots=True)
class Compiled:
    name: str
    version: int
    kind: str  # "segment", "tag", "computed_trait", "lifecycle", "rfm"
    realtime: bool
    spec: Spec
    features: tuple[Feature, ...]
    traits: tuple[str, ...]  # top-level trait keys read
    references: tuple[str, ...]  # other definitions read


@dataclass(frozen=True)
class Workspace:
    """A workspace's compiled definitions, in topological order, with the feature index."""

    definitions: Mapping[str, Compiled]
    order: tuple[str, ...]
    features: tuple[Feature, ...]
    # feature / trait key -> the realtime definitions it can change, and their downstream, in order.
    index: Mapping[Feature | TraitKey, tuple[str, ...]]
    downstream: Mapping[str, tuple[str, ...]]  # name -> itself and every realtime dependent, in order
    # model tag -> the realtime definitions reading it (not a definition's name) and their downstream.
    model_readers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rfm_boundaries: Mapping[str, CutOffs] = field(default_factory=dict)
    feature_set: frozenset[Feature] = frozenset()
    # (event type, event name) -> the features whose filters name it, or any name of that type:
    # an event is tested against those alone, not against every feature of the workspace.
    by_event: Mapping[tuple[str, str], tuple[Feature, ...]] = field(default_factory=dict)
    _watching: dict[tuple[str, str], tuple[Feature, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def watching(self, type_: str, name: str) -> tuple[Feature, ...]:
        """The features an event of this type and name may count for (their filters decide)."""
        found = self._watching.get((type_, name))
        if found is None:
            named = self.by_event.get((type_, name), ())
            found = tuple(dict.fromkeys((*named, *self.by_event.get((type_, ""), ()))))
            self._watching[(type_, name)] = found
        return found

    def affected(self, keys: Iterable[Feature | TraitKey], names: Iterable[str] = ()) -> list[str]:
        """The realtime definitions `keys` can change, plus `names` and their downstream, in order."""
        chosen: set[str] = set()
        for key in keys:
            chosen.update(self.index.get(key, ()))
        for name in names:
            chosen.update(self.downstream.get(name, ()))
        return [name for name in self.order if name in chosen]


# ------------------------------------------------------------------------------------------------
# Checking and compiling.


def validate(
    definition: pb.Definition, others: Iterable[pb.Definition] = (), prefix: str = "definition"
) -> Workspace:
    """Check one definition (ApplyDefinition) against the workspace's other live definitions:
    raises InvalidArgument naming every problem as (field path, reason) under `prefix`; else the
    workspace as it would be with it (for a preview). Problems of the others are not its own."""
    return validate_all([definition], others, prefixes=[prefix])


def validate_all(
    batch: Sequence[pb.Definition], others: Iterable[pb.Definition] = (), prefixes: Sequence[str] = ()
) -> Workspace:
    """Check several definitions together (ApplyDefinitions) against the workspace's others: they
    may read each other in any order; each one's problems are reported under its prefix (default
    `definitions[i]`), a name given twice included."""
    names = [d.name for d in batch]
    labels = list(prefixes) or [f"definitions[{i}]" for i in range(len(batch))]
    twice = [
        (f"{labels[i]}.name", "the request sets this name twice")
        for i, n in enumerate(names)
        if n in names[:i]
    ]
    if twice:
        raise InvalidArgument("the definitions are not valid", violations=twice)
    peers = [d for d in others if d.name not in names and not d.archived]
    return compile_workspace(
        [*peers, *batch], prefixes=dict(zip(names, labels, strict=True)), only=frozenset(names)
    )


def compile_workspace(
    definitions: Iterable[pb.Definition],
    *,
    rfm_boundaries: Mapping[str, CutOffs] | None = None,
    prefixes: Mapping[str, str] | None = None,
    only: frozenset[str] | None = None,
) -> Workspace:
    """Compile a workspace's live definitions (archived ones are skipped). Violations are reported
    under `definitions[i].` (or `prefixes[name]`), and, with `only`, for those definitions alone."""
    live = [d for d in definitions if not d.archived]
    kinds: dict[str, str] = {}
    numeric: set[str] = set()
    for d in live:
        kinds.setdefault(d.name, d.WhichOneof("kind") or "")
        if d.WhichOneof("kind") == "computed_trait" and d.computed_trait.aggregation in NUMERIC_AGGREGATIONS:
            numeric.add(d.name)
    violations: list[tuple[str, str]] = []
    compiled: dict[str, Compiled] = {}
    paths: dict[str, dict[str, str]] = {}  # name -> referenced name -> field path (for cycles)
    seen: set[str] = set()
    for i, definition in enumerate(live):
        prefix = (prefixes or {}).get(definition.name, f"definitions[{i}]")
        checker = _Checker(kinds, numeric, prefix)
        result = checker.definition(definition)
        if definition.name in seen:
            checker.fail("name", "another definition of the workspace has this name")
        seen.add(definition.name)
        if only is None or definition.name in only:
            violations.extend(checker.violations)
        if result is not None and not checker.violations:
            compiled[definition.name] = result
            paths[definition.name] = checker.reference_paths
    for name, cycle in _cycles(paths):
        if only is None or name in only:
            referenced = cycle[1]
            where = paths[name][referenced]
            violations.append((where, "forms a cycle: " + " -> ".join(cycle)))
    if violations:
        raise InvalidArgument("the definition is not valid", violations=violations)
    return _index(compiled, dict(rfm_boundaries or {}))


def _cycles(graph: Mapping[str, Mapping[str, str]]) -> list[tuple[str, list[str]]]:
    """Each definition on a cycle, with one cycle through it (starting and ending at it)."""
    found: list[tuple[str, list[str]]] = []
    for start in sorted(graph):
        # Depth-first search for a path back to `start`.
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        visited: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, {})):
                if nxt == start:
                    found.append((start, [*path, start]))
                    stack.clear()
                    break
                if nxt not in visited and nxt in graph:
                    visited.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


def _index(compiled: dict[str, Compiled], boundaries: dict[str, CutOffs]) -> Workspace:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:  # no cycles here: checked before
        if state.get(name) == 2:
            return
        state[name] = 1
        for ref in sorted(compiled[name].references):
            if ref in compiled:
                visit(ref)
        state[name] = 2
        order.append(name)

    for name in sorted(compiled):
        visit(name)
    dependents: dict[str, set[str]] = {name: set() for name in compiled}
    for name, c in compiled.items():
        for ref in c.references:
            if ref in dependents:
                dependents[ref].add(name)
    position = {name: i for i, name in enumerate(order)}
    downstream: dict[str, tuple[str, ...]] = {}
    for name in order:
        reach: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in reach:
                continue
            reach.add(current)
            todo.extend(dependents[current])
        downstream[name] = tuple(sorted((n for n in reach if compiled[n].realtime), key=position.__getitem__))
    index: dict[Feature | TraitKey, set[str]] = {}
    features: dict[Feature, None] = {}
    for name in order:
        c = compiled[name]
        keys: list[Feature | TraitKey] = [*c.features, *(TraitKey(t) for t in c.traits)]
        for f in c.features:
            features[f] = None
        for key in keys:
            index.setdefault(key, set()).update(downstream[name])
    model_readers: dict[str, set[str]] = {}
    for name, c in compiled.items():
        for ref in c.references:
            if ref not in compiled and ref in MODEL_TAGS:
                model_readers.setdefault(ref, set()).update(downstream[name])
    return Workspace(
        definitions=compiled,
        order=tuple(order),
        features=tuple(features),
        index={k: tuple(sorted(v, key=position.__getitem__)) for k, v in index.items()},
        downstream=downstream,
        model_readers={k: tuple(sorted(v, key=position.__getitem__)) for k, v in model_readers.items()},
        rfm_boundaries=boundaries,
        feature_set=frozenset(features),
        by_event=_by_event(features),
    )


def _by_event(features: Iterable[Feature]) -> dict[tuple[str, str], tuple[Feature, ...]]:
    found: dict[tuple[str, str], dict[Feature, None]] = {}
    for feature in features:
        filters = (feature.after, feature.then_not) if isinstance(feature, After) else (feature.filter,)
        for f in filters:
            found.setdefault((f.type, f.name), {})[feature] = None
    return {key: tuple(named) for key, named in found.items()}


class _Checker:
    """Walks one definition, collecting violations (field paths relative to `prefix`) and compiling."""

    def __init__(self, kinds: Mapping[str, str], numeric: set[str], prefix: str) -> None:
        self.kinds = kinds
        self.numeric = numeric
        self.prefix = prefix
        self.violations: list[tuple[str, str]] = []
        self.features: dict[Feature, None] = {}
        self.traits: dict[str, None] = {}
        self.reference_paths: dict[str, str] = {}

    def fail(self, path: str, reason: str) -> None:
        self.violations.append((f"{self.prefix}.{path}" if self.prefix else path, reason))

    def feature(self, feature: Feature) -> None:
        self.features[feature] = None

    def definition(self, d: pb.Definition) -> Compiled | None:
        if not NAME.fullmatch(d.name):
            self.fail("name", "must match [a-z][a-z0-9_]{0,62}")
        if d.evaluation == pb.EVALUATION_BATCH and not d.schedule.strip():
            self.fail("schedule", "a BATCH definition needs a cron schedule")
        if d.schedule.strip() and (
            len(d.schedule.split()) not in (5, 6) or not croniter.is_valid(d.schedule)
        ):
            self.fail("schedule", "must be a cron expression of 5 (or 6) fields")
        if d.time_zone and not _known_zone(d.time_zone):
            self.fail("time_zone", "not an IANA time zone (e.g. Asia/Shanghai)")
        kind = d.WhichOneof("kind")
        spec: Spec | None = None
        if kind == "segment":
            if not d.segment.HasField("condition"):
                self.fail("segment.condition", "required")
            else:
                spec = SegmentSpec(self.condition(d.segment.condition, "segment.condition"))
        elif kind == "tag":
            spec = self.tag(d.tag)
        elif kind == "computed_trait":
            spec = self.computed(d.computed_trait, "computed_trait")
        elif kind == "lifecycle":
            spec = self.lifecycle(d.lifecycle)
        elif kind == "rfm":
            spec = self.rfm(d.rfm)
        else:
            self.fail("kind", "set one of segment, tag, computed_trait, lifecycle, rfm")
        if spec is None:
            return None
        return Compiled(
            name=d.name,
            version=d.version,
            kind=kind or "",
            realtime=d.evaluation != pb.EVALUATION_BATCH,
            spec=spec,
            features=tuple(self.features),
            traits=tuple(self.traits),
            references=tuple(self.reference_paths),
        )

    # -- conditions

    def condition(self, c: pb.Condition, path: str) -> Node:
        which = c.WhichOneof("test")
        if which in ("all_of", "any_of"):
            group = c.all_of if which == "all_of" else c.any_of
            if not group.conditions:
                self.fail(f"{path}.{which}.conditions", "needs at least one condition")
            children = tuple(
                self.condition(child, f"{path}.{which}.conditions[{i}]")
                for i, child in enumerate(group.conditions)
            )
            return AllOf(children) if which == "all_of" else AnyOf(children)
        if which == "negated":
            return Not(self.condition(c.negated, f"{path}.negated"))
        if which == "trait":
            trait_path = self.path(c.trait.trait, f"{path}.trait.trait")
            self.traits[trait_path.split(".")[0]] = None
            return TraitLeaf(trait_path, self.predicate(c.trait.predicate, f"{path}.trait.predicate"))
        if which == "computed_trait":
            name = c.computed_trait.computed_trait
            self.reference(name, "computed_trait", f"{path}.computed_trait.computed_trait")
            test = self.predicate(
                c.computed_trait.predicate, f"{path}.computed_trait.predicate", numeric=name in self.numeric
            )
            return ComputedLeaf(name, test)
        if which == "tag":
            name = c.tag.tag
            self.reference(name, "tag", f"{path}.tag.tag")
            tag_test = (
                self.predicate(c.tag.predicate, f"{path}.tag.predicate")
                if c.tag.HasField("predicate")
                else None
            )
            return TagLeaf(name, tag_test)
        if which == "in_segment":
            self.reference(c.in_segment, "segment", f"{path}.in_segment")
            return SegmentLeaf(c.in_segment)
        if which == "performed":
            return self.performed(c.performed, f"{path}.performed")
        if which == "not_performed_after":
            n = c.not_performed_after
            p = f"{path}.not_performed_after"
            if not n.HasField("after"):
                self.fail(f"{p}.after", "required")
            if not n.HasField("then_not"):
                self.fail(f"{p}.then_not", "required")
            after = self.filter(n.after, f"{p}.after")
            then_not = self.filter(n.then_not, f"{p}.then_not")
            if n.HasField("after") and n.HasField("then_not") and after == then_not:
                self.fail(f"{p}.then_not", "must differ from `after` (the test could never hold)")
            within = self.duration(n.within, f"{p}.within", required=True)
            feature = After(after, then_not)
            self.feature(feature)
            return NotAfterLeaf(feature, within)
        self.fail(path, "set one test: all_of, any_of, negated, trait, computed_trait, tag, in_segment, …")
        return AllOf(())

    def performed(self, p: pb.Performed, path: str) -> PerformedLeaf:
        event = self.filter(p.event, f"{path}.event")
        min_count = p.min_count or 1
        if min_count > MAX_COUNT:
            self.fail(f"{path}.min_count", f"at most {MAX_COUNT}")
        if p.max_count and p.max_count > MAX_COUNT:
            self.fail(f"{path}.max_count", f"at most {MAX_COUNT}")
        if p.max_count and p.max_count < min_count:
            self.fail(f"{path}.max_count", "must not be below min_count")
        within = self.duration(p.within, f"{path}.within") if p.HasField("within") else 0
        keep = max(min_count, p.max_count + 1 if p.max_count else 0)
        feature = Recent(event, min(keep, MAX_COUNT + 1))
        self.feature(feature)
        return PerformedLeaf(feature, min_count, p.max_count, within)

    def reference(self, name: str, expected: str, path: str) -> None:
        kinds = {"tag": ("tag", "lifecycle", "rfm")}.get(expected, (expected,))
        if not name:
            self.fail(path, "required")
        elif expected == "tag" and name not in self.kinds and name in MODEL_TAGS:
            self.reference_paths.setdefault(name, f"{self.prefix}.{path}")
        elif name not in self.kinds:
            self.fail(path, f"no {expected.replace('_', ' ')} of the workspace has this name")
        elif self.kinds[name] not in kinds:
            self.fail(
                path, f"names a {self.kinds[name].replace('_', ' ')}, not a {expected.replace('_', ' ')}"
            )
        else:
            self.reference_paths.setdefault(name, f"{self.prefix}.{path}")

    def path(self, path: str, where: str) -> str:
        if not path or any(not part for part in path.split(".")):
            self.fail(where, "a dotted path of non-empty names is required")
        return path

    def predicate(self, p: pb.Predicate, path: str, numeric: bool = False) -> Check:
        op = p.op
        has_value = p.HasField("value")
        value = _scalar(p.value) if has_value else None
        if op == pb.OPERATOR_UNSPECIFIED or op not in pb.Operator.values():
            self.fail(f"{path}.op", "required")
            return Check(pb.OPERATOR_EXISTS)
        if op in _NO_OPERAND:
            if has_value or p.values:
                self.fail(f"{path}.value", "EXISTS and NOT_EXISTS take no value")
            return Check(op)
        if op in _LIST_OPERAND:
            if has_value:
                self.fail(f"{path}.value", "IN and NOT_IN take `values`, not `value`")
            if not p.values:
                self.fail(f"{path}.values", "needs at least one value")
            values: list[Scalar] = []
            for i, v in enumerate(p.values):
                kind = v.WhichOneof("kind")
                if kind not in ("string_value", "number_value", "bool_value"):
                    self.fail(f"{path}.values[{i}]", "must be a string, number or boolean")
                elif numeric and kind != "number_value":
                    self.fail(f"{path}.values[{i}]", "must be a number: the tested value is a number")
                else:
                    values.append(_scalar(v))
            return Check(op, None, tuple(values))
        if p.values:
            self.fail(f"{path}.values", "only IN and NOT_IN take `values`")
        kind = p.value.WhichOneof("kind") if has_value else None
        if kind is None:
            self.fail(f"{path}.value", "required")
        elif op in _ORDERING:
            if kind not in ("number_value", "string_value"):
                self.fail(f"{path}.value", "GT, GE, LT, LE compare numbers or strings")
            elif numeric and kind != "number_value":
                self.fail(f"{path}.value", "must be a number: the tested value is a number")
        elif op == pb.OPERATOR_STARTS_WITH:
            if kind != "string_value" or numeric:
                self.fail(f"{path}.value", "STARTS_WITH takes a string (and tests strings)")
        elif op == pb.OPERATOR_CONTAINS:
            if kind not in ("string_value", "number_value", "bool_value") or numeric:
                self.fail(
                    f"{path}.value", "CONTAINS takes a string, number or boolean (and tests strings or lists)"
                )
        elif kind not in ("string_value", "number_value", "bool_value"):
            self.fail(f"{path}.value", "must be a string, number or boolean (test absence with NOT_EXISTS)")
        elif numeric and kind != "number_value":
            self.fail(f"{path}.value", "must be a number: the tested value is a number")
        if kind == "number_value" and not math.isfinite(p.value.number_value):
            self.fail(f"{path}.value", "must be finite")
        return Check(op, value)

    def filter(self, f: pb.EventFilter, path: str) -> Filter:
        kind = f.type or "track"
        if kind not in EVENT_TYPES:
            self.fail(f"{path}.type", f"must be one of {', '.join(EVENT_TYPES)}")
        if kind == "identify" and f.event:
            self.fail(f"{path}.event", "identify calls have no name")
        where: list[tuple[str, Check]] = []
        for i, w in enumerate(f.where):
            prop = self.path(w.path, f"{path}.where[{i}].path")
            if not w.HasField("predicate"):
                self.fail(f"{path}.where[{i}].predicate", "required")
                continue
            where.append((prop, self.predicate(w.predicate, f"{path}.where[{i}].predicate")))
        where.sort(key=lambda item: (item[0], json.dumps(item[1].to_json(), sort_keys=True)))
        return Filter(kind, f.event, tuple(dict.fromkeys(where)))

    def duration(self, d: duration_pb2.Duration, path: str, required: bool = False) -> Micros:
        if required and d.seconds == 0 and d.nanos == 0:
            self.fail(path, "required (a duration above zero)")
            return 1
        micros = d.seconds * SECOND + d.nanos // 1000
        if micros <= 0:
            self.fail(path, "must be at least 1 microsecond")
            return 1
        return micros

    # -- kinds

    def tag(self, t: pb.Tag) -> TagSpec | None:
        if t.rules and t.copy_trait:
            self.fail("tag.copy_trait", "a tag has either rules or copy_trait, not both")
        if not t.rules and not t.copy_trait:
            self.fail("tag.rules", "a tag needs rules or copy_trait")
        if t.copy_trait:
            trait = self.path(t.copy_trait, "tag.copy_trait")
            self.traits[trait.split(".")[0]] = None
            return TagSpec((), trait)
        rules: list[tuple[Node, str]] = []
        for i, rule in enumerate(t.rules):
            if not rule.HasField("when"):
                self.fail(f"tag.rules[{i}].when", "required")
            if not rule.value:
                self.fail(f"tag.rules[{i}].value", "required")
            elif len(rule.value) > MAX_TAG_VALUE:
                self.fail(f"tag.rules[{i}].value", f"at most {MAX_TAG_VALUE} characters")
            rules.append((self.condition(rule.when, f"tag.rules[{i}].when"), rule.value))
        return TagSpec(tuple(rules))

    def computed(self, c: pb.ComputedTrait, path: str) -> ComputedSpec | None:
        event = self.filter(c.event, f"{path}.event")
        agg = c.aggregation
        if agg == pb.AGGREGATION_UNSPECIFIED or agg not in pb.Aggregation.values():
            self.fail(f"{path}.aggregation", "required")
            return None
        if agg == pb.AGGREGATION_COUNT:
            if c.property:
                self.fail(f"{path}.property", "COUNT counts events: it takes no property")
        elif not c.property:
            self.fail(
                f"{path}.property",
                f"{pb.Aggregation.Name(agg).removeprefix('AGGREGATION_')} needs a property",
            )
        else:
            self.path(c.property, f"{path}.property")
        feature: Window | AllTime
        if c.HasField("window"):
            feature = Window(event, c.property, self.duration(c.window, f"{path}.window"))
        else:
            feature = AllTime(event, c.property, agg in DISTINCT_AGGREGATIONS)
        self.feature(feature)
        return ComputedSpec(feature, agg)

    def purchases(self, p: pb.Purchases, path: str, lookback: Micros) -> Purchases:
        if p.HasField("event"):
            event = self.filter(p.event, f"{path}.event")
        else:
            event = Filter("track", DEFAULT_PURCHASE_EVENT)
        if p.revenue_property:
            revenue: tuple[str, ...] = (self.path(p.revenue_property, f"{path}.revenue_property"),)
        else:
            revenue = DEFAULT_REVENUE
        return Purchases(event, revenue if lookback else (), lookback)

    def lifecycle(self, lc: pb.Lifecycle) -> LifecycleSpec | None:
        feature = self.purchases(lc.purchases, "lifecycle.purchases", 0)
        self.feature(feature)
        given = (
            ("churning_after", lc.HasField("churning_after"), lc.churning_after, DEFAULT_CHURNING),
            ("dormant_after", lc.HasField("dormant_after"), lc.dormant_after, DEFAULT_DORMANT),
            ("lost_after", lc.HasField("lost_after"), lc.lost_after, DEFAULT_LOST),
        )
        times = [
            self.duration(value, f"lifecycle.{name}") if has else default
            for name, has, value, default in given
        ]
        churning, dormant, lost = times
        if not churning < dormant:
            self.fail("lifecycle.dormant_after", "must be longer than churning_after")
        if not dormant < lost:
            self.fail("lifecycle.lost_after", "must be longer than dormant_after")
        if not math.isfinite(lc.relative) or lc.relative < 0:
            self.fail("lifecycle.relative", "must be 0 (absolute thresholds) or above")
        reactivated = (
            self.duration(lc.reactivated_for, "lifecycle.reactivated_for")
            if lc.HasField("reactivated_for")
            else DEFAULT_REACTIVATED_FOR
        )
        return LifecycleSpec(feature, churning, dormant, lost, lc.relative, reactivated)

    def rfm(self, r: pb.Rfm) -> RfmSpec | None:
        lookback = self.duration(r.lookback, "rfm.lookback") if r.HasField("lookback") else DEFAULT_LOOKBACK
        feature = self.purchases(r.purchases, "rfm.purchases", lookback)
        self.feature(feature)
        cut_offs = None
        if r.HasField("cut_offs"):
            measures = []
            for name in ("recency_days", "frequency", "monetary"):
                values = list(getattr(r.cut_offs, name))
                where = f"rfm.cut_offs.{name}"
                if len(values) != 4:
                    self.fail(where, "needs exactly 4 boundaries")
                elif not all(math.isfinite(v) and v >= 0 for v in values):
                    self.fail(where, "boundaries are finite and not negative")
                elif any(a >= b for a, b in itertools.pairwise(values)):
                    self.fail(where, "boundaries must be strictly ascending")
                measures.append(tuple(values) if len(values) == 4 else (0.0, 0.0, 0.0, 0.0))
            cut_offs = CutOffs(*measures)
        cells: list[Cell] = []
        names: set[str] = set()
        for i, cell in enumerate(r.cells):
            where = f"rfm.cells[{i}]"
            if not cell.name:
                self.fail(f"{where}.name", "required")
            elif len(cell.name) > MAX_TAG_VALUE:
                self.fail(f"{where}.name", f"at most {MAX_TAG_VALUE} characters")
            elif cell.name in names:
                self.fail(f"{where}.name", "another cell has this name")
            names.add(cell.name)
            for measure in ("recency", "frequency"):
                low, high = getattr(cell, f"{measure}_min"), getattr(cell, f"{measure}_max")
                for bound, value in ((f"{measure}_min", low), (f"{measure}_max", high)):
                    if not 1 <= value <= 5:
                        self.fail(f"{where}.{bound}", "a score from 1 to 5")
                if low > high:
                    self.fail(f"{where}.{measure}_max", f"must not be below {measure}_min")
            cells.append(
                Cell(
                    cell.name, (cell.recency_min, cell.recency_max), (cell.frequency_min, cell.frequency_max)
                )
            )
        return RfmSpec(feature, cut_offs, tuple(cells) or DEFAULT_CELLS)


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _scalar(value: struct_pb2.Value) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value)
    return json.dumps(value, ensure_ascii=False)


def format_number(value: float) -> str:
    """A number as people write it: 3 rather than 3.0."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def format_duration(micros: Micros) -> str:
    """A duration written short for reasons: 30d, 12h, 90m, 45s, else microseconds."""
    for unit, size in (("d", DAY), ("h", 3600 * SECOND), ("m", 60 * SECOND), ("s", SECOND), ("ms", 1000)):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"
