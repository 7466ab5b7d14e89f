"""Signed chain digests on the witness stream: each service's log anchored outside its database.

The hash chain proves a log is internally consistent, but someone who can write the database can
rewrite an event *and* recompute every hash after it, or cut the newest events off. So each service
periodically publishes a digest of its head — position, hash, and the heads it has consumed of its
upstreams — signed with its Ed25519 key, to `onefold.<service>.digest`, which only the witness
stream `ONEFOLD_WITNESS` captures (no age limit, deny-delete, deny-purge). A rewritten or truncated
database then disagrees with what was witnessed:

- with its own digests (the hash at a witnessed position, or a head below the last witnessed one);
- with its downstream services' digests: identity's digest records which ingest position it had
  applied and that event's hash, so ingest's chain is witnessed by identity's log as well.

The signing key is derived from the service's key-encryption key (purpose `chain-digest-signing`):
kept wherever the KEK is kept, and carried over unchanged by a KEK rotation. Its public key is in
each digest; the first digest of a service in the witness stream pins it.

Two publishers can never interleave: each publish states the subject sequence it follows
(`Nats-Expected-Last-Subject-Sequence`), so the server refuses a digest written without having
seen the one before it. A digest that disagrees with the log (a different hash for a witnessed
position, a different key than the pinned one) is never published: it raises the alarm.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError
from prometheus_client import Counter

from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.models import ChainDigest
from onefold.eventlog.streams import (
    WITNESS_STREAM,
    StreamSettings,
    digest_subject,
    ensure_witness_stream,
    stream_name,
)
from onefold.platform.nats import NatsConnection
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.eventlog.digests")

DIGEST_FORMAT = 2
SIGNING_PURPOSE = "chain-digest-signing"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = 10071  # JetStream: "wrong last sequence"
CHAIN_HEALTH_NAME = "onefold.chain"

DIGEST_CONFLICTS = Counter(
    "onefold_chain_digest_conflicts_total",
    "Witnessed chain digests that disagree with this service's log or key (an alarm)",
    ["service"],
)


class DigestSource(Protocol):
    """What digests need of an EventStore."""

    def head_digest(self) -> ChainDigest: ...
    def hash_at(self, position: int) -> bytes | None: ...
    def tracked_heads(self) -> dict[str, ChainDigest]: ...
    def published_position(self, stream_name: str) -> int: ...
    def record_digest(self, digest: ChainDigest) -> None: ...


class ChainDiverged(Exception):
    """The log is behind, or differs from, what this service already published; one sentence."""


class ChainSigner:
    """The service's Ed25519 key for its chain digests."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def from_key_encryption_key(cls, kek: KeyEncryptionKey) -> ChainSigner:
        return cls(Ed25519PrivateKey.from_private_bytes(kek.derive(SIGNING_PURPOSE)))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class ConsumedHead:
    """How far this service has applied an upstream's log: position and that event's hash."""

    upstream: str
    tracking: str  # the subscriber's tracking key (one per partition for a partitioned subscriber)
    position: int
    hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "tracking": self.tracking,
            "position": self.position,
            "hash": _b64(self.hash),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ConsumedHead:
        return cls(
            upstream=str(raw["upstream"]),
            tracking=str(raw["tracking"]),
            position=int(raw["position"]),
            hash=base64.b64decode(str(raw["hash"]), validate=True),
        )


