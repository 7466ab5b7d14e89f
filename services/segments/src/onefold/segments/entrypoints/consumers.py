"""Events the segments service consumes: identity's stream (resolved events, traits, merges,
unmerges, erasures), handled on the writer thread in the subscriber's batch transaction."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import Subscription
from onefold.segments.application.profiles import IDENTITY_TYPES, ProfileFolds


def subscriptions(profiles: ProfileFolds) -> Sequence[Subscription]:
    return (
        Subscription(
            upstream="identity", handler=profiles.handle_identity, event_types=tuple(IDENTITY_TYPES)
        ),
    )
