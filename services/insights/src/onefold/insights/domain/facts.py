"""What of a resolved event enters the analytical copy: the fields analyses read, nothing personal.

An ingest event reaches insights inside identity's `EventResolved`, with its personal parts (ids,
properties, traits, context) opened. Of those, only these leave as an `EventFact`:

- the resolved profile id (a pseudonym), the event id, its time, type and name;
- `revenue` (properties.revenue, else properties.total, when a number) and `currency`;
- `product_id` and `category` (properties; a page's category), the catalogue's ids, not the person's;
- the campaign's `source`, `medium` and `name` (context.campaign: the UTM parameters) and
  `context.channel`;
- the properties the workspace allows by name (`allowed_properties`), when their values are scalars.

Everything else — user and anonymous ids, traits, e-mail addresses, free text, the rest of the
properties and context — is left out, so the copy holds nothing an erasure would have to find by
anything but the profile id. Texts are cut to TEXT_LIMIT characters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from google.protobuf import struct_pb2

from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2

TEXT_LIMIT = 200
_TYPES = {
    ingest_pb2.EVENT_TYPE_TRACK: "track",
    ingest_pb2.EVENT_TYPE_IDENTIFY: "identify",
    ingest_pb2.EVENT_TYPE_PAGE: "page",
    ingest_pb2.EVENT_TYPE_SCREEN: "screen",
    ingest_pb2.EVENT_TYPE_GROUP: "group",
    ingest_pb2.EVENT_TYPE_ALIAS: "alias",
}


class EventFact(NamedTuple):
    """A row of the warehouse's `events` table, in its column order."""

    workspace: str
    event_id: str
    profile_id: str
    ts: datetime
    type: str
    event: str
    revenue: float | None
    currency: str | None
    product_id: str | None
    category: str | None
    campaign_source: str | None
    campaign_medium: str | None
    campaign_name: str | None
    channel: str | None
    properties: str | None  # JSON of the allowed properties, None when there are none


def event_fact(resolved: identity_pb2.EventResolved, allowed_properties: Iterable[str] = ()) -> EventFact:
    """The analytical row of one resolved event (its personal fields already opened)."""
    event = resolved.event
    properties = event.properties.fields
    campaign = _struct(event.context.fields.get("campaign"))
    kind = _TYPES.get(event.type, "")
    revenue = _number(properties.get("revenue"))
    if revenue is None:
        revenue = _number(properties.get("total"))
    allowed: dict[str, str | float | bool] = {}
    for name in allowed_properties:
        value = _scalar(properties.get(name))
        if value is not None:
            allowed[name] = value
    return EventFact(
        workspace=resolved.workspace,
        event_id=resolved.event_id,
        profile_id=resolved.profile_id,
        ts=(event.timestamp if event.HasField("timestamp") else event.received_at)
        .ToDatetime(tzinfo=UTC)
        .replace(tzinfo=None),
        type=kind,
        event=_cut(event.event if kind == "track" else event.name if kind in ("page", "screen") else "")
        or "",
        revenue=revenue,
        currency=_text(properties.get("currency")),
        product_id=_text(properties.get("product_id")),
        category=_text(properties.get("category")) or _cut(event.category),
        campaign_source=_text(campaign.get("source")),
        campaign_medium=_text(campaign.get("medium")),
        campaign_name=_text(campaign.get("name")),
        channel=_text(event.context.fields.get("channel")),
        properties=json.dumps(allowed, sort_keys=True, separators=(",", ":")) if allowed else None,
    )


def _struct(value: struct_pb2.Value | None) -> dict[str, struct_pb2.Value]:
    if value is None or value.WhichOneof("kind") != "struct_value":
        return {}
    return dict(value.struct_value.fields)


def _number(value: struct_pb2.Value | None) -> float | None:
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":  # "49.90": clients often send amounts as strings
        try:
            return float(value.string_value)
        except ValueError:
            return None
    return None


def _scalar(value: struct_pb2.Value | None) -> str | float | bool | None:
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return _cut(value.string_value)
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _text(value: struct_pb2.Value | None) -> str | None:
    """A string or a number as text (product ids are either); None for anything else or empty."""
    scalar = _scalar(value)
    if scalar is None or isinstance(scalar, bool):
        return None
    if isinstance(scalar, float):
        return str(int(scalar)) if scalar.is_integer() else str(scalar)
    return scalar or None


def _cut(text: str) -> str | None:
    return text[:TEXT_LIMIT] if text else None
