"""The one interface every channel provider has: `await provider.send(message) -> Delivery`.

A provider never raises for a failed send: what happened is in the `Delivery` (delivered, failed
for good, or worth retrying), with an error that is bounded and names no person (a status code, a
reason), so it can be recorded in the log and shown to an operator as it is.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

MAX_ERROR_CHARS = 200
_MESSAGE_ID = re.compile(r"[A-Za-z0-9._:+=-]{1,200}")


class DeliveryStatus(enum.StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"  # permanent: retrying the same message cannot succeed
    RETRYABLE = "retryable"  # transient: the same message may succeed later


@dataclass(frozen=True)
class Message:
    """One rendered message to one person. `message_id` is deterministic (the same journey step
    for the same person always yields the same id), so a provider can recognise a repeat: it is
    passed on as the idempotency key (SMTP Message-ID, HTTP Idempotency-Key).

    `to`, the bodies and `data` are personal: `repr` shows ids only, so a message that reaches a
    log line or a traceback carries none of them."""

    message_id: str
    workspace: str
    profile_id: str
    channel: str
    to: str  # an email address, a phone number, a device token, a WeChat openid
    subject: str = ""  # email subject, push title
    text: str = ""
    html: str = ""  # email only
    template: str = ""  # the provider's own template id (WeChat template messages)
    data: Mapping[str, str] = field(default_factory=dict)  # push payload, WeChat template fields

    def __post_init__(self) -> None:
        if not _MESSAGE_ID.fullmatch(self.message_id):
            # It travels as an SMTP Message-ID and an HTTP header: no spaces, brackets or line breaks.
            raise ValueError("a message_id is 1-200 characters of A-Z a-z 0-9 . _ : + = -")

    def __repr__(self) -> str:
        return (
            f"Message(message_id={self.message_id!r}, workspace={self.workspace!r}, "
            f"profile_id={self.profile_id!r}, channel={self.channel!r})"
        )


@dataclass(frozen=True)
class Delivery:
    status: DeliveryStatus
    provider_message_id: str = ""
    error: str = ""  # bounded, non-personal; empty when delivered
    attempts: int = 1

    @classmethod
    def delivered(cls, provider_message_id: str) -> Delivery:
        return cls(DeliveryStatus.DELIVERED, provider_message_id=provider_message_id)

    @classmethod
    def failed(cls, error: str) -> Delivery:
        return cls(DeliveryStatus.FAILED, error=bounded(error))

    @classmethod
    def retryable(cls, error: str) -> Delivery:
        return cls(DeliveryStatus.RETRYABLE, error=bounded(error))


class Provider(Protocol):
    """What delivers messages of one channel (`kind` names the implementation, e.g. "smtp")."""

    kind: str

    async def send(self, message: Message) -> Delivery: ...

    async def aclose(self) -> None: ...


def bounded(error: str) -> str:
    """An error short enough to record; callers build it from codes and reasons, never from
    what a provider echoed back (which may quote the address or the body)."""
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"
