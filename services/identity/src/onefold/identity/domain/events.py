"""The events of the identity log: every message of identity.proto declaring an event schema version."""

from __future__ import annotations

from onefold.contracts.identity.v1 import identity_pb2
from onefold.eventlog.registry import EventRegistry

REGISTRY = EventRegistry.declared_in(identity_pb2)
