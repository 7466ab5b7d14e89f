"""Events the consent service consumes: identity's resolved events (consent carried inside tracked
events) and its merges, in the subscriber's transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onefold.consent.application import ConsentApplication
from onefold.eventlog.service import Subscription


def subscriptions(application: Callable[[], ConsentApplication]) -> Sequence[Subscription]:
    """`application` is called per batch: the composition builds the application after the store."""
    return (
        Subscription(
            upstream="identity",
            handler=lambda conn, envelopes: application().handle_identity(conn, envelopes),
        ),
    )
