"""onefold.eventlog: each service's append-only, hash-chained, crypto-shredding event log.

See docs/architecture.md, "The event log". The pieces: `EventStore` (recorder: SQL, positions,
chain, keys), `EventMapper` (message <-> stored payload, encrypting personal fields),
`KeyEncryptionKey` / `DataKeyCipher` (AES-GCM), `EventRegistry` (protobuf full names, upcasters),
and projections.
"""

from onefold.eventlog.cipher import BlindIndex, DataKeyCipher, KeyEncryptionKey
from onefold.eventlog.errors import (
    ConcurrencyError,
    CorruptPayload,
    DuplicateEvent,
    EventLogError,
    EventTooLarge,
    InvalidEvent,
    MissingKeyEncryptionKey,
    SubjectErased,
    UnknownEventType,
    WrongKeyEncryptionKey,
)
from onefold.eventlog.mapper import ERASED, EventMapper
from onefold.eventlog.models import ChainDigest, NewEvent, RecordedEvent, VerifyResult
from onefold.eventlog.registry import EventRegistry, EventType
from onefold.eventlog.store import EventStore

__all__ = [
    "ERASED",
    "BlindIndex",
    "ChainDigest",
    "ConcurrencyError",
    "CorruptPayload",
    "DataKeyCipher",
    "DuplicateEvent",
    "EventLogError",
    "EventMapper",
    "EventRegistry",
    "EventStore",
    "EventTooLarge",
    "EventType",
    "InvalidEvent",
    "KeyEncryptionKey",
    "MissingKeyEncryptionKey",
    "NewEvent",
    "RecordedEvent",
    "SubjectErased",
    "UnknownEventType",
    "VerifyResult",
    "WrongKeyEncryptionKey",
]
