"""Subject keys across services: how a consumer reads the personal fields of another service's events.

The bus carries each event exactly as its producer stored it (`EventStore.to_envelope(decrypt=False)`):
personal fields sealed with the data key of the event's subject, which only the producer holds,
wrapped by its key-encryption key. So a JetStream stream, a dead-letter queue or a backup of either
holds no plaintext, and shredding the subject's key at the producer makes every copy unreadable.

A consumer asks the producer for the keys of the subjects in the batch it received
(`onefold.eventlog.v1.SubjectKeyService/GetSubjectKeys`, service credentials only, up to 1000
subjects per call), keeps them in memory for `ttl_seconds` (never on disk) and opens the payloads
just before its handler runs (`Unsealer`). The cost per event on the consumer is one AES-GCM open
of the personal part and an envelope copy; per batch, at most one round trip for the subjects not
cached. An erasure at the producer reaches consumers' caches within the TTL; their own copies are
erased by their own EraseSubject.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

import grpc
from cryptography.exceptions import InvalidTag
from google.protobuf import symbol_database
from google.protobuf.message import DecodeError, Message

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.eventlog.v1 import eventlog_pb2 as pb
from onefold.contracts.eventlog.v1 import eventlog_pb2_grpc
from onefold.eventlog.cipher import KEY_BYTES, DataKeyCipher
from onefold.eventlog.mapper import SEALED_TAG, erased_plaintext, open_sealed
from onefold.eventlog.registry import PiiPlan, pii_plan
from onefold.eventlog.store import EventStore
from onefold.platform.auth import current_principal
from onefold.platform.errors import InvalidArgument, PermissionDenied
from onefold.platform.grpc_server import ServiceRegistration, typed_registration

SERVICE = pb.DESCRIPTOR.services_by_name["SubjectKeyService"]
MAX_SUBJECTS_PER_CALL = 1000
MAX_SUBJECT_CHARS = 256
DEFAULT_TTL_SECONDS = 300.0
DEFAULT_CAPACITY = 100_000


# -- the producer's side ---------------------------------------------------------------------------


class SubjectKeyServicer:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def GetSubjectKeys(
        self, request: pb.SubjectKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubjectKeysResponse:
        if not current_principal().is_service:
            raise PermissionDenied("only Onefold service credentials may read subject keys")
        if len(request.subjects) > MAX_SUBJECTS_PER_CALL:
            raise InvalidArgument(
                f"at most {MAX_SUBJECTS_PER_CALL} subjects per call",
                violations=[("subjects", f"{len(request.subjects)} given")],
            )
        if any(len(subject) > MAX_SUBJECT_CHARS for subject in request.subjects):
            raise InvalidArgument(
                f"a subject has at most {MAX_SUBJECT_CHARS} characters",
                violations=[("subjects", "too long")],
            )
        wanted = list(dict.fromkeys(subject for subject in request.subjects if subject))
        keys = await asyncio.to_thread(self.store.data_keys, wanted)
        return pb.SubjectKeysResponse(
            keys=[
                pb.SubjectKey(subject=subject, data_key=key or b"", erased=key is None)
                for subject, key in keys.items()
            ]
        )


def registration(store: EventStore) -> ServiceRegistration:
    return typed_registration(SERVICE, pb, SubjectKeyServicer(store), {"GetSubjectKeys": "service"})


# -- the consumer's side ---------------------------------------------------------------------------


class KeySource(Protocol):
    """One upstream's subject keys: a cipher per known subject (None = erased); unknown ones absent."""

    async def ciphers(self, subjects: Collection[str]) -> dict[str, DataKeyCipher | None]: ...


