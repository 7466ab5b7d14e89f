"""The events the destinations service records in its log: declared once, in its proto (the
messages of `protos/onefold/destinations/v1/destinations.proto` with
`option (onefold.options.v1.event_schema_version)`). The fold reading a destination's versions is
`domain/definitions.py` (`DestinationVersions`); the read model is `adapters/read_model.py`."""

from __future__ import annotations

from onefold.contracts.destinations.v1 import destinations_pb2
from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in(destinations_pb2)
