"""The ledger's writes: grant, withdraw, object, set a preference, erase. Each is one transaction on
the writer thread that records the ledger events and folds them into the read model, so the next
CheckConsent — even in the same millisecond — sees them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import Connection

from onefold.consent.adapters.read_model import current_ledger
from onefold.consent.application.consent_log import CLOCK_SKEW, MAX_ID, ConsentLog, Written, check_profile_id
from onefold.consent.domain.ledger import subject_of
from onefold.consent.domain.model import SEPARATE_CONSENT_KINDS, Model, NoticeVersion, jurisdiction_name
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.platform.errors import FailedPrecondition, InvalidArgument


class LedgerWrites:
    def __init__(self, consent_log: ConsentLog) -> None:
        self.consent_log = consent_log

    async def grant(
        self, workspace: str, profile_id: str, request: pb.GrantConsentRequest, actor: str
    ) -> Written:
        check_profile_id(profile_id)
        purposes = list(dict.fromkeys(request.purpose_ids))
        if not purposes:
            raise InvalidArgument("name the purposes consented to", violations=[("purpose_ids", "required")])
        occurred = self._occurred(request.occurred_at if request.HasField("occurred_at") else None)
        proof = request.proof

        def write(conn: Connection) -> Written:
            model = self.consent_log.model(conn, workspace)
            chosen = [self._purpose(model, purpose_id) for purpose_id in purposes]
            if len(chosen) > 1:
                for purpose in chosen:
                    if purpose.kind in SEPARATE_CONSENT_KINDS:
                        raise FailedPrecondition(
                            f"{purpose.purpose_id} needs its own, separate consent "
                            f"({SEPARATE_CONSENT_KINDS[purpose.kind]}); grant it alone, not bundled with "
                            + ", ".join(p.purpose_id for p in chosen if p is not purpose),
                            violations=[("purpose_ids", "separate consent required")],
                        )
            channels = self._channels(model, request.channels)
            if not proof.notice_id or not proof.notice_version:
                raise InvalidArgument(
                    "a consent must name the notice version shown (proof.notice_id, proof.notice_version)",
                    violations=[("proof.notice_version", "required")],
                )
            notice = model.notices.get((proof.notice_id, proof.notice_version))
            if notice is None:
                raise InvalidArgument(
                    f"notice {proof.notice_id} has no version {proof.notice_version!r} in this workspace's model",
                    violations=[("proof.notice_version", "unknown notice version")],
                )
            if notice.published_at > occurred:
                raise InvalidArgument(
                    "the notice version was published after the consent was given",
                    violations=[("proof.notice_version", "not yet published")],
                )
            if proof.text_sha256 and proof.text_sha256 != notice.text_sha256:
                raise InvalidArgument(
                    "proof.text_sha256 does not match the notice version's text",
                    violations=[("proof.text_sha256", "mismatch")],
                )
            missing = [p.purpose_id for p in chosen if p.purpose_id not in notice.purpose_ids]
            if missing:
                raise InvalidArgument(
                    f"notice {notice.notice_id} version {notice.version} does not cover {', '.join(missing)}",
                    violations=[("purpose_ids", "not covered by the notice")],
                )
            live = self.consent_log.live_profile(conn, workspace, profile_id)
            state = current_ledger(conn, workspace, live)
            if state.erased is not None:
                raise FailedPrecondition("the subject was erased; consent cannot be recorded for it")
            guardian = request.guardian
            has_guardian = bool(guardian.name and guardian.relation and guardian.verified_by)
            events = []
            for purpose in chosen:
                jurisdiction = proof.jurisdiction or model.default_jurisdiction(purpose)
                threshold = model.guardian_age_for(jurisdiction, proof.country)
                if request.subject_age and request.subject_age < threshold and not has_guardian:
                    article = "PIPL Art. 31" if jurisdiction_name(jurisdiction) == "PIPL" else "GDPR Art. 8"
                    raise FailedPrecondition(
                        f"the subject is {request.subject_age}, under {threshold}: a parent or guardian must "
                        f"consent ({article}); give guardian.name, guardian.relation and guardian.verified_by",
                        violations=[("guardian", "guardian consent required")],
                    )
                if purpose.purpose_id in state.objections:
                    raise FailedPrecondition(
                        f"the subject objected to {purpose.purpose_id} (GDPR Art. 21); the objection must be "
                        "lifted by the subject first (RecordObjection with lift)",
                        violations=[("purpose_ids", "objection stands")],
                    )
                recorded_proof = pb.Proof()
                recorded_proof.CopyFrom(proof)
                recorded_proof.text_sha256 = notice.text_sha256
                recorded_proof.language = recorded_proof.language or notice.language
                recorded_proof.jurisdiction = jurisdiction  # type: ignore[assignment]
                recorded_proof.source = recorded_proof.source or "api"
                for channel in channels:
                    granted = grant_under_notice(
                        workspace, live, purpose, channel, recorded_proof, notice, occurred
                    )
                    granted.subject_age = request.subject_age
                    granted.guardian_given = has_guardian
                    if has_guardian:
                        granted.guardian.CopyFrom(guardian)
                    events.append(self.consent_log.ledger_event(workspace, live, granted, occurred, actor))
            recorded = self.consent_log.record(conn, events)
            return Written(live, recorded, current_ledger(conn, workspace, live))

        return await self.consent_log.write(write)

    async def withdraw(
        self, workspace: str, profile_id: str, request: pb.WithdrawConsentRequest, actor: str
    ) -> Written:
        """As easy as granting (PIPL Art. 15, GDPR Art. 7(3)): the same shape, no notice needed,
        effective for the next check."""
        check_profile_id(profile_id)
        purposes = list(dict.fromkeys(request.purpose_ids))
        if not purposes:
            raise InvalidArgument("name the purposes to withdraw", violations=[("purpose_ids", "required")])
        occurred = self._occurred(request.occurred_at if request.HasField("occurred_at") else None)

        def write(conn: Connection) -> Written:
            model = self.consent_log.model(conn, workspace)
            chosen = [self._purpose(model, purpose_id) for purpose_id in purposes]
            channels = self._channels(model, request.channels)
            live = self.consent_log.live_profile(conn, workspace, profile_id)
            proof = pb.Proof()
            proof.CopyFrom(request.proof)
            proof.source = proof.source or "api"
            events = [
                self.consent_log.ledger_event(
                    workspace,
                    live,
                    pb.ConsentWithdrawn(
                        workspace=workspace,
                        profile_id=live,
                        purpose_id=purpose.purpose_id,
                        channel=channel,
                        proof=proof,
                        reason=request.reason,
                    ),
                    occurred,
                    actor,
                )
                for purpose in chosen
                for channel in channels
            ]
            recorded = self.consent_log.record(conn, events)
            return Written(live, recorded, current_ledger(conn, workspace, live))

        return await self.consent_log.write(write)

    async def record_objection(
        self, workspace: str, profile_id: str, request: pb.RecordObjectionRequest, actor: str
    ) -> Written:
        check_profile_id(profile_id)

        def write(conn: Connection) -> Written:
            model = self.consent_log.model(conn, workspace)
            purpose = self._purpose(model, request.purpose_id)
            live = self.consent_log.live_profile(conn, workspace, profile_id)
            message: Message
            if request.lift:
                message = pb.ObjectionLifted(
                    workspace=workspace, profile_id=live, purpose_id=purpose.purpose_id, proof=request.proof
                )
            else:
                message = pb.ObjectionRecorded(
                    workspace=workspace, profile_id=live, purpose_id=purpose.purpose_id, proof=request.proof
                )
            recorded = self.consent_log.record(
                conn,
                [self.consent_log.ledger_event(workspace, live, message, self.consent_log.clock(), actor)],
            )
            return Written(live, recorded, current_ledger(conn, workspace, live))

        return await self.consent_log.write(write)

    async def set_preference(
        self, workspace: str, profile_id: str, request: pb.SetPreferenceRequest, actor: str
    ) -> Written:
        check_profile_id(profile_id)
        if not request.key or len(request.key) > MAX_ID:
            raise InvalidArgument(
                "a preference needs a key of at most 64 characters", violations=[("key", "invalid")]
            )
        if len(request.value) > 1024:
            raise InvalidArgument(
                "a preference value is at most 1,024 characters", violations=[("value", "too long")]
            )

        def write(conn: Connection) -> Written:
            model = self.consent_log.model(conn, workspace)
            self._channels(model, [request.channel] if request.channel else [])
            live = self.consent_log.live_profile(conn, workspace, profile_id)
            message = pb.PreferenceSet(
                workspace=workspace,
                profile_id=live,
                channel=request.channel,
                key=request.key,
                value=request.value,
                proof=request.proof,
            )
            recorded = self.consent_log.record(
                conn,
                [self.consent_log.ledger_event(workspace, live, message, self.consent_log.clock(), actor)],
            )
            return Written(live, recorded, current_ledger(conn, workspace, live))

        return await self.consent_log.write(write)

    def _purpose(self, model: Model, purpose_id: str) -> pb.Purpose:
        purpose = model.purpose(purpose_id)
        if purpose is None:
            raise InvalidArgument(
                f"unknown purpose {purpose_id!r}; the workspace defines "
                + (", ".join(sorted(model.purposes)) or "no purposes yet (onefold apply -f consent.yaml)"),
                violations=[("purpose_ids", "unknown purpose")],
            )
        return purpose

    def _channels(self, model: Model, channels: Sequence[str]) -> list[str]:
        unknown = [c for c in channels if c not in model.channels]
        if unknown:
            raise InvalidArgument(
                f"unknown channel {unknown[0]!r}; the workspace has {', '.join(model.channels)}",
                violations=[("channels", "unknown channel")],
            )
        return list(dict.fromkeys(channels)) or [""]

    def _occurred(self, stamp: Timestamp | None) -> datetime:
        now = self.consent_log.clock()
        if stamp is None:
            return now
        occurred = stamp.ToDatetime(tzinfo=UTC)
        if occurred > now + CLOCK_SKEW:
            raise InvalidArgument(
                "occurred_at is in the future: consent is recorded when it was given",
                violations=[("occurred_at", "in the future")],
            )
        return occurred

    async def erase_subject(
        self, workspace: str, profile_id: str, request_id: str, actor: str = ""
    ) -> list[str]:
        """Consent's part of an erasure request: record ConsentSubjectErased on the subject's ledger
        (checks deny with ERASED from then on), then crypto-shred the personal proof of the subject
        and of every profile merged into it. Idempotent. Returns the profile ids whose keys are gone."""
        check_profile_id(profile_id)

        def record(conn: Connection) -> list[str]:
            live = self.consent_log.live_profile(conn, workspace, profile_id)
            if current_ledger(conn, workspace, live).erased is None:
                message = pb.ConsentSubjectErased(workspace=workspace, profile_id=live, request_id=request_id)
                event = self.consent_log.ledger_event(
                    workspace, live, message, self.consent_log.clock(), actor
                )
                self.consent_log.record(conn, [event])
            merged = self.consent_log.merged_into(conn, workspace, live)
            return list(dict.fromkeys([live, profile_id, *sorted(merged)]))

        def erase() -> list[str]:
            profiles = self.consent_log.log.projector.write(record)
            for profile in profiles:
                self.consent_log.store.erase_subject(subject_of(workspace, profile))
            return profiles

        return await self.consent_log.log.writer.run(erase)


def grant_under_notice(
    workspace: str,
    profile_id: str,
    purpose: pb.Purpose,
    channel: str,
    proof: pb.Proof,
    notice: NoticeVersion,
    occurred: datetime,
) -> pb.ConsentGranted:
    """A grant under `notice` (public copies of notice and jurisdiction for checks), expiring after
    the purpose's validity."""
    granted = pb.ConsentGranted(
        workspace=workspace,
        profile_id=profile_id,
        purpose_id=purpose.purpose_id,
        channel=channel,
        proof=proof,
        notice_id=notice.notice_id,
        notice_version=notice.version,
        jurisdiction=proof.jurisdiction,
    )
    if purpose.consent_validity_days:
        granted.expires_at.FromDatetime(occurred + timedelta(days=purpose.consent_validity_days))
    return granted