@dataclass(frozen=True)
class SignedDigest:
    """One witness record: whose chain, up to where, its hash there, what it had consumed, signed."""

    service: str
    digest: ChainDigest
    taken_at: datetime
    public_key: bytes
    consumed: tuple[ConsumedHead, ...] = ()
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "format": DIGEST_FORMAT,
            "service": self.service,
            **self.digest.to_dict(),
            "taken_at": self.taken_at.isoformat(),
            "public_key": _b64(self.public_key),
            "consumed": [head.to_dict() for head in self.consumed],
        }

    def signed_bytes(self) -> bytes:
        return json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()

    def signed(self, signer: ChainSigner) -> SignedDigest:
        unsigned = SignedDigest(self.service, self.digest, self.taken_at, signer.public_key, self.consumed)
        return SignedDigest(
            self.service, self.digest, self.taken_at, signer.public_key, self.consumed,
            signer.sign(unsigned.signed_bytes()),
        )  # fmt: skip

    def signature_valid(self) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_bytes(self) -> bytes:
        return json.dumps({**self.body(), "signature": _b64(self.signature)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedDigest:
        """Parse a witness record; ValueError when it is not one (the signature is checked apart)."""
        try:
            raw = json.loads(data)
            if raw.get("format") != DIGEST_FORMAT:
                raise ValueError(f"unknown chain digest format {raw.get('format')!r}")
            return cls(
                service=str(raw["service"]),
                digest=ChainDigest.from_dict(raw),
                taken_at=datetime.fromisoformat(str(raw["taken_at"])),
                public_key=base64.b64decode(str(raw["public_key"]), validate=True),
                consumed=tuple(ConsumedHead.from_dict(head) for head in raw.get("consumed", ())),
                signature=base64.b64decode(str(raw["signature"]), validate=True),
            )
        except (KeyError, TypeError, AttributeError, binascii.Error, json.JSONDecodeError) as error:
            raise ValueError(f"not a chain digest: {type(error).__name__}") from None


@dataclass(frozen=True)
class WitnessRecord:
    """A signed digest as found in the witness stream, with its stream sequence."""

    sequence: int
    digest: SignedDigest


@dataclass
class Witnessed:
    """What the witness stream says about one service: the pinned key, the digests that carry it
    with a valid signature, and every record that does not (each an alarm)."""

    service: str
    pinned_key: bytes | None = None
    records: list[WitnessRecord] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def last(self) -> WitnessRecord | None:
        return max(self.records, key=lambda record: record.digest.digest.position, default=None)

    def expected(self) -> list[ChainDigest]:
        """One digest per witnessed position (the first seen; later different ones are conflicts)."""
        by_position: dict[int, ChainDigest] = {}
        for record in self.records:
            by_position.setdefault(record.digest.digest.position, record.digest.digest)
        return [by_position[position] for position in sorted(by_position)]


def assess(service: str, records: Iterable[WitnessRecord]) -> Witnessed:
    """Sort a service's witness records into trusted ones and conflicts.

    The first validly signed record pins the key. A record with a bad signature, another key, or
    a different hash for a position already witnessed is a conflict.
    """
    witnessed = Witnessed(service)
    seen: dict[int, bytes] = {}
    for record in sorted(records, key=lambda r: r.sequence):
        digest = record.digest
        where = f"witness record {record.sequence} for position {digest.digest.position}"
        if digest.service != service:
            witnessed.conflicts.append(f"{where} names the service {digest.service!r}")
            continue
        if not digest.signature_valid():
            witnessed.conflicts.append(f"{where} does not carry a valid signature")
            continue
        if witnessed.pinned_key is None:
            witnessed.pinned_key = digest.public_key
        elif digest.public_key != witnessed.pinned_key:
            witnessed.conflicts.append(f"{where} is signed by a different key than the pinned one")
            continue
        known = seen.setdefault(digest.digest.position, digest.digest.hash)
        if known != digest.digest.hash:
            witnessed.conflicts.append(f"{where} gives a different hash than an earlier record")
            continue
        witnessed.records.append(record)
    return witnessed


def _parse(service: str, sequence: int, data: bytes | None) -> WitnessRecord | str:
    try:
        return WitnessRecord(sequence, SignedDigest.from_bytes(data or b""))
    except ValueError as error:
        return f"witness record {sequence} of {service} is unreadable: {error}"


async def read_witness(js: JetStreamContext, services: Sequence[str]) -> dict[str, Witnessed]:
    """Every witness record of `services`, read in stream order and assessed per service."""
    subjects = {digest_subject(service): service for service in services}
    found: dict[str, list[WitnessRecord]] = {service: [] for service in services}
    unreadable: dict[str, list[str]] = {service: [] for service in services}
    try:
        info = await js.stream_info(WITNESS_STREAM)
    except NotFoundError:
        return {service: Witnessed(service) for service in services}
    if info.state.messages:
        sub = await js.pull_subscribe(
            "",
            stream=WITNESS_STREAM,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.ALL,
                filter_subjects=list(subjects),
                inactive_threshold=60.0,
            ),
        )
        try:
            while True:
                try:
                    batch = await sub.fetch(1000, timeout=1.0)
                except TimeoutError:
                    break
                for msg in batch:
                    service = subjects[msg.subject]
                    parsed = _parse(service, msg.metadata.sequence.stream, msg.data)
                    if isinstance(parsed, WitnessRecord):
                        found[service].append(parsed)
                    else:
                        unreadable[service].append(parsed)
                if batch and batch[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    result = {}
    for service in services:
        witnessed = assess(service, found[service])
        witnessed.conflicts[:0] = unreadable[service]
        result[service] = witnessed
    return result


WITNESS_STREAM_LABEL = "the witness stream"


def witnessed_hashes(service: str, witnesses: Mapping[str, Witnessed]) -> list[ChainDigest]:
    """The hashes `service`'s log must hold, each labelled with who vouches for it: its own signed
    digests on the witness stream, then the heads the other services recorded as consumed of it."""
    found: dict[tuple[int, bytes], str] = {}
    own = witnesses.get(service)
    for digest in own.expected() if own is not None else ():
        found.setdefault((digest.position, digest.hash), WITNESS_STREAM_LABEL)
    for other, witnessed in witnesses.items():
        if other == service:
            continue
        for record in witnessed.records:
            for head in record.digest.consumed:
                if head.upstream == service:
                    label = f"{other}'s consumed head (witness record {record.sequence})"
                    found.setdefault((head.position, head.hash), label)
    return [ChainDigest(position, digest, witness) for (position, digest), witness in sorted(found.items())]


async def _witness_message(
    js: JetStreamContext, service: str, *, first: bool
) -> tuple[int, SignedDigest | None]:
    """(subject sequence, record) of the service's first or last witness record; (0, None) if none."""
    subject = digest_subject(service)
    try:
        if first:
            msg = await js.get_msg(WITNESS_STREAM, seq=1, subject=subject, next=True)
        else:
            msg = await js.get_last_msg(WITNESS_STREAM, subject)
    except NotFoundError:
        return 0, None
    seq = int(msg.seq or 0)
    try:
        return seq, SignedDigest.from_bytes(msg.data or b"")
    except ValueError:
        return seq, None


def divergence(store: DigestSource, witnessed: ChainDigest, *, head: ChainDigest | None = None) -> str:
    """The sentence saying how the log differs from a witnessed digest, or "" when it agrees."""
    if witnessed.position == 0:
        return ""  # a digest of the empty log (it pins the key early): no event to compare
    head = head or store.head_digest()
    if head.position < witnessed.position:
        return (
            f"the log ends at position {head.position} but position {witnessed.position} "
            "was already witnessed: events were removed"
        )
    if store.hash_at(witnessed.position) != witnessed.hash:
        return f"the event at position {witnessed.position} differs from the one already witnessed"
    return ""


async def check_start(
    store: DigestSource, js: JetStreamContext | None, service: str, signer: ChainSigner
) -> None:
    """Refuse to run on a log that is behind or diverges from what this service already published.

    Compares the log with the relay's recorded published position and, with `js`, with the last
    witness record signed by this service's key (a record by another key is the publisher's alarm).
    Without `js` (NATS unreachable) only the local check runs. Raises ChainDiverged naming the positions.
    """
    head = await asyncio.to_thread(store.head_digest)
    published = await asyncio.to_thread(store.published_position, stream_name(service))
    problem = ""
    if published > head.position:
        problem = (
            f"the log ends at position {head.position} but events up to position {published} "
            "were already published: events were removed"
        )
    elif js is not None:
        _, last = await _witness_message(js, service, first=False)
        if last is not None and last.public_key == signer.public_key and last.signature_valid():
            problem = await asyncio.to_thread(divergence, store, last.digest, head=head)
    if problem:
        raise ChainDiverged(
            f"the {service} log is not what it already published ({problem}); it will not run on it. "
            f"Run `onefold audit verify {service}` to find the first diverging position"
        )


class DigestPublisher:
    """Publishes the signed chain digest every `interval_seconds` while the head moves (and at
    least every `heartbeat_seconds` when it does not, so a silent publisher is noticed)."""

    def __init__(
        self,
        store: DigestSource,
        nats: NatsConnection,
        *,
        service: str,
        signer: ChainSigner,
        upstreams: Mapping[str, str] | None = None,
        interval_seconds: float = 60.0,
        heartbeat_seconds: float = 3600.0,
        stream_settings: StreamSettings | None = None,
        on_alarm: Callable[[str], Any] | None = None,
    ) -> None:
        """`upstreams`: tracking key -> upstream service, for the consumed heads each digest records."""
        self.store = store
        self.nats = nats
        self.service = service
        self.signer = signer
        self.upstreams = dict(upstreams or {})
        self.interval_seconds = interval_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stream_settings = stream_settings or StreamSettings()
        self.on_alarm = on_alarm
        self.last_published: ChainDigest | None = None
        self.alarm = ""
        # The alarm is about this log itself (cut or rewritten), not about someone else's record:
        # nothing more may be relayed or witnessed from it.
        self.diverged = False
        self._last_published_at = 0.0
        self._last_sequence: int | None = None  # subject sequence of the last witness record seen
        self._last_witnessed: ChainDigest | None = None
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

    async def _raise_alarm(self, problem: str) -> None:
        if not self.alarm:
            DIGEST_CONFLICTS.labels(service=self.service).inc()
        self.alarm = problem
        log.error("chain_digest.conflict", service=self.service, problem=problem)
        if self.on_alarm is not None:
            outcome = self.on_alarm(problem)
            if asyncio.iscoroutine(outcome):
                await outcome

    async def _sync(self, js: JetStreamContext) -> str:
        """Read what the witness stream holds for this service; the conflict found, or ""."""
        _, first = await _witness_message(js, self.service, first=True)
        sequence, last = await _witness_message(js, self.service, first=False)
        self._last_sequence = sequence
        self._last_witnessed = None
        if first is not None and first.signature_valid() and first.public_key != self.signer.public_key:
            return "the witness stream pins a different signing key for this service than its own"
        if sequence and last is None:
            return f"witness record {sequence} is not a chain digest"
        if last is None:
            return ""
        if not last.signature_valid() or last.public_key != self.signer.public_key:
            return f"witness record {sequence} is not signed by this service's key"
        problem = await asyncio.to_thread(divergence, self.store, last.digest)
        if problem:
            self.diverged = True
            return f"witness record {sequence}: {problem}"
        self._last_witnessed = last.digest
        return ""

    def _consumed(self) -> tuple[ConsumedHead, ...]:
        heads = self.store.tracked_heads()
        return tuple(
            ConsumedHead(upstream, key, heads[key].position, heads[key].hash)
            for key, upstream in sorted(self.upstreams.items())
            if key in heads and heads[key].hash
        )

    async def publish_now(self) -> ChainDigest | None:
        """Publish the current head if it changed (or the heartbeat is due); returns what was published.

        Never publishes while an alarm stands or when the log disagrees with the witness stream.
        """
        if self.alarm:
            return None
        digest = await asyncio.to_thread(self.store.head_digest)
        due = time.monotonic() - self._last_published_at >= self.heartbeat_seconds
        if digest == self.last_published and not due:
            return None
        client = await self.nats.wait_connected()
        js = client.jetstream()
        if not self._stream_ready:
            await ensure_witness_stream(js, self.stream_settings)
            self._stream_ready = True
        for _attempt in range(2):
            if self._last_sequence is None:
                problem = await self._sync(js)
                if problem:
                    await self._raise_alarm(problem)
                    return None
            witnessed = self._last_witnessed
            if witnessed is not None:
                # The log may have been cut or rewritten since the last digest: never publish that.
                digest = await asyncio.to_thread(self.store.head_digest)
                problem = await asyncio.to_thread(divergence, self.store, witnessed, head=digest)
                if problem:
                    self.diverged = True
                    await self._raise_alarm(problem)
                    return None
            consumed = await asyncio.to_thread(self._consumed)
            record = SignedDigest(self.service, digest, datetime.now(UTC), self.signer.public_key, consumed)
            record = record.signed(self.signer)
            try:
                ack = await js.publish(
                    digest_subject(self.service),
                    record.to_bytes(),
                    stream=WITNESS_STREAM,
                    headers={EXPECTED_LAST_SUBJECT_SEQUENCE: str(self._last_sequence or 0)},
                )
            except APIError as error:
                if error.err_code != _WRONG_LAST_SEQUENCE:
                    raise
                # Someone else wrote since we looked (another replica, or an impostor): look again.
                self._last_sequence = None
                continue
            self._last_sequence = ack.seq
            self._last_witnessed = digest
            await asyncio.to_thread(self.store.record_digest, digest)
            self.last_published = digest
            self._last_published_at = time.monotonic()
            log.info("chain_digest.published", service=self.service, position=digest.position)
            return digest
        return None

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.publish_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._stream_ready = False
                self._last_sequence = None
                log.warning(
                    "chain_digest.publish_failed", service=self.service, error=str(exc) or type(exc).__name__
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_seconds)
