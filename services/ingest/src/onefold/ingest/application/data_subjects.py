"""Data-subject requests: the events collected under a person's identifiers, exported or
crypto-shredded (the log keeps them; their personal fields become unreadable)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from onefold.contracts.common.v1 import envelope_pb2
from onefold.eventlog import RecordedEvent
from onefold.ingest.adapters.read_model import quarantine
from onefold.ingest.application.collection import CollectionUseCases
from onefold.platform.errors import InvalidArgument


class DataSubjectUseCases(CollectionUseCases):
    """Export and erasure by user_ids / anonymous_ids."""

    def _subjects(self, workspace: str, user_ids: Iterable[str], anonymous_ids: Iterable[str]) -> list[str]:
        subjects = [self.person(workspace, user_id, "")[0] for user_id in user_ids if user_id]
        subjects += [
            self.person(workspace, "", anonymous_id)[0] for anonymous_id in anonymous_ids if anonymous_id
        ]
        if not subjects:
            raise InvalidArgument(
                "name at least one identifier", violations=[("identifiers", "user_ids or anonymous_ids")]
            )
        return list(dict.fromkeys(subjects))

    def _subject_events(self, subjects: Sequence[str]) -> list[RecordedEvent]:
        store = self.log.store
        events: dict[int, RecordedEvent] = {}
        for subject in subjects:
            for event in store.read_stream(f"ingest:{subject}"):
                events[event.position] = event
        with store.engine.connect() as conn:
            positions = [
                int(p)
                for p in conn.execute(
                    sa.select(quarantine.c.position).where(quarantine.c.subject.in_(list(subjects)))
                ).scalars()
            ]
            for position in positions:
                for event in store.read(after_position=position - 1, limit=1, conn=conn):
                    events[event.position] = event
        return [events[p] for p in sorted(events)]

    async def export_subject(
        self, workspace: str, user_ids: Sequence[str], anonymous_ids: Sequence[str]
    ) -> tuple[list[envelope_pb2.EventEnvelope], int]:
        """Every event (accepted and quarantined) of the identifiers, decrypted, in log order, and
        how many of the identifiers are erased (their events' personal fields read as erased)."""
        subjects = self._subjects(workspace, user_ids, anonymous_ids)
        store = self.log.store

        def export() -> tuple[list[envelope_pb2.EventEnvelope], int]:
            envelopes = [store.to_envelope(event) for event in self._subject_events(subjects)]
            return envelopes, sum(1 for subject in subjects if store.is_erased(subject))

        return await asyncio.to_thread(export)

    async def erase_subject(
        self, workspace: str, user_ids: Sequence[str], anonymous_ids: Sequence[str]
    ) -> tuple[int, int]:
        """Crypto-shred the identifiers' events: (identifiers erased, events affected). Events stay
        in the log (the chain still verifies); their personal fields become unreadable, here and in
        every later relay of them. New events for an erased identifier are refused with a
        content-free quarantine record."""
        subjects = self._subjects(workspace, user_ids, anonymous_ids)

        def erase() -> tuple[int, int]:
            affected = len(self._subject_events(subjects))
            for subject in subjects:
                self.log.store.erase_subject(subject)
            return len(subjects), affected

        return await self.log.writer.run(erase)
