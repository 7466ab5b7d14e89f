"""Keeping every profile's tags and segments current: identity's events (the subscriber's handler),
the insights service's model tags (another subscriber's), timers (time passing), and backfills (a
definition set or archived), all on the writer thread.

Each pass works a batch at a time: the states it needs are loaded in one query per workspace, folded
in memory (domain/fold.py), saved once, and the changes recorded through the projector with the
history blocks, in the one transaction (with the subscriber's tracking row, for identity's batches).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.insights.v1 import models_pb2
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.mapper import ERASED
from onefold.eventlog.models import NewEvent, from_micros, to_micros
from onefold.eventlog.service import Duty, ServiceLog
from onefold.eventlog.streams import PARTITION_KEY
from onefold.platform.telemetry import get_logger
from onefold.segments.adapters.profile_states import Backfill, ProfileStates
from onefold.segments.application.workspaces import Holds, Workspaces, held_for, holds
from onefold.segments.domain import fold
from onefold.segments.domain.definitions import Micros, Workspace, feature_from_key
from onefold.segments.domain.fold import ProfileState, Result
from onefold.segments.domain.streams import profile_stream, subject_of

log = get_logger("onefold.segments")
Clock = Callable[[], Micros]
TIMER_BATCH = 500
BACKFILL_PAGE = 200
IDLE_WAIT_SECONDS = 60.0

IdentityInput = (
    identity_pb2.EventResolved
    | identity_pb2.TraitsUpdated
    | identity_pb2.ProfilesMerged
    | identity_pb2.ProfileUnmerged
    | identity_pb2.ProfileErased
)
# What the identity subscriber fetches (by subject) and folds: identity's other events are never read.
IDENTITY_TYPES: dict[str, type[IdentityInput]] = {
    m.DESCRIPTOR.full_name: m
    for m in (
        identity_pb2.EventResolved,
        identity_pb2.TraitsUpdated,
        identity_pb2.ProfilesMerged,
        identity_pb2.ProfileUnmerged,
        identity_pb2.ProfileErased,
    )
}

# What the insights subscriber fetches: the model tags given to profiles (their values sealed, opened
# with insights' subject keys).
INSIGHTS_TYPES: dict[str, type[models_pb2.ProfileModelTagged]] = {
    models_pb2.ProfileModelTagged.DESCRIPTOR.full_name: models_pb2.ProfileModelTagged
}


def wall_clock() -> Micros:
    return to_micros(datetime.now(UTC))


def profile_event(workspace: str, profile_id: str, message: Message, now: Micros) -> NewEvent:
    return NewEvent(
        stream_id=profile_stream(workspace, profile_id),
        message=message,
        subject=subject_of(workspace, profile_id),
        workspace=workspace,
        occurred_at=from_micros(now),
        metadata={PARTITION_KEY: profile_id},
    )


def change_events(workspace: str, profile_id: str, result: Result, now: Micros) -> list[NewEvent]:
    return [
        profile_event(workspace, profile_id, change.to_event(workspace, profile_id, result.cause), now)
        for change in result.changes
    ]


@dataclass
class _Pass:
    """One batch's work on one workspace: states in memory, what to write at the end."""

    workspace: str
    compiled: Workspace
    holds: Holds
    states: dict[str, ProfileState] = field(default_factory=dict)
    live: dict[str, str] = field(default_factory=dict)  # profile id -> the profile holding it now
    changed: set[str] = field(default_factory=set)
    history: dict[str, list[pb.HistoryRecord]] = field(default_factory=dict)
    events: list[NewEvent] = field(default_factory=list)
    erased: set[str] = field(default_factory=set)

    def state(self, profile_id: str) -> ProfileState:
        state = self.states.get(profile_id)
        if state is None:
            state = self.states[profile_id] = ProfileState(profile_id)
        return state

    def emit(self, profile_id: str, result: Result, now: Micros) -> None:
        self.changed.add(profile_id)
        self.events.extend(change_events(self.workspace, profile_id, result, now))


