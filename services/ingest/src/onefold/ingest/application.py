"""Use cases of the ingest service: authenticate a source, accept events durably, quarantine the rest.

CONTRACT (being implemented): the HTTP and gRPC entrypoints call only what is declared here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog import EventRegistry
from onefold.ingest.domain import DEFAULT_LIMITS, Intake, Limits, TrackingPlan


def event_registry() -> EventRegistry:
    """The event types this service appends to its log (protobuf full names, with upcasters)."""
    return EventRegistry()


@dataclass(frozen=True)
class Source:
    """A place events come from (a website, an app, a store's POS), owned by one workspace."""

    source_id: str
    workspace: str
    name: str
    plan: TrackingPlan | None = None
    rate_limit_per_second: float = 1000.0  # Segment's recommended ceiling per workspace
    disabled: bool = False
    limits: Limits = DEFAULT_LIMITS


class IngestApplication:
    """Declared interface; see the ingest issue. All methods are safe to call from the event loop."""

    def source_for_write_key(self, write_key: str) -> Source:
        """The source a write key belongs to. Raises Unauthenticated (never says which part was wrong)
        and FailedPrecondition for a disabled source. Write keys are stored hashed."""
        raise NotImplementedError

    def source(self, workspace: str, source_id: str) -> Source:
        """A source by id within a workspace. Raises NotFound."""
        raise NotImplementedError

    def check_rate(self, source: Source, events: int) -> None:
        """Raise ResourceExhausted(retry_after_seconds=...) when `source` is over its rate limit."""
        raise NotImplementedError

    async def submit(self, source: Source, intakes: Sequence[Intake]) -> list[ingest_pb2.EventAck]:
        """Dedupe on (workspace, messageId), decide with the source's tracking plan, append
        EventAccepted / EventQuarantined, and return one ack per intake, in order. Returns only after
        the events are committed to the ingest log (group commit across concurrent callers)."""
        raise NotImplementedError
