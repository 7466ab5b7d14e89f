"""What every kind of destination (a target) is given and answers.

The deliverer (application/deliverer.py) hands a target a batch of deliveries of one destination,
in log order; a person's deliveries keep their order within it. The target answers one `Result`
per delivery, in the same order:

- DELIVERED: the receiver has it (a receiver may see it again after a crash: the delivery id is
  its idempotency key);
- RETRY: not now (a timeout, a 5xx, 408 or 429, a dropped connection): tried again after a backoff;
- REJECTED: never (a 4xx the receiver means, a value the table refuses): dead-lettered at once.

A target that cannot apply one of a person's deliveries applies none of that person's later ones
in the batch (they answer RETRY, "behind an earlier failure"), so order per person holds.

Errors are bounded and never echo what the receiver answered (it may hold personal data).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

MAX_ERROR_CHARS = 200


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: str = ""

    @staticmethod
    def retry(error: str) -> Result:
        return Result(Outcome.RETRY, error[:MAX_ERROR_CHARS])

    @staticmethod
    def rejected(error: str) -> Result:
        return Result(Outcome.REJECTED, error[:MAX_ERROR_CHARS])


DELIVERED = Result(Outcome.DELIVERED)
BEHIND_A_FAILURE = Result(Outcome.RETRY, "behind an earlier failure of the same person")


@dataclass(frozen=True)
class Delivery:
    """One thing to deliver about one person (an opened DeliveryQueued)."""

    delivery_id: str
    workspace: str
    destination: str
    profile_id: str
    kind: str  # "event", "segment_entered", "segment_exited", "traits", "deletion"
    name: str  # the event's name (or type), the segment; "" for traits and deletions
    occurred_at: datetime
    position: int  # in the destinations log: the order deliveries are made in
    data: dict[str, Any]  # what is sent: the mapped event, the traits; {} for memberships, deletions


def wire(delivery: Delivery) -> dict[str, Any]:
    """A delivery as every receiver reads it (a webhook's body, a file's row)."""
    return {
        "id": delivery.delivery_id,
        "type": delivery.kind,
        "destination": delivery.destination,
        "profileId": delivery.profile_id,
        "name": delivery.name,
        "occurredAt": delivery.occurred_at.isoformat().replace("+00:00", "Z"),
        "data": delivery.data,
    }


class Target(Protocol):
    kind: str  # "webhook", "table", "files"

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        """One Result per delivery, in order; never raises for a receiver's failure."""
        ...

    async def aclose(self) -> None: ...
