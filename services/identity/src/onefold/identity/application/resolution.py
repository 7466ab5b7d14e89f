"""Resolution: every event ingest accepted is resolved to a profile (the ingest subscriber's
handler, on the writer thread, in the subscriber's batch transaction)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import UTC

from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog.models import NewEvent
from onefold.eventlog.streams import PARTITION_KEY
from onefold.identity.application.state import IdentityState, new_profile_id
from onefold.identity.domain.identifiers import extract
from onefold.identity.domain.streams import events_stream, profile_stream, subject_of
from onefold.identity.domain.traits import profile_traits

ACCEPTED = ingest_pb2.EventAccepted.DESCRIPTOR.full_name
_RESOLVED_IDS = uuid.UUID("6f9a1c2e-5b7d-4e0a-9c3f-1d2b8e7a4f60")


def resolved_event_id(upstream_event_id: str) -> str:
    """The id of the EventResolved for an upstream event: the same on every delivery."""
    return str(uuid.uuid5(_RESOLVED_IDS, upstream_event_id))


class Resolution(IdentityState):
    def handle_accepted(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """The ingest subscriber's handler: resolve each accepted event, in the batch's transaction."""
        upstream = [envelope for envelope in envelopes if envelope.type == ACCEPTED]
        if not upstream:
            return
        # Each EventResolved's id derives from the upstream event's: one already in the log means this
        # delivery was applied before (exactly-once effect even without the subscriber's tracking row).
        ids = [resolved_event_id(envelope.event_id) for envelope in upstream]
        done = self.store.existing_event_ids(conn, ids)
        batch: list[tuple[EventEnvelope, ingest_pb2.EventAccepted, str]] = []
        for envelope, resolved_id in zip(upstream, ids, strict=True):
            if resolved_id not in done:
                done.add(resolved_id)  # the same event twice in one batch: resolved once
                batch.append((envelope, ingest_pb2.EventAccepted.FromString(envelope.payload), resolved_id))
        if batch:
            self.in_sync(functools.partial(self._resolve_batch, batch), conn)

    def _resolve_batch(
        self, batch: Sequence[tuple[EventEnvelope, ingest_pb2.EventAccepted, str]], conn: Connection
    ) -> None:
        events: list[NewEvent] = []
        for envelope, accepted, resolved_id in batch:
            self._resolve(conn, envelope, accepted, resolved_id, events)
        # The graph already holds these decisions (resolve decides and folds in one step).
        self.record(conn, events)

    def _resolve(
        self,
        conn: Connection,
        envelope: EventEnvelope,
        accepted: ingest_pb2.EventAccepted,
        resolved_id: str,
        out: list[NewEvent],
    ) -> None:
        workspace = accepted.workspace or envelope.workspace
        graph = self.graph(conn, workspace)
        extracted = extract(accepted.event, graph.rules, self.key_of)
        resolution = graph.resolve(extracted.identifiers, envelope.event_id, new_profile_id)
        event = accepted.event
        occurred = (
            event.timestamp.ToDatetime(tzinfo=UTC)
            if event.HasField("timestamp")
            else envelope.occurred_at.ToDatetime(tzinfo=UTC)
        )
        profile_id = resolution.profile_id
        meta = {
            "causation_id": envelope.event_id,
            "correlation_id": envelope.correlation_id or envelope.event_id,
            PARTITION_KEY: profile_id or envelope.event_id,
        }
        if envelope.trace.traceparent:
            meta["traceparent"] = envelope.trace.traceparent
        for op in resolution.operations:
            new = self.operation_event(workspace, op, occurred, meta, profile_id)
            if new is not None:
                out.append(new)
        keys = [ident.key for ident in extracted.identifiers]
        subject = subject_of(workspace, profile_id) if profile_id else f"{workspace}:e:{envelope.event_id}"
        # Only identify sets profile traits: a group call's traits describe the group, and the
        # context.traits of other calls describe the user at that moment (docs/collection.md).
        if profile_id and event.type == ingest_pb2.EVENT_TYPE_IDENTIFY and event.traits.fields:
            traits = profile_traits(event.traits, graph.rules.default_phone_region)
            out.append(
                NewEvent(
                    stream_id=profile_stream(workspace, profile_id),
                    message=pb.TraitsUpdated(
                        profile_id=profile_id,
                        workspace=workspace,
                        traits=traits,
                        source_id=accepted.source_id,
                        evidence_event_id=envelope.event_id,
                        keys=keys,
                        trait_keys=self.trait_keys(traits),
                    ),
                    subject=subject,
                    workspace=workspace,
                    occurred_at=occurred,
                    metadata=meta,
                )
            )
        out.append(
            NewEvent(
                stream_id=events_stream(workspace, profile_id or "unresolved"),
                event_id=resolved_id,
                message=pb.EventResolved(
                    profile_id=profile_id,
                    workspace=workspace,
                    event_id=envelope.event_id,
                    upstream_position=envelope.position,
                    event=event,
                    invalid_identifiers=extracted.invalid,
                    source_id=accepted.source_id,
                    keys=keys,
                ),
                subject=subject,
                workspace=workspace,
                occurred_at=occurred,
                metadata=meta,
            )
        )
