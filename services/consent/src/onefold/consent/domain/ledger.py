"""A subject's consent ledger folded into state, and the decision CheckConsent answers from it.

The fold reads only public fields (purpose, channel, notice version, jurisdiction, guardian flag,
expiry), so a decision never needs the subject's key and still works after the proof was shredded.

Decision, in order (the first rule that applies decides):

1. the subject was erased → DENY (ERASED);
2. processing is restricted (GDPR 18, PIPL 44) → DENY;
3. an objection to the purpose stands (GDPR 21 for direct marketing: absolute; PIPL 24 refusal of
   personalised marketing) → DENY;
4. the purpose rests on another lawful basis where the subject is (PIPL 13, GDPR 6) → ALLOW;
5. the latest answer for (purpose, channel) — the channel's own or the purpose-wide one, whichever
   came later — is none → DENY (NO_CONSENT), withdrawn → DENY, expired → DENY; "later" is by
   occurred time (ties: log order), so a grant or withdrawal recorded late, that happened before the
   standing answer, does not replace it;
6. a notice covering the purpose changed materially after the consent was given (PIPL 14) → DENY
   (RECONSENT_REQUIRED);
7. otherwise ALLOW (GRANTED), with the grant as evidence.

Merging two subjects (identity merged their profiles) combines conservatively: per (purpose, channel)
a withdrawal or expiry on either side wins over a grant on the other; of two grants the one expiring
first stands; objections and restrictions of either side stand. A grant recorded after the merge on
the merged subject counts as usual (it covers the merged subject).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from google.protobuf.message import Message

from onefold.consent.domain.model import Model, jurisdiction_name
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent

Key = tuple[str, str]  # (purpose_id, channel); channel "" = every channel


@dataclass(frozen=True, slots=True)
class Evidence:
    event_id: str
    position: int
    hash: bytes
    event_type: str
    recorded_at: datetime
    occurred_at: datetime

    def to_proto(self) -> pb.Evidence:
        message = pb.Evidence(
            event_id=self.event_id, position=self.position, hash=self.hash, event_type=self.event_type
        )
        message.recorded_at.FromDatetime(self.recorded_at)
        message.occurred_at.FromDatetime(self.occurred_at)
        return message

    @staticmethod
    def from_proto(message: pb.Evidence) -> Evidence:
        return Evidence(
            message.event_id,
            message.position,
            message.hash,
            message.event_type,
            message.recorded_at.ToDatetime(tzinfo=UTC),
            message.occurred_at.ToDatetime(tzinfo=UTC),
        )


@dataclass(frozen=True, slots=True)
class Entry:
    status: int  # pb.ConsentStatus
    evidence: Evidence
    notice_id: str = ""
    notice_version: str = ""
    jurisdiction: int = 0
    guardian_given: bool = False
    expires_at: datetime | None = None

    def to_proto(self, key: Key) -> pb.ConsentState:
        state = pb.ConsentState(
            purpose_id=key[0],
            channel=key[1],
            status=self.status,  # type: ignore[arg-type]
            notice_id=self.notice_id,
            notice_version=self.notice_version,
            guardian_given=self.guardian_given,
            jurisdiction=self.jurisdiction,  # type: ignore[arg-type]
        )
        state.evidence.CopyFrom(self.evidence.to_proto())
        if self.expires_at is not None:
            state.expires_at.FromDatetime(self.expires_at)
        return state

    @staticmethod
    def from_proto(state: pb.ConsentState) -> Entry:
        return Entry(
            status=state.status,
            evidence=Evidence.from_proto(state.evidence),
            notice_id=state.notice_id,
            notice_version=state.notice_version,
            jurisdiction=state.jurisdiction,
            guardian_given=state.guardian_given,
            expires_at=state.expires_at.ToDatetime(tzinfo=UTC) if state.HasField("expires_at") else None,
        )


@dataclass
class LedgerState(Handlers):
    """A subject's ledger folded: the fold takes the event types its `@handles` methods name
    (LEDGER_EVENTS); preferences are kept for GetConsents, decisions never read them."""

    entries: dict[Key, Entry] = field(default_factory=dict)
    objections: dict[str, Evidence] = field(default_factory=dict)
    restricted: Evidence | None = None
    erased: Evidence | None = None
    preferences: dict[str, str] = field(default_factory=dict)
    events: int = 0

    def apply(self, evidence: Evidence, message: Message) -> None:
        self.events += 1
        self.dispatch(message, evidence, message)

    @handles(pb.ConsentGranted)
    def _granted(self, evidence: Evidence, message: pb.ConsentGranted) -> None:
        if _older(evidence, self.entries.get((message.purpose_id, message.channel))):
            return
        self.entries[(message.purpose_id, message.channel)] = Entry(
            pb.CONSENT_STATUS_GRANTED,
            evidence,
            message.notice_id,
            message.notice_version,
            message.jurisdiction,
            message.guardian_given,
            message.expires_at.ToDatetime(tzinfo=UTC) if message.HasField("expires_at") else None,
        )

    @handles(pb.ConsentWithdrawn)
    def _withdrawn(self, evidence: Evidence, message: pb.ConsentWithdrawn) -> None:
        previous = self.entries.get((message.purpose_id, message.channel))
        if _older(evidence, previous):
            return
        self.entries[(message.purpose_id, message.channel)] = Entry(
            pb.CONSENT_STATUS_WITHDRAWN,
            evidence,
            previous.notice_id if previous else "",
            previous.notice_version if previous else "",
            previous.jurisdiction if previous else 0,
        )

    @handles(pb.ConsentExpired)
    def _expired(self, evidence: Evidence, message: pb.ConsentExpired) -> None:
        key = (message.purpose_id, message.channel)
        current = self.entries.get(key)
        if current is not None and current.evidence.event_id == message.grant_event_id:
            self.entries[key] = replace(current, status=pb.CONSENT_STATUS_EXPIRED, evidence=evidence)

    @handles(pb.ObjectionRecorded)
    def _objected(self, evidence: Evidence, message: pb.ObjectionRecorded) -> None:
        self.objections[message.purpose_id] = evidence
        # An objection also ends every grant for the purpose: lifting it later does not bring an
        # old grant back; the person must consent again.
        for key, entry in list(self.entries.items()):
            if key[0] == message.purpose_id and entry.status == pb.CONSENT_STATUS_GRANTED:
                self.entries[key] = replace(entry, status=pb.CONSENT_STATUS_WITHDRAWN, evidence=evidence)

    @handles(pb.ObjectionLifted)
    def _objection_lifted(self, evidence: Evidence, message: pb.ObjectionLifted) -> None:
        self.objections.pop(message.purpose_id, None)

    @handles(pb.RestrictionSet)
    def _restriction(self, evidence: Evidence, message: pb.RestrictionSet) -> None:
        self.restricted = evidence if message.restricted else None

    @handles(pb.PreferenceSet)
    def _preference(self, evidence: Evidence, message: pb.PreferenceSet) -> None:
        self.preferences[f"{message.channel}/{message.key}"] = message.value

    @handles(pb.ConsentsMerged)
    def _merged(self, evidence: Evidence, message: pb.ConsentsMerged) -> None:
        self.entries = {
            (state.purpose_id, state.channel): Entry.from_proto(state) for state in message.combined
        }
        for purpose_id in message.objections:
            self.objections.setdefault(purpose_id, evidence)
        if message.restricted and self.restricted is None:
            self.restricted = evidence

    @handles(pb.ConsentSubjectErased)
    def _erased(self, evidence: Evidence, message: pb.ConsentSubjectErased) -> None:
        self.erased = evidence

    def states(self) -> list[pb.ConsentState]:
        return [self.entries[key].to_proto(key) for key in sorted(self.entries)]


# The event types of a subject's ledger: what its fold handles (as-of replays and the history read these).
LEDGER_EVENTS = LedgerState.handled_types()


def ledger_stream(workspace: str, profile_id: str) -> str:
    return f"consent:{workspace}:{profile_id}"


def subject_of(workspace: str, profile_id: str) -> str:
    """The subject whose data key seals the personal proof of a profile's ledger."""
    return f"{workspace}:c:{profile_id}"


