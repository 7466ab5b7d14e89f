"""A subject's ledger for people: one sentence per event (`summary`), the proof recorded with it in
plain words (`proof_words`) and the timeline of each answer (`timeline`) — rendered here, next to
the fold, so every client (the CLI's history and report, an access export) prints the same thing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from google.protobuf.message import Message

from onefold.consent.domain.ledger import Evidence, LedgerState, evidence_of
from onefold.consent.domain.model import jurisdiction_name
from onefold.contracts.common.v1 import envelope_pb2
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog.models import RecordedEvent

_STATUS_WORDS: dict[int, str] = {
    pb.CONSENT_STATUS_GRANTED: "granted",
    pb.CONSENT_STATUS_WITHDRAWN: "withdrawn",
    pb.CONSENT_STATUS_EXPIRED: "expired",
    pb.CONSENT_STATUS_NONE: "none",
}


def summary(event: RecordedEvent, message: Message) -> str:
    """One sentence per ledger event, for people (the audit history and the HTML report)."""
    if isinstance(message, pb.ConsentGranted):
        scope = f"{message.purpose_id}" + (f" on {message.channel}" if message.channel else "")
        guardian = " with guardian consent" if message.guardian_given else ""
        return (
            f"granted {scope} (notice {message.notice_id} v{message.notice_version}, "
            f"{jurisdiction_name(message.jurisdiction) or 'no jurisdiction'}, via {message.proof.source or 'unknown'}){guardian}"
        )
    if isinstance(message, pb.ConsentWithdrawn):
        scope = f"{message.purpose_id}" + (f" on {message.channel}" if message.channel else "")
        return f"withdrew {scope} (via {message.proof.source or 'unknown'})"
    if isinstance(message, pb.ConsentExpired):
        return f"consent to {message.purpose_id} expired"
    if isinstance(message, pb.ObjectionRecorded):
        return f"objected to {message.purpose_id}"
    if isinstance(message, pb.ObjectionLifted):
        return f"lifted the objection to {message.purpose_id}"
    if isinstance(message, pb.RestrictionSet):
        return "processing restricted" if message.restricted else "restriction lifted"
    if isinstance(message, pb.ConsentsMerged):
        return f"profile {message.merged_profile_id} merged in; consents combined conservatively"
    if isinstance(message, pb.ConsentSubjectErased):
        return "personal data erased"
    if isinstance(message, pb.PreferenceSet):
        return f"preference {message.channel}/{message.key} set"
    return event.type


def _actor_words(actor: envelope_pb2.Actor) -> str:
    if not actor.id and not actor.display_name and not actor.kind:
        return ""
    who = actor.display_name or actor.id
    kind = actor.kind
    if kind == envelope_pb2.Actor.KIND_USER:
        return f"given by the person themselves{f' ({who})' if who else ''}"
    if kind == envelope_pb2.Actor.KIND_AGENT:
        return f"recorded by staff member {who}" if who else "recorded by a staff member"
    if kind == envelope_pb2.Actor.KIND_SERVICE:
        return f"recorded by the {who} service" if who else "recorded by a service"
    if kind == envelope_pb2.Actor.KIND_SYSTEM:
        return "recorded automatically by the system"
    return f"recorded by {who}" if who else ""


def _proof_parts(proof: pb.Proof) -> list[str]:
    parts: list[str] = []
    if proof.notice_id:
        shown = f"shown notice '{proof.notice_id}' version {proof.notice_version}"
        if proof.language:
            shown += f" in {proof.language}"
        parts.append(shown)
    if proof.text_sha256:
        parts.append(f"the notice text's SHA-256 fingerprint is {proof.text_sha256[:16]}…")
    if proof.source or proof.collection_point:
        collected = f"collected via {proof.source or 'an unnamed channel'}"
        if proof.collection_point:
            collected += f" at {proof.collection_point}"
        parts.append(collected)
    if proof.jurisdiction:
        law = f"under {jurisdiction_name(proof.jurisdiction)}"
        if proof.country:
            law += f" (country {proof.country})"
        parts.append(law)
    actor = _actor_words(proof.actor)
    if actor:
        parts.append(actor)
    if proof.ip_address:
        parts.append(f"from IP address {proof.ip_address}")
    if proof.user_agent:
        parts.append(f"using {proof.user_agent}")
    if proof.evidence_event_id:
        parts.append(f"carried by tracked event {proof.evidence_event_id}")
    return parts


def proof_words(message: Message, recorded_by: str = "") -> str:
    """The proof recorded with a ledger event, in plain words; `recorded_by` is the credential
    that wrote it (said when the proof names no actor)."""
    proof: pb.Proof | None = (
        getattr(message, "proof", None) if "proof" in message.DESCRIPTOR.fields_by_name else None
    )
    parts = _proof_parts(proof) if proof is not None else []
    if isinstance(message, pb.ConsentGranted):
        if message.subject_age:
            parts.append(f"the person's stated age was {message.subject_age}")
        if message.guardian_given:
            guardian = message.guardian
            details = ", ".join(
                text
                for text in (
                    guardian.relation,
                    f"verified by {guardian.verified_by}" if guardian.verified_by else "",
                )
                if text
            )
            parts.append("a parent or guardian consented" + (f" ({details})" if details else ""))
        if message.HasField("expires_at"):
            parts.append(f"valid until {message.expires_at.ToDatetime(tzinfo=UTC):%Y-%m-%d}")
    elif isinstance(message, pb.ConsentWithdrawn):
        if message.reason:
            parts.append(f"reason given: {message.reason}")
    elif isinstance(message, pb.ConsentExpired):
        parts.append(f"the grant (event {message.grant_event_id}) reached the end of its validity")
    elif isinstance(message, pb.ConsentsMerged):
        parts.append(
            f"profile {message.merged_profile_id} was found to be the same person "
            f"(identity event {message.evidence_event_id or 'unknown'}); the stricter answer was kept"
        )
    elif isinstance(message, pb.ConsentSubjectErased | pb.RestrictionSet) and message.request_id:
        parts.append(f"by data-subject request {message.request_id}")
    if recorded_by and not (proof is not None and proof.actor.id):
        parts.append(f"recorded with credential {recorded_by}")
    if not parts:
        return "no proof details recorded"
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


Answer = tuple[str, Evidence | None, datetime | None]  # status, the event it rests on, expiry


def _answers(state: LedgerState) -> dict[str, Answer]:
    """key -> answer, for every answer the folded state holds."""
    answers: dict[str, Answer] = {}
    for (purpose_id, channel), entry in state.entries.items():
        status = _STATUS_WORDS.get(entry.status, "none")
        answers[f"consent|{purpose_id}|{channel}"] = (status, entry.evidence, entry.expires_at)
    for purpose_id in state.objections:
        answers[f"objection|{purpose_id}"] = ("objection", None, None)
    if state.restricted is not None:
        answers["restriction"] = ("restricted", None, None)
    if state.erased is not None:
        answers["erased"] = ("erased", None, None)
    return answers


def timeline(
    events: Sequence[tuple[RecordedEvent, Message]], purposes: Mapping[str, str]
) -> list[pb.TimelineRow]:
    """Each answer's changes, folded by the ledger's own fold in the order they happened in the
    world (occurred time, then log position) — as an as-of replay folds. `purposes` names them."""

    def label(key: str) -> str:
        kind, _, rest = key.partition("|")
        if kind == "restriction":
            return "restriction of processing"
        if kind == "erased":
            return "erasure"
        purpose_id, _, channel = rest.partition("|")
        name = purposes.get(purpose_id)
        purpose = f"{name} ({purpose_id})" if name else purpose_id
        if kind == "objection":
            return f"objection to {purpose}"
        return f"{purpose} · {channel or 'all channels'}"

    rows: dict[str, pb.TimelineRow] = {}
    state = LedgerState()
    before: dict[str, Answer] = {}
    for event, message in sorted(events, key=lambda item: (item[0].occurred_at, item[0].position)):
        state.apply(evidence_of(event), message)
        after = _answers(state)
        for key in sorted(set(before) | set(after)):
            now = after.get(key)
            if now == before.get(key):
                continue
            row = rows.get(key)
            if row is None:
                row = rows[key] = pb.TimelineRow(key=key, label=label(key))
            change = row.changes.add(position=event.position, status=now[0] if now is not None else "none")
            change.at.FromDatetime(event.occurred_at)
            if now is not None and now[2] is not None:
                change.expires_at.FromDatetime(now[2])
        before = after
    return [rows[key] for key in sorted(rows, key=lambda key: (key.split("|")[0] != "consent", key))]
