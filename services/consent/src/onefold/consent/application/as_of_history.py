"""The audit views of a subject's ledger: its state as of a time (the two axes of a bitemporal
audit), GetConsents (with preferences), and the history with proof, rendered for people."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.consent.application.consent_log import CLOCK_SKEW, ConsentLog, check_profile_id
from onefold.consent.domain.ledger import LEDGER_EVENTS, LedgerState, evidence_of, ledger_stream
from onefold.consent.domain.rendering import proof_words, summary, timeline
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog.models import RecordedEvent
from onefold.platform.errors import InvalidArgument, NotFound

_PREFERENCE = pb.PreferenceSet.DESCRIPTOR.full_name
_MERGED = pb.ConsentsMerged.DESCRIPTOR.full_name


class AsOfHistory:
    def __init__(self, consent_log: ConsentLog) -> None:
        self.consent_log = consent_log
        self.store = consent_log.store

    # ------------------------------------------------------------------------------ replay

    def replay(
        self,
        conn: Connection,
        workspace: str,
        profile_id: str,
        *,
        as_of: datetime | None,
        known_at: datetime | None,
        with_preferences: bool = False,
    ) -> LedgerState:
        """Replay the subject's ledger: only what was recorded by `known_at`, and only what had
        happened by `as_of` — the two axes of a bitemporal audit. Folded in log order, like the live
        read model (the fold itself orders answers by occurred time), so replay equals live."""
        types = LEDGER_EVENTS if with_preferences else LEDGER_EVENTS - {_PREFERENCE}
        events = self.store.read_streams(
            [ledger_stream(workspace, profile_id)],
            types=sorted(types),
            recorded_before=known_at,
            occurred_before=as_of,
            conn=conn,
        )
        state = LedgerState()
        for event in events:
            # The ledger fold reads public fields only (domain/ledger.py): no key is needed to replay
            # it; a preference's value is personal, so preferences are decrypted.
            message = self.store.decode(event, conn=conn, decrypt=with_preferences)
            state.apply(evidence_of(event), message)
        return state

    def ledger_at(
        self,
        conn: Connection,
        workspace: str,
        profile_id: str,
        live: str,
        *,
        as_of: datetime | None,
        known_at: datetime | None,
    ) -> str:
        """The profile whose ledger counted for `profile_id` at that time. `live` is where it counts
        now; a profile merged into another only after `as_of` (or recorded merged only after
        `known_at`) still answered from its own ledger then — following a chain of merges as far as
        each had happened."""
        if profile_id == live or (as_of is None and known_at is None):
            return live
        merged = self.consent_log.merged_into(conn, workspace, live)
        into: dict[str, tuple[str, RecordedEvent]] = {}
        for event in self.store.read_streams(
            [ledger_stream(workspace, p) for p in [live, *merged]], types=[_MERGED], conn=conn
        ):
            message = self.store.decode(event, conn=conn, decrypt=False)  # the profile ids are public
            assert isinstance(message, pb.ConsentsMerged)
            into[message.merged_profile_id] = (message.profile_id, event)
        current, seen = profile_id, {profile_id}
        while current != live and current in into:
            survivor, event = into[current]
            if (as_of is not None and event.occurred_at > as_of) or (
                known_at is not None and event.recorded_at > known_at
            ):
                break
            current = survivor
            if current in seen:
                return live
            seen.add(current)
        return current

    # ------------------------------------------------------------------------------ the use cases

    async def as_of(
        self, workspace: str, profile_id: str, *, as_of: datetime | None, known_at: datetime | None
    ) -> tuple[str, LedgerState]:
        check_profile_id(profile_id)
        now = self.consent_log.clock()
        for name, value in (("as_of", as_of), ("known_at", known_at)):
            if value is not None and value > now + CLOCK_SKEW:
                raise InvalidArgument(f"{name} is in the future", violations=[(name, "in the future")])

        def read(conn: Connection) -> tuple[str, LedgerState]:
            live = self.consent_log.live_profile(conn, workspace, profile_id)
            ledger = self.ledger_at(conn, workspace, profile_id, live, as_of=as_of, known_at=known_at)
            return live, self.replay(conn, workspace, ledger, as_of=as_of, known_at=known_at)

        return await self.consent_log.read(read)

    async def consents(self, workspace: str, profile_id: str) -> pb.GetConsentsResponse:
        check_profile_id(profile_id)

        def read(conn: Connection) -> tuple[str, LedgerState]:
            live = self.consent_log.live_profile(conn, workspace, profile_id)
            return live, self.replay(conn, workspace, live, as_of=None, known_at=None, with_preferences=True)

        live, state = await self.consent_log.read(read)
        return pb.GetConsentsResponse(
            profile_id=live,
            states=state.states(),
            objections=sorted(state.objections),
            restricted=state.restricted is not None,
            preferences=state.preferences,
        )

    def _ledger_history(
        self, conn: Connection, workspace: str, profile_id: str
    ) -> tuple[str, list[tuple[RecordedEvent, Message]]]:
        live = self.consent_log.live_profile(conn, workspace, profile_id)
        merged = self.consent_log.merged_into(conn, workspace, live)
        events = self.store.read_streams(
            [ledger_stream(workspace, p) for p in [live, *merged]], types=sorted(LEDGER_EVENTS), conn=conn
        )
        if not events:
            raise NotFound("no consent was ever recorded for this subject")
        return live, [(event, self.store.decode(event, conn=conn)) for event in events]

    async def ledger_history(
        self, workspace: str, profile_id: str
    ) -> tuple[str, list[tuple[RecordedEvent, Message]]]:
        """The subject's ledger events (and of every profile merged into it), decoded, in log order."""
        check_profile_id(profile_id)
        return await self.consent_log.read(lambda conn: self._ledger_history(conn, workspace, profile_id))

    async def history(self, workspace: str, profile_id: str) -> pb.HistoryResponse:
        """The history as people read it: each event with its summary and proof in words, and the
        timeline of each answer, rendered from the ledger's own fold."""
        check_profile_id(profile_id)

        def read(conn: Connection) -> tuple[str, list[tuple[RecordedEvent, Message]], dict[str, str]]:
            live, events = self._ledger_history(conn, workspace, profile_id)
            model = self.consent_log.model(conn, workspace)
            return live, events, {p.purpose_id: p.name for p in model.purposes.values() if p.name}

        live, events, purposes = await self.consent_log.read(read)
        answer = pb.HistoryResponse(profile_id=live, timeline=timeline(events, purposes))
        for event, message in events:
            envelope = self.store.to_envelope(event, decrypt=False)
            envelope.payload = message.SerializeToString(deterministic=True)
            entry = answer.entries.add(
                summary=summary(event, message),
                type=event.type.rsplit(".", 1)[-1],
                proof=proof_words(message, envelope.actor.id),
                event=envelope,
            )
            entry.evidence.CopyFrom(evidence_of(event).to_proto())
        return answer
