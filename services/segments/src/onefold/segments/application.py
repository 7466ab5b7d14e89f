"""Use cases of the segments service (load -> decide -> append). Filled in by the segments issue."""

from __future__ import annotations

from onefold.eventlog import EventRegistry


def event_registry() -> EventRegistry:
    """The event types this service appends to its log (protobuf full names, with upcasters)."""
    return EventRegistry()
