"""Short constructors of segments definitions and events for the domain tests."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain.definitions import SECOND
from onefold.segments.domain.features import Event

HOUR = 3600 * SECOND
DAY = 24 * HOUR
T0 = 1_780_000_000 * SECOND  # an arbitrary moment in 2026

OPS = {name.removeprefix("OPERATOR_"): value for name, value in pb.Operator.items()}


def dur(micros: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=micros // SECOND, nanos=(micros % SECOND) * 1000)


def value(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int | float):
        out.number_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif v is None:
        out.null_value = struct_pb2.NULL_VALUE
    else:
        out.list_value.values.extend(value(x) for x in v)
    return out


def pred(op: str, v: Any = None, values: list[Any] | None = None) -> pb.Predicate:
    p = pb.Predicate(op=OPS[op])  # type: ignore[arg-type]
    if v is not None:
        p.value.CopyFrom(value(v))
    if values is not None:
        p.values.extend(value(x) for x in values)
    return p


def event_filter(name: str = "", type: str = "track", **where: tuple[str, Any]) -> pb.EventFilter:
    f = pb.EventFilter(type=type, event=name)
    for path, (op, v) in where.items():
        f.where.add(path=path.replace("__", "."), predicate=pred(op, v))
    return f


def trait(path: str, op: str, v: Any = None, values: list[Any] | None = None) -> pb.Condition:
    return pb.Condition(trait=pb.TraitTest(trait=path, predicate=pred(op, v, values)))


def computed_test(name: str, op: str, v: Any = None) -> pb.Condition:
    return pb.Condition(computed_trait=pb.ComputedTraitTest(computed_trait=name, predicate=pred(op, v)))


def tag_test(name: str, op: str | None = None, v: Any = None) -> pb.Condition:
    test = pb.TagTest(tag=name)
    if op is not None:
        test.predicate.CopyFrom(pred(op, v))
    return pb.Condition(tag=test)


def in_segment(name: str) -> pb.Condition:
    return pb.Condition(in_segment=name)


def performed(
    name: str = "",
    min_count: int = 0,
    max_count: int = 0,
    within: int | None = None,
    **where: tuple[str, Any],
) -> pb.Condition:
    p = pb.Performed(event=event_filter(name, **where), min_count=min_count, max_count=max_count)
    if within is not None:
        p.within.CopyFrom(dur(within))
    return pb.Condition(performed=p)


def not_after(after: str, then_not: str, within: int) -> pb.Condition:
    return pb.Condition(
        not_performed_after=pb.NotPerformedAfter(
            after=event_filter(after), then_not=event_filter(then_not), within=dur(within)
        )
    )


def all_of(*conditions: pb.Condition) -> pb.Condition:
    return pb.Condition(all_of=pb.Conditions(conditions=list(conditions)))


def any_of(*conditions: pb.Condition) -> pb.Condition:
    return pb.Condition(any_of=pb.Conditions(conditions=list(conditions)))


def negated(condition: pb.Condition) -> pb.Condition:
    return pb.Condition(negated=condition)


def segment(name: str, condition: pb.Condition, version: int = 1) -> pb.Definition:
    return pb.Definition(name=name, version=version, segment=pb.Segment(condition=condition))


def tag(name: str, *rules: tuple[pb.Condition, str], copy_trait: str = "") -> pb.Definition:
    return pb.Definition(
        name=name,
        version=1,
        tag=pb.Tag(rules=[pb.Tag.Rule(when=w, value=v) for w, v in rules], copy_trait=copy_trait),
    )


def computed(
    name: str, aggregation: str, prop: str = "", event: str = "", window: int | None = None
) -> pb.Definition:
    c = pb.ComputedTrait(
        event=event_filter(event),
        aggregation=pb.Aggregation.Value(f"AGGREGATION_{aggregation}"),
        property=prop,
    )
    if window is not None:
        c.window.CopyFrom(dur(window))
    return pb.Definition(name=name, version=1, computed_trait=c)


def lifecycle(name: str = "stage", relative: float = 0.0, **durations: int) -> pb.Definition:
    lc = pb.Lifecycle(relative=relative)
    for key, micros in durations.items():
        getattr(lc, key).CopyFrom(dur(micros))
    return pb.Definition(name=name, version=1, lifecycle=lc)


def rfm(
    name: str = "rfm",
    recency: list[float] | None = None,
    frequency: list[float] | None = None,
    monetary: list[float] | None = None,
    lookback: int | None = None,
    cells: list[pb.Rfm.Cell] | None = None,
) -> pb.Definition:
    r = pb.Rfm(cells=cells or [])
    if recency is not None or frequency is not None or monetary is not None:
        r.cut_offs.CopyFrom(
            pb.Rfm.CutOffs(recency_days=recency or [], frequency=frequency or [], monetary=monetary or [])
        )
    if lookback is not None:
        r.lookback.CopyFrom(dur(lookback))
    return pb.Definition(name=name, version=1, rfm=r)


_ids = iter(range(10**9))


def event(name: str, at: int, type: str = "track", event_id: str | None = None, **properties: Any) -> Event:
    return Event(at, event_id or f"e{next(_ids):09d}", type, name, properties)
