"""Use cases of the consent service: the model, the ledger (grant, withdraw, object, preferences),
CheckConsent, the consent carried in tracked events and profile merges (from identity), and the
audit views (state as of a time, history with proof).

Every write: one store transaction that appends the ledger events and folds them into the read model
(`consent_state`), so the next CheckConsent — even in the same millisecond — sees them.
Data-subject requests live in requests.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import Connection

from onefold.consent.domain.ledger import Evidence, LedgerState, Outcome, combine, decide
from onefold.consent.domain.model import (
    SEPARATE_CONSENT_KINDS,
    Model,
    ModelError,
    NoticeVersion,
    empty_model,
    jurisdiction_name,
    model_from_proto,
)
from onefold.consent.projections import (
    LEDGER_TYPES,
    ConsentProjection,
    aliases,
    check_state,
    evidence_of,
    ledger_stream,
    load_state,
    models,
    subject_of,
)
from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.eventlog import EventRegistry, EventStore
from onefold.eventlog.models import NewEvent, RecordedEvent
from onefold.eventlog.projections import tracking_name
from onefold.eventlog.streams import PARTITION_KEY
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound

CLOCK_SKEW = timedelta(seconds=5)  # a grant "occurred" up to this far ahead of our clock is accepted
_MAX_ID = 64
_LEDGER_TYPE_NAMES = tuple(t.DESCRIPTOR.full_name for t in (*LEDGER_TYPES, pb.PreferenceSet))
_RESOLVED = identity_pb2.EventResolved.DESCRIPTOR.full_name
_MERGED = identity_pb2.ProfilesMerged.DESCRIPTOR.full_name
_UNMERGED = identity_pb2.ProfileUnmerged.DESCRIPTOR.full_name


def event_registry() -> EventRegistry:
    """The event types this service appends to its log (protobuf full names, with upcasters)."""
    registry = EventRegistry()
    for message in (
        *LEDGER_TYPES,
        pb.PreferenceSet,
        pb.ConsentModelSet,
        pb.ConsentsUnmerged,
        pb.RequestOpened,
        pb.RequestStepUpdated,
        pb.RequestExtended,
        pb.RequestCompleted,
        pb.RequestRefused,
        pb.ErasureRequested,
    ):
        registry.register(message)
    return registry


@dataclass(frozen=True)
class Written:
    profile_id: str
    recorded: list[RecordedEvent]
    state: LedgerState


def _check_profile_id(profile_id: str) -> str:
    if not profile_id or len(profile_id) > _MAX_ID or any(c.isspace() for c in profile_id):
        raise InvalidArgument(
            "subject.profile_id is not a profile id", violations=[("subject.profile_id", "invalid")]
        )
    return profile_id


class ConsentApplication:
    def __init__(
        self,
        store: EventStore,
        projection: ConsentProjection | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.projection = projection or ConsentProjection()
        self.clock = clock
        self._tracking = tracking_name(self.projection)
        self._models: dict[str, Model] = {}

    # ------------------------------------------------------------------------------ plumbing

    def append(self, conn: Connection, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append and fold into the read model in the caller's transaction."""
        if not events:
            return []
        recorded = self.store.append(events, conn=conn)
        for stored, new in zip(recorded, events, strict=True):
            self.projection.handle(conn, stored, new.message)
        self.projection.flush(conn)
        last = recorded[-1]
        self.store.record_tracking(conn, self._tracking, last.position, last.event_id)
        return recorded

    def catch_up(self) -> None:
        from onefold.eventlog.projections import Projector

        Projector(self.store, [self.projection]).catch_up(self.projection)

    def ledger_event(
        self, workspace: str, profile_id: str, message: Message, occurred: datetime | None, actor: str = ""
    ) -> NewEvent:
        return NewEvent(
            stream_id=ledger_stream(workspace, profile_id),
            message=message,
            subject=subject_of(workspace, profile_id),
            workspace=workspace,
            occurred_at=occurred,
            metadata={PARTITION_KEY: profile_id, **({"actor": actor} if actor else {})},
        )

    # ------------------------------------------------------------------------------ the model

    def model(self, conn: Connection, workspace: str, *, version: int | None = -1) -> Model:
        """The workspace's model; `version` when the caller already read it (None: no model yet).
        Only the version is read on each call; the model itself when it changed."""
        if version == -1:
            version = conn.execute(
                sa.select(models.c.version).where(models.c.workspace == workspace)
            ).scalar()
        if version is None:
            return empty_model()
        cached = self._models.get(workspace)
        if cached is not None and cached.version == version:
            return cached
        row = conn.execute(sa.select(models.c.model).where(models.c.workspace == workspace)).first()
        if row is None:
            return empty_model()
        model = model_from_proto(pb.ConsentModel.FromString(row.model))
        self._models[workspace] = model
        return model

    def get_model(self, workspace: str) -> pb.ConsentModel:
        """A copy of the workspace's model (the cached one must not be changed by callers)."""
        answer = pb.ConsentModel()
        with self.store.engine.connect() as conn:
            answer.CopyFrom(self.model(conn, workspace).proto)
        return answer

    def set_model(self, workspace: str, message: pb.ConsentModel, actor: str) -> pb.ConsentModel:
        try:
            proposed = model_from_proto(message)
        except ModelError as error:
            raise InvalidArgument(f"consent model: {error}", violations=[(error.field, str(error))]) from None
        with self.store.transaction() as conn:
            current = self.model(conn, workspace)
            stored = pb.ConsentModel()
            stored.CopyFrom(message)
            stored.version = current.version + 1
            # A notice version, once published, is evidence: it may not change or disappear — not its
            # text, nor the purposes it covers, its language, publication time or material flag.
            for key, old in current.notices.items():
                if proposed.notices.get(key) != old:
                    raise FailedPrecondition(
                        f"notice {key[0]} version {key[1]} was published and consents rest on it: publish a new "
                        "version instead of changing or removing it",
                        violations=[("notices", "published notice changed")],
                    )
            self.append(
                conn,
                [
                    NewEvent(
                        stream_id=f"consent-model:{workspace}",
                        message=pb.ConsentModelSet(workspace=workspace, model=stored, actor=actor),
                        workspace=workspace,
                        metadata={"actor": actor},
                    )
                ],
            )
            return stored

    # ------------------------------------------------------------------------------ subjects

    def live_profile(self, conn: Connection, workspace: str, profile_id: str) -> str:
        """The profile whose ledger counts for `profile_id` (its survivor after merges)."""
        row = conn.execute(
            sa.select(aliases.c.survivor_id).where(
                aliases.c.workspace == workspace, aliases.c.profile_id == profile_id
            )
        ).first()
        return row.survivor_id if row is not None else profile_id

    # ------------------------------------------------------------------------------ checks

    def check(
        self,
        workspace: str,
        profile_id: str,
        purpose_id: str,
        channel: str,
        *,
        at: datetime | None = None,
        jurisdiction: int = 0,
        conn: Connection | None = None,
    ) -> tuple[str, Outcome]:
        if conn is None:
            with self.store.engine.connect() as own:
                return self.check(
                    workspace, profile_id, purpose_id, channel, at=at, jurisdiction=jurisdiction, conn=own
                )
        _check_profile_id(profile_id)
        live, version, current = check_state(conn, workspace, profile_id)
        model = self.model(conn, workspace, version=version)
        purpose = model.purpose(purpose_id)
        if purpose is None:
            raise InvalidArgument(
                f"unknown purpose {purpose_id!r}; the workspace defines "
                + (", ".join(sorted(model.purposes)) or "no purposes yet (onefold apply -f consent.yaml)"),
                violations=[("purpose_id", "unknown purpose")],
            )
        if channel and channel not in model.channels:
            raise InvalidArgument(
                f"unknown channel {channel!r}; the workspace has {', '.join(model.channels)}",
                violations=[("channel", "unknown channel")],
            )
        now = self.clock()
        if at is not None and at > now + CLOCK_SKEW:
            raise InvalidArgument(
                "a check cannot be made for a time in the future", violations=[("at", "in the future")]
            )
        if at is None:
            state = current
        else:
            ledger = self._ledger_at(conn, workspace, profile_id, live, as_of=at, known_at=None)
            state = self._fold(conn, workspace, ledger, as_of=at, known_at=None)
        return live, decide(model, state, purpose, channel, at or now, jurisdiction)

    def check_batch(
        self, workspace: str, checks: Sequence[tuple[str, str, str, datetime | None, int]]
    ) -> list[tuple[str, Outcome]]:
        with self.store.engine.connect() as conn:
            return [
                self.check(workspace, profile, purpose, channel, at=at, jurisdiction=where, conn=conn)
                for profile, purpose, channel, at, where in checks
            ]

    # ------------------------------------------------------------------------------ the ledger

    def grant(self, workspace: str, profile_id: str, request: pb.GrantConsentRequest, actor: str) -> Written:
        _check_profile_id(profile_id)
        purposes = list(dict.fromkeys(request.purpose_ids))
        if not purposes:
            raise InvalidArgument("name the purposes consented to", violations=[("purpose_ids", "required")])
        occurred = self._occurred(request.occurred_at if request.HasField("occurred_at") else None)
        proof = request.proof
        with self.store.transaction() as conn:
            model = self.model(conn, workspace)
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
            live = self.live_profile(conn, workspace, profile_id)
            state = load_state(conn, workspace, live)
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
                    granted = _grant(workspace, live, purpose, channel, recorded_proof, notice, occurred)
                    granted.subject_age = request.subject_age
                    granted.guardian_given = has_guardian
                    if has_guardian:
                        granted.guardian.CopyFrom(guardian)
                    events.append(self.ledger_event(workspace, live, granted, occurred, actor))
            recorded = self.append(conn, events)
            return Written(live, recorded, load_state(conn, workspace, live))

    def withdraw(
        self, workspace: str, profile_id: str, request: pb.WithdrawConsentRequest, actor: str
    ) -> Written:
        """As easy as granting (PIPL Art. 15, GDPR Art. 7(3)): the same shape, no notice needed,
        effective for the next check."""
        _check_profile_id(profile_id)
        purposes = list(dict.fromkeys(request.purpose_ids))
        if not purposes:
            raise InvalidArgument("name the purposes to withdraw", violations=[("purpose_ids", "required")])
        occurred = self._occurred(request.occurred_at if request.HasField("occurred_at") else None)
        with self.store.transaction() as conn:
            model = self.model(conn, workspace)
            chosen = [self._purpose(model, purpose_id) for purpose_id in purposes]
            channels = self._channels(model, request.channels)
            live = self.live_profile(conn, workspace, profile_id)
            proof = pb.Proof()
            proof.CopyFrom(request.proof)
            proof.source = proof.source or "api"
            events = [
                self.ledger_event(
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
            recorded = self.append(conn, events)
            return Written(live, recorded, load_state(conn, workspace, live))

    def record_objection(
        self, workspace: str, profile_id: str, request: pb.RecordObjectionRequest, actor: str
    ) -> Written:
        _check_profile_id(profile_id)
        with self.store.transaction() as conn:
            model = self.model(conn, workspace)
            purpose = self._purpose(model, request.purpose_id)
            live = self.live_profile(conn, workspace, profile_id)
            message: Message
            if request.lift:
                message = pb.ObjectionLifted(
                    workspace=workspace, profile_id=live, purpose_id=purpose.purpose_id, proof=request.proof
                )
            else:
                message = pb.ObjectionRecorded(
                    workspace=workspace, profile_id=live, purpose_id=purpose.purpose_id, proof=request.proof
                )
            recorded = self.append(conn, [self.ledger_event(workspace, live, message, self.clock(), actor)])
            return Written(live, recorded, load_state(conn, workspace, live))

    def set_preference(
        self, workspace: str, profile_id: str, request: pb.SetPreferenceRequest, actor: str
    ) -> Written:
        _check_profile_id(profile_id)
        if not request.key or len(request.key) > _MAX_ID:
            raise InvalidArgument(
                "a preference needs a key of at most 64 characters", violations=[("key", "invalid")]
            )
        if len(request.value) > 1024:
            raise InvalidArgument(
                "a preference value is at most 1,024 characters", violations=[("value", "too long")]
            )
        with self.store.transaction() as conn:
            model = self.model(conn, workspace)
            self._channels(model, [request.channel] if request.channel else [])
            live = self.live_profile(conn, workspace, profile_id)
            message = pb.PreferenceSet(
                workspace=workspace,
                profile_id=live,
                channel=request.channel,
                key=request.key,
                value=request.value,
                proof=request.proof,
            )
            recorded = self.append(conn, [self.ledger_event(workspace, live, message, self.clock(), actor)])
            return Written(live, recorded, load_state(conn, workspace, live))

    def consents(self, workspace: str, profile_id: str) -> pb.GetConsentsResponse:
        _check_profile_id(profile_id)
        with self.store.engine.connect() as conn:
            live = self.live_profile(conn, workspace, profile_id)
            state = self._fold(conn, workspace, live, as_of=None, known_at=None, with_preferences=True)
        return pb.GetConsentsResponse(
            profile_id=live,
            states=state.states(),
            objections=sorted(state.objections),
            restricted=state.restricted is not None,
            preferences=state.preferences,
        )

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
        now = self.clock()
        if stamp is None:
            return now
        occurred = stamp.ToDatetime(tzinfo=UTC)
        if occurred > now + CLOCK_SKEW:
            raise InvalidArgument(
                "occurred_at is in the future: consent is recorded when it was given",
                violations=[("occurred_at", "in the future")],
            )
        return occurred

    # ------------------------------------------------------------------------------ erasure

    def erase_subject(self, workspace: str, profile_id: str, request_id: str, actor: str = "") -> list[str]:
        """Consent's part of an erasure request: record ConsentSubjectErased on the subject's ledger
        (checks deny with ERASED from then on), then crypto-shred the personal proof of the subject
        and of every profile merged into it. Idempotent. Returns the profile ids whose keys are gone."""
        _check_profile_id(profile_id)
        with self.store.transaction() as conn:
            live = self.live_profile(conn, workspace, profile_id)
            merged = [
                row.profile_id
                for row in conn.execute(
                    sa.select(aliases.c.profile_id).where(
                        aliases.c.workspace == workspace, aliases.c.survivor_id == live
                    )
                )
            ]
            if load_state(conn, workspace, live).erased is None:
                message = pb.ConsentSubjectErased(workspace=workspace, profile_id=live, request_id=request_id)
                self.append(conn, [self.ledger_event(workspace, live, message, self.clock(), actor)])
        profiles = list(dict.fromkeys([live, profile_id, *sorted(merged)]))
        for profile in profiles:
            self.store.erase_subject(subject_of(workspace, profile))
        return profiles

    # ------------------------------------------------------------------------------ upstream events

    def handle_identity(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """The identity subscriber's handler: consent carried inside tracked events, and merges.
        Each upstream event is applied in order (a merge must see the consents recorded before it)."""
        for envelope in envelopes:
            if envelope.type == _RESOLVED:
                resolved = identity_pb2.EventResolved.FromString(envelope.payload)
                if resolved.profile_id and (
                    resolved.event.consent.purposes_granted or resolved.event.consent.purposes_denied
                ):
                    self.append(conn, self._consent_from_event(conn, resolved))
            elif envelope.type == _MERGED:
                self.append(
                    conn,
                    self._merge(conn, envelope, identity_pb2.ProfilesMerged.FromString(envelope.payload)),
                )
            elif envelope.type == _UNMERGED:
                unmerged = identity_pb2.ProfileUnmerged.FromString(envelope.payload)
                # The parts that were profiles of their own have their own ledgers again: recorded as
                # an event, so a rebuilt read model splits them too.
                revived = [
                    part.profile_id for part in unmerged.parts if part.profile_id != unmerged.profile_id
                ]
                message = pb.ConsentsUnmerged(
                    workspace=unmerged.workspace,
                    profile_id=unmerged.profile_id,
                    revived_profile_ids=revived,
                    evidence_event_id=envelope.event_id,
                )
                self.append(
                    conn,
                    [
                        NewEvent(
                            stream_id=ledger_stream(unmerged.workspace, unmerged.profile_id),
                            message=message,
                            workspace=unmerged.workspace,
                            occurred_at=envelope.occurred_at.ToDatetime(tzinfo=UTC),
                            metadata={PARTITION_KEY: unmerged.profile_id},
                        )
                    ],
                )

    def _consent_from_event(self, conn: Connection, resolved: identity_pb2.EventResolved) -> list[NewEvent]:
        workspace = resolved.workspace
        model = self.model(conn, workspace)
        live = self.live_profile(conn, workspace, resolved.profile_id)
        tracked = resolved.event
        occurred = tracked.timestamp.ToDatetime(tzinfo=UTC) if tracked.HasField("timestamp") else self.clock()
        consent = tracked.consent
        by_name = {p.purpose_id.lower(): p for p in model.purposes.values()}
        by_name.update({p.name.lower(): p for p in model.purposes.values() if p.name})
        state = load_state(conn, workspace, live)
        if state.erased is not None:
            return []  # an erased subject's ledger takes no more personal proof (its key is gone)
        out: list[NewEvent] = []
        for name, granted in [(n, True) for n in consent.purposes_granted] + [
            (n, False) for n in consent.purposes_denied
        ]:
            purpose = by_name.get(name.lower())
            if purpose is None:
                continue  # a category the workspace does not model: nothing to record against
            proof = pb.Proof(source=consent.source or "ingest", evidence_event_id=resolved.event_id)
            if not granted:
                message: Message = pb.ConsentWithdrawn(
                    workspace=workspace, profile_id=live, purpose_id=purpose.purpose_id, proof=proof
                )
            else:
                # A banner's consent counts only with the notice it showed: the version named, else
                # the version (of the notice named, or of any) covering the purpose that was current
                # when it was given. A named notice the model does not have, that does not cover the
                # purpose or was not yet published is no proof: nothing is recorded (GDPR Art. 7(1)).
                notice = max(
                    (
                        n
                        for n in model.notices.values()
                        if purpose.purpose_id in n.purpose_ids
                        and n.published_at <= occurred
                        and (not consent.notice_id or n.notice_id == consent.notice_id)
                        and (not consent.notice_version or n.version == consent.notice_version)
                    ),
                    key=lambda n: n.published_at,
                    default=None,
                )
                if (
                    notice is None
                    or purpose.kind in SEPARATE_CONSENT_KINDS
                    or purpose.purpose_id in state.objections
                    or state.erased is not None
                ):
                    continue  # separate consents and objections are only changed explicitly, via the API
                proof.notice_id, proof.notice_version = notice.notice_id, notice.version
                proof.text_sha256 = notice.text_sha256
                proof.jurisdiction = model.default_jurisdiction(purpose)  # type: ignore[assignment]
                message = _grant(workspace, live, purpose, "", proof, notice, occurred)
            out.append(self.ledger_event(workspace, live, message, occurred))
        return out

    def _merge(
        self, conn: Connection, envelope: EventEnvelope, merged: identity_pb2.ProfilesMerged
    ) -> list[NewEvent]:
        workspace = merged.workspace
        survivor = self.live_profile(conn, workspace, merged.survivor_id)
        gone = self.live_profile(conn, workspace, merged.merged_id)
        if survivor == gone:
            return []
        combined, objections, restricted = combine(
            load_state(conn, workspace, survivor), load_state(conn, workspace, gone)
        )
        message = pb.ConsentsMerged(
            workspace=workspace,
            profile_id=survivor,
            merged_profile_id=gone,
            combined=combined,
            evidence_event_id=envelope.event_id,
            objections=objections,
            restricted=restricted,
        )
        return [self.ledger_event(workspace, survivor, message, envelope.occurred_at.ToDatetime(tzinfo=UTC))]

    # ------------------------------------------------------------------------------ audit

    def _fold(
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
        events = self.store.read_streams(
            [ledger_stream(workspace, profile_id)],
            types=_LEDGER_TYPE_NAMES,
            recorded_before=known_at,
            occurred_before=as_of,
            conn=conn,
        )
        state = LedgerState()
        for event in events:
            if with_preferences or event.type != pb.PreferenceSet.DESCRIPTOR.full_name:
                state.apply(
                    evidence_of(event),
                    self.store.decode(event, conn=conn) if with_preferences else _public(event),
                )
        return state

    def as_of(
        self, workspace: str, profile_id: str, *, as_of: datetime | None, known_at: datetime | None
    ) -> tuple[str, LedgerState]:
        _check_profile_id(profile_id)
        now = self.clock()
        for name, value in (("as_of", as_of), ("known_at", known_at)):
            if value is not None and value > now + CLOCK_SKEW:
                raise InvalidArgument(f"{name} is in the future", violations=[(name, "in the future")])
        with self.store.engine.connect() as conn:
            live = self.live_profile(conn, workspace, profile_id)
            ledger = self._ledger_at(conn, workspace, profile_id, live, as_of=as_of, known_at=known_at)
            return live, self._fold(conn, workspace, ledger, as_of=as_of, known_at=known_at)

    def _ledger_at(
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
        merged = conn.execute(
            sa.select(aliases.c.profile_id).where(
                aliases.c.workspace == workspace, aliases.c.survivor_id == live
            )
        )
        into: dict[str, tuple[str, RecordedEvent]] = {}
        for event in self.store.read_streams(
            [ledger_stream(workspace, p) for p in [live, *(row.profile_id for row in merged)]],
            types=[pb.ConsentsMerged.DESCRIPTOR.full_name],
            conn=conn,
        ):
            message = pb.ConsentsMerged.FromString(event.payload)  # public fields only: no key needed
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

    def history(self, workspace: str, profile_id: str) -> tuple[str, list[tuple[RecordedEvent, Message]]]:
        _check_profile_id(profile_id)
        with self.store.engine.connect() as conn:
            live = self.live_profile(conn, workspace, profile_id)
            merged = [
                row.profile_id
                for row in conn.execute(
                    sa.select(aliases.c.profile_id).where(
                        aliases.c.workspace == workspace, aliases.c.survivor_id == live
                    )
                )
            ]
            events = self.store.read_streams(
                [ledger_stream(workspace, p) for p in [live, *merged]], types=_LEDGER_TYPE_NAMES, conn=conn
            )
            if not events:
                raise NotFound("no consent was ever recorded for this subject")
            return live, [(event, self.store.decode(event, conn=conn)) for event in events]


def _grant(
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


_PUBLIC_PARSERS = {
    message_type.DESCRIPTOR.full_name: message_type.FromString for message_type in LEDGER_TYPES
}


def _public(event: RecordedEvent) -> Message:
    """The public fields of a ledger event (all a decision needs), without the subject's key."""
    parse = _PUBLIC_PARSERS.get(event.type)
    if parse is None:
        raise ValueError(f"not a ledger event: {event.type}")
    return parse(event.payload)


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


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["ConsentApplication", "Evidence", "Written", "event_registry", "summary", "text_sha256"]
