"""Events the insights service consumes, each applied to the analytical copy in one transaction per
batch: identity's resolved events, merges and erasures; segments' memberships and tags; journeys'
sends and control groups. Only these types are fetched."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import Subscription
from onefold.insights.application.feed import IDENTITY_TYPES, JOURNEYS_TYPES, SEGMENTS_TYPES, WarehouseFeed


def subscriptions(feed: WarehouseFeed) -> Sequence[Subscription]:
    return (
        Subscription(upstream="identity", handler=feed.from_identity, event_types=tuple(IDENTITY_TYPES)),
        Subscription(upstream="segments", handler=feed.from_segments, event_types=tuple(SEGMENTS_TYPES)),
        Subscription(upstream="journeys", handler=feed.from_journeys, event_types=tuple(JOURNEYS_TYPES)),
    )
