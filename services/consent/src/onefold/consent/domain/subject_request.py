"""A data-subject request, without I/O: its fold from the stream `dsr:<workspace>:<request_id>` (the
one fold behind both the read model's public fields and GetRequest, which folds the stream itself,
decrypting the personal parts), its deadlines, steps and the signed completion record. The saga
that carries requests out is application/subject_requests.py."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.eventlog import KeyEncryptionKey
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent
from onefold.platform.errors import InvalidArgument

TERMINAL_STATES = frozenset({pb.REQUEST_STATE_COMPLETED, pb.REQUEST_STATE_REFUSED})
# A request's steps, one per service, in this order. A request opened before a service was added
# keeps the steps it was opened with (its fold, its completion and its export follow request.steps).
SERVICES = ("ingest", "identity", "consent", "segments", "journeys", "destinations", "insights")
PEER_SERVICES = ("ingest", "identity", "segments", "journeys", "destinations", "insights")
MAX_EXTENSION_DAYS = 60
MAX_REASON_CHARS = 2000
MAX_RECTIFICATION_BYTES = 64 * 1024
SIGNATURE_PURPOSE = "dsr-completion-record"
EXPORT_FORMAT = "onefold.dsr.export/v1"
RECORD_FORMAT = "onefold.dsr.completion/v1"
IDENTIFIER_HASH_PURPOSE = "dsr-identifier-hash"
SETTLED = frozenset({pb.STEP_STATE_DONE, pb.STEP_STATE_NOT_APPLICABLE})

# The services each request type calls (the others' steps are NOT_APPLICABLE).
ACTIONS: dict[int, frozenset[str]] = {
    pb.REQUEST_TYPE_ACCESS: frozenset(SERVICES),
    pb.REQUEST_TYPE_ERASURE: frozenset(SERVICES),
    pb.REQUEST_TYPE_RESTRICTION: frozenset({"consent"}),
    pb.REQUEST_TYPE_RECTIFICATION: frozenset({"identity"}),
}
NOT_APPLICABLE: dict[tuple[int, str], str] = {
    **{
        (
            pb.REQUEST_TYPE_RESTRICTION,
            service,
        ): f"{service} processes a person only after CheckConsent, which now denies "
        "with RESTRICTED (GDPR Art. 18, PIPL Art. 44): the data is kept, not processed"
        for service in PEER_SERVICES
    },
    (
        pb.REQUEST_TYPE_RECTIFICATION,
        "ingest",
    ): "collected events are the record of what a source sent; corrections "
    "apply to the profile, which identity keeps",
    (pb.REQUEST_TYPE_RECTIFICATION, "consent"): "the consent ledger holds no traits",
    (
        pb.REQUEST_TYPE_RECTIFICATION,
        "segments",
    ): "segments derive from identity's traits and follow their correction",
    (
        pb.REQUEST_TYPE_RECTIFICATION,
        "journeys",
    ): "journeys read the profile from identity and follow its correction",
    (
        pb.REQUEST_TYPE_RECTIFICATION,
        "destinations",
    ): "destinations deliver the profile's traits from identity and deliver its correction like any change",
    (
        pb.REQUEST_TYPE_RECTIFICATION,
        "insights",
    ): "the analytical copy holds no traits or identifiers, only facts keyed by profile id",
}
WAITING_FOR_IDENTIFIERS = "waiting for the subject's identifiers from identity (GetProfile)"


def request_stream(workspace: str, request_id: str) -> str:
    return f"dsr:{workspace}:{request_id}"


def request_subject(workspace: str, request_id: str) -> str:
    """The subject whose data key seals the request's personal parts."""
    return f"{workspace}:dsr:{request_id}"


class RequestFold(Handlers):
    """Applies one event of a request's stream to the request, in place."""

    def apply(self, request: pb.SubjectRequest, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, request, event, message)

    @handles(pb.RequestOpened)
    def _opened(self, request: pb.SubjectRequest, event: RecordedEvent, message: pb.RequestOpened) -> None:
        request.CopyFrom(message.request)

    @handles(pb.RequestStepUpdated)
    def _step(self, request: pb.SubjectRequest, event: RecordedEvent, message: pb.RequestStepUpdated) -> None:
        for step in request.steps:
            if step.service == message.step.service:
                step.CopyFrom(message.step)
                break
        else:
            # Only when RequestOpened was shredded (a completed erasure, read again): keep the order.
            steps = sorted([*request.steps, message.step], key=lambda step: _step_rank(step.service))
            del request.steps[:]
            request.steps.extend(steps)
        if request.state == pb.REQUEST_STATE_OPEN:
            request.state = pb.REQUEST_STATE_IN_PROGRESS

    @handles(pb.RequestExtended)
    def _extended(
        self, request: pb.SubjectRequest, event: RecordedEvent, message: pb.RequestExtended
    ) -> None:
        request.due_at.CopyFrom(message.due_at)
        request.extended = True
        request.extension_reason = message.reason

    @handles(pb.RequestCompleted)
    def _completed(
        self, request: pb.SubjectRequest, event: RecordedEvent, message: pb.RequestCompleted
    ) -> None:
        if message.type:  # the proof in clear (the request's own key may be shredded since)
            request.request_id, request.workspace = message.request_id, message.workspace
            request.type, request.profile_id = message.type, message.profile_id
            request.received_at.CopyFrom(message.received_at)
            request.due_at.CopyFrom(message.due_at)
            request.extended = message.extended
            del request.identifier_hashes[:]
            request.identifier_hashes.extend(message.identifier_hashes)
        request.state = pb.REQUEST_STATE_COMPLETED
        request.completed_at.FromDatetime(event.occurred_at)
        request.completion_record = message.completion_record
        request.completion_signature = message.completion_signature
        request.export = message.export

    @handles(pb.RequestRefused)
    def _refused(self, request: pb.SubjectRequest, event: RecordedEvent, message: pb.RequestRefused) -> None:
        request.state = pb.REQUEST_STATE_REFUSED
        request.refusal_reason = message.reason
        request.completed_at.FromDatetime(event.occurred_at)  # when it was answered: with the refusal

    @handles(pb.ErasureRequested)
    def _erasure_requested(
        self, request: pb.SubjectRequest, event: RecordedEvent, message: pb.ErasureRequested
    ) -> None:
        del request.identifiers[:]
        request.identifiers.extend(message.identifiers)
        del request.identifier_hashes[:]
        request.identifier_hashes.extend(message.identifier_hashes)


