"""Chain digests on NATS: a copy of the log's head hash kept outside the service's database.

The hash chain proves a log is internally consistent, but someone who can write the database can
rewrite an event *and* recompute every hash after it. A digest (position + hash) published
periodically on `onefold.<service>.digest` lands in the service's JetStream stream, elsewhere: the
rewritten database then disagrees with the published hash at that position, and `check_digest`
(the store's `verify` against that digest) names the position.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from onefold.eventlog.models import ChainDigest, VerifyResult
from onefold.eventlog.streams import StreamSettings, digest_subject, ensure_service_stream, stream_name
from onefold.platform.nats import NatsConnection
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.eventlog.digests")

DIGEST_FORMAT = 1


class DigestSource(Protocol):
    """What digests need of an EventStore."""

    def head_digest(self) -> ChainDigest: ...
    def verify(self, *, expected: Iterable[ChainDigest] = ()) -> VerifyResult: ...
    def record_digest(self, digest: ChainDigest) -> None: ...


@dataclass(frozen=True)
class PublishedDigest:
    """What goes on the bus: whose chain, up to where, its hash there, and when it was taken."""

    service: str
    digest: ChainDigest
    taken_at: datetime

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": DIGEST_FORMAT,
                "service": self.service,
                **self.digest.to_dict(),
                "taken_at": self.taken_at.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PublishedDigest:
        raw = json.loads(data)
        if raw.get("format") != DIGEST_FORMAT:
            raise ValueError(f"unknown chain digest format {raw.get('format')!r}")
        return cls(
            service=str(raw["service"]),
            digest=ChainDigest.from_dict(raw),
            taken_at=datetime.fromisoformat(str(raw["taken_at"])),
        )


def check_digest(store: DigestSource, digest: ChainDigest | PublishedDigest) -> VerifyResult:
    """Does the local log still hold the hash that was published for `digest.position`?

    The chain is walked (stored hashes must match the stored events) and the hash at the digest's
    position must equal the published one: a log rewritten with recomputed hashes, or cut short
    below the published head, fails here and names the position.
    """
    expected = digest.digest if isinstance(digest, PublishedDigest) else digest
    return store.verify(expected=[expected])


async def publish_digest(js: JetStreamContext, service: str, digest: ChainDigest) -> None:
    published = PublishedDigest(service=service, digest=digest, taken_at=datetime.now(UTC))
    # The message id makes a repeated publish of the same head a no-op inside the duplicate window.
    msg_id = f"digest:{service}:{digest.position}:{base64.b16encode(digest.hash[:8]).decode()}"
    await js.publish(digest_subject(service), published.to_bytes(), headers={"Nats-Msg-Id": msg_id})


async def latest_published_digest(js: JetStreamContext, service: str) -> PublishedDigest | None:
    """The last digest the service published (read back from its stream), or None."""
    try:
        msg = await js.get_last_msg(stream_name(service), digest_subject(service))
    except NotFoundError:
        return None
    if msg.data is None:
        return None
    return PublishedDigest.from_bytes(msg.data)


class DigestPublisher:
    """Publishes the chain digest every `interval_seconds` while the head moves (and at least every
    `heartbeat_seconds` when it does not, so a silent publisher is noticed)."""

    def __init__(
        self,
        store: DigestSource,
        nats: NatsConnection,
        *,
        service: str,
        interval_seconds: float = 60.0,
        heartbeat_seconds: float = 3600.0,
        stream_settings: StreamSettings | None = None,
    ) -> None:
        self.store = store
        self.nats = nats
        self.service = service
        self.interval_seconds = interval_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stream_settings = stream_settings or StreamSettings()
        self.last_published: ChainDigest | None = None
        self._last_published_at = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stream_ready = False

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name=f"chain-digests-{self.service}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish_now(self) -> ChainDigest | None:
        """Publish the current head if it changed (or the heartbeat is due); returns what was published."""
        digest = await asyncio.to_thread(self.store.head_digest)
        due = time.monotonic() - self._last_published_at >= self.heartbeat_seconds
        if digest == self.last_published and not due:
            return None
        client = await self.nats.wait_connected()
        js = client.jetstream()
        if not self._stream_ready:
            await ensure_service_stream(js, self.service, self.stream_settings)
            self._stream_ready = True
        await publish_digest(js, self.service, digest)
        await asyncio.to_thread(self.store.record_digest, digest)
        self.last_published = digest
        self._last_published_at = time.monotonic()
        log.info("chain_digest.published", service=self.service, position=digest.position)
        return digest

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.publish_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._stream_ready = False
                log.warning(
                    "chain_digest.publish_failed", service=self.service, error=str(exc) or type(exc).__name__
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_seconds)
