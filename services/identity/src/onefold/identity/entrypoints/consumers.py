"""Events the identity service consumes from upstream services (durable subscribers, onefold.eventlog):
every event ingest accepted is resolved to a profile, and every trait a journey step set is recorded
on its profile, each in the subscriber's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import Subscription
from onefold.identity.application import IdentityApplication


def subscriptions(application: IdentityApplication) -> Sequence[Subscription]:
    """`application` is called per batch: the composition builds the application after the store."""
    return (
        Subscription(upstream="ingest", handler=application.handle_accepted),
        Subscription(upstream="journeys", handler=application.handle_journeys),
    )
