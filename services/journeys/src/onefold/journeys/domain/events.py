"""The events the journeys service records in its log: declared once, in its proto.

Journeys records none yet. Its events will be the messages of
`protos/onefold/journeys/v1/journeys.proto` that carry `option (onefold.options.v1.event_schema_version)`;
this becomes `EventRegistry.declared_in(journeys_pb2, upcasters={...})`.
"""

from __future__ import annotations

from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in()