fold_request = RequestFold().apply


def _step_rank(service: str) -> int:
    return SERVICES.index(service) if service in SERVICES else len(SERVICES)


def add_month(moment: datetime) -> datetime:
    """One calendar month later; the day is clamped to the month's last (31 Jan → 28/29 Feb)."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def signing_key(keys: KeyEncryptionKey) -> bytes:
    return keys.derive(SIGNATURE_PURPOSE)


def sign(keys: KeyEncryptionKey, record: str) -> str:
    return hmac.new(signing_key(keys), record.encode(), hashlib.sha256).hexdigest()


def identifier_hash(keys: KeyEncryptionKey, identifier: identity_pb2.Identifier) -> str:
    """A keyed hash of an erased identifier: proof of what was erased, kept after the identifier is
    gone. Keyed (not a bare SHA-256) so nobody without the KEK can test guesses against it."""
    text = f"{identifier.type}\x00{identifier.value}".encode()
    return hmac.new(keys.derive(IDENTIFIER_HASH_PURPOSE), text, hashlib.sha256).hexdigest()


def verify_signature(keys: KeyEncryptionKey, record: str, signature: str) -> bool:
    """Whether `signature` is the service's signature of the completion record `record`."""
    return hmac.compare_digest(sign(keys, record), signature)


def iso(stamp: Any) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat()


def type_name(kind: int) -> str:
    return pb.RequestType.Name(kind).removeprefix("REQUEST_TYPE_").lower()  # type: ignore[arg-type]


def state_name(state: int) -> str:
    return pb.StepState.Name(state).removeprefix("STEP_STATE_").lower()  # type: ignore[arg-type]


def completion_record(request: pb.SubjectRequest, completed_at: datetime, export: bytes = b"") -> str:
    """Canonical JSON (sorted keys, no spaces) of the request and every service's confirmation."""
    document: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "request_id": request.request_id,
        "workspace": request.workspace,
        "type": type_name(request.type),
        "profile_id": request.profile_id,
        "received_at": iso(request.received_at),
        "due_at": iso(request.due_at),
        "extended": request.extended,
        "completed_at": completed_at.isoformat(),
        "steps": {
            step.service: {
                "state": state_name(step.state),
                "attempts": step.attempts,
                "updated_at": iso(step.updated_at),
                "confirmation": json.loads(step.confirmation) if step.confirmation else {},
            }
            for step in request.steps
        },
    }
    if export:
        document["export_sha256"] = hashlib.sha256(export).hexdigest()
    if request.identifier_hashes:
        document["identifier_hashes"] = sorted(request.identifier_hashes)
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class StepOutcome:
    """What one attempt at one service came to."""

    state: int
    confirmation: dict[str, Any] | None = None
    error: str = ""
    attempted: bool = True
    part: Any = None  # access: the service's part of the export (never persisted in clear)

    def step(self, previous: pb.RequestStep, now: datetime) -> pb.RequestStep:
        step = pb.RequestStep(
            service=previous.service,
            state=self.state,  # type: ignore[arg-type]
            attempts=previous.attempts + (1 if self.attempted else 0),
            last_error=self.error,
            confirmation=json.dumps(self.confirmation, sort_keys=True)
            if self.confirmation is not None
            else "",
        )
        step.updated_at.FromDatetime(now)
        return step


def waiting(previous: pb.RequestStep, why: str, now: datetime) -> pb.RequestStep | None:
    """The step, still PENDING, with a new explanation (None when it already says so)."""
    if previous.state == pb.STEP_STATE_PENDING and previous.last_error == why:
        return None
    step = pb.RequestStep(service=previous.service, state=pb.STEP_STATE_PENDING, attempts=previous.attempts)
    step.last_error = why
    step.updated_at.FromDatetime(now)
    return step


def reason_given(reason: str, missing: str) -> str:
    reason = reason.strip()
    if not reason:
        raise InvalidArgument(missing, violations=[("reason", "required")])
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument(
            f"a reason is at most {MAX_REASON_CHARS} characters", violations=[("reason", "too long")]
        )
    return reason


def corrections_given(text: str) -> str:
    if not text.strip():
        raise InvalidArgument(
            "a rectification request names the corrections: a JSON object of trait -> corrected value",
            violations=[("rectification", "required")],
        )
    if len(text.encode()) > MAX_RECTIFICATION_BYTES:
        raise InvalidArgument(
            f"rectification is at most {MAX_RECTIFICATION_BYTES} bytes",
            violations=[("rectification", "too long")],
        )
    try:
        corrections = json.loads(text)
    except ValueError as error:
        raise InvalidArgument(
            f"rectification is not JSON: {error}", violations=[("rectification", "not JSON")]
        ) from None
    if not isinstance(corrections, dict) or not corrections:
        raise InvalidArgument(
            "rectification must be a JSON object of trait -> corrected value, with at least one trait",
            violations=[("rectification", "not an object")],
        )
    return json.dumps(corrections, sort_keys=True, ensure_ascii=False)
