"""The events the insights service records in its log: declared once, in its proto (none yet: the
analytical copy is fed from the other services' streams, and its analyses change nothing)."""

from __future__ import annotations

from onefold.contracts.insights.v1 import insights_pb2
from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in(insights_pb2)
