"""Errors the event log raises on purpose, each a sentence a person understands.

They subclass the platform's errors, so a gRPC handler that lets one escape answers with the right
status code (a lost optimistic-concurrency race is ABORTED, bad input is INVALID_ARGUMENT, ...).
"""

from __future__ import annotations

from onefold.platform.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    OnefoldError,
)


class EventLogError(OnefoldError):
    """Base class of every error raised by onefold.eventlog."""


class ConcurrencyError(Conflict, EventLogError):
    """A stream's version was not the one the writer expected: re-read the stream and retry."""

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(
            f"stream '{stream_id}' is at version {actual_version}, not the expected {expected_version}; "
            "someone else wrote first, so re-read it and retry",
            metadata={
                "stream_id": stream_id,
                "expected_version": str(expected_version),
                "actual_version": str(actual_version),
            },
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class UnknownEventType(InvalidArgument, EventLogError):
    """The protobuf type of an event was never registered with the EventRegistry."""

    def __init__(self, type_name: str) -> None:
        super().__init__(
            f"event type '{type_name}' is not registered with this service's event registry",
            metadata={"type": type_name},
        )
        self.type_name = type_name


class EventTooLarge(InvalidArgument, EventLogError):
    def __init__(self, type_name: str, size: int, limit: int) -> None:
        super().__init__(
            f"event of type '{type_name}' is {size} bytes once encoded, over the limit of {limit} bytes",
            metadata={"type": type_name, "size": str(size), "limit": str(limit)},
        )
        self.size = size
        self.limit = limit


class InvalidEvent(InvalidArgument, EventLogError):
    """An event that cannot be appended as given (wrong field types, bad stream id, ...)."""


class CorruptPayload(InvalidArgument, EventLogError):
    """Stored bytes that do not decode: the row was damaged or tampered with."""

    def __init__(self, position: int, type_name: str, why: str) -> None:
        super().__init__(
            f"the payload of event {position} ({type_name}) cannot be decoded: {why}",
            metadata={"position": str(position), "type": type_name},
        )
        self.position = position


class MissingKeyEncryptionKey(FailedPrecondition, EventLogError):
    """Personal data must be encrypted but the store has no key-encryption key."""


class SubjectErased(FailedPrecondition, EventLogError):
    def __init__(self, subject: str) -> None:
        super().__init__(
            f"data subject '{subject}' was erased, so no new personal data can be recorded for it",
            metadata={"subject": subject},
        )
        self.subject = subject


class WrongKeyEncryptionKey(FailedPrecondition, EventLogError):
    """A data key was wrapped by a different key-encryption key than the one configured."""


class DuplicateEvent(AlreadyExists, EventLogError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"an event with this id is already recorded ({detail})")
