"""The mapper: protobuf message <-> stored payload bytes, encrypting personal fields on the way.

One pipeline, in the spirit of pyeventsourcing's mapper / transcoder / cipher:

    encode: message -> split(public, personal) -> serialise both (deterministic)
            -> compress the personal part if it pays -> AES-GCM with the subject's data key
    decode: the reverse; with the key erased the personal fields read back as ERASED markers.

On-disk payload format (still a valid protobuf message of the event's type):

    [ tag of field 536870911 (wire type 2) | varint length | sealed personal part ] public part

The sealed part comes first so it is found without parsing; a protobuf parser that does not know
about it keeps it as an unknown field and sees the event with its personal fields empty. Field number
536870911 (the largest allowed) is therefore reserved in every event message. The sealed part is the
serialisation of a message of the same type holding only the personal fields, sealed by
`DataKeyCipher.seal` with associated data `type name | 0 | subject`, so ciphertext cannot be moved to
another type or subject unnoticed. Events without personal data are stored as plain protobuf.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal.decoder import _DecodeVarint  # type: ignore[attr-defined]
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from google.protobuf.message import DecodeError, Message

from onefold.eventlog.cipher import DataKeyCipher
from onefold.eventlog.registry import (
    COPY_CONTAINER,
    COPY_MESSAGE,
    COPY_SCALAR,
    DIRECT_BYTES,
    DIRECT_MESSAGE,
    DIRECT_STRING,
    STRUCT_FULL_NAME,
    DirectStep,
    EventType,
    PiiPlan,
)

ERASED = "⟨erased⟩"
SEALED_FIELD_NUMBER = 536_870_911
SEALED_TAG: bytes = _VarintBytes((SEALED_FIELD_NUMBER << 3) | 2)
_SEALED_LENGTH_AT = len(SEALED_TAG)
_ONE_BYTE_VARINT = tuple(bytes((n,)) for n in range(128))


class NeedsKey(Exception):
    """Raised by `encode` when personal fields are set but no cipher was given."""


def associated_data(type_name: str, subject: str) -> bytes:
    return type_name.encode() + b"\x00" + subject.encode()


def _copy_pii(source: Message, target: Message, plan: PiiPlan) -> None:
    """Copy only the personal fields of `source` into the empty `target`."""
    for name, kind in plan.copy_steps:
        if kind == COPY_SCALAR:
            value = getattr(source, name)
            if value:
                setattr(target, name, value)
        elif kind == COPY_CONTAINER:
            values = getattr(source, name)
            if values:
                getattr(target, name).MergeFrom(values)
        elif source.HasField(name):
            if kind == COPY_MESSAGE:
                getattr(target, name).CopyFrom(getattr(source, name))
            else:
                setattr(target, name, getattr(source, name))
    for fd, inner in plan.nested:
        if source.HasField(fd.name):
            _copy_pii(getattr(source, fd.name), getattr(target, fd.name), inner)


def _direct_personal(message: Message, steps: tuple[DirectStep, ...]) -> bytes:
    """The deterministic serialisation of the personal fields of `message` (see PiiPlan.direct_steps)."""
    parts: list[bytes] = []
    for kind, name, tag, inner in steps:
        if kind == DIRECT_STRING:
            text = getattr(message, name)
            if not text:
                continue
            value = text.encode()
        elif kind == DIRECT_BYTES:
            value = getattr(message, name)
            if not value:
                continue
        elif not message.HasField(name):
            continue
        elif kind == DIRECT_MESSAGE:
            value = getattr(message, name).SerializeToString(deterministic=True)
        else:
            value = _direct_personal(getattr(message, name), inner)
            if not value:
                continue
        size = len(value)
        parts += (tag, _ONE_BYTE_VARINT[size] if size < 128 else _VarintBytes(size), value)
    return b"".join(parts)


def _clear_pii(message: Message, plan: PiiPlan) -> None:
    for name in plan.names:
        message.ClearField(name)
    for fd, inner in plan.nested:
        if message.HasField(fd.name):
            _clear_pii(getattr(message, fd.name), inner)


def split(message: Message, plan: PiiPlan) -> tuple[Message, Message]:
    """(public copy without personal fields, copy with only the personal fields)."""
    public = type(message)()
    public.CopyFrom(message)
    _clear_pii(public, plan)
    personal = type(message)()
    _copy_pii(message, personal, plan)
    return public, personal


def mark_erased(message: Message, plan: PiiPlan) -> None:
    """Put a clear marker in every personal field whose key is gone."""
    for fd in plan.fields:
        name = fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.type == FieldDescriptor.TYPE_STRING:
                getattr(message, name)[ERASED] = ERASED
            else:
                message.ClearField(name)
        elif fd.is_repeated:
            message.ClearField(name)
            if fd.type == FieldDescriptor.TYPE_STRING:
                getattr(message, name).append(ERASED)
        elif fd.type == FieldDescriptor.TYPE_STRING:
            setattr(message, name, ERASED)
        elif fd.message_type is not None and fd.message_type.full_name == STRUCT_FULL_NAME:
            struct = getattr(message, name)
            struct.Clear()
            struct.fields[ERASED].string_value = ERASED
        else:
            message.ClearField(name)
    for fd, inner in plan.nested:
        if message.HasField(fd.name):
            mark_erased(getattr(message, fd.name), inner)


def _sealed_span(payload: bytes) -> tuple[int, int]:
    """(start, end) of the sealed personal part of a payload that starts with SEALED_TAG."""
    first = payload[_SEALED_LENGTH_AT] if len(payload) > _SEALED_LENGTH_AT else 0x80
    if first < 0x80:  # a one-byte length: the common case
        length, start = first, _SEALED_LENGTH_AT + 1
    else:
        length, start = _DecodeVarint(payload, _SEALED_LENGTH_AT)
    end = start + length
    if end > len(payload):
        raise DecodeError("sealed personal data runs past the end of the payload")
    return start, end


def open_sealed(type_name: bytes, payload: bytes, subject: str, cipher: DataKeyCipher) -> bytes:
    """The payload with its personal part decrypted, as protobuf bytes, without parsing: the public
    part followed by the personal part (both serialisations of the same message type, so the
    concatenation parses as the whole message). Used by the relay's peers on the bus, which know an
    event's type name but not the producer's registry."""
    if not payload.startswith(SEALED_TAG):
        return payload
    start, end = _sealed_span(payload)
    return payload[end:] + cipher.open(payload[start:end], type_name + b"\x00" + subject.encode())


def erased_plaintext(message_class: type[Message], plan: PiiPlan, payload: bytes) -> bytes:
    """The payload of an erased subject's event: public fields kept, personal ones as ERASED markers."""
    message = message_class()
    if payload.startswith(SEALED_TAG):
        message.ParseFromString(payload[_sealed_span(payload)[1] :])
        mark_erased(message, plan)
    else:
        message.ParseFromString(payload)
    return message.SerializeToString(deterministic=True)