class ProfileFolds:
    def __init__(self, log_: ServiceLog, states: ProfileStates, workspaces: Workspaces, clock: Clock) -> None:
        self.log = log_
        self.states = states
        self.workspaces = workspaces
        self.clock = clock
        # On the leader: timers fired at their moment (sleeping until the earliest, woken early when
        # a batch sets an earlier one); backfills worked through a page per write.
        self.timers = Duty("segments.timers", self._timers_round, idle_seconds=IDLE_WAIT_SECONDS)
        self.backfills = Duty("segments.backfills", self._backfills_round, idle_seconds=IDLE_WAIT_SECONDS)
        self._sleeping_until: Micros | None = None

    # -------------------------------------------------------------------------- identity's events

    def handle_identity(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """The identity subscriber's handler: each input in order, per workspace in one pass."""
        now = self.clock()
        parsed: list[tuple[EventEnvelope, IdentityInput]] = []
        for envelope in envelopes:
            message_class = IDENTITY_TYPES.get(envelope.type)
            if message_class is not None:
                parsed.append((envelope, message_class.FromString(envelope.payload)))
        passes: dict[str, _Pass] = {}
        for workspace in dict.fromkeys(m.workspace for _, m in parsed):
            messages = [m for _, m in parsed if m.workspace == workspace]
            passes[workspace] = self._open_pass(conn, workspace, messages)
        for envelope, message in parsed:
            work = passes[message.workspace]
            if isinstance(message, identity_pb2.EventResolved):
                self._resolved(work, envelope, message, now)
            elif isinstance(message, identity_pb2.TraitsUpdated):
                self._traits(work, envelope, message, now)
            elif isinstance(message, identity_pb2.ProfilesMerged):
                self._merged(conn, work, envelope, message, now)
            elif isinstance(message, identity_pb2.ProfileUnmerged):
                self._unmerged(conn, work, envelope, message, now)
            elif isinstance(message, identity_pb2.ProfileErased):
                self._erased(conn, work, [message.profile_id, *message.profile_ids], now)
        for work in passes.values():
            self._finish(conn, work)

    # -------------------------------------------------------------------------- insights' model tags

    def handle_insights(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """The insights subscriber's handler: each model tag recorded as the profile's tag (marked
        with the model), per workspace in one pass.

        Left out: a profile erased here (its key is shredded: nothing personal is kept again), a
        value that reads as erased (insights shredded it first; identity's erasure follows here),
        and a profile merged into another since (the model tags the survivor at its next run)."""
        now = self.clock()
        parsed = [
            (envelope, models_pb2.ProfileModelTagged.FromString(envelope.payload))
            for envelope in envelopes
            if envelope.type in INSIGHTS_TYPES
        ]
        for workspace in dict.fromkeys(m.workspace for _, m in parsed):
            tagged = [(e, m) for e, m in parsed if m.workspace == workspace and m.value != ERASED]
            ids = {m.profile_id for _, m in tagged}
            erased = self.log.store.erased_subjects(conn, {subject_of(workspace, p) for p in ids})
            live = self.states.live(conn, workspace, ids)
            kept = {p for p in ids if live[p] == p and subject_of(workspace, p) not in erased}
            if not kept:
                continue
            compiled = self.workspaces.compiled(conn, workspace)
            work = _Pass(
                workspace, compiled, holds(compiled, self.states.unfinished_backfills(conn, workspace))
            )
            work.states = self.states.load(conn, workspace, kept)
            for envelope, message in tagged:
                if message.profile_id not in kept:
                    continue
                item = fold.ModelTagged(
                    message.tag,
                    message.value,
                    message.score,
                    message.model,
                    message.model_version,
                    envelope.event_id,
                )
                state = work.state(message.profile_id)
                result = fold.tag_by_model(
                    compiled, state, item, now, held_for(work.holds, message.profile_id)
                )
                work.emit(message.profile_id, result, now)
            self._finish(conn, work)

    def _open_pass(self, conn: Connection, workspace: str, messages: Sequence[IdentityInput]) -> _Pass:
        compiled = self.workspaces.compiled(conn, workspace)
        work = _Pass(workspace, compiled, holds(compiled, self.states.unfinished_backfills(conn, workspace)))
        ids: set[str] = set()
        for m in messages:
            if isinstance(m, identity_pb2.ProfilesMerged):
                ids.update((m.survivor_id, m.merged_id))
            elif isinstance(m, identity_pb2.ProfileUnmerged | identity_pb2.ProfileErased):
                continue  # these read what they need themselves
            else:
                ids.add(m.profile_id)
        work.live = self.states.live(conn, workspace, ids)
        work.states = self.states.load(conn, workspace, set(work.live.values()))
        return work

    def _live(self, conn: Connection, work: _Pass, profile_id: str) -> str:
        live = work.live.get(profile_id)
        if live is None:
            live = work.live[profile_id] = self.states.live(conn, work.workspace, [profile_id])[profile_id]
            if live not in work.states:
                work.states.update(self.states.load(conn, work.workspace, [live]))
        return live

    def _resolved(
        self, work: _Pass, envelope: EventEnvelope, message: identity_pb2.EventResolved, now: Micros
    ) -> None:
        if not message.profile_id:
            return
        profile_id = work.live.get(message.profile_id, message.profile_id)
        if profile_id in work.erased:
            return
        item = fold.resolved(message, envelope.event_id)
        work.history.setdefault(profile_id, []).append(fold.record_of(item, message.keys))
        result = fold.apply(
            work.compiled, work.state(profile_id), item, now, held_for(work.holds, profile_id)
        )
        work.emit(profile_id, result, now)

    def _traits(
        self, work: _Pass, envelope: EventEnvelope, message: identity_pb2.TraitsUpdated, now: Micros
    ) -> None:
        profile_id = work.live.get(message.profile_id, message.profile_id)
        if profile_id in work.erased:
            return
        item = fold.traits_set(
            message, to_micros(envelope.occurred_at.ToDatetime(tzinfo=UTC)), envelope.event_id
        )
        work.history.setdefault(profile_id, []).append(fold.record_of(item, message.keys))
        result = fold.apply(
            work.compiled, work.state(profile_id), item, now, held_for(work.holds, profile_id)
        )
        work.emit(profile_id, result, now)

    def _merged(
        self,
        conn: Connection,
        work: _Pass,
        envelope: EventEnvelope,
        message: identity_pb2.ProfilesMerged,
        now: Micros,
    ) -> None:
        survivor = self._live(conn, work, message.survivor_id)
        gone = self._live(conn, work, message.merged_id)
        if survivor == gone or survivor in work.erased or gone in work.erased:
            return
        other = work.states.pop(gone, None)
        if other is not None:
            closed = fold.close(other, "merged")
            closed = Result(closed.changes, None, envelope.event_id)
            work.emit(gone, closed, now)
            result = fold.apply(
                work.compiled,
                work.state(survivor),
                fold.Merged(other, envelope.event_id),
                now,
                held_for(work.holds, survivor),
            )
            work.emit(survivor, result, now)
        merged = pb.ProfileMerged(
            workspace=work.workspace, profile_id=gone, survivor_id=survivor, cause_event_id=envelope.event_id
        )
        work.events.append(profile_event(work.workspace, gone, merged, now))
        work.changed.discard(gone)
        self.states.delete(conn, work.workspace, [gone])
        self.states.alias(conn, work.workspace, gone, survivor)
        self.states.move_history(conn, work.workspace, gone, survivor)
        work.history.setdefault(survivor, []).extend(work.history.pop(gone, []))
        for key, value in list(work.live.items()):
            if value == gone:
                work.live[key] = survivor

    def _unmerged(
        self,
        conn: Connection,
        work: _Pass,
        envelope: EventEnvelope,
        message: identity_pb2.ProfileUnmerged,
        now: Micros,
    ) -> None:
        """Each part rebuilt from the history records that go with it (by the first identifier key
        of each record; records without one stay with the part keeping the profile id)."""
        kept = message.profile_id
        if kept in work.erased:
            return
        parts = [p.profile_id for p in message.parts] or [kept]
        owner_of = {key: p.profile_id for p in message.parts for key in p.keys}
        records = self.states.read_history(conn, work.workspace, [kept])[kept] + work.history.pop(kept, [])
        records.sort(key=lambda r: (r.at_us, r.event_id))
        by_part: dict[str, list[pb.HistoryRecord]] = {p: [] for p in parts}
        for record in records:
            owner = owner_of.get(record.keys[0], kept) if record.keys else kept
            by_part.setdefault(owner, []).append(record)
        if kept not in work.states:
            work.states.update(self.states.load(conn, work.workspace, [kept]))
        self.states.delete_history(conn, work.workspace, [kept])
        self.states.unalias(conn, work.workspace, [p for p in by_part if p != kept])
        for part in by_part:
            if part != kept:
                separated = pb.ProfileSeparated(
                    workspace=work.workspace,
                    profile_id=part,
                    separated_from_id=kept,
                    cause_event_id=envelope.event_id,
                )
                work.events.append(profile_event(work.workspace, part, separated, now))
        for part, items in by_part.items():
            previous = work.states.get(part) if part == kept else None
            state, result = fold.rebuild(
                work.compiled, part, [fold.from_record(r) for r in items], now, previous, "unmerged"
            )
            work.states[part] = state
            work.live[part] = part
            work.emit(part, result, now)
            work.history[part] = items

    def _erased(self, conn: Connection, work: _Pass, profile_ids: Sequence[str], now: Micros) -> None:
        """Every output withdrawn (recorded), then state, history and key gone (in `_finish`)."""
        ids = self.states.family(conn, work.workspace, profile_ids)
        loaded = self.states.load(conn, work.workspace, [p for p in ids if p not in work.states])
        work.states.update(loaded)
        for profile_id in ids:
            state = work.states.pop(profile_id, None)
            if state is not None:
                work.emit(profile_id, fold.close(state, "erased"), now)
            work.changed.discard(profile_id)
            work.history.pop(profile_id, None)
            work.erased.add(profile_id)

    def _finish(self, conn: Connection, work: _Pass) -> None:
        saved = [work.states[p] for p in work.changed if p in work.states and p not in work.erased]
        self.states.save(conn, work.workspace, saved)
        self.states.append_history(
            conn, work.workspace, {p: r for p, r in work.history.items() if p not in work.erased}
        )
        if work.events:
            self.log.projector.record(conn, work.events)
        if work.erased:
            erased = sorted(work.erased)
            self.states.delete(conn, work.workspace, erased)
            self.states.delete_history(conn, work.workspace, erased)
            self.states.unalias(conn, work.workspace, erased)
            for profile_id in erased:
                self.log.store.erase_subject(subject_of(work.workspace, profile_id), conn=conn)
        earliest = min((t for s in saved if (t := s.next_timer()) is not None), default=None)
        if earliest is not None and (self._sleeping_until is None or earliest < self._sleeping_until):
            self.log.after_commit(self.timers.wake)  # woken before the commit, it would plan without it

    def erase(self, conn: Connection, *, workspace: str, profile_ids: Sequence[str]) -> int:
        """A data-subject erasure (consent's request): as identity's ProfileErased. Returns how
        many profiles held anything here."""
        now = self.clock()
        work = _Pass(workspace, self.workspaces.compiled(conn, workspace), [])
        self._erased(conn, work, profile_ids, now)
        held = len(work.events)
        self._finish(conn, work)
        return held

    # -------------------------------------------------------------------------- timers

    def fire_due(self, conn: Connection) -> int:
        """Advance every profile whose timer is due (up to TIMER_BATCH); how many were advanced."""
        now = self.clock()
        fired = 0
        for workspace, profile_ids in self.states.due(conn, now, TIMER_BATCH).items():
            compiled = self.workspaces.compiled(conn, workspace)
            work = _Pass(
                workspace, compiled, holds(compiled, self.states.unfinished_backfills(conn, workspace))
            )
            work.states = self.states.load(conn, workspace, profile_ids)
            for profile_id, state in work.states.items():
                result = fold.advance(compiled, state, now, held_for(work.holds, profile_id))
                work.emit(profile_id, result, now)
                fired += 1
            self._finish(conn, work)
        return fired

    async def _timers_round(self) -> float | None:
        """Advance what is due; seconds until the earliest timer left (None: none)."""
        fired = await self.log.writer.run(self.log.projector.write, self.fire_due)
        if fired >= TIMER_BATCH:
            return 0.0
        earliest = await asyncio.to_thread(self._earliest_timer)
        self._sleeping_until = earliest
        return None if earliest is None else (earliest - self.clock()) / 1e6

    def _earliest_timer(self) -> Micros | None:
        with self.log.store.engine.connect() as conn:
            return self.states.earliest_timer(conn)

    # -------------------------------------------------------------------------- backfills

    def start_backfill(
        self,
        conn: Connection,
        workspace: str,
        definition: str,
        version: int,
        features: list[str],
        recompute: list[str],
    ) -> Backfill:
        backfill = Backfill(
            backfill_id=str(uuid.uuid4()),
            workspace=workspace,
            definition=definition,
            definition_version=version,
            features=features,
            recompute=recompute,
            cursor="",
            events_done=0,
            events_total=self.states.history_records(conn, workspace) if features else 0,
            finished=False,
        )
        self.states.start_backfill(conn, backfill, self.clock())
        return backfill

    def wake_backfills(self) -> None:
        """Call once the transaction that started a backfill committed (the loop reads on its own
        connection: woken earlier it would find nothing and sleep)."""
        self.backfills.wake()

    def backfill_page(self, conn: Connection, *, backfill: Backfill) -> Backfill:
        """The next BACKFILL_PAGE profiles of a backfill: features rebuilt from history, definitions
        re-evaluated, the cursor moved past them (all in the caller's transaction). Returns the
        backfill as advanced (the given one is left as it was, for a transaction run again)."""
        backfill = dataclasses.replace(backfill)
        now = self.clock()
        compiled = self.workspaces.compiled(conn, backfill.workspace)
        running = self.states.unfinished_backfills(conn, backfill.workspace)
        work = _Pass(backfill.workspace, compiled, holds(compiled, running, but=backfill.backfill_id))
        profile_ids = self.states.page(conn, backfill.workspace, backfill.cursor, BACKFILL_PAGE)
        if not profile_ids:
            backfill.finished = True
            self.states.advance_backfill(conn, backfill)
            return backfill
        work.states = self.states.load(conn, backfill.workspace, profile_ids)
        features = [f for f in (feature_from_key(k) for k in backfill.features) if f in compiled.features]
        histories = self.states.read_history(conn, backfill.workspace, profile_ids) if features else {}
        names = [n for n in backfill.recompute if n in compiled.definitions]
        for profile_id, state in work.states.items():
            records = histories.get(profile_id, [])
            events = [r for r in (fold.from_record(x) for x in records) if isinstance(r, fold.Resolved)]
            result = fold.backfill(
                compiled,
                state,
                [e.event for e in events],
                features,
                now,
                names,
                held_for(work.holds, profile_id),
            )
            work.emit(profile_id, result, now)
            backfill.events_done += len(records)
        self._finish(conn, work)
        backfill.cursor = profile_ids[-1]
        backfill.finished = len(profile_ids) < BACKFILL_PAGE
        backfill.events_total = max(backfill.events_total, backfill.events_done)
        self.states.advance_backfill(conn, backfill)
        return backfill

    async def _backfills_round(self) -> float | None:
        """Work through unfinished backfills (resumed after a restart from their cursor), a page per
        write so identity's batches interleave; 0 when there were some (look again), else None."""
        running = await asyncio.to_thread(self._unfinished)
        for backfill in running:
            while not backfill.finished:
                backfill = await self.log.writer.run(
                    self.log.projector.write, functools.partial(self.backfill_page, backfill=backfill)
                )
            log.info(
                "segments.backfill_finished", definition=backfill.definition, events=backfill.events_done
            )
        return 0.0 if running else None

    def _unfinished(self) -> list[Backfill]:
        with self.log.store.engine.connect() as conn:
            return self.states.unfinished_backfills(conn)
