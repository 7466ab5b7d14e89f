"""What every consent use case is built on: the service's log (one write path on the one writer
thread, reads on their own connections), the clock, the workspaces' models and who a profile is now
(after merges)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.consent.adapters.read_model import aliases, models
from onefold.consent.domain.ledger import LedgerState, ledger_stream, subject_of
from onefold.consent.domain.model import Model, empty_model, model_from_proto
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog.models import NewEvent, RecordedEvent
from onefold.eventlog.service import ServiceLog
from onefold.eventlog.streams import PARTITION_KEY
from onefold.platform.errors import InvalidArgument

T = TypeVar("T")
CLOCK_SKEW = timedelta(seconds=5)  # a grant "occurred" up to this far ahead of our clock is accepted
MAX_ID = 64


@dataclass(frozen=True)
class Written:
    """What a ledger write answers: the live profile, the events recorded and its state after them."""

    profile_id: str
    recorded: list[RecordedEvent]
    state: LedgerState


def check_profile_id(profile_id: str) -> str:
    if not profile_id or len(profile_id) > MAX_ID or any(c.isspace() for c in profile_id):
        raise InvalidArgument(
            "subject.profile_id is not a profile id", violations=[("subject.profile_id", "invalid")]
        )
    return profile_id


class ConsentLog:
    def __init__(self, log: ServiceLog, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.log = log
        self.store = log.store
        self.clock = clock
        self._models: dict[str, Model] = {}

    async def write(self, work: Callable[[Connection], T]) -> T:
        """`work(conn)` in one write transaction on the writer thread (it records with `record`)."""
        return await self.log.writer.run(self.log.projector.write, work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work(conn)` on a connection of its own, in a worker thread: never behind the writer."""

        def run() -> T:
            with self.store.engine.connect() as conn:
                return work(conn)

        return await asyncio.to_thread(run)

    def record(self, conn: Connection, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append and fold into the read model, in the caller's write transaction."""
        return self.log.projector.record(conn, events) if events else []

    def ledger_event(
        self, workspace: str, profile_id: str, message: Message, occurred: datetime | None, actor: str = ""
    ) -> NewEvent:
        return NewEvent(
            stream_id=ledger_stream(workspace, profile_id),
            message=message,
            subject=subject_of(workspace, profile_id),
            workspace=workspace,
            occurred_at=occurred,
            metadata={PARTITION_KEY: profile_id, **({"actor": actor} if actor else {})},
        )

    def model(self, conn: Connection, workspace: str, *, version: int | None = -1) -> Model:
        """The workspace's model; `version` when the caller already read it (None: no model yet).
        Only the version is read on each call; the model itself when it changed."""
        if version == -1:
            version = conn.execute(
                sa.select(models.c.version).where(models.c.workspace == workspace)
            ).scalar()
        cached = self.cached_model(workspace, version)
        if cached is not None:
            return cached
        row = conn.execute(sa.select(models.c.model).where(models.c.workspace == workspace)).first()
        if row is None:
            return empty_model()
        model = model_from_proto(pb.ConsentModel.FromString(row.model))
        self._models[workspace] = model
        return model

    def cached_model(self, workspace: str, version: int | None) -> Model | None:
        """The workspace's model at `version` (None: no model yet) when this process holds it."""
        if version is None:
            return empty_model()
        cached = self._models.get(workspace)
        return cached if cached is not None and cached.version == version else None

    def live_profile(self, conn: Connection, workspace: str, profile_id: str) -> str:
        """The profile whose ledger counts for `profile_id` (its survivor after merges)."""
        row = conn.execute(
            sa.select(aliases.c.survivor_id).where(
                aliases.c.workspace == workspace, aliases.c.profile_id == profile_id
            )
        ).first()
        return row.survivor_id if row is not None else profile_id

    def merged_into(self, conn: Connection, workspace: str, live: str) -> list[str]:
        """The profiles merged into `live` (whose ledgers are part of its history)."""
        return [
            row.profile_id
            for row in conn.execute(
                sa.select(aliases.c.profile_id).where(
                    aliases.c.workspace == workspace, aliases.c.survivor_id == live
                )
            )
        ]
