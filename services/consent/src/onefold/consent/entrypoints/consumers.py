"""Events the consent service consumes: identity's resolved events (consent carried inside tracked
events) and its merges, handled on the writer thread in the subscriber's batch transaction."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.consent.application.identity_events import IdentityEvents
from onefold.eventlog.service import Subscription


def subscriptions(identity: IdentityEvents) -> Sequence[Subscription]:
    return (Subscription(upstream="identity", handler=identity.handle_identity),)
