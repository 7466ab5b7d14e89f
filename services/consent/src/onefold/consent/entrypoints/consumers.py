"""Events the consent service consumes: identity's resolved events (consent carried inside tracked
events) and its merges, in the subscriber's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.consent.application import ConsentApplication
from onefold.eventlog.service import Subscription


def subscriptions(application: ConsentApplication) -> Sequence[Subscription]:
    """`application` is called per batch: the composition builds the application after the store."""
    return (
        Subscription(
            upstream="identity",
            handler=application.handle_identity,
        ),
    )
