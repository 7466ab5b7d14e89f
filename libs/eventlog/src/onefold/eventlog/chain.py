"""The hash chain: `hash = SHA-256(prev_hash || canonical bytes of the stored row)`.

Canonical encoding, version 1 (every stored column except `prev_hash` and `hash`; integers are
big-endian, strings UTF-8; the 7 lengths make the concatenation unambiguous):

    position          int64
    stream_version    int64
    schema_version    int32
    occurred_at       int64   microseconds since the Unix epoch, UTC
    recorded_at       int64   microseconds since the Unix epoch, UTC
    7 x uint32        byte lengths of the 7 fields below, in this order
    event_id | stream_id | type | workspace | subject | metadata (the stored JSON text) | payload

The payload is the stored (encrypted) bytes, so the chain still verifies after a subject's key is
shredded. The first event's prev_hash is 32 zero bytes. The position is hashed, so moving a row is
as visible as editing it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from json.encoder import encode_basestring as _escape  # json.dumps' own escaping (ensure_ascii=False)

from google.protobuf.timestamp_pb2 import Timestamp

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.eventlog.models import ZERO_HASH

HEADER = struct.Struct(">qqiqqIIIIIII")
GENESIS_HASH = ZERO_HASH


def event_hash(
    prev_hash: bytes,
    position: int,
    stream_version: int,
    schema_version: int,
    occurred_at_us: int,
    recorded_at_us: int,
    event_id: bytes,
    stream_id: bytes,
    type_name: bytes,
    workspace: bytes,
    subject: bytes,
    metadata: bytes,
    payload: bytes,
) -> bytes:
    header = HEADER.pack(
        position,
        stream_version,
        schema_version,
        occurred_at_us,
        recorded_at_us,
        len(event_id),
        len(stream_id),
        len(type_name),
        len(workspace),
        len(subject),
        len(metadata),
        len(payload),
    )
    return hashlib.sha256(
        b"".join((prev_hash, header, event_id, stream_id, type_name, workspace, subject, metadata, payload))
    ).digest()


def canonical_metadata(metadata: Mapping[str, str]) -> str:
    """The metadata JSON text exactly as the store keeps (and hashes) it: `json.dumps(...,
    sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, built directly from the escaped
    strings when every value is text (twice as fast; every subscriber re-hashes every event)."""
    items = sorted(metadata.items())
    if all(type(value) is str for _key, value in items):
        return "{" + ",".join([_escape(key) + ":" + _escape(value) for key, value in items]) + "}"
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _micros(stamp: Timestamp) -> int:
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def envelope_hash(envelope: EventEnvelope) -> bytes:
    """The hash of an event as received from the bus, recomputed from the envelope's own fields.

    Equal to the stored row's `hash` only while the envelope carries the stored (encrypted)
    payload, type and schema version: check it before decrypting.
    """
    return event_hash(
        envelope.prev_hash,
        envelope.position,
        envelope.stream_version,
        envelope.schema_version,
        _micros(envelope.occurred_at),
        _micros(envelope.recorded_at),
        envelope.event_id.encode(),
        envelope.stream_id.encode(),
        envelope.type.encode(),
        envelope.workspace.encode(),
        envelope.subject.encode(),
        canonical_metadata(envelope.metadata).encode(),
        envelope.payload,
    )
