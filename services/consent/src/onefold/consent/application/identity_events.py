"""What identity tells consent (its subscriber's handler, on the writer thread in the batch's
transaction): consent carried inside tracked events, and profile merges and unmerges."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.consent.adapters.read_model import current_ledger
from onefold.consent.application.consent_log import ConsentLog
from onefold.consent.application.ledger_writes import grant_under_notice
from onefold.consent.domain.ledger import combine, ledger_stream
from onefold.consent.domain.model import SEPARATE_CONSENT_KINDS
from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.eventlog.models import NewEvent
from onefold.eventlog.streams import PARTITION_KEY

_RESOLVED = identity_pb2.EventResolved.DESCRIPTOR.full_name
_MERGED = identity_pb2.ProfilesMerged.DESCRIPTOR.full_name
_UNMERGED = identity_pb2.ProfileUnmerged.DESCRIPTOR.full_name


class IdentityEvents:
    def __init__(self, consent_log: ConsentLog) -> None:
        self.consent_log = consent_log

    def handle_identity(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """The identity subscriber's handler: consent carried inside tracked events, and merges.
        Each upstream event is applied in order (a merge must see the consents recorded before it)."""
        for envelope in envelopes:
            if envelope.type == _RESOLVED:
                resolved = identity_pb2.EventResolved.FromString(envelope.payload)
                if resolved.profile_id and (
                    resolved.event.consent.purposes_granted or resolved.event.consent.purposes_denied
                ):
                    self.consent_log.record(conn, self._consent_from_event(conn, resolved))
            elif envelope.type == _MERGED:
                self.consent_log.record(
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
                self.consent_log.record(
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
        model = self.consent_log.model(conn, workspace)
        live = self.consent_log.live_profile(conn, workspace, resolved.profile_id)
        tracked = resolved.event
        occurred = (
            tracked.timestamp.ToDatetime(tzinfo=UTC)
            if tracked.HasField("timestamp")
            else self.consent_log.clock()
        )
        consent = tracked.consent
        by_name = {p.purpose_id.lower(): p for p in model.purposes.values()}
        by_name.update({p.name.lower(): p for p in model.purposes.values() if p.name})
        state = current_ledger(conn, workspace, live)
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
                message = grant_under_notice(workspace, live, purpose, "", proof, notice, occurred)
            out.append(self.consent_log.ledger_event(workspace, live, message, occurred))
        return out

    def _merge(
        self, conn: Connection, envelope: EventEnvelope, merged: identity_pb2.ProfilesMerged
    ) -> list[NewEvent]:
        workspace = merged.workspace
        survivor = self.consent_log.live_profile(conn, workspace, merged.survivor_id)
        gone = self.consent_log.live_profile(conn, workspace, merged.merged_id)
        if survivor == gone:
            return []
        combined, objections, restricted = combine(
            current_ledger(conn, workspace, survivor), current_ledger(conn, workspace, gone)
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
        return [
            self.consent_log.ledger_event(
                workspace, survivor, message, envelope.occurred_at.ToDatetime(tzinfo=UTC)
            )
        ]
