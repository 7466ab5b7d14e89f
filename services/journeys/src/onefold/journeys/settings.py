"""The journeys service's own settings: the `journeys` section of onefold.yaml
(`ONEFOLD_JOURNEYS__<KEY>`); other services keep this section unread."""

from __future__ import annotations

from onefold.journeys.adapters.providers.settings import ChannelsSettings
from onefold.platform.config import ServiceSection


class JourneysSettings(ServiceSection):
    section = "journeys"

    channels: ChannelsSettings = ChannelsSettings()
