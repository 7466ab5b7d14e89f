"""Channels built from the `journeys` section of a real onefold.yaml (loaded as the platform loads
every service's section), sending through real SMTP and HTTP servers and the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from channel_servers import http_server, smtp_server

from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.service import ServiceLog
from onefold.eventlog.store import EventStore
from onefold.journeys.adapters.providers import (
    DeliveryStatus,
    Message,
    SubjectKeySealer,
    build_channels,
)
from onefold.journeys.adapters.providers.sandbox import SEALED_PURPOSE, SandboxProvider
from onefold.journeys.adapters.providers.settings import ChannelsSettings, SandboxChannel
from onefold.journeys.domain.events import REGISTRY
from onefold.journeys.settings import JourneysSettings
from onefold.platform.config import ConfigError, load_settings


@pytest.fixture
async def sealer(tmp_path: Path) -> AsyncIterator[SubjectKeySealer]:
    store = EventStore(
        f"sqlite:///{tmp_path / 'journeys.db'}",
        service="journeys",
        registry=REGISTRY,
        keys=KeyEncryptionKey.generate(),
    )
    store.create_schema()
    log = ServiceLog(store)
    await log.writer.start()
    yield SubjectKeySealer(log, lambda workspace, profile: f"{workspace}:p:{profile}", SEALED_PURPOSE)
    await log.writer.stop()


def load(tmp_path: Path, journeys: dict[str, object]) -> ChannelsSettings:
    config = tmp_path / "onefold.yaml"
    config.write_text(yaml.safe_dump({"journeys": journeys}))
    settings = load_settings("journeys", config_file=config, env={}, sections=[JourneysSettings])
    return settings.section(JourneysSettings).channels


def message(channel: str, to: str, message_id: str) -> Message:
    return Message(
        message_id=message_id,
        workspace="acme",
        profile_id="p-1",
        channel=channel,
        to=to,
        subject="Hi",
        text="Hello",
    )


async def test_each_channel_goes_to_its_configured_provider(tmp_path: Path, sealer: SubjectKeySealer) -> None:
    (tmp_path / "sms.secret").write_text("sms-token-from-file\n")
    (tmp_path / "smtp.secret").write_text("unused-without-username")
    with smtp_server() as mail, http_server() as gateway:
        channels_settings = load(
            tmp_path,
            {
                "channels": {
                    "email": {
                        "kind": "smtp",
                        "host": "127.0.0.1",
                        "port": mail.port,
                        "security": "none",
                        "from_address": "news@shop.example",
                        "password": {"secret_file": str(tmp_path / "smtp.secret")},
                    },
                    "sms": {
                        "kind": "http",
                        "url": gateway.url,
                        "credential": {"secret_file": str(tmp_path / "sms.secret")},
                        "rate_per_second": 50,
                    },
                }
            },
        )
        channels = build_channels(channels_settings, data_dir=tmp_path, sealer=sealer)
        email = await channels.send(message("email", "ann@example.com", "m-email"))
        sms = await channels.send(message("sms", "+4915112345678", "m-sms"))
        push = await channels.send(message("push", "device-1", "m-push"))
        await channels.aclose()
    assert email.status is DeliveryStatus.DELIVERED and email.provider_message_id == "<m-email@shop.example>"
    assert [m.message["Message-ID"] for m in mail.received] == ["<m-email@shop.example>"]
    assert sms.status is DeliveryStatus.DELIVERED
    assert gateway.received[0].headers["authorization"] == "Bearer sms-token-from-file"
    assert push.provider_message_id == "sandbox:m-push"
    assert await channels.sandbox.count("acme", "p-1") == 1  # only the push went to the sandbox


async def test_by_default_every_channel_is_the_sandbox_in_the_data_dir(
    tmp_path: Path, sealer: SubjectKeySealer
) -> None:
    settings = load(tmp_path, {})
    assert settings == ChannelsSettings()
    channels = build_channels(settings, data_dir=tmp_path, sealer=sealer)
    for n, channel in enumerate(("email", "sms", "push", "wechat")):
        delivery = await channels.send(message(channel, "someone", f"m-{n}"))
        assert delivery.provider_message_id == f"sandbox:m-{n}"
    assert (tmp_path / "journeys-sandbox.db").is_file()
    assert await channels.sandbox.count("acme", "p-1") == 4
    unknown = await channels.send(message("fax", "someone", "m-fax"))
    assert unknown.status is DeliveryStatus.FAILED and unknown.error == "no provider for channel 'fax'"
    await channels.aclose()


async def test_the_sandbox_is_there_for_erasure_after_switching_to_a_real_provider(
    tmp_path: Path, sealer: SubjectKeySealer
) -> None:
    offline = build_channels(ChannelsSettings(), data_dir=tmp_path, sealer=sealer)
    await offline.send(message("sms", "+4915112345678", "m-before"))
    await offline.aclose()
    with http_server() as gateway:
        real = load(tmp_path, {"channels": {"sms": {"kind": "http", "url": gateway.url, "auth": "none"}}})
        channels = build_channels(real, data_dir=tmp_path, sealer=sealer)
        assert isinstance(channels.sandbox, SandboxProvider)
        assert await channels.sandbox.erase("acme", "p-1") == 1
        await channels.aclose()


def test_unknown_keys_and_bad_values_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown configuration key 'journeys\.channels\.email\.smtp\.hots'"
    ):
        load(
            tmp_path,
            {"channels": {"email": {"kind": "smtp", "hots": "x", "host": "h", "from_address": "a@b"}}},
        )
    with pytest.raises(ConfigError, match=r"journeys\.channels\.sms"):
        load(tmp_path, {"channels": {"sms": {"kind": "carrier-pigeon"}}})
    with pytest.raises(ConfigError, match="retry_max_delay_seconds"):
        load(
            tmp_path,
            {
                "channels": {
                    "push": {"kind": "sandbox", "retry_base_delay_seconds": 5, "retry_max_delay_seconds": 1}
                }
            },
        )


def test_providers_that_cannot_work_are_refused_when_built(tmp_path: Path) -> None:
    class NeverSeals:
        async def seal(self, workspace: str, profile_id: str, plaintext: bytes) -> bytes:
            raise AssertionError("nothing is sent while building")

        async def unseal(self, workspace: str, profile_id: str, sealed: bytes) -> bytes | None:
            raise AssertionError("nothing is read while building")

    smtp_for_sms = load(
        tmp_path, {"channels": {"sms": {"kind": "smtp", "host": "h", "from_address": "a@b.example"}}}
    )
    with pytest.raises(ConfigError, match="SMTP provider delivers email only"):
        build_channels(smtp_for_sms, data_dir=tmp_path, sealer=NeverSeals())
    missing_file = load(
        tmp_path,
        {
            "channels": {
                "wechat": {
                    "kind": "http",
                    "url": "https://wx.example/send",
                    "credential": {"secret_file": str(tmp_path / "nope")},
                }
            }
        },
    )
    with pytest.raises(
        ConfigError, match=r"cannot read the journeys\.channels\.wechat credential file .*nope"
    ):
        build_channels(missing_file, data_dir=tmp_path, sealer=NeverSeals())
    no_secret = load(tmp_path, {"channels": {"wechat": {"kind": "http", "url": "https://wx.example/send"}}})
    with pytest.raises(ConfigError, match=r"auth 'bearer' needs credential\.secret_file"):
        build_channels(no_secret, data_dir=tmp_path, sealer=NeverSeals())


def test_secrets_given_as_values_never_show_in_the_settings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        {
            "channels": {
                "sms": {
                    "kind": "http",
                    "url": "https://sms.example",
                    "credential": {"secret": "tok-SECRET-1"},
                },
                "email": {
                    "kind": "smtp",
                    "host": "h",
                    "from_address": "a@b.example",
                    "password": {"secret": "pw-SECRET-2"},
                },
            }
        },
    )
    shown = repr(settings) + str(settings)
    assert "tok-SECRET-1" not in shown and "pw-SECRET-2" not in shown
    assert isinstance(settings.push, SandboxChannel)


def test_a_secret_given_in_the_wrong_place_is_refused_without_quoting_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(
            tmp_path,
            {
                "channels": {
                    "email": {
                        "kind": "smtp",
                        "host": "h",
                        "from_address": "a@b.example",
                        "password": "pw-SECRET-3",
                    }
                }
            },
        )
    assert "journeys.channels.email.smtp.password" in str(raised.value)
    assert "pw-SECRET-3" not in str(raised.value)
