"""The ingest service's own settings: the `ingest` section of onefold.yaml (`ONEFOLD_INGEST__<KEY>`)."""

from __future__ import annotations

from pydantic import Field

from onefold.platform.config import ServiceSection


class IngestSettings(ServiceSection):
    """Collection tuning (other services keep this section unread)."""

    section = "ingest"

    dedupe_window_seconds: float = Field(
        default=24 * 3600.0,
        gt=0,
        le=366 * 24 * 3600.0,
        description="how long an accepted messageId makes a repeat a duplicate (at most a year)",
    )
    default_rate_limit_per_second: float = Field(
        default=1000.0,
        gt=0,
        le=2**32 - 1,
        description="events per second of a source created without its own rate (rate 0)",
    )
    max_group_events: int = Field(default=5000, gt=0, description="most events committed in one transaction")
    linger_seconds: float = Field(
        default=0.0005,
        ge=0,
        le=1,
        description="how long a group commit waits for more callers; 0 = not at all",
    )
