"""Events the segments service consumes, each handled on the writer thread in the subscriber's batch
transaction: identity's stream (resolved events, traits, merges, unmerges, erasures), and the model
tags the insights service gives profiles (recorded as their tags, marked as model tags)."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import Subscription
from onefold.segments.application.profiles import IDENTITY_TYPES, INSIGHTS_TYPES, ProfileFolds


def subscriptions(profiles: ProfileFolds) -> Sequence[Subscription]:
    return (
        Subscription(
            upstream="identity", handler=profiles.handle_identity, event_types=tuple(IDENTITY_TYPES)
        ),
        Subscription(
            upstream="insights", handler=profiles.handle_insights, event_types=tuple(INSIGHTS_TYPES)
        ),
    )
