"""Use cases of the ingest service: authenticate a source, accept events durably, quarantine the rest.

The HTTP and gRPC entrypoints call only what is declared here. Each use case lives in its module:

- `sources` — write keys and source administration (`ingest-source:<source_id>`);
- `collection` — rate limits and `submit`: dedupe, decide, group-committed append (`ingest:<subject>`);
- `quarantine` — listing and replaying quarantined events (`ingest-quarantine:<workspace>`);
- `data_subjects` — export and erasure of a person's events.

Every write goes through the service's `ServiceLog`: the writer thread, and `Projector.write` /
`record` (append, read models and tracking rows in one transaction; see docs/architecture.md,
"The event log").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from onefold.eventlog.service import ServiceLog
from onefold.ingest.application.data_subjects import DataSubjectUseCases
from onefold.ingest.application.quarantine import QuarantineUseCases
from onefold.ingest.application.sources import Source, source_to_proto
from onefold.ingest.domain import PlanCache

DEFAULT_DEDUPE_WINDOW = timedelta(hours=24)
DEFAULT_RATE_LIMIT = 1000.0


class IngestApplication(QuarantineUseCases, DataSubjectUseCases):
    """See the module docstring. All methods are safe to call from the event loop."""

    def __init__(
        self,
        log: ServiceLog,
        *,
        dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW,
        default_rate_limit_per_second: float = DEFAULT_RATE_LIMIT,
        max_group_events: int = 5000,
        linger_seconds: float = 0.0005,
        source_refresh_seconds: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.log = log
        self.dedupe_window = dedupe_window
        self.default_rate_limit = default_rate_limit_per_second
        self.source_refresh_seconds = source_refresh_seconds
        self.clock = clock
        self._plans = PlanCache()
        self._sources = {}
        self._keys = {}
        self._missing_keys = {}
        self._missing_sources = {}
        self._buckets = {}
        self._last_prune = 0.0
        self.group_commit = log.writer.group(
            self._commit,
            after_group=self._maybe_prune,
            max_group_items=max_group_events,
            linger_seconds=linger_seconds,
        )
        self._load_sources()


__all__ = ["IngestApplication", "Source", "source_to_proto"]
