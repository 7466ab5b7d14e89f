"""Data-subject requests (GDPR 12(3), 15-18, 20; PIPL 44-47, 50): access, erasure, rectification and
restriction, each an event-sourced aggregate of its own, orchestrated across the seven services.

The aggregate: stream `dsr:<workspace>:<request_id>`; its personal parts (the whole RequestOpened,
the identifiers of ErasureRequested, the export of RequestCompleted) are encrypted with the data key
of the subject `<workspace>:dsr:<request_id>`. Events: RequestOpened (state OPEN, one step per
service) → RequestStepUpdated (the first one moves the request to IN_PROGRESS) → RequestCompleted
(COMPLETED), or RequestRefused (REFUSED, with the reason shown to the person: PIPL 50, GDPR 12(4));
RequestExtended moves the deadline once. The read model `consent_requests` folds the same events
(the same fold: domain.subject_request.RequestFold) for listing and deadlines.

Deadlines (GDPR 12(3)): due one calendar month after receipt (31 January → 28/29 February). One
extension of at most 60 days, with a reason for the person, given before the first month ends.
ListRequests(overdue_only) lists requests past due that are neither completed nor refused.

Steps, one per service: ingest, identity, consent, segments, journeys, destinations, insights.

- A step is DONE only when its service answered the call (its confirmation — counts, ids, never
  personal data — is kept as JSON), or NOT_APPLICABLE when the service has nothing to do for that
  request type (the reason is the step's confirmation). A service that does not answer — no address
  configured (peers.<name>) or no service credential, UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED —
  is never DONE: PENDING when it was not reached or does not serve the call (UNIMPLEMENTED), FAILED
  (with attempts and last_error) when a call failed. So a request completes only when all seven
  services answered: a completion record signed while a service may still hold the person's data
  would be false.
- Retries never restart a request: RetryRequest and the background loop (`run`, started by the
  bootstrap, only on the replica holding the log's leader lease) attempt only the steps not settled,
  the loop with exponential backoff per step (`Timings`). Each attempt is a RequestStepUpdated event;
  a step that cannot be attempted (no address) records nothing until its explanation changes. Calls
  fail fast (no wait-for-ready): a service that just came back may still be behind the channel's
  reconnect backoff for a moment, and the next retry reaches it.
- When every step is settled, RequestCompleted is appended in the same transaction as the last step:
  `completion_record` is canonical JSON of each service's confirmation, `completion_signature` its
  HMAC-SHA256 with a key derived from the service's key-encryption key (KeyEncryptionKey.derive, the
  facility blind indexes use; purpose "dsr-completion-record"), so the record can be verified by
  whoever holds the service's KEK and cannot be altered unnoticed.

Per type:

- ERASURE (GDPR 17, PIPL 47): consent's own part runs at once (ConsentSubjectErased, then the
  subject's key is shredded: checks deny with ERASED). The other services need the person's
  identifiers: they are collected from identity (GetProfile), recorded in ErasureRequested (which the
  outbox relay publishes on the bus for every listening service), then EraseSubject is called on
  ingest, identity, segments, journeys, destinations and insights concurrently, each with a timeout. Until
  identity has answered, those steps wait (PENDING, "waiting for the subject's identifiers").
- ACCESS (GDPR 15, 20; PIPL 45): ExportSubject on ingest, identity, segments, journeys,
  destinations and insights (with the identifiers from GetProfile) and consent's own ledger (GetConsents, the
  history with proof, the person's requests); assembled into one JSON document (format
  "onefold.dsr.export/v1", event payloads decoded) kept encrypted in RequestCompleted.export and
  returned by GetRequest. The parts are held in memory until the request completes (never written in
  clear); one lost with a restart is fetched again before completing. The export travels in one
  event, so it is bounded by the log's event size (1 MiB after compression): a larger one is logged
  (`dsr.export_too_large`) and the request stays open.
- RESTRICTION (GDPR 18, PIPL 44): RestrictionSet (`restrict` true sets, false lifts) on the subject's
  ledger, in the same transaction as RequestOpened and RequestCompleted: every CheckConsent denies
  with RESTRICTED from that commit on. The other services' steps are NOT_APPLICABLE: they process a
  person only after CheckConsent.
- RECTIFICATION (GDPR 16, PIPL 46): the corrections (a JSON object of trait -> value) are kept
  encrypted in the request and sent to identity, which owns traits (RectifyProfile: the corrected
  values replace what was set before); the other steps are NOT_APPLICABLE.

The calls: every other service serves the same declared contract, onefold.common.v1.DataSubjectService
(ExportSubject, EraseSubject; scope dsr:write), called through one typed client
(adapters.data_subjects). Each gets the same request — request_id, the profile id, the identifiers
as (type, value) pairs — and answers from what it holds: ingest by user_id / anonymous_id, identity
by any identifier, segments, journeys, destinations and insights by profile id. The confirmation is the
answer's counts (an erasure's erased profile ids too); an access request's part is its counts, its
events (payloads decoded) and its typed records (e.g. identity's SubjectExport).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.consent.adapters.read_model import request_from_row, request_rows
from onefold.consent.adapters.request_steps import PeerSteps
from onefold.consent.application.as_of_history import AsOfHistory
from onefold.consent.application.consent_log import ConsentLog
from onefold.consent.application.ledger_writes import LedgerWrites
from onefold.consent.domain.ledger import ledger_stream, subject_of
from onefold.consent.domain.rendering import summary
from onefold.consent.domain.subject_request import (
    ACTIONS,
    EXPORT_FORMAT,
    MAX_EXTENSION_DAYS,
    NOT_APPLICABLE,
    PEER_SERVICES,
    SERVICES,
    SETTLED,
    TERMINAL_STATES,
    WAITING_FOR_IDENTIFIERS,
    StepOutcome,
    add_month,
    completion_record,
    corrections_given,
    fold_request,
    identifier_hash,
    iso,
    reason_given,
    request_stream,
    request_subject,
    sign,
    type_name,
    waiting,
)
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.eventlog import MissingKeyEncryptionKey
from onefold.eventlog.models import NewEvent, to_micros
from onefold.eventlog.streams import PARTITION_KEY
from onefold.platform.client import Peers
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.consent.requests")

LOOP_CONCURRENCY = 8  # requests the background loop works on at once
_EVENT_MARGIN_BYTES = 64 * 1024  # room for the rest of RequestCompleted beside the compressed export
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ACCESS, _ERASURE = pb.REQUEST_TYPE_ACCESS, pb.REQUEST_TYPE_ERASURE
_RECTIFICATION, _RESTRICTION = pb.REQUEST_TYPE_RECTIFICATION, pb.REQUEST_TYPE_RESTRICTION


@dataclass(frozen=True)
class Timings:
    """Timeouts and retry pacing of the saga."""

    call_timeout_seconds: float = 10.0  # each call to another service
    retry_base_seconds: float = 5.0  # backoff after the first failed attempt, doubling per attempt
    retry_max_seconds: float = 3600.0
    loop_interval_seconds: float = 5.0  # how often the background loop looks for due steps

    def backoff(self, attempts: int) -> timedelta:
        if attempts <= 0:
            return timedelta(0)
        return timedelta(
            seconds=min(self.retry_base_seconds * 2 ** min(attempts - 1, 30), self.retry_max_seconds)
        )


@dataclass
class Folded:
    """A request folded from its stream, and whether ErasureRequested was appended (identifiers
    collected and announced; they may legitimately be none)."""

    request: pb.SubjectRequest
    announced: bool = False


def _message(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


class SubjectRequests:
    """The use cases of data-subject requests: writes on the writer thread, reads in threads of
    their own, the calls to the other services in the event loop."""

    def __init__(
        self,
        consent_log: ConsentLog,
        ledger: LedgerWrites,
        history: AsOfHistory,
        peers: Peers,
        *,
        timings: Timings | None = None,
    ) -> None:
        self.consent_log = consent_log
        self.ledger = ledger
        self.history = history
        self.store = consent_log.store
        self.timings = timings or Timings()
        self.peer_steps = PeerSteps(peers, self.timings.call_timeout_seconds)
        self._locks: dict[str, asyncio.Lock] = {}
        self._parts: dict[str, dict[str, Any]] = {}  # access: request id -> service -> export part
        self._overdue_logged: set[str] = set()
        self._too_large: set[str] = set()  # access exports over the log's event limit (logged once)

    def now(self) -> datetime:
        return self.consent_log.clock()

    # ------------------------------------------------------------------------------ reading

    def _load(self, conn: Connection, workspace: str, request_id: str) -> Folded | None:
        events = self.store.read_streams([request_stream(workspace, request_id)], conn=conn)
        if not events:
            return None
        folded = Folded(pb.SubjectRequest())
        for event in events:
            message = self.store.decode(event, conn=conn)
            fold_request(folded.request, event, message)
            if isinstance(message, pb.ErasureRequested):
                folded.announced = True
        return folded

    def _folded(self, conn: Connection, workspace: str, request_id: str) -> Folded:
        if not _REQUEST_ID.match(request_id):
            raise InvalidArgument("request_id is not a request id", violations=[("request_id", "invalid")])
        folded = self._load(conn, workspace, request_id)
        if folded is None:
            raise NotFound(f"no data-subject request {request_id} in this workspace")
        return folded

    async def get(self, workspace: str, request_id: str) -> pb.SubjectRequest:
        """The whole request, personal parts decrypted (identifiers, corrections, the export)."""
        return await self.consent_log.read(lambda conn: self._folded(conn, workspace, request_id).request)

    async def list_requests(
        self, workspace: str, *, overdue_only: bool = False, state: int = 0
    ) -> list[pb.SubjectRequest]:
        """The workspace's requests (public fields), soonest due first."""
        query = sa.select(request_rows).where(request_rows.c.workspace == workspace)
        if state:
            query = query.where(request_rows.c.state == state)
        if overdue_only:
            query = query.where(
                request_rows.c.due_at < to_micros(self.now()),
                request_rows.c.state.notin_(list(TERMINAL_STATES)),
            )
        query = query.order_by(request_rows.c.due_at, request_rows.c.request_id)
        return await self.consent_log.read(
            lambda conn: [request_from_row(row) for row in conn.execute(query)]
        )

    @staticmethod
    def _of_subjects(conn: Connection, workspace: str, profile_ids: Sequence[str]) -> list[pb.SubjectRequest]:
        query = (
            sa.select(request_rows)
            .where(request_rows.c.workspace == workspace, request_rows.c.profile_id.in_(list(profile_ids)))
            .order_by(request_rows.c.received_at, request_rows.c.request_id)
        )
        return [request_from_row(row) for row in conn.execute(query)]

    async def of_subjects(self, workspace: str, profile_ids: Sequence[str]) -> list[pb.SubjectRequest]:
        """The requests of these profiles (public fields), in the order received."""
        return await self.consent_log.read(lambda conn: self._of_subjects(conn, workspace, profile_ids))

    # ------------------------------------------------------------------------------ writing

    def _event(
        self, request: pb.SubjectRequest, message: Message, now: datetime, actor: str = ""
    ) -> NewEvent:
        return NewEvent(
            stream_id=request_stream(request.workspace, request.request_id),
            message=message,
            subject=request_subject(request.workspace, request.request_id),
            workspace=request.workspace,
            occurred_at=now,
            metadata={PARTITION_KEY: request.profile_id, **({"actor": actor} if actor else {})},
        )

    def _record_and_fold(
        self, conn: Connection, request: pb.SubjectRequest, events: Sequence[NewEvent]
    ) -> None:
        """Record through the one write path (the log's projector) and fold the events into the
        in-memory `request` too, so the caller decides its next step on what was just recorded."""
        for recorded, new in zip(self.consent_log.record(conn, events), events, strict=True):
            if recorded.stream_id == request_stream(request.workspace, request.request_id):
                fold_request(request, recorded, new.message)

    def _initial_steps(self, kind: int, now: datetime) -> list[pb.RequestStep]:
        steps = []
        for service in SERVICES:
            step = pb.RequestStep(service=service, state=pb.STEP_STATE_PENDING)
            reason = NOT_APPLICABLE.get((kind, service))
            if reason is not None:
                step.state = pb.STEP_STATE_NOT_APPLICABLE
                step.confirmation = json.dumps({"not_applicable": reason})
            else:
                step.last_error = self.peer_steps.unreachable(service)
            step.updated_at.FromDatetime(now)
            steps.append(step)
        return steps

    async def open(
        self, workspace: str, profile_id: str, message: pb.OpenRequestRequest, actor: str = ""
    ) -> pb.SubjectRequest:
        """Record a request (RequestOpened). A restriction is applied in the same transaction;
        the other types are carried out by `process`."""
        kind = message.type
        if kind not in ACTIONS:
            raise InvalidArgument(
                "type must be ACCESS, ERASURE, RECTIFICATION or RESTRICTION",
                violations=[("type", "required")],
            )
        if not profile_id or len(profile_id) > 64 or any(c.isspace() for c in profile_id):
            raise InvalidArgument(
                "subject.profile_id is not a profile id", violations=[("subject.profile_id", "invalid")]
            )
        rectification = ""
        if kind == _RECTIFICATION:
            rectification = corrections_given(message.rectification)
        elif message.rectification:
            raise InvalidArgument(
                "rectification is only for rectification requests",
                violations=[("rectification", "unexpected")],
            )
        if message.restrict and kind != _RESTRICTION:
            raise InvalidArgument(
                "restrict is only for restriction requests", violations=[("restrict", "unexpected")]
            )
        now = self.now()
        request = pb.SubjectRequest(
            request_id=uuid.uuid4().hex,
            workspace=workspace,
            type=kind,
            profile_id=profile_id,
            state=pb.REQUEST_STATE_OPEN,
            rectification=rectification,
            steps=self._initial_steps(kind, now),
        )
        request.received_at.FromDatetime(now)
        request.due_at.FromDatetime(add_month(now))

        def write(conn: Connection) -> pb.SubjectRequest:
            opened = pb.SubjectRequest()
            opened.CopyFrom(request)  # folded in place: a retried transaction starts from the original
            self._record_and_fold(
                conn, opened, [self._event(opened, pb.RequestOpened(request=opened), now, actor)]
            )
            if kind == _RESTRICTION:
                self._restrict(conn, opened, message.restrict, now, actor)
            return opened

        opened = await self.consent_log.write(write)
        log.info("dsr.opened", workspace=workspace, request_id=opened.request_id, type=type_name(kind))
        return opened

    def _restrict(
        self, conn: Connection, request: pb.SubjectRequest, restricted: bool, now: datetime, actor: str
    ) -> None:
        workspace = request.workspace
        live = self.consent_log.live_profile(conn, workspace, request.profile_id)
        ledger = NewEvent(
            stream_id=ledger_stream(workspace, live),
            message=pb.RestrictionSet(
                workspace=workspace, profile_id=live, restricted=restricted, request_id=request.request_id
            ),
            subject=subject_of(workspace, live),
            workspace=workspace,
            occurred_at=now,
            metadata={PARTITION_KEY: live, **({"actor": actor} if actor else {})},
        )
        (recorded,) = self.consent_log.record(conn, [ledger])
        previous = next(step for step in request.steps if step.service == "consent")
        done = StepOutcome(
            pb.STEP_STATE_DONE,
            {"profile_id": live, "restricted": restricted, "ledger_event_id": recorded.event_id},
        )
        self._record_and_fold(
            conn,
            request,
            [
                self._event(
                    request,
                    pb.RequestStepUpdated(
                        request_id=request.request_id, workspace=workspace, step=done.step(previous, now)
                    ),
                    now,
                )
            ],
        )
        self._complete(conn, request, b"", now)

    async def extend(
        self, workspace: str, request_id: str, days: int, reason: str, actor: str = ""
    ) -> pb.SubjectRequest:
        """GDPR 12(3): once, by at most 60 days, with the reason the person is told, within the
        first month."""
        if not 1 <= days <= MAX_EXTENSION_DAYS:
            raise InvalidArgument(
                f"an extension is 1 to {MAX_EXTENSION_DAYS} days (GDPR Art. 12(3))",
                violations=[("days", f"{days} given")],
            )
        reason = reason_given(reason, "an extension needs the reason the person is told (GDPR Art. 12(3))")

        def write(conn: Connection) -> pb.SubjectRequest:
            request = self._folded(conn, workspace, request_id).request
            self._require_open(request, "extended")
            if request.extended:
                raise FailedPrecondition(
                    "the request was already extended once; a deadline is extended at most once "
                    "(GDPR Art. 12(3))",
                    violations=[("request_id", "already extended")],
                )
            now = self.now()
            due = request.due_at.ToDatetime(tzinfo=UTC)
            if now > due:
                raise FailedPrecondition(
                    f"the request was due {due.isoformat()}: an extension must be given within the first "
                    "month (GDPR Art. 12(3)); answer it now",
                    violations=[("request_id", "overdue")],
                )
            message = pb.RequestExtended(request_id=request_id, workspace=workspace, reason=reason)
            message.due_at.FromDatetime(due + timedelta(days=days))
            self._record_and_fold(conn, request, [self._event(request, message, now, actor)])
            return request

        return await self.consent_log.write(write)

    async def refuse(
        self, workspace: str, request_id: str, reason: str, actor: str = ""
    ) -> pb.SubjectRequest:
        """PIPL 50, GDPR 12(4): a refusal carries the reason shown to the person. Steps already
        done stay done (they happened); nothing more is attempted."""
        reason = reason_given(
            reason, "a refusal needs the reason shown to the person (PIPL Art. 50, GDPR Art. 12(4))"
        )

        def write(conn: Connection) -> pb.SubjectRequest:
            request = self._folded(conn, workspace, request_id).request
            self._require_open(request, "refused")
            message = pb.RequestRefused(request_id=request_id, workspace=workspace, reason=reason)
            self._record_and_fold(conn, request, [self._event(request, message, self.now(), actor)])
            return request

        request = await self.consent_log.write(write)
        self._parts.pop(request_id, None)
        log.info("dsr.refused", workspace=workspace, request_id=request_id)
        return request

    @staticmethod
    def _require_open(request: pb.SubjectRequest, verb: str) -> None:
        if request.state in TERMINAL_STATES:
            state = pb.RequestState.Name(request.state).removeprefix("REQUEST_STATE_").lower()
            raise FailedPrecondition(
                f"the request is {state}; it cannot be {verb}", violations=[("request_id", state)]
            )

    async def _record(
        self,
        workspace: str,
        request_id: str,
        updates: dict[str, pb.RequestStep],
        regress: frozenset[str] = frozenset(),
    ) -> pb.SubjectRequest:
        """Append the step updates (check-and-set under the log's write lock: a step another pass
        settled meanwhile is left alone) and, when every step is settled, complete the request; after
        an erasure completed, shred the keys of the person's requests."""

        def write(conn: Connection) -> tuple[pb.SubjectRequest, bool]:
            """The request, and whether this transaction completed it."""
            request = self._folded(conn, workspace, request_id).request
            if request.state in TERMINAL_STATES:
                return request, False
            current = {step.service: step for step in request.steps}
            events = [
                self._event(
                    request,
                    pb.RequestStepUpdated(request_id=request_id, workspace=workspace, step=step),
                    self.now(),
                )
                for service, step in updates.items()
                if current[service].state not in SETTLED or service in regress
            ]
            if events:
                self._record_and_fold(conn, request, events)
            if all(step.state in SETTLED for step in request.steps):
                export = b""
                if request.type == _ACCESS:
                    parts = self._parts.get(request_id, {})
                    if any(step.service not in parts for step in request.steps):
                        return request, False  # a part was lost (restart): the next pass fetches it again
                    export = self._assemble(request, parts)
                    if len(zlib.compress(export, 1)) > self.store.max_event_bytes - _EVENT_MARGIN_BYTES:
                        if request_id not in self._too_large:
                            self._too_large.add(request_id)
                            log.error(
                                "dsr.export_too_large",
                                workspace=workspace,
                                request_id=request_id,
                                bytes=len(export),
                                limit=self.store.max_event_bytes,
                            )
                        return request, False
                self._complete(conn, request, export, self.now())
                return request, True
            return request, False

        def record() -> pb.SubjectRequest:
            request, completed = self.consent_log.log.projector.write(write)
            if completed:
                self._parts.pop(request_id, None)
                if request.type == _ERASURE:
                    self._shred_requests(workspace, request.profile_id)
                    del request.identifiers[:]  # as every later read sees it: only the hashes stay
                log.info(
                    "dsr.completed", workspace=workspace, request_id=request_id, type=type_name(request.type)
                )
            return request

        return await self.consent_log.log.writer.run(record)

    def _complete(self, conn: Connection, request: pb.SubjectRequest, export: bytes, now: datetime) -> None:
        if self.store.keys is None:
            raise MissingKeyEncryptionKey("a completion record is signed with a key derived from the KEK")
        record = completion_record(request, now, export)
        message = pb.RequestCompleted(
            request_id=request.request_id,
            workspace=request.workspace,
            completion_record=record,
            completion_signature=sign(self.store.keys, record),
            export=export,
            type=request.type,
            profile_id=request.profile_id,
            received_at=request.received_at,
            due_at=request.due_at,
            extended=request.extended,
            identifier_hashes=request.identifier_hashes,
        )
        self._record_and_fold(conn, request, [self._event(request, message, now)])

    def _assemble(self, request: pb.SubjectRequest, parts: dict[str, Any]) -> bytes:
        document = {
            "format": EXPORT_FORMAT,
            "request_id": request.request_id,
            "workspace": request.workspace,
            "profile_id": request.profile_id,
            "received_at": iso(request.received_at),
            "generated_at": self.now().isoformat(),
            "services": {step.service: parts[step.service] for step in request.steps},
        }
        return json.dumps(document, sort_keys=True, ensure_ascii=False, default=str).encode()

    async def _announce(
        self, request: pb.SubjectRequest, identifiers: Sequence[identity_pb2.Identifier]
    ) -> None:
        """ErasureRequested: the identifiers, for the services' calls and for the bus (relay)."""
        await self.consent_log.write(lambda conn: self._announce_in(conn, request, identifiers))

    def _announce_in(
        self, conn: Connection, request: pb.SubjectRequest, identifiers: Sequence[identity_pb2.Identifier]
    ) -> None:
        folded = self._folded(conn, request.workspace, request.request_id)
        if folded.announced or folded.request.state in TERMINAL_STATES:
            return
        assert self.store.keys is not None  # the store refuses to start without one
        message = pb.ErasureRequested(
            request_id=request.request_id,
            workspace=request.workspace,
            profile_id=request.profile_id,
            identifiers=identifiers,
            identifier_hashes=sorted({identifier_hash(self.store.keys, i) for i in identifiers}),
        )
        self._record_and_fold(conn, folded.request, [self._event(folded.request, message, self.now())])

    # ------------------------------------------------------------------------------ the saga

    def _lock(self, request_id: str) -> asyncio.Lock:
        lock = self._locks.get(request_id)
        if lock is None:
            lock = self._locks[request_id] = asyncio.Lock()
        return lock

    def _due(self, request: pb.SubjectRequest, step: pb.RequestStep, now: datetime) -> bool:
        updated = step.updated_at.ToDatetime(tzinfo=UTC)
        if step.attempts:
            return now >= updated + self.timings.backoff(step.attempts)
        if step.service in PEER_SERVICES and step.service != "identity":
            # Not attempted yet: it waits for the identifiers, so it is due when identity is.
            identity = next((s for s in request.steps if s.service == "identity"), None)
            if identity is not None and identity.state not in SETTLED and identity.attempts:
                return now >= identity.updated_at.ToDatetime(tzinfo=UTC) + self.timings.backoff(
                    identity.attempts
                )
        return True

    def _wants(self, request: pb.SubjectRequest, step: pb.RequestStep, now: datetime, due_only: bool) -> bool:
        return (
            step.state not in SETTLED
            and step.service in ACTIONS.get(request.type, frozenset())
            and not self.peer_steps.unreachable(step.service)
            and (not due_only or self._due(request, step, now))
        )

    async def process(self, workspace: str, request_id: str, *, due_only: bool = False) -> pb.SubjectRequest:
        """One pass of the saga: attempt the steps not settled (with `due_only`, only those whose
        backoff has passed), record each result, complete the request when all are settled."""
        async with self._lock(request_id):
            folded = await self.consent_log.read(lambda conn: self._folded(conn, workspace, request_id))
            request = folded.request
            if request.state in TERMINAL_STATES:
                self._locks.pop(request_id, None)
                return request
            now = self.now()
            updates: dict[str, pb.RequestStep] = {}
            for step in request.steps:
                if step.state not in SETTLED and step.service in ACTIONS.get(request.type, frozenset()):
                    why = self.peer_steps.unreachable(step.service)
                    if why and (changed := waiting(step, why, now)) is not None:
                        updates[step.service] = changed
            wanted = {step.service for step in request.steps if self._wants(request, step, now, due_only)}
            regress: frozenset[str] = frozenset()
            if (request.type in (_ERASURE, _RECTIFICATION) and wanted) or request.type == _ACCESS:
                regress = await self._run(folded, wanted, updates, now)
            request = await self._record(workspace, request_id, updates, regress)
            if request.state in TERMINAL_STATES:
                self._locks.pop(request_id, None)
            return request

    async def _run(
        self, folded: Folded, wanted: set[str], updates: dict[str, pb.RequestStep], now: datetime
    ) -> frozenset[str]:
        request = folded.request
        steps = {step.service: step for step in request.steps}
        erasure = request.type == _ERASURE
        parts = self._parts.setdefault(request.request_id, {}) if not erasure else {}
        # Access: a part lost with a restart is fetched again once everything else is settled.
        refetch: set[str] = set()
        if not erasure:
            for step in request.steps:
                if step.state == pb.STEP_STATE_NOT_APPLICABLE and step.service not in parts:
                    parts[step.service] = json.loads(step.confirmation or "{}")
                elif step.state == pb.STEP_STATE_DONE and step.service not in parts:
                    refetch.add(step.service)
        own: asyncio.Task[StepOutcome] | None = None
        if "consent" in wanted or "consent" in refetch:
            own = asyncio.create_task(self._own(request))
        dependants = (wanted | refetch) & set(PEER_SERVICES)
        identifiers: list[identity_pb2.Identifier] | None = None
        if dependants:
            identifiers = await self._identifiers(folded, wanted, dependants, steps, updates, now)
        calls: dict[str, asyncio.Task[StepOutcome]] = {}
        if identifiers is not None:
            if erasure and not folded.announced:
                await self._announce(request, identifiers)
            for service in sorted(dependants):
                calls[service] = asyncio.create_task(self.peer_steps.call(service, request, identifiers))
        results: dict[str, StepOutcome] = {}
        if own is not None:
            results["consent"] = await own
        for service, task in calls.items():
            results[service] = await task
        regress: set[str] = set()
        for service, outcome in results.items():
            if service in refetch:
                if outcome.state == pb.STEP_STATE_DONE:
                    parts[service] = outcome.part
                else:  # its export was lost and cannot be fetched again now: not done any more
                    outcome.error = (
                        f"its export part was lost (restart) and fetching it again failed: {outcome.error}"
                    )
                    updates[service] = outcome.step(steps[service], now)
                    regress.add(service)
                continue
            if outcome.state in SETTLED and not erasure:
                parts[service] = outcome.part
            updates[service] = outcome.step(steps[service], now)
        return frozenset(regress)

    async def _identifiers(
        self,
        folded: Folded,
        wanted: set[str],
        dependants: set[str],
        steps: dict[str, pb.RequestStep],
        updates: dict[str, pb.RequestStep],
        now: datetime,
    ) -> list[identity_pb2.Identifier] | None:
        """The subject's identifiers: recorded (erasure, once announced) or from identity's
        GetProfile ([] when identity knows no such profile). None when they cannot be had now."""
        request = folded.request
        if folded.announced:
            return list(request.identifiers)
        awaiting = dependants - {"identity"}
        why = self.peer_steps.unreachable("identity")
        if not why and (request.type == _ACCESS or "identity" in wanted):
            found = await self.peer_steps.profile_identifiers(request)
            if not isinstance(found, StepOutcome):
                return found
            found.error = f"collecting the subject's identifiers: {found.error}"
            if "identity" in wanted:
                updates["identity"] = found.step(steps["identity"], now)
            why = f"{WAITING_FOR_IDENTIFIERS}: {found.error}"
        else:
            why = WAITING_FOR_IDENTIFIERS + (f" ({why})" if why else "")
        for service in awaiting & wanted:
            if service not in updates and (changed := waiting(steps[service], why, now)) is not None:
                updates[service] = changed
        return None

    async def _own(self, request: pb.SubjectRequest) -> StepOutcome:
        """Consent's own part: erase the subject's ledger, or export it."""
        workspace, profile_id = request.workspace, request.profile_id
        try:
            if request.type == _ERASURE:
                erased = await self.ledger.erase_subject(workspace, profile_id, request.request_id)
                return StepOutcome(pb.STEP_STATE_DONE, {"profiles_erased": erased})
            consents = await self.history.consents(workspace, profile_id)
            try:
                live, history = await self.history.ledger_history(workspace, profile_id)
            except NotFound:
                live, history = consents.profile_id, []
            part = {
                "consents": _message(consents),
                "history": [
                    {
                        "summary": summary(event, message),
                        "event_id": event.event_id,
                        "type": event.type,
                        "position": event.position,
                        "occurred_at": event.occurred_at.isoformat(),
                        "recorded_at": event.recorded_at.isoformat(),
                        "event": _message(message),
                    }
                    for event, message in history
                ],
                "requests": [
                    _message(r) for r in await self.of_subjects(workspace, list({live, profile_id}))
                ],
            }
            return StepOutcome(
                pb.STEP_STATE_DONE,
                {"consent_states": len(consents.states), "ledger_events": len(history)},
                part=part,
            )
        except Exception as error:
            log.warning("dsr.own_part_failed", request_id=request.request_id, error=repr(error))
            return StepOutcome(pb.STEP_STATE_FAILED, error=f"consent: {type(error).__name__}: {error}")

    # ------------------------------------------------------------------------------ shredding

    def _shred_requests(self, workspace: str, profile_id: str) -> None:
        """After an erasure completed: shred the keys of every request of the person (this one's
        identifiers, earlier access exports and corrections). What stays readable is the proof in
        clear: dates, steps, the signed completion record and the identifiers' keyed hashes.
        On the writer thread."""
        with self.store.engine.connect() as conn:
            requests = self._of_subjects(conn, workspace, [profile_id])
        for request in requests:
            self.store.erase_subject(request_subject(workspace, request.request_id))
        log.info("dsr.request_keys_shredded", workspace=workspace, requests=len(requests))

    def _shred_completed_erasures(self) -> int:
        """Finish shredding that a crash interrupted (completion committed, keys not yet shredded).
        On the writer thread."""
        query = sa.select(request_rows.c.workspace, request_rows.c.profile_id).where(
            request_rows.c.type == _ERASURE, request_rows.c.state == pb.REQUEST_STATE_COMPLETED
        )
        with self.store.engine.connect() as conn:
            people = {(row.workspace, row.profile_id) for row in conn.execute(query)}
            subjects = {
                request_subject(workspace, request.request_id): (workspace, profile_id)
                for workspace, profile_id in people
                for request in self._of_subjects(conn, workspace, [profile_id])
            }
            left = set(subjects) - self.store.erased_subjects(conn, subjects)
        for subject in left:
            self.store.erase_subject(subject)
        return len(left)

    # ------------------------------------------------------------------------------ the loop

    @staticmethod
    def _open_rows(conn: Connection) -> list[pb.SubjectRequest]:
        query = (
            sa.select(request_rows)
            .where(request_rows.c.state.notin_(list(TERMINAL_STATES)))
            .order_by(request_rows.c.due_at)
        )
        return [request_from_row(row) for row in conn.execute(query)]

    async def tick(self) -> list[str]:
        """One round of the background loop: process every open request with a step due (or all
        steps settled but not completed), several at once. Returns the request ids processed."""
        now = self.now()
        due: list[pb.SubjectRequest] = []
        for request in await self.consent_log.read(self._open_rows):
            if request.due_at.ToDatetime(tzinfo=UTC) < now and request.request_id not in self._overdue_logged:
                self._overdue_logged.add(request.request_id)
                log.warning(
                    "dsr.overdue",
                    workspace=request.workspace,
                    request_id=request.request_id,
                    due_at=iso(request.due_at),
                )
            if request.request_id in self._too_large:
                continue
            settled = all(step.state in SETTLED for step in request.steps)
            if settled or any(self._wants(request, step, now, True) for step in request.steps):
                due.append(request)
        limit = asyncio.Semaphore(LOOP_CONCURRENCY)

        async def one(request: pb.SubjectRequest) -> None:
            async with limit:
                try:
                    await self.process(request.workspace, request.request_id, due_only=True)
                except Exception:
                    log.exception(
                        "dsr.pass_failed", workspace=request.workspace, request_id=request.request_id
                    )

        await asyncio.gather(*(one(request) for request in due))
        return [request.request_id for request in due]

    async def run(self, leading: Callable[[], bool] = lambda: True) -> None:
        """Retry due steps until cancelled; only while `leading` (one replica does it)."""
        shredded = await self.consent_log.log.writer.run(self._shred_completed_erasures)
        if shredded:
            log.info("dsr.interrupted_shredding_finished", keys=shredded)
        while True:
            await asyncio.sleep(self.timings.loop_interval_seconds)
            if not leading():
                continue
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dsr.tick_failed")
