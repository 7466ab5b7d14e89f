"""The journeys service's own settings: the `journeys` section of onefold.yaml
(`ONEFOLD_JOURNEYS__<KEY>`); other services keep this section unread.

```yaml
journeys:
  channels: {…}               # how each channel is delivered (adapters/providers/settings.py)
  quiet_hours: "21:00-08:00"  # in each person's time zone; "" = none
  quiet_channels: [sms, push, wechat]
  caps:                       # per channel, over rolling windows
    email: {per_day: 2, per_week: 5}
```
"""

from __future__ import annotations

from datetime import time

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onefold.journeys.adapters.providers.settings import ChannelsSettings
from onefold.journeys.domain.pacing import FrequencyCap, PacingPolicy, QuietHours
from onefold.platform.config import ServiceSection

_CHANNELS = ("email", "sms", "push", "wechat")


class CapSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_day: int | None = Field(default=None, ge=0)
    per_week: int | None = Field(default=None, ge=0)


class JourneysSettings(ServiceSection):
    section = "journeys"

    channels: ChannelsSettings = ChannelsSettings()
    quiet_hours: str = Field(
        default="", pattern=r"^$|^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"
    )
    quiet_channels: list[str] = ["sms", "push", "wechat"]
    caps: dict[str, CapSettings] = {}
    consent_timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    @field_validator("quiet_channels")
    @classmethod
    def _known_quiet_channels(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(_CHANNELS))
        if unknown:
            raise ValueError(f"unknown channels {unknown}: one of {list(_CHANNELS)}")
        return value

    @field_validator("caps")
    @classmethod
    def _known_cap_channels(cls, value: dict[str, CapSettings]) -> dict[str, CapSettings]:
        unknown = sorted(set(value) - set(_CHANNELS))
        if unknown:
            raise ValueError(f"unknown channels {unknown}: one of {list(_CHANNELS)}")
        return value

    def pacing(self) -> PacingPolicy:
        quiet = None
        if self.quiet_hours:
            start, end = (time.fromisoformat(part) for part in self.quiet_hours.split("-"))
            quiet = QuietHours(start, end, frozenset(self.quiet_channels))
        caps = {channel: FrequencyCap(cap.per_day, cap.per_week) for channel, cap in self.caps.items()}
        return PacingPolicy(caps, quiet)
