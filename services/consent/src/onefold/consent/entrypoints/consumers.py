"""Events the consent service consumes from upstream services (durable subscribers, onefold.eventlog)."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import Subscription


def subscriptions() -> Sequence[Subscription]:
    return ()
