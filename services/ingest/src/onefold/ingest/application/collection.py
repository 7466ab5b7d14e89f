"""Collecting events: rate limits, the decision per event, dedupe, and the group-committed append.

An accepted event is `EventAccepted` on stream `ingest:<subject>`, where the subject is the person
(see subjects.py). The subject's data key encrypts the event's personal fields, so erasing an
identifier crypto-shreds its events; the relay partitions on the subject (`partition_key`), so one
person's events keep their order on NATS. A quarantined event is `EventQuarantined` on
`ingest-quarantine:<workspace>` (subject: the person when known, else the quarantine record itself).

Group commit: `submit()` prepares its events on the event loop and hands them to the service's
`GroupCommit` (onefold.eventlog.writer): everything queued meanwhile (up to `max_group_events`) is
written in ONE transaction on the writer thread — erased-subject and dedupe lookups, then
`Projector.record` (append, read models, tracking rows) — and every caller's acks resolve after the
commit. A failure that belongs to one request (an invalid event) fails only that request.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog import NewEvent, SubjectErased
from onefold.eventlog.models import to_micros
from onefold.eventlog.streams import PARTITION_KEY
from onefold.eventlog.writer import GroupCommit
from onefold.ingest.adapters.read_model import dedupe, dedupe_lookup
from onefold.ingest.application.sources import Source, SourceUseCases
from onefold.ingest.application.subjects import person
from onefold.ingest.domain import (
    FailureKind,
    Intake,
    Verdict,
    accepted_record,
    ack,
    decide,
    first_sightings,
    quarantined_record,
)
from onefold.ingest.domain.protos import violations_to_proto
from onefold.platform.errors import ResourceExhausted, Unavailable
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.ingest.application")
PROTOCOL_VIOLATION = FailureKind.PROTOCOL_VIOLATION
_PRUNE_CHUNK = 5000  # expired dedupe rows deleted per statement
_PRUNE_CHUNKS_PER_CALL = 4
_ERASED_RACE_RETRIES = 3  # a subject erased between our erased-subject query and the append


@dataclass(slots=True)
class Pending:
    """One event on its way into the log."""

    intake: Intake
    verdict: Verdict
    workspace: str
    subject: str
    event: NewEvent | None  # EventAccepted / EventQuarantined (None: a replay that stays quarantined)
    message_id: str = ""  # dedupe key, set when accepted
    quarantine_id: str = ""
    replay_of: str = ""  # quarantine id, when this is a replay


@dataclass
class _Bucket:
    tokens: float
    updated: float


class CollectionUseCases(SourceUseCases):
    """Rate limits and submit (state set by IngestApplication)."""

    dedupe_window: timedelta
    group_commit: GroupCommit[Pending, ingest_pb2.EventAck]
    _buckets: dict[str, _Bucket]
    _last_prune: float

    # ------------------------------------------------------------------------------ rate limits

    def check_rate(self, source: Source, events: int) -> None:
        """Raise ResourceExhausted(retry_after_seconds=...) when `source` is over its rate limit.

        A token bucket per source, in events per second, holding up to two seconds of the rate
        (and at least one maximal batch, so a full batch can always get through an idle source).
        """
        rate = max(source.rate_limit_per_second, 0.001)
        capacity = max(2.0 * rate, float(source.limits.max_batch_events))
        # The injectable clock, so tests can hold time still; a clock stepped back refills nothing.
        now = self.clock().timestamp()
        bucket = self._buckets.get(source.source_id)
        if bucket is None:
            bucket = self._buckets[source.source_id] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + max(now - bucket.updated, 0.0) * rate)
        bucket.updated = now
        if bucket.tokens < events:
            retry_after = round(max((events - bucket.tokens) / rate, 0.001), 3)
            raise ResourceExhausted(
                f"source '{source.source_id}' is over its rate limit of {rate:g} events per second",
                metadata={"source_id": source.source_id, "limit_per_second": f"{rate:g}"},
                retry_after_seconds=retry_after,
            )
        bucket.tokens -= events

    # ---------------------------------------------------------------------------------- submit

    def person(self, workspace: str, user_id: str, anonymous_id: str) -> tuple[str, str, str]:
        """(subject, user_id_index, anonymous_id_index) of an event's person; subject "" if none."""
        return person(self.log.store, workspace, user_id, anonymous_id)

    def _prepare(self, source: Source, intake: Intake, verdict: Verdict, received_at: datetime) -> Pending:
        workspace = source.workspace
        event = intake.event
        if not verdict.is_quarantined:
            assert event is not None
            subject, user_index, anonymous_index = self.person(workspace, event.user_id, event.anonymous_id)
            record = accepted_record(
                event,
                verdict,
                workspace=workspace,
                user_id_index=user_index,
                anonymous_id_index=anonymous_index,
            )
            new_event = NewEvent(
                stream_id=f"ingest:{subject}",
                message=record,
                subject=subject,
                workspace=workspace,
                occurred_at=event.timestamp,
                metadata={PARTITION_KEY: subject},
            )
            return Pending(intake, verdict, workspace, subject, new_event, message_id=event.message_id)
        quarantine_id = "q_" + uuid.uuid4().hex
        user_id, anonymous_id = _identifiers(intake)
        subject, user_index, anonymous_index = self.person(workspace, user_id, anonymous_id)
        subject = subject or f"{workspace}:q:{quarantine_id}"
        kept = quarantined_record(
            intake,
            verdict,
            workspace=workspace,
            source_id=source.source_id,
            quarantine_id=quarantine_id,
            received_at=received_at,
            user_id_index=user_index,
            anonymous_id_index=anonymous_index,
        )
        new_event = NewEvent(
            stream_id=f"ingest-quarantine:{workspace}",
            message=kept,
            subject=subject,
            workspace=workspace,
            metadata={PARTITION_KEY: subject},
        )
        return Pending(intake, verdict, workspace, subject, new_event, quarantine_id=quarantine_id)

    async def submit(self, source: Source, intakes: Sequence[Intake]) -> list[ingest_pb2.EventAck]:
        """Dedupe on (workspace, messageId), decide with the source's tracking plan, append
        EventAccepted / EventQuarantined, and return one ack per intake, in order. Returns only after
        the events are committed to the ingest log (group commit across concurrent callers)."""
        if not intakes:
            return []
        self._require_accepting()
        plan = self._compiled(source)
        received_at = self.clock()
        pending = [self._prepare(source, intake, decide(intake, plan), received_at) for intake in intakes]
        return await self.group_commit.submit(pending)

    def _require_accepting(self) -> None:
        if not self.group_commit.accepting:
            raise Unavailable("the ingest service is not accepting events (starting or stopping)")

    def _commit(self, items: list[Pending]) -> list[ingest_pb2.EventAck]:
        """A group, on the writer thread, in one transaction. Events of erased subjects are turned
        into content-free quarantine records (nothing personal may be written for them); only a
        subject erased after the group's erased-subject query (a race) costs a retry."""
        for _attempt in range(_ERASED_RACE_RETRIES):
            try:
                return self.log.projector.write(functools.partial(self._write, items))
            except SubjectErased as race:
                items = [self._erased(item) if item.subject == race.subject else item for item in items]
        raise Unavailable("the ingest log is busy; retry", retry_after_seconds=1.0)

    def _erased(self, item: Pending) -> Pending:
        quarantine_id = item.quarantine_id or "q_" + uuid.uuid4().hex
        record = ingest_pb2.EventQuarantined(
            quarantine_id=quarantine_id,
            reasons=[
                ingest_pb2.Violation(
                    path="",
                    message="the data subject was erased; events about it are no longer collected",
                    rule="subject_erased",
                )
            ],
            kind=ingest_pb2.FAILURE_KIND_SUBJECT_ERASED,
            workspace=item.workspace,
            source_id=item.intake.event.source_id if item.intake.event is not None else "",
        )
        record.received_at.FromDatetime(self.clock())
        new_event = NewEvent(
            stream_id=f"ingest-quarantine:{item.workspace}", message=record, workspace=item.workspace
        )
        return Pending(
            item.intake,
            Verdict.quarantined(item.verdict.kind or PROTOCOL_VIOLATION, ()),
            item.workspace,
            "",
            new_event,
            quarantine_id=quarantine_id,
            replay_of=item.replay_of,
        )

    def _write(self, items: list[Pending], conn: Connection) -> list[ingest_pb2.EventAck]:
        """Dedupe and record; returns the acks (valid once committed). The erased subjects of the
        whole group are found with one query, the known messageIds with one per workspace."""
        store = self.log.store
        erased = store.erased_subjects(conn, {item.subject for item in items if item.event is not None})
        if erased:
            items = [self._erased(item) if item.subject in erased else item for item in items]
        now_us = to_micros(self.clock())
        horizon = now_us - int(self.dedupe_window.total_seconds() * 1_000_000)
        wanted: dict[str, list[int]] = {}  # workspace -> indexes of its items that carry a messageId
        for index, item in enumerate(items):
            if item.message_id and item.event is not None:
                wanted.setdefault(item.workspace, []).append(index)
        duplicate = [False] * len(items)
        for workspace, indexes in wanted.items():
            ids = [items[index].message_id for index in indexes]
            known = dedupe_lookup(conn, workspace, ids)
            seen = {message_id for message_id, seen_at in known.items() if seen_at > horizon}
            # first_sightings also keeps only the first copy of a messageId repeated in the group.
            for index, fresh in zip(indexes, first_sightings(ids, seen), strict=True):
                duplicate[index] = not fresh
        to_append: list[NewEvent] = []
        for index, item in enumerate(items):
            if item.event is not None and not duplicate[index]:
                to_append.append(item.event)
            if item.replay_of:
                to_append.append(self._replayed_event(item, duplicate[index]))
        if to_append:
            # Raises ProjectionBehind when the read models (so the dedupe lookup above) lag the log:
            # Projector.write then catches up and runs this again.
            self.log.projector.record(conn, to_append)
        acks = []
        for index, item in enumerate(items):
            answer = ack(
                item.intake, item.verdict, duplicate=duplicate[index], quarantine_id=item.quarantine_id
            )
            if item.verdict.kind is not None and item.event is not None:
                record = item.event.message
                if isinstance(record, ingest_pb2.EventQuarantined):
                    answer.kind = record.kind
                    if not answer.reasons:
                        answer.reasons.extend(record.reasons)
            if item.replay_of:
                answer.quarantine_id = item.replay_of
            acks.append(answer)
        return acks

    def _replayed_event(self, item: Pending, duplicate: bool) -> NewEvent:
        if item.verdict.is_quarantined:
            status = ingest_pb2.ACK_STATUS_QUARANTINED
        else:
            status = ingest_pb2.ACK_STATUS_DUPLICATE if duplicate else ingest_pb2.ACK_STATUS_ACCEPTED
        message = ingest_pb2.QuarantineReplayed(
            quarantine_id=item.replay_of,
            workspace=item.workspace,
            status=status,
            message_id=item.intake.message_id,
        )
        if item.verdict.is_quarantined:
            message.reasons.extend(violations_to_proto(item.verdict.violations))
            ack_kind = ack(item.intake, item.verdict).kind
            message.kind = ack_kind
        return NewEvent(
            stream_id=f"ingest-quarantine:{item.workspace}", message=message, workspace=item.workspace
        )

    def _maybe_prune(self) -> None:
        """Forget dedupe rows older than the window, in bounded chunks: at most once a minute, or
        after the next group while a backlog of expired rows remains (the group commit's
        `after_group`, on the writer thread)."""
        now = time.monotonic()
        if now - self._last_prune < 60.0:
            return
        self._last_prune = now
        horizon = to_micros(self.clock() - self.dedupe_window)
        # One DELETE of a day's expired rows can take long enough to stall the writer thread (and
        # every caller waiting on a group commit), so delete a bounded number of rows per statement,
        # a few statements per call; whatever is left goes on the next call.
        expired = (
            sa.select(dedupe.c.workspace, dedupe.c.message_id)
            .where(dedupe.c.accepted_at < horizon)
            .limit(_PRUNE_CHUNK)
        )
        statement = dedupe.delete().where(sa.tuple_(dedupe.c.workspace, dedupe.c.message_id).in_(expired))
        try:
            for _chunk in range(_PRUNE_CHUNKS_PER_CALL):
                with self.log.store.engine.begin() as conn:
                    deleted = conn.execute(statement).rowcount
                if deleted < _PRUNE_CHUNK:
                    break
            else:
                self._last_prune = 0.0  # more left: continue after the next group, not in a minute
        except sa.exc.SQLAlchemyError:
            log.warning("ingest.dedupe_prune_failed", exc_info=True)


def _identifiers(intake: Intake) -> tuple[str, str]:
    """Best-effort user / anonymous id of an event that may not have parsed (for its subject)."""
    if intake.event is not None:
        return intake.event.user_id, intake.event.anonymous_id
    if intake.wire_event is not None:
        return intake.wire_event.user_id[:1024], intake.wire_event.anonymous_id[:1024]
    if intake.raw_json:
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(intake.raw_json)
            if isinstance(document, dict):
                user_id, anonymous_id = document.get("userId"), document.get("anonymousId")
                return (
                    str(user_id)[:1024] if isinstance(user_id, str | int) and user_id != "" else "",
                    str(anonymous_id)[:1024]
                    if isinstance(anonymous_id, str | int) and anonymous_id != ""
                    else "",
                )
    return "", ""
