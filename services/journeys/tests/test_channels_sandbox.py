"""The sandbox provider on real SQLite files, sealing with the profile's real data key from the
journeys log (`EventStore.data_ciphers` through `SubjectKeySealer`): nothing personal in clear on
disk, each message kept once, counted and erased per profile, unreadable after crypto-shredding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.service import ServiceLog
from onefold.eventlog.store import EventStore
from onefold.journeys.adapters.providers.base import Delivery, DeliveryStatus, Message
from onefold.journeys.adapters.providers.sandbox import SEALED_PURPOSE, SandboxProvider, sandbox_sends
from onefold.journeys.adapters.providers.sealing import SubjectKeySealer
from onefold.journeys.domain.events import REGISTRY
from onefold.platform.database import create_engine

ADDRESS = "zoe.sandbox.probe@example.com"
BODY = "Hello Zoe, your basket misses you"


def profile_subject(workspace: str, profile_id: str) -> str:
    return f"{workspace}:p:{profile_id}"


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[ServiceLog]:
    store = EventStore(
        f"sqlite:///{tmp_path / 'journeys.db'}",
        service="journeys",
        registry=REGISTRY,
        keys=KeyEncryptionKey.generate(),
    )
    store.create_schema()
    service_log = ServiceLog(store)
    await service_log.writer.start()
    yield service_log
    await service_log.writer.stop()


@pytest.fixture
def sandbox_path(tmp_path: Path) -> Path:
    return tmp_path / "journeys-sandbox.db"


@pytest.fixture
def sandbox(log: ServiceLog, sandbox_path: Path) -> SandboxProvider:
    """The sandbox on a SQLite file of its own, as `onefold up` has it."""
    sealer = SubjectKeySealer(log, profile_subject, SEALED_PURPOSE)
    return SandboxProvider(create_engine(f"sqlite:///{sandbox_path}"), sealer)


@pytest.fixture
def sandbox_anywhere(log: ServiceLog, database_url: str) -> SandboxProvider:
    """The sandbox on SQLite and on PostgreSQL (`journeys.channels.sandbox_database_url`)."""
    sealer = SubjectKeySealer(log, profile_subject, SEALED_PURPOSE)
    return SandboxProvider(create_engine(database_url), sealer)


def message(message_id: str = "msg-1", profile_id: str = "p-zoe", channel: str = "email") -> Message:
    return Message(
        message_id=message_id,
        workspace="acme",
        profile_id=profile_id,
        channel=channel,
        to=ADDRESS,
        subject="We kept your basket",
        text=BODY,
        html=f"<p>{BODY}</p>",
        data={"coupon": "ZOE-10"},
    )


def raw_bytes(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_a_send_is_kept_sealed_and_opens_for_its_profile(
    sandbox: SandboxProvider, sandbox_path: Path
) -> None:
    delivery = await sandbox.send(message())
    assert delivery == Delivery.delivered("sandbox:msg-1")
    (kept,) = await sandbox.sends("acme", "p-zoe")
    assert (kept.message_id, kept.channel, kept.to, kept.text) == ("msg-1", "email", ADDRESS, BODY)
    assert kept.html == f"<p>{BODY}</p>" and kept.data == {"coupon": "ZOE-10"}
    raw = raw_bytes(sandbox_path)
    assert b"msg-1" in raw  # the probe reads the right file: the clear id is there
    assert ADDRESS.encode() not in raw and BODY.encode() not in raw and b"ZOE-10" not in raw


async def test_a_message_id_is_kept_once_and_a_repeat_gets_the_first_delivery(
    sandbox_anywhere: SandboxProvider,
) -> None:
    first = await sandbox_anywhere.send(message())
    again = await sandbox_anywhere.send(message())
    assert again == first
    assert await sandbox_anywhere.count("acme", "p-zoe") == 1


async def test_concurrent_repeats_of_one_message_are_kept_once(sandbox_anywhere: SandboxProvider) -> None:
    deliveries = await asyncio.gather(*(sandbox_anywhere.send(message()) for _ in range(8)))
    assert {d.status for d in deliveries} == {DeliveryStatus.DELIVERED}
    assert await sandbox_anywhere.count("acme", "p-zoe") == 1


async def test_count_and_erase_are_per_profile_and_workspace(sandbox_anywhere: SandboxProvider) -> None:
    for n in range(3):
        await sandbox_anywhere.send(message(f"zoe-{n}", channel=("email", "sms", "wechat")[n]))
    await sandbox_anywhere.send(message("ann-1", profile_id="p-ann"))
    assert await sandbox_anywhere.count("acme", "p-zoe") == 3
    assert await sandbox_anywhere.count("other-workspace", "p-zoe") == 0
    assert await sandbox_anywhere.erase("acme", "p-zoe") == 3
    assert await sandbox_anywhere.count("acme", "p-zoe") == 0
    assert await sandbox_anywhere.sends("acme", "p-zoe") == []
    assert [s.message_id for s in await sandbox_anywhere.sends("acme", "p-ann")] == ["ann-1"]


async def test_shredding_the_profiles_key_leaves_its_kept_sends_unreadable(
    sandbox: SandboxProvider, log: ServiceLog, sandbox_path: Path
) -> None:
    await sandbox.send(message())
    log.store.erase_subject(profile_subject("acme", "p-zoe"))
    assert await sandbox.count("acme", "p-zoe") == 1  # the row is still there (until erase) ...
    assert await sandbox.sends("acme", "p-zoe") == []  # ... but opens as nothing
    refused = await sandbox.send(message("msg-after-erasure"))
    assert refused == Delivery.failed("the profile was erased")
    assert await sandbox.count("acme", "p-zoe") == 1


async def test_a_sealed_send_cannot_be_opened_as_another_profiles(
    sandbox: SandboxProvider, sandbox_path: Path
) -> None:
    await sandbox.send(message("zoe-1"))
    await sandbox.send(message("ann-1", profile_id="p-ann"))
    engine = create_engine(f"sqlite:///{sandbox_path}")
    with engine.begin() as conn:  # move Zoe's sealed bytes onto Ann's row
        zoe = conn.execute(
            sa.select(sandbox_sends.c.sealed).where(sandbox_sends.c.message_id == "zoe-1")
        ).scalar_one()
        conn.execute(sandbox_sends.update().where(sandbox_sends.c.message_id == "ann-1").values(sealed=zoe))
    engine.dispose()
    with pytest.raises(InvalidTag):  # bound to its subject: a moved value does not authenticate
        await sandbox.sends("acme", "p-ann")


async def test_a_service_that_is_stopping_makes_a_send_retryable_not_lost(
    sandbox: SandboxProvider, log: ServiceLog
) -> None:
    await log.writer.stop()  # no more writes: no new data key can be made
    delivery = await sandbox.send(message("msg-while-stopping"))
    assert delivery == Delivery.retryable("the sandbox cannot store now (Unavailable)")
    assert await sandbox.count("acme", "p-zoe") == 0
