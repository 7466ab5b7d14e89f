"""The check that a service's declared events are all handled (see onefold.eventlog.dispatch)."""

from __future__ import annotations

from collections.abc import Mapping

from onefold.eventlog.dispatch import Handlers
from onefold.eventlog.registry import EventRegistry


def assert_events_handled(
    registry: EventRegistry, *handlers: type[Handlers], not_folded: Mapping[str, str] | None = None
) -> None:
    """Every event type a service registers is handled by one of its folds or projections, and
    every handled type is registered; `not_folded` names the types deliberately left out, each
    with the reason (e.g. a request's audit trail that only the history view reads)."""
    not_folded = dict(not_folded or {})
    handled = frozenset().union(*(handler.handled_types() for handler in handlers))
    registered = set(registry.names())
    unhandled = sorted(registered - handled - set(not_folded))
    assert not unhandled, f"registered but handled by no fold or projection: {unhandled}"
    unregistered = sorted((handled | set(not_folded)) - registered)
    assert not unregistered, f"handled but not registered in domain/events.py: {unregistered}"
