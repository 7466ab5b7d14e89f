"""Events the destinations service consumes: identity's (resolved events and trait changes to
route, erasures) and segments' (memberships entered and left) — each handled on the writer thread
in the subscriber's batch transaction. Consent is asked at delivery time instead of followed."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.destinations.application.routing import IDENTITY_TYPES, SEGMENTS_TYPES, Router
from onefold.eventlog.service import Subscription


def subscriptions(router: Router) -> Sequence[Subscription]:
    return (
        Subscription(upstream="identity", handler=router.handle_identity, event_types=tuple(IDENTITY_TYPES)),
        Subscription(upstream="segments", handler=router.handle_segments, event_types=tuple(SEGMENTS_TYPES)),
    )
