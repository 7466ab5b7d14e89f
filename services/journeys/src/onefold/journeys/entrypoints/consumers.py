"""Events the journeys service consumes: identity's (resolved events enter and move instances,
traits, erasures), segments' (memberships and tags, segment-triggered entries) and consent's
(withdrawals stop queued messages) — each handled on the writer thread in the subscriber's batch
transaction."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import Subscription
from onefold.journeys.application.runs import CONSENT_TYPES, IDENTITY_TYPES, SEGMENTS_TYPES, Runs


def subscriptions(runs: Runs) -> Sequence[Subscription]:
    return (
        Subscription(upstream="identity", handler=runs.handle_identity, event_types=tuple(IDENTITY_TYPES)),
        Subscription(upstream="segments", handler=runs.handle_segments, event_types=tuple(SEGMENTS_TYPES)),
        Subscription(upstream="consent", handler=runs.handle_consent, event_types=tuple(CONSENT_TYPES)),
    )
