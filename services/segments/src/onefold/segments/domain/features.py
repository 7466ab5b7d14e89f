"""Accumulators: what a profile keeps of its event history, one per feature (definitions.py).

A profile's history is not kept whole in its state; each feature keeps just enough to answer its
leaves now and to say when that answer next changes by time alone. Every accumulator is a function
of the *set* of events it observed, never of their arrival order: identity delivers late events
(a device that was offline), and a merge of two profiles must give exactly what folding both
histories together would have (`merge`), which is what makes a profile's batch recompute equal its
incremental fold. Hence:

- events are ordered by their `Occurrence` (time, event id), not by arrival, so FIRST / LAST and
  "the one seen first" are the same whichever copy saw the event first;
- sums are exact (`Fraction`), so addition order cannot change a float's last bit;
- what drops out of a window is decided by `expire(now)`, never by when something was observed.

Window edges: an event is *inside* `within W` at `now` when `at > now - W` — an event exactly W old
is out. So an event leaves the window at exactly `at + W`, which is the timer moment; events dated
after `now` (clock skew that ingest let through) count from the start.

Bounded memory: Recent keeps N (or M + 1) times; distinct values are capped at 10,000 (past the cap
new values are not counted, and a merge of two capped states may differ from a fold — documented
limit); Purchases keeps the latest 20 times. Window keeps what is in the window: that is the design.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from google.protobuf import struct_pb2

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain.definitions import (
    DISTINCT_AGGREGATIONS,
    After,
    AllTime,
    Feature,
    Json,
    Micros,
    Purchases,
    Recent,
    Window,
    feature_key,
)

MAX_DISTINCT = 10_000
LATEST_PURCHASES = 20

Occurrence = tuple[Micros, str]  # (when, event id): the order of events, whatever the arrival order


@dataclass(frozen=True, slots=True)
class Event:
    """An event as the domain sees it: identity's resolved TrackingEvent, opened and flattened."""

    at: Micros
    event_id: str
    type: str  # "track", "page", "screen", "identify", "group", "alias"
    name: str  # track: the event name; page / screen: the name
    properties: Mapping[str, Json] = field(default_factory=dict)

    @property
    def occurrence(self) -> Occurrence:
        return (self.at, self.event_id)


# ------------------------------------------------------------------------------------------------
# JSON values.