class _ExpiringCiphers:
    """An LRU of ciphers whose entries expire, so an erasure at the producer is seen within the TTL."""

    def __init__(self, ttl_seconds: float, capacity: int, clock: Callable[[], float]) -> None:
        self.ttl_seconds = ttl_seconds
        self.capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, DataKeyCipher | None]] = OrderedDict()

    def lookup(self, subjects: Collection[str]) -> tuple[dict[str, DataKeyCipher | None], list[str]]:
        now = self._clock()
        found: dict[str, DataKeyCipher | None] = {}
        missing: list[str] = []
        for subject in subjects:
            entry = self._entries.get(subject)
            if entry is None or entry[0] <= now:
                missing.append(subject)
            else:
                found[subject] = entry[1]
                self._entries.move_to_end(subject)
        return found, missing

    def put(self, subject: str, cipher: DataKeyCipher | None) -> None:
        self._entries[subject] = (self._clock() + self.ttl_seconds, cipher)
        self._entries.move_to_end(subject)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class RemoteSubjectKeys:
    """`upstream`'s subject keys over gRPC (its SubjectKeyService), cached in memory for a while.

    `channel` gives the authenticated channel to the upstream (platform `Peers.channel`), or None
    when none is configured: then a sealed event cannot be read and its batch fails (retried, never
    dead-lettered for that reason alone).
    """

    def __init__(
        self,
        upstream: str,
        channel: Callable[[], grpc.aio.Channel | None],
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        capacity: int = DEFAULT_CAPACITY,
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self._channel = channel
        self._cache = _ExpiringCiphers(ttl_seconds, capacity, clock)
        self.timeout_seconds = timeout_seconds
        self.fetched = 0  # keys received from the upstream (for benchmarks and tests)

    async def ciphers(self, subjects: Collection[str]) -> dict[str, DataKeyCipher | None]:
        found, missing = self._cache.lookup(subjects)
        if not missing:
            return found
        channel = self._channel()
        if channel is None:
            raise KeysUnavailable(
                f"events from {self.upstream} carry sealed personal data, but no address or service "
                f"credential is configured to ask {self.upstream} for subject keys "
                f"(peers.{self.upstream}, auth.service_token)"
            )
        stub = eventlog_pb2_grpc.SubjectKeyServiceStub(channel)
        for start in range(0, len(missing), MAX_SUBJECTS_PER_CALL):
            chunk = missing[start : start + MAX_SUBJECTS_PER_CALL]
            try:
                answer = await stub.GetSubjectKeys(
                    pb.SubjectKeysRequest(subjects=chunk), timeout=self.timeout_seconds
                )
            except grpc.aio.AioRpcError as error:
                raise KeysUnavailable(
                    f"{self.upstream} did not give subject keys: {error.code().name}: {error.details()}"
                ) from None
            for key in answer.keys:
                if key.erased:
                    cipher = None
                elif len(key.data_key) == KEY_BYTES:
                    cipher = DataKeyCipher(key.data_key)
                else:
                    raise KeysUnavailable(f"{self.upstream} answered a data key of the wrong size")
                self._cache.put(key.subject, cipher)
                found[key.subject] = cipher
            self.fetched += len(answer.keys)
        return found


class LocalSubjectKeys:
    """The keys of an event store in this process: for tools and tests that consume a log they hold."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def ciphers(self, subjects: Collection[str]) -> dict[str, DataKeyCipher | None]:
        keys = await asyncio.to_thread(self.store.data_keys, list(subjects))
        return {subject: None if key is None else DataKeyCipher(key) for subject, key in keys.items()}


class KeysUnavailable(Exception):
    """The upstream could not be asked for keys (not configured, unreachable): retry the batch later."""


class UnreadableEvent(Exception):
    """An event's sealed part cannot be opened (no key exists for its subject, or it does not
    authenticate): the event is damaged or forged; the subscriber dead-letters it after retries."""


def is_sealed(envelope: EventEnvelope) -> bool:
    return envelope.payload.startswith(SEALED_TAG)


class Unsealer:
    """Opens the sealed payloads of envelopes received from one upstream."""

    def __init__(self, keys: KeySource) -> None:
        self.keys = keys
        self._plans: dict[str, tuple[type[Message], PiiPlan]] = {}

    async def ciphers_for(self, envelopes: Sequence[EventEnvelope]) -> dict[str, DataKeyCipher | None]:
        """The ciphers the sealed envelopes need (one call per batch for what is not cached)."""
        subjects = {envelope.subject for envelope in envelopes if is_sealed(envelope)}
        if not subjects:
            return {}
        return await self.keys.ciphers(subjects)

    def open(self, envelope: EventEnvelope, ciphers: dict[str, DataKeyCipher | None]) -> EventEnvelope:
        """A copy of `envelope` whose payload is plaintext protobuf bytes (ERASED markers for an
        erased subject); an envelope without a sealed part is returned as it is."""
        if not is_sealed(envelope):
            return envelope
        subject = envelope.subject
        if subject not in ciphers:
            raise UnreadableEvent(
                f"event {envelope.position} ({envelope.type}) is sealed for a subject its producer "
                "holds no key for"
            )
        cipher = ciphers[subject]
        try:
            if cipher is None:
                message_class, plan = self._plan(envelope.type)
                payload = erased_plaintext(message_class, plan, envelope.payload)
            else:
                payload = open_sealed(envelope.type.encode(), envelope.payload, subject, cipher)
        except (InvalidTag, DecodeError, ValueError, IndexError):
            raise UnreadableEvent(
                f"the personal data of event {envelope.position} ({envelope.type}) does not authenticate"
            ) from None
        opened = EventEnvelope()
        opened.CopyFrom(envelope)
        opened.payload = payload
        return opened

    def _plan(self, type_name: str) -> tuple[type[Message], PiiPlan]:
        plan = self._plans.get(type_name)
        if plan is None:
            try:
                message_class = symbol_database.Default().GetSymbol(type_name)
            except KeyError:
                raise UnreadableEvent(f"unknown event type {type_name}") from None
            plan = self._plans[type_name] = (message_class, pii_plan(message_class.DESCRIPTOR))
        return plan