def evidence_of(event: RecordedEvent) -> Evidence:
    return Evidence(
        event.event_id, event.position, event.hash, event.type, event.recorded_at, event.occurred_at
    )


def combine(survivor: LedgerState, merged: LedgerState) -> tuple[list[pb.ConsentState], list[str], bool]:
    """The conservative combination of two subjects' consents (see the module docstring)."""
    combined: list[pb.ConsentState] = []
    for key in sorted(set(survivor.entries) | set(merged.entries)):
        a, b = survivor.entries.get(key), merged.entries.get(key)
        chosen = _stricter(a, b) if a is not None and b is not None else a or b
        assert chosen is not None
        combined.append(chosen.to_proto(key))
    objections = sorted(set(survivor.objections) | set(merged.objections))
    return combined, objections, survivor.restricted is not None or merged.restricted is not None


def _stricter(a: Entry, b: Entry) -> Entry:
    a_no, b_no = a.status != pb.CONSENT_STATUS_GRANTED, b.status != pb.CONSENT_STATUS_GRANTED
    if a_no != b_no:
        return a if a_no else b
    if a_no:  # both withdrawn / expired: the later answer
        return a if a.evidence.position >= b.evidence.position else b
    far = datetime.max.replace(tzinfo=UTC)
    return (
        a if (a.expires_at or far, a.evidence.position) <= (b.expires_at or far, b.evidence.position) else b
    )


@dataclass(frozen=True)
class ConsentDecision:
    """What CheckConsent answers: allow or deny, why, and the ledger event it rests on."""

    decision: int  # pb.Decision
    reason: int  # pb.DecisionReason
    explanation: str
    evidence: Evidence | None = None

    def to_proto(self, profile_id: str) -> pb.CheckConsentResponse:
        answer = pb.CheckConsentResponse(
            decision=self.decision,  # type: ignore[arg-type]
            reason=self.reason,  # type: ignore[arg-type]
            explanation=self.explanation,
            profile_id=profile_id,
        )
        if self.evidence is not None:
            answer.evidence.CopyFrom(self.evidence.to_proto())
        return answer


