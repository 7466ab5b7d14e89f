"""Events the segments service consumes from upstream services (durable subscribers, onefold.eventlog).

Segments is granted identity's and consent's streams (`CONSUMES` in onefold.platform.bus_permissions)
but subscribes to nothing yet. A subscription is `Subscription(upstream, handler)`; the handler is
a sync method of the application, given each batch's open transaction on the writer thread, which
appends with `projector.record(conn, events)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from onefold.eventlog.service import Subscription


def subscriptions() -> Sequence[Subscription]:
    return ()
