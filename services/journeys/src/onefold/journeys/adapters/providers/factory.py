"""Builds every channel's provider from the `journeys.channels` settings, each wrapped in its rate
limit and retries: `channels = build_channels(settings, data_dir=..., sealer=...)`, then
`await channels.send(message)`, and `await channels.aclose()` at stop."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from onefold.journeys.adapters.providers.base import Delivery, Message, Provider
from onefold.journeys.adapters.providers.http import HttpProvider
from onefold.journeys.adapters.providers.resilience import RateLimited, Retrying, RetryPolicy, TokenBucket
from onefold.journeys.adapters.providers.sandbox import SandboxProvider
from onefold.journeys.adapters.providers.sealing import Sealer
from onefold.journeys.adapters.providers.settings import (
    ChannelProvider,
    ChannelsSettings,
    HttpChannel,
    SmtpChannel,
)
from onefold.journeys.adapters.providers.smtp import SmtpProvider
from onefold.platform.config import ConfigError
from onefold.platform.database import create_engine

CHANNELS = ("email", "sms", "push", "wechat")


class Channels:
    """The provider of each channel, and the sandbox. The sandbox exists whatever the settings say:
    sends it kept before a channel was switched to a real provider must still be counted and erased
    for data-subject requests."""

    def __init__(self, providers: Mapping[str, Provider], sandbox: SandboxProvider) -> None:
        self.providers = dict(providers)
        self.sandbox = sandbox

    async def send(self, message: Message) -> Delivery:
        provider = self.providers.get(message.channel)
        if provider is None:
            return Delivery.failed(f"no provider for channel '{message.channel[:32]}'")
        return await provider.send(message)

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()


def build_channels(settings: ChannelsSettings, *, data_dir: Path, sealer: Sealer) -> Channels:
    """Raises ConfigError (naming the channel, never a secret) for a provider that cannot be built."""
    url = settings.sandbox_database_url or f"sqlite:///{data_dir / 'journeys-sandbox.db'}"
    sandbox = SandboxProvider(create_engine(url), sealer)
    providers: dict[str, Provider] = {}
    for channel in CHANNELS:
        chosen: ChannelProvider = getattr(settings, channel)
        inner = _provider(channel, chosen, sandbox)
        policy = RetryPolicy(
            attempts=chosen.retry_attempts,
            base_delay_seconds=chosen.retry_base_delay_seconds,
            max_delay_seconds=chosen.retry_max_delay_seconds,
        )
        bucket = TokenBucket(chosen.rate_per_second, chosen.burst)
        providers[channel] = Retrying(RateLimited(inner, bucket), policy)
    return Channels(providers, sandbox)


def _provider(channel: str, chosen: ChannelProvider, sandbox: SandboxProvider) -> Provider:
    if isinstance(chosen, SmtpChannel):
        if channel != "email":
            raise ConfigError(f"journeys.channels.{channel}: an SMTP provider delivers email only")
        return SmtpProvider(chosen, chosen.password.read(f"journeys.channels.{channel} password"))
    if isinstance(chosen, HttpChannel):
        secret = chosen.credential.read(f"journeys.channels.{channel} credential")
        if chosen.auth != "none" and not secret:
            raise ConfigError(
                f"journeys.channels.{channel}: auth '{chosen.auth}' needs credential.secret_file "
                "(or credential.secret)"
            )
        return HttpProvider(chosen, secret)
    return sandbox
