"""The events the consent service appends to its log: declared once, in the proto
(`option (onefold.options.v1.event_schema_version)` on each message of consent.proto)."""

from __future__ import annotations

from onefold.contracts.consent.v1 import consent_pb2
from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in(consent_pb2)