def read_path(data: Mapping[str, Json] | None, path: str) -> Json:
    """The value at a dotted path ("order.total") in objects; None when any step is missing or null."""
    current: Json = data
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def is_number(value: Json) -> bool:
    """A JSON number (never a boolean, which Python counts as an int), finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def canonical(value: Json) -> str:
    """One text per JSON value: the key values are counted by (1 and 1.0 are one number)."""
    return json.dumps(_normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normal(value: Json) -> Json:
    if is_number(value):
        return float(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def to_value(value: Json) -> struct_pb2.Value:
    message = struct_pb2.Value()
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int | float):
        message.number_value = float(value)
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, list):
        message.list_value.values.extend(to_value(v) for v in value)
    elif isinstance(value, dict):
        for key, item in value.items():
            message.struct_value.fields[key].CopyFrom(to_value(item))
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
    return message


def from_value(message: struct_pb2.Value) -> Json:
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        return message.number_value
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    if kind == "list_value":
        return [from_value(v) for v in message.list_value.values]
    if kind == "struct_value":
        return from_struct(message.struct_value)
    return None


def from_struct(message: struct_pb2.Struct) -> dict[str, Json]:
    return {key: from_value(value) for key, value in message.fields.items()}


def to_struct(data: Mapping[str, Json]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    for key, value in data.items():
        message.fields[key].CopyFrom(to_value(value))
    return message


def _occ(o: Occurrence) -> pb.Occurrence:
    return pb.Occurrence(at_us=o[0], event_id=o[1])


def _from_occ(message: pb.Occurrence) -> Occurrence:
    return (message.at_us, message.event_id)


def _latest(items: list[Occurrence], more: list[Occurrence], keep: int) -> list[Occurrence]:
    """The `keep` latest of both lists (a set: an event seen twice counts once), newest first."""
    return heapq.nlargest(keep, set(items) | set(more))


# ------------------------------------------------------------------------------------------------
# Accumulators.


@dataclass
class RecentAcc:
    """The latest `keep` matching events. A leaf "at least N within W" holds while the N-th latest is
    inside the window, so it flips at exactly (N-th latest) + W; "at most M" flips at (M+1-th) + W."""

    feature: Recent
    latest: list[Occurrence] = field(default_factory=list)  # newest first

    def observe(self, event: Event) -> None:
        self.latest = _latest(self.latest, [event.occurrence], self.feature.keep)

    def expire(self, now: Micros) -> None:
        """Nothing to drop: the latest times are kept whatever their age (a window is the leaf's)."""

    def merge(self, other: RecentAcc) -> None:
        self.latest = _latest(self.latest, other.latest, self.feature.keep)

    def count(self, now: Micros, within: Micros) -> int:
        """How many kept events are within `within` of `now` (0 = ever): exact up to `keep`."""
        if not within:
            return len(self.latest)
        return sum(1 for at, _ in self.latest if at > now - within)

    def next_change(self, now: Micros, within: Micros, ranks: tuple[int, ...] = ()) -> Micros | None:
        """The next moment the count within `within` drops (for the given 1-based ranks only, if
        any: the N-th latest leaving is what flips "at least N")."""
        if not within:
            return None
        chosen = [self.latest[r - 1] for r in ranks if r <= len(self.latest)] if ranks else self.latest
        moments = [at + within for at, _ in chosen if at + within > now]
        return min(moments, default=None)

    def to_proto(self) -> pb.FeatureState:
        return pb.FeatureState(
            key=feature_key(self.feature), recent=pb.RecentState(latest=[_occ(o) for o in self.latest])
        )

    def load(self, message: pb.FeatureState) -> None:
        self.latest = [_from_occ(o) for o in message.recent.latest]


@dataclass
class WindowAcc:
    """Every matching event inside the window with its property value (events without the property
    are not kept, except for COUNT, whose feature reads no property)."""

    feature: Window
    entries: list[tuple[Occurrence, Json]] = field(default_factory=list)  # oldest first

    def observe(self, event: Event) -> None:
        value = read_path(event.properties, self.feature.property) if self.feature.property else None
        if self.feature.property and value is None:
            return
        position = bisect.bisect_left(self.entries, event.occurrence, key=lambda e: e[0])
        if position < len(self.entries) and self.entries[position][0] == event.occurrence:
            return
        self.entries.insert(position, (event.occurrence, value))

    def expire(self, now: Micros) -> None:
        """Drop events at least `window` old (an event exactly `window` old is out)."""
        edge = now - self.feature.window
        cut = bisect.bisect_right(self.entries, edge, key=lambda e: e[0][0])
        if cut:
            del self.entries[:cut]

    def merge(self, other: WindowAcc) -> None:
        merged = dict(self.entries)
        merged.update(other.entries)
        self.entries = sorted(merged.items(), key=lambda e: e[0])

    def next_change(self, now: Micros) -> Micros | None:
        """The oldest entry still inside leaves at exactly its time + window."""
        first = bisect.bisect_right(self.entries, now - self.feature.window, key=lambda e: e[0][0])
        return self.entries[first][0][0] + self.feature.window if first < len(self.entries) else None

    def aggregate(self, aggregation: int, now: Micros) -> Json:
        """The aggregation over the entries inside the window at `now` (expired or not yet)."""
        edge = now - self.feature.window
        inside = [(o, v) for o, v in self.entries if o[0] > edge]
        acc = AllTimeAcc(
            AllTime(self.feature.filter, self.feature.property, aggregation in DISTINCT_AGGREGATIONS)
        )
        for o, v in inside:
            acc.add(o, v)
        return acc.aggregate(aggregation)

    def to_proto(self) -> pb.FeatureState:
        state = pb.WindowState(occurrences=[_occ(o) for o, _ in self.entries])
        state.values.values.extend(to_value(v) for _, v in self.entries)
        return pb.FeatureState(key=feature_key(self.feature), window=state)

    def load(self, message: pb.FeatureState) -> None:
        values = [from_value(v) for v in message.window.values.values]
        self.entries = [(_from_occ(o), v) for o, v in zip(message.window.occurrences, values, strict=True)]


@dataclass
class AllTimeAcc:
    """A running aggregate over every matching event ever: what each Aggregation needs, merged by
    adding counts and sums and keeping the earliest / latest by occurrence."""

    feature: AllTime
    count: int = 0
    numbers: int = 0
    total: Fraction = Fraction(0)
    low: float | None = None
    high: float | None = None
    first: tuple[Occurrence, Json] | None = None
    last: tuple[Occurrence, Json] | None = None
    # canonical value -> (count, first occurrence, value)
    distinct: dict[str, tuple[int, Occurrence, Json]] = field(default_factory=dict)

    def observe(self, event: Event) -> None:
        if not self.feature.property:
            self.count += 1
            return
        value = read_path(event.properties, self.feature.property)
        if value is not None:
            self.add(event.occurrence, value)

    def add(self, occurrence: Occurrence, value: Json) -> None:
        self.count += 1
        if value is None:  # COUNT over a window: the event is all there is
            return
        if is_number(value):
            self.numbers += 1
            self.total += Fraction(value)
            self.low = value if self.low is None else min(self.low, value)
            self.high = value if self.high is None else max(self.high, value)
        if self.first is None or occurrence < self.first[0]:
            self.first = (occurrence, value)
        if self.last is None or occurrence > self.last[0]:
            self.last = (occurrence, value)
        if self.feature.distinct:
            key = canonical(value)
            seen = self.distinct.get(key)
            if seen is not None:  # the earliest occurrence's spelling of the value stands (1 vs 1.0)
                earliest = (occurrence, value) if occurrence < seen[1] else (seen[1], seen[2])
                self.distinct[key] = (seen[0] + 1, *earliest)
            elif len(self.distinct) < MAX_DISTINCT:
                self.distinct[key] = (1, occurrence, value)

    def expire(self, now: Micros) -> None:
        """All time: nothing expires."""

    def merge(self, other: AllTimeAcc) -> None:
        self.count += other.count
        self.numbers += other.numbers
        self.total += other.total
        if other.low is not None:
            self.low = other.low if self.low is None else min(self.low, other.low)
        if other.high is not None:
            self.high = other.high if self.high is None else max(self.high, other.high)
        if other.first is not None and (self.first is None or other.first[0] < self.first[0]):
            self.first = other.first
        if other.last is not None and (self.last is None or other.last[0] > self.last[0]):
            self.last = other.last
        for key, (count, first, value) in other.distinct.items():
            seen = self.distinct.get(key)
            if seen is not None:
                earliest = (first, value) if first < seen[1] else (seen[1], seen[2])
                self.distinct[key] = (seen[0] + count, *earliest)
            elif len(self.distinct) < MAX_DISTINCT:
                self.distinct[key] = (count, first, value)

    def next_change(self, now: Micros) -> Micros | None:
        return None

    def aggregate(self, aggregation: int) -> Json:
        """The aggregation's value; None when no event (or no usable value) counts."""
        if aggregation == pb.AGGREGATION_COUNT:
            return float(self.count) if self.count else None
        if aggregation == pb.AGGREGATION_SUM:
            return float(self.total) if self.numbers else None
        if aggregation == pb.AGGREGATION_AVG:
            return float(self.total / self.numbers) if self.numbers else None
        if aggregation == pb.AGGREGATION_MIN:
            return self.low
        if aggregation == pb.AGGREGATION_MAX:
            return self.high
        if aggregation == pb.AGGREGATION_FIRST:
            return self.first[1] if self.first else None
        if aggregation == pb.AGGREGATION_LAST:
            return self.last[1] if self.last else None
        if aggregation == pb.AGGREGATION_MOST_FREQUENT:
            if not self.distinct:
                return None
            _, _, value = min(self.distinct.values(), key=lambda item: (-item[0], item[1]))
            return value
        if aggregation == pb.AGGREGATION_UNIQUE_COUNT:
            return float(len(self.distinct)) if self.distinct else None
        raise ValueError(f"unknown aggregation {aggregation}")

    def to_proto(self) -> pb.FeatureState:
        state = pb.AllTimeState(count=self.count, numbers=self.numbers)
        if self.numbers:
            state.sum = f"{self.total.numerator}/{self.total.denominator}"
            state.min.CopyFrom(to_value(self.low))
            state.max.CopyFrom(to_value(self.high))
        if self.first is not None:
            state.first_at.CopyFrom(_occ(self.first[0]))
            state.first.CopyFrom(to_value(self.first[1]))
        if self.last is not None:
            state.last_at.CopyFrom(_occ(self.last[0]))
            state.last.CopyFrom(to_value(self.last[1]))
        for count, first, value in self.distinct.values():
            state.distinct.values.append(to_value(value))
            state.distinct_counts.append(count)
            state.distinct_first.append(_occ(first))
        return pb.FeatureState(key=feature_key(self.feature), all_time=state)

    def load(self, message: pb.FeatureState) -> None:
        s = message.all_time
        self.count, self.numbers = s.count, s.numbers
        self.total = Fraction(s.sum) if s.sum else Fraction(0)
        self.low = s.min.number_value if s.HasField("min") else None
        self.high = s.max.number_value if s.HasField("max") else None
        self.first = (_from_occ(s.first_at), from_value(s.first)) if s.HasField("first_at") else None
        self.last = (_from_occ(s.last_at), from_value(s.last)) if s.HasField("last_at") else None
        self.distinct = {}
        for value, count, first in zip(s.distinct.values, s.distinct_counts, s.distinct_first, strict=True):
            plain = from_value(value)
            self.distinct[canonical(plain)] = (count, _from_occ(first), plain)


@dataclass
class AfterAcc:
    """The latest `after` event and the latest `then_not` event. "Did E, then not F within W" holds
    from the moment W has passed since the latest E with no F at or after it (an F at the same
    moment as E answers it)."""

    feature: After
    after: Occurrence | None = None
    then_not: Occurrence | None = None

    def observe_after(self, event: Event) -> None:
        if self.after is None or event.occurrence > self.after:
            self.after = event.occurrence

    def observe_then_not(self, event: Event) -> None:
        if self.then_not is None or event.occurrence > self.then_not:
            self.then_not = event.occurrence

    def expire(self, now: Micros) -> None:
        """Nothing to drop: only the latest of each is kept."""

    def merge(self, other: AfterAcc) -> None:
        if other.after is not None:
            self.observe_after(Event(other.after[0], other.after[1], "", ""))
        if other.then_not is not None:
            self.observe_then_not(Event(other.then_not[0], other.then_not[1], "", ""))

    def pending(self) -> Micros | None:
        """The latest E's time when no F came at or after it; else None."""
        if self.after is None:
            return None
        if self.then_not is not None and self.then_not[0] >= self.after[0]:
            return None
        return self.after[0]

    def holds(self, now: Micros, within: Micros) -> bool:
        since = self.pending()
        return since is not None and now >= since + within

    def next_change(self, now: Micros, within: Micros) -> Micros | None:
        since = self.pending()
        return since + within if since is not None and since + within > now else None

    def to_proto(self) -> pb.FeatureState:
        state = pb.AfterState()
        if self.after is not None:
            state.after.CopyFrom(_occ(self.after))
        if self.then_not is not None:
            state.then_not.CopyFrom(_occ(self.then_not))
        return pb.FeatureState(key=feature_key(self.feature), after=state)

    def load(self, message: pb.FeatureState) -> None:
        s = message.after
        self.after = _from_occ(s.after) if s.HasField("after") else None
        self.then_not = _from_occ(s.then_not) if s.HasField("then_not") else None


@dataclass
class PurchasesAcc:
    """Purchases for lifecycle (count, first, the latest 20 times for the median interval) and, with
    a lookback, for RFM (each purchase inside the lookback with its revenue)."""

    feature: Purchases
    count: int = 0
    first: Occurrence | None = None
    latest: list[Occurrence] = field(default_factory=list)  # newest first
    in_lookback: list[tuple[Occurrence, float]] = field(default_factory=list)  # oldest first

    def observe(self, event: Event) -> None:
        self.count += 1
        if self.first is None or event.occurrence < self.first:
            self.first = event.occurrence
        self.latest = _latest(self.latest, [event.occurrence], LATEST_PURCHASES)
        if self.feature.lookback:
            bisect.insort(self.in_lookback, (event.occurrence, self.revenue(event)))

    def revenue(self, event: Event) -> float:
        """The first of the revenue properties holding a number (default: revenue, then total)."""
        for prop in self.feature.revenue:
            value = read_path(event.properties, prop)
            if is_number(value):
                return float(value)
        return 0.0

    def expire(self, now: Micros) -> None:
        if self.feature.lookback:
            edge = now - self.feature.lookback
            cut = bisect.bisect_right(self.in_lookback, edge, key=lambda e: e[0][0])
            if cut:
                del self.in_lookback[:cut]

    def merge(self, other: PurchasesAcc) -> None:
        self.count += other.count
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = other.first
        self.latest = _latest(self.latest, other.latest, LATEST_PURCHASES)
        merged = dict(self.in_lookback)
        merged.update(other.in_lookback)
        self.in_lookback = sorted(merged.items())

    def inside(self, now: Micros) -> list[tuple[Occurrence, float]]:
        edge = now - self.feature.lookback
        return [(o, r) for o, r in self.in_lookback if o[0] > edge]

    def next_change(self, now: Micros) -> Micros | None:
        """The next purchase leaving the lookback (stage thresholds are lifecycle.py's)."""
        if not self.feature.lookback:
            return None
        first = bisect.bisect_right(self.in_lookback, now - self.feature.lookback, key=lambda e: e[0][0])
        return (
            self.in_lookback[first][0][0] + self.feature.lookback if first < len(self.in_lookback) else None
        )

    def to_proto(self) -> pb.FeatureState:
        state = pb.PurchasesState(
            count=self.count,
            latest=[_occ(o) for o in self.latest],
            in_lookback=[_occ(o) for o, _ in self.in_lookback],
            revenues=[r for _, r in self.in_lookback],
        )
        if self.first is not None:
            state.first.CopyFrom(_occ(self.first))
        return pb.FeatureState(key=feature_key(self.feature), purchases=state)

    def load(self, message: pb.FeatureState) -> None:
        s = message.purchases
        self.count = s.count
        self.first = _from_occ(s.first) if s.HasField("first") else None
        self.latest = [_from_occ(o) for o in s.latest]
        self.in_lookback = [(_from_occ(o), r) for o, r in zip(s.in_lookback, s.revenues, strict=True)]


Accumulator = RecentAcc | WindowAcc | AllTimeAcc | AfterAcc | PurchasesAcc


def new_accumulator(feature: Feature) -> Accumulator:
    if isinstance(feature, Recent):
        return RecentAcc(feature)
    if isinstance(feature, Window):
        return WindowAcc(feature)
    if isinstance(feature, AllTime):
        return AllTimeAcc(feature)
    if isinstance(feature, After):
        return AfterAcc(feature)
    return PurchasesAcc(feature)


def load_accumulator(feature: Feature, message: pb.FeatureState) -> Accumulator:
    accumulator = new_accumulator(feature)
    accumulator.load(message)
    return accumulator


def merge(mine: Accumulator, other: Accumulator) -> None:
    """Fold `other` into `mine` (the same feature): as if `mine` had also observed `other`'s events."""
    if type(mine) is not type(other) or mine.feature != other.feature:
        raise ValueError("accumulators of different features do not merge")
    mine.merge(other)  # type: ignore[arg-type]