class EventMapper:
    """Encodes and decodes one event type's payload; the caller resolves the subject's cipher."""

    @staticmethod
    def encode(
        event_type: EventType,
        message: Message,
        subject: str,
        cipher: DataKeyCipher | None,
        nonce: bytes | None = None,
    ) -> bytes:
        """The stored payload; `nonce`: 12 fresh CSPRNG bytes for the seal (None = draw one)."""
        plan = event_type.pii
        if not plan.has_pii:
            return message.SerializeToString(deterministic=True)
        if plan.direct_steps is not None:
            # Fast path: the personal part is written directly (tag, length, bytes per field, in
            # field-number order, each marked message field serialised once), byte for byte what
            # serialising a copy holding only those fields gives.
            secret = _direct_personal(message, plan.direct_steps)
            if not secret:
                return message.SerializeToString(deterministic=True)
            public = type(message)()
            public.CopyFrom(message)
            _clear_pii(public, plan)
        else:
            public, personal = split(message, plan)
            secret = personal.SerializeToString(deterministic=True)
            if not secret:
                return public.SerializeToString(deterministic=True)
        if cipher is None:
            raise NeedsKey(event_type.name)
        sealed = cipher.seal(secret, event_type.name_bytes + b"\x00" + subject.encode(), nonce)
        size = len(sealed)
        return b"".join(
            (
                SEALED_TAG,
                _ONE_BYTE_VARINT[size] if size < 128 else _VarintBytes(size),
                sealed,
                public.SerializeToString(deterministic=True),
            )
        )

    @staticmethod
    def has_sealed_part(payload: bytes) -> bool:
        return payload.startswith(SEALED_TAG)

    @staticmethod
    def plaintext(event_type: EventType, payload: bytes, subject: str, cipher: DataKeyCipher) -> bytes:
        """The payload with its personal part decrypted, as protobuf bytes (see `open_sealed`)."""
        return open_sealed(event_type.name_bytes, payload, subject, cipher)

    @staticmethod
    def decode(event_type: EventType, payload: bytes, subject: str, cipher: DataKeyCipher | None) -> Message:
        """Parse (and decrypt); `cipher=None` with a sealed part means the subject was erased.

        Raises DecodeError / ValueError / InvalidTag on damaged bytes; the store turns those into
        CorruptPayload with the event's position.
        """
        message = event_type.message_class()
        if not payload.startswith(SEALED_TAG):
            message.ParseFromString(payload)
            return message
        start, end = _sealed_span(payload)
        message.ParseFromString(payload[end:])
        if cipher is None:
            mark_erased(message, event_type.pii)
        else:
            message.MergeFromString(
                cipher.open(payload[start:end], event_type.name_bytes + b"\x00" + subject.encode())
            )
        return message
