"""What flows where: an upstream change (a resolved event, a segment entered or left, traits set)
against a workspace's active destinations, decided purely — which destinations take it, what each
is sent (the event's mapping), and the delivery's id.

A delivery's id is derived from the destination, the kind and the upstream event, so the same
upstream event delivered twice by the bus queues one delivery; it is the receiver's idempotency
key, unchanged by retries and replays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.domain.definitions import EVERY_TRAIT

Json = Any
KIND_NAMES: dict[int, str] = {
    pb.DELIVERY_KIND_EVENT: "event",
    pb.DELIVERY_KIND_SEGMENT_ENTERED: "segment_entered",
    pb.DELIVERY_KIND_SEGMENT_EXITED: "segment_exited",
    pb.DELIVERY_KIND_TRAITS: "traits",
    pb.DELIVERY_KIND_DELETION: "deletion",
}
_MISSING = object()


def delivery_id(workspace: str, destination: str, kind: int, cause: str) -> str:
    """Stable per (workspace, destination, kind, upstream event): 32 hex characters."""
    digest = hashlib.sha256(f"{workspace}\x1f{destination}\x1f{kind}\x1f{cause}".encode()).hexdigest()
    return digest[:32]


@dataclass(frozen=True)
class Routed:
    """One delivery decided: to `destination`, of `kind`, named `name`, sending `data`."""

    destination: str
    kind: int
    name: str
    data: dict[str, Json]


def resolve_path(document: Mapping[str, Json], path: str) -> Json:
    """The value at a dotted path (`properties.total`), or _MISSING."""
    current: Json = document
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _number(value: Json) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _compare(left: Json, right: Json) -> int | None:
    """-1, 0, 1 between two numbers or two strings; None when they do not compare."""
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return (a > b) - (a < b)
    if isinstance(left, str) and isinstance(right, str):
        return (left > right) - (left < right)
    return None


def _equal(left: Json, right: Json) -> bool:
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return a == b
    return bool(left == right)


def holds(condition: pb.Filter, document: Mapping[str, Json]) -> bool:
    value = resolve_path(document, condition.field)
    op = condition.op
    if op == pb.FILTER_OP_EXISTS:
        return value is not _MISSING and value is not None
    if value is _MISSING:
        return op == pb.FILTER_OP_NE
    wanted = MessageToDict(condition.value) if condition.HasField("value") else None
    if op == pb.FILTER_OP_EQ:
        return _equal(value, wanted)
    if op == pb.FILTER_OP_NE:
        return not _equal(value, wanted)
    if op == pb.FILTER_OP_IN:
        return isinstance(wanted, list) and any(_equal(value, w) for w in wanted)
    if op == pb.FILTER_OP_CONTAINS:
        if isinstance(value, str) and isinstance(wanted, str):
            return wanted in value
        return isinstance(value, list) and any(_equal(v, wanted) for v in value)
    order = _compare(value, wanted)
    if order is None:
        return False
    return {
        pb.FILTER_OP_GT: order > 0,
        pb.FILTER_OP_GTE: order >= 0,
        pb.FILTER_OP_LT: order < 0,
        pb.FILTER_OP_LTE: order <= 0,
    }.get(op, False)


def matches(flow: pb.EventFlow, event: Mapping[str, Json]) -> bool:
    if event.get("type") != flow.type:
        return False
    if flow.name and flow.name != event_name(event):
        return False
    return all(holds(condition, event) for condition in flow.where)


def event_name(event: Mapping[str, Json]) -> str:
    """A track's event name, a page's or screen's name; identify has none."""
    return str(event.get("event") or event.get("name") or "")


def mapped(flow: pb.EventFlow, event: Mapping[str, Json]) -> dict[str, Json]:
    """What a matching event sends: its mapping (a field missing from the event is left out), or
    the whole event."""
    if not flow.mapping:
        return dict(event)
    found: dict[str, Json] = {}
    for output, source in sorted(flow.mapping.items()):
        value = resolve_path(event, source)
        if value is not _MISSING:
            found[output] = value
    return found


def may_route(destinations: Sequence[pb.Destination], event_type: str, name: str) -> bool:
    """Whether some destination has a flow for events of this type and name: only those are worth
    shaping as the Segment spec and testing against the flows' conditions."""
    return any(
        flow.type == event_type and (not flow.name or flow.name == name)
        for destination in destinations
        for flow in destination.events
    )


def route_event(destinations: Sequence[pb.Destination], event: Mapping[str, Json]) -> list[Routed]:
    """Each destination's first flow the event matches decides what it is sent."""
    routed = []
    for destination in destinations:
        for flow in destination.events:
            if matches(flow, event):
                name = event_name(event) or str(event.get("type", ""))
                routed.append(Routed(destination.name, pb.DELIVERY_KIND_EVENT, name, mapped(flow, event)))
                break
    return routed


def route_membership(destinations: Sequence[pb.Destination], segment: str, *, entered: bool) -> list[Routed]:
    kind = pb.DELIVERY_KIND_SEGMENT_ENTERED if entered else pb.DELIVERY_KIND_SEGMENT_EXITED
    return [Routed(d.name, kind, segment, {}) for d in destinations if segment in d.segments]


def route_traits(destinations: Sequence[pb.Destination], traits: Mapping[str, Json]) -> list[Routed]:
    """The changed traits each destination names (none of them: nothing is sent)."""
    routed = []
    for destination in destinations:
        wanted = set(destination.traits)
        chosen = {k: v for k, v in traits.items() if EVERY_TRAIT in wanted or k in wanted}
        if chosen:
            routed.append(Routed(destination.name, pb.DELIVERY_KIND_TRAITS, "", chosen))
    return routed
