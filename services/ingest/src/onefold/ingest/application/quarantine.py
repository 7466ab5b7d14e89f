"""Quarantined events: listed for a person to look at, replayed through the current checks.

`EventQuarantined` is kept on `ingest-quarantine:<workspace>`; a replay appends `QuarantineReplayed`
(with the EventAccepted when it now passes), through the same group commit as collection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog.models import from_micros
from onefold.ingest.adapters.read_model import quarantine
from onefold.ingest.application.collection import PROTOCOL_VIOLATION, CollectionUseCases, Pending
from onefold.ingest.application.requests import capped_page_size, holds_nul, position_token
from onefold.ingest.application.sources import Source
from onefold.ingest.domain import DEFAULT_LIMITS, Verdict, ack, decide, intake_from_quarantined
from onefold.platform.errors import NotFound

MAX_REPLAY = 1000  # quarantined events replayed per call when selecting by filter


class QuarantineUseCases(CollectionUseCases):
    """Listing and replaying quarantined events."""

    async def list_quarantined(
        self,
        workspace: str,
        *,
        source_id: str = "",
        kind: int = 0,
        include_replayed: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[ingest_pb2.QuarantinedEvent], str]:
        """Quarantined events of the workspace in log order; `page_token` continues a listing."""
        size = capped_page_size(page_size)
        after = position_token(page_token)
        if holds_nul(source_id):
            return [], ""  # no such source (and PostgreSQL cannot compare a text holding NUL)

        def query() -> list[tuple[int, ingest_pb2.QuarantinedEvent]]:
            statement = sa.select(quarantine).where(
                quarantine.c.workspace == workspace, quarantine.c.position > after
            )
            if source_id:
                statement = statement.where(quarantine.c.source_id == source_id)
            if kind:
                statement = statement.where(quarantine.c.kind == kind)
            if not include_replayed:
                statement = statement.where(quarantine.c.replayed.is_(False))
            statement = statement.order_by(quarantine.c.position).limit(size + 1)
            with self.log.store.engine.connect() as conn:
                rows = list(conn.execute(statement))
                out = []
                for row in rows:
                    record = self._load_quarantined(conn, int(row.position))
                    item = ingest_pb2.QuarantinedEvent(
                        quarantine_id=row.quarantine_id, record=record, replayed=bool(row.replayed)
                    )
                    item.quarantined_at.FromDatetime(from_micros(int(row.quarantined_at)))
                    out.append((int(row.position), item))
            return out

        found = await asyncio.to_thread(query)
        next_token = str(found[size - 1][0]) if len(found) > size else ""
        return [item for _, item in found[:size]], next_token

    def _load_quarantined(self, conn: Connection, position: int) -> ingest_pb2.EventQuarantined:
        store = self.log.store
        events = store.read(after_position=position - 1, limit=1, conn=conn)
        message = store.decode(events[0], conn=conn)
        assert isinstance(message, ingest_pb2.EventQuarantined)
        return message

    async def replay_quarantined(
        self,
        workspace: str,
        *,
        quarantine_ids: Sequence[str] = (),
        source_id: str = "",
        kind: int = 0,
        dry_run: bool = False,
    ) -> list[ingest_pb2.EventAck]:
        """Re-submit quarantined events through the same checks with each source's CURRENT plan.

        Accepted ones are appended as EventAccepted (deduped like any event) with a
        QuarantineReplayed; ones that still fail get a QuarantineReplayed with the new reasons and
        stay listed. Replaying an already replayed event changes nothing and reports its outcome.
        """
        self._require_accepting()
        ids = list(dict.fromkeys(quarantine_ids))
        if not ids and holds_nul(source_id):
            return []  # no such source (and PostgreSQL cannot compare a text holding NUL)

        def select() -> list[tuple[Any, ingest_pb2.EventQuarantined]]:
            statement = sa.select(quarantine).where(quarantine.c.workspace == workspace)
            if ids:
                # Ids holding NUL exist nowhere (PostgreSQL cannot compare them): reported missing below.
                storable = [qid for qid in ids if not holds_nul(qid)]
                statement = statement.where(quarantine.c.quarantine_id.in_(storable))
            else:
                statement = statement.where(quarantine.c.replayed.is_(False))
                if source_id:
                    statement = statement.where(quarantine.c.source_id == source_id)
                if kind:
                    statement = statement.where(quarantine.c.kind == kind)
                statement = statement.order_by(quarantine.c.position).limit(MAX_REPLAY)
            with self.log.store.engine.connect() as conn:
                rows = list(conn.execute(statement))
                return [(row, self._load_quarantined(conn, int(row.position))) for row in rows]

        selected = await asyncio.to_thread(select)
        if ids:
            found = {row.quarantine_id for row, _ in selected}
            missing = [qid for qid in ids if qid not in found]
            if missing:
                raise NotFound(
                    f"no quarantined event {missing[0][:80]!r} in workspace '{workspace}'",
                    violations=[("quarantine_ids", f"unknown: {', '.join(m[:80] for m in missing[:10])}")],
                )
            order = {qid: i for i, qid in enumerate(ids)}
            selected.sort(key=lambda pair: order[pair[0].quarantine_id])
        answers: list[ingest_pb2.EventAck | None] = []
        pending: list[Pending] = []
        slots: list[int] = []
        for index, (row, record) in enumerate(selected):
            if row.replayed:
                answers.append(
                    ingest_pb2.EventAck(
                        message_id=row.message_id,
                        status=row.replay_status,
                        index=index,
                        quarantine_id=row.quarantine_id,
                    )
                )
                continue
            answers.append(None)
            slots.append(index)
            pending.append(self._replay_item(workspace, record, index))
        if pending and not dry_run:
            committed = await self.group_commit.submit(pending)
        else:
            committed = [self._dry_ack(item) for item in pending]
        for slot, answer in zip(slots, committed, strict=True):
            answers[slot] = answer
        return [answer for answer in answers if answer is not None]

    def _replay_item(self, workspace: str, record: ingest_pb2.EventQuarantined, index: int) -> Pending:
        source = self._sources.get(record.source_id) or self._lookup_source(record.source_id)
        limits = source.limits if source is not None else DEFAULT_LIMITS
        intake = replace(intake_from_quarantined(record, limits=limits), index=index)
        plan = self._compiled(source) if source is not None else None
        verdict = decide(intake, plan)
        if record.kind == ingest_pb2.FAILURE_KIND_SUBJECT_ERASED:
            verdict = Verdict.quarantined(PROTOCOL_VIOLATION, ())
        pseudo_source = source or Source(source_id=record.source_id, workspace=workspace, name="")
        item = self._prepare(pseudo_source, intake, verdict, self.clock())
        if verdict.is_quarantined:
            # Still failing: no second quarantine record, only the QuarantineReplayed with the reasons.
            item = Pending(intake, verdict, workspace, item.subject, None)
        item.replay_of = record.quarantine_id
        return item

    @staticmethod
    def _dry_ack(item: Pending) -> ingest_pb2.EventAck:
        answer = ack(item.intake, item.verdict, quarantine_id=item.replay_of)
        answer.quarantine_id = item.replay_of
        return answer
