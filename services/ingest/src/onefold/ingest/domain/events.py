"""The events the ingest service appends to its log: every message of onefold.ingest.v1 that
declares `option (onefold.options.v1.event_schema_version)`."""

from __future__ import annotations

from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in(ingest_pb2)
