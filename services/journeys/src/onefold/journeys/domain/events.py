"""The events the journeys service records in its log: declared once, in its proto (the messages of
`protos/onefold/journeys/v1/journeys.proto` with `option (onefold.options.v1.event_schema_version)`).
The folds reading them are `domain/catalog.py` (a journey's versions), `domain/instance.py` (one
person's run through a journey) and `domain/stats.py` (the counters of a journey)."""

from __future__ import annotations

from onefold.contracts.journeys.v1 import journeys_pb2
from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in(journeys_pb2)