def _deny(reason: int, explanation: str, evidence: Evidence | None = None) -> ConsentDecision:
    return ConsentDecision(pb.DECISION_DENY, reason, explanation, evidence)


def decide(
    model: Model, state: LedgerState, purpose: pb.Purpose, channel: str, at: datetime, jurisdiction: int
) -> ConsentDecision:
    purpose_id = purpose.purpose_id
    if state.erased is not None:
        return _deny(pb.DECISION_REASON_ERASED, "the subject's personal data was erased", state.erased)
    if state.restricted is not None:
        return _deny(
            pb.DECISION_REASON_RESTRICTED,
            "processing of this subject's data is restricted (GDPR Art. 18, PIPL Art. 44)",
            state.restricted,
        )
    objection = state.objections.get(purpose_id)
    if objection is not None:
        article = (
            "GDPR Art. 21(3): an objection to direct marketing is absolute"
            if purpose.kind == pb.PURPOSE_KIND_MARKETING
            else "PIPL Art. 24: the person refused personalised marketing"
            if purpose.kind == pb.PURPOSE_KIND_PERSONALISATION
            else "GDPR Art. 21: the person objected"
        )
        return _deny(
            pb.DECISION_REASON_OBJECTION, f"the subject objected to {purpose_id} ({article})", objection
        )
    entry = _latest(
        state.entries.get((purpose_id, channel)), state.entries.get((purpose_id, "")) if channel else None
    )
    # Unset: the jurisdiction of the consent for this purpose, else of the subject's latest consent,
    # else the purpose's first (CheckConsentRequest.jurisdiction).
    where = jurisdiction or (entry.jurisdiction if entry is not None and entry.jurisdiction else 0)
    where = where or _latest_jurisdiction(state) or model.default_jurisdiction(purpose)
    basis = model.basis(purpose, where)
    if basis != pb.LEGAL_BASIS_CONSENT:
        article = "PIPL Art. 13" if jurisdiction_name(where) == "PIPL" else "GDPR Art. 6"
        basis_name = pb.LegalBasis.Name(basis).removeprefix("LEGAL_BASIS_").lower()  # type: ignore[arg-type]
        return ConsentDecision(
            pb.DECISION_ALLOW,
            pb.DECISION_REASON_NON_CONSENT_BASIS,
            f"{purpose_id} rests on {basis_name} ({article}), not on consent",
        )
    scope = f"{purpose_id} on {channel}" if channel else purpose_id
    if entry is None:
        return _deny(pb.DECISION_REASON_NO_CONSENT, f"the subject has not consented to {scope}")
    if entry.status == pb.CONSENT_STATUS_WITHDRAWN:
        return _deny(
            pb.DECISION_REASON_WITHDRAWN,
            f"the subject withdrew consent to {scope} (PIPL Art. 15, GDPR Art. 7(3))",
            entry.evidence,
        )
    if entry.status == pb.CONSENT_STATUS_EXPIRED or (entry.expires_at is not None and entry.expires_at <= at):
        return _deny(pb.DECISION_REASON_EXPIRED, f"the consent to {scope} expired", entry.evidence)
    shown = model.notices.get((entry.notice_id, entry.notice_version))
    since = shown.published_at if shown is not None else entry.evidence.occurred_at
    changed = model.material_notice_after(purpose_id, since, at)
    if changed is not None and (changed.notice_id, changed.version) != (
        entry.notice_id,
        entry.notice_version,
    ):
        return _deny(
            pb.DECISION_REASON_RECONSENT_REQUIRED,
            f"notice {changed.notice_id} version {changed.version} changed {purpose_id} materially after the "
            f"consent was given under version {entry.notice_version}: ask again (PIPL Art. 14)",
            entry.evidence,
        )
    return ConsentDecision(
        pb.DECISION_ALLOW,
        pb.DECISION_REASON_GRANTED,
        f"the subject consented to {scope} under notice {entry.notice_id} version {entry.notice_version}",
        entry.evidence,
    )


def _when(evidence: Evidence) -> tuple[datetime, int]:
    """When an answer was given: in the world (occurred), ties broken by the log's order."""
    return evidence.occurred_at, evidence.position


def _older(evidence: Evidence, current: Entry | None) -> bool:
    """A grant or withdrawal recorded late, that happened before the answer already standing for
    its (purpose, channel), does not replace it: the person's latest answer in the world counts, so
    the fold gives the same state whatever order the events were recorded in."""
    return current is not None and _when(evidence) < _when(current.evidence)


def _latest_jurisdiction(state: LedgerState) -> int:
    answers = [entry for entry in state.entries.values() if entry.jurisdiction]
    return max(answers, key=lambda entry: _when(entry.evidence)).jurisdiction if answers else 0


def _latest(own: Entry | None, wide: Entry | None) -> Entry | None:
    if own is None or wide is None:
        return own or wide
    return own if _when(own.evidence) >= _when(wide.evidence) else wide
