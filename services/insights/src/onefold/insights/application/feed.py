"""The analytical copy follows the other services' streams: one DuckDB transaction per batch.

- identity: a resolved event becomes an `events` row (domain/facts.py: nothing personal); a merge
  moves the merged profile's rows to the survivor; an erasure deletes every row of the profiles
  erased, and (`erased`, in the subscriber's transaction) shreds their keys in the service's own log,
  so the model tags it gave them read as erased too.
- segments: entries and exits are `memberships` stays; changes of the configured tags are
  `profile_tags` values over time.
- journeys: a message queued is a `sends` row (its time moved to when it was sent; deleted when it is
  suppressed: it touched nobody); a control-group assignment is a `sends` row marked `control`.

Each batch's rows and the upstream's applied position are written in one transaction: a batch
delivered again (a crash between this commit and the subscriber's) is skipped, never applied twice.
An unmerge leaves the rows with the profile they were merged into (the copy does not know which
events belong to the part taken out): its analyses count them there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import duckdb
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.journeys.v1 import journeys_pb2
from onefold.contracts.segments.v1 import segments_pb2
from onefold.insights.adapters import warehouse as store
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.domain.facts import event_fact


def _types(*messages: type[Message]) -> dict[str, type[Message]]:
    return {message.DESCRIPTOR.full_name: message for message in messages}


IDENTITY_TYPES = _types(identity_pb2.EventResolved, identity_pb2.ProfilesMerged, identity_pb2.ProfileErased)
SEGMENTS_TYPES = _types(segments_pb2.SegmentEntered, segments_pb2.SegmentExited, segments_pb2.TagChanged)
JOURNEYS_TYPES = _types(
    journeys_pb2.MessageQueued,
    journeys_pb2.MessageSent,
    journeys_pb2.MessageSuppressed,
    journeys_pb2.SplitAssigned,
)
_CHANNELS = {
    journeys_pb2.CHANNEL_EMAIL: "email",
    journeys_pb2.CHANNEL_SMS: "sms",
    journeys_pb2.CHANNEL_PUSH: "push",
    journeys_pb2.CHANNEL_WECHAT: "wechat",
}

Apply = Callable[[duckdb.DuckDBPyConnection, EventEnvelope, Message], None]
# What else an erasure removes, in the service log's transaction: (conn, workspace, profile ids).
Erase = Callable[[Connection, str, Sequence[str]], object]
_PROFILE_ERASED = identity_pb2.ProfileErased.DESCRIPTOR.full_name


class WarehouseFeed:
    def __init__(
        self,
        warehouse: Warehouse,
        *,
        allowed_properties: Sequence[str],
        tags: Sequence[str],
        erased: Erase | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.allowed_properties = tuple(allowed_properties)
        self.tags = frozenset(tags)
        self.erased = erased

    # -- the subscribers' handlers (writer thread; `conn` is the service log's transaction) --------

    def from_identity(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        self._apply("identity", envelopes, IDENTITY_TYPES, self._identity)
        if self.erased is None:
            return
        # Not behind the copy's applied position: shredding a key again (a batch delivered again) is harmless.
        for envelope in envelopes:
            if envelope.type == _PROFILE_ERASED:
                erasure = identity_pb2.ProfileErased.FromString(envelope.payload)
                self.erased(
                    conn, erasure.workspace, list(dict.fromkeys([erasure.profile_id, *erasure.profile_ids]))
                )

    def from_segments(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        self._apply("segments", envelopes, SEGMENTS_TYPES, self._segments)

    def from_journeys(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        self._apply("journeys", envelopes, JOURNEYS_TYPES, self._journeys)

    def _apply(
        self, upstream: str, envelopes: Sequence[EventEnvelope], types: dict[str, type[Message]], apply: Apply
    ) -> None:
        with self.warehouse.transaction() as db:
            applied = store.applied_position(db, upstream)
            fresh = [envelope for envelope in envelopes if envelope.position > applied]
            if not fresh:
                return
            facts: list[tuple[object, ...]] = []
            for envelope in fresh:
                message_class = types.get(envelope.type)
                if message_class is None:
                    continue
                message = message_class.FromString(envelope.payload)
                if isinstance(message, identity_pb2.EventResolved):
                    facts.append(tuple(event_fact(message, self.allowed_properties)))
                    continue
                # Rows before a merge or an erasure must be in place when it applies.
                store.add_events(db, facts)
                facts = []
                apply(db, envelope, message)
            store.add_events(db, facts)
            store.record_applied(db, upstream, fresh[-1].position)

    # -- what each upstream event changes -----------------------------------------------------------

    def _identity(self, db: duckdb.DuckDBPyConnection, envelope: EventEnvelope, message: Message) -> None:
        if isinstance(message, identity_pb2.ProfilesMerged):
            store.move_profile(db, message.workspace, message.merged_id, message.survivor_id)
        elif isinstance(message, identity_pb2.ProfileErased):
            store.erase_profiles(
                db, message.workspace, list(dict.fromkeys([message.profile_id, *message.profile_ids]))
            )

    def _segments(self, db: duckdb.DuckDBPyConnection, envelope: EventEnvelope, message: Message) -> None:
        at = _time(envelope)
        if isinstance(message, segments_pb2.SegmentEntered):
            store.enter_segment(db, message.workspace, message.profile_id, message.segment, at)
        elif isinstance(message, segments_pb2.SegmentExited):
            store.exit_segment(db, message.workspace, message.profile_id, message.segment, at)
        elif isinstance(message, segments_pb2.TagChanged) and message.tag in self.tags:
            store.set_tag(db, message.workspace, message.profile_id, message.tag, message.value, at)

    def _journeys(self, db: duckdb.DuckDBPyConnection, envelope: EventEnvelope, message: Message) -> None:
        at = _time(envelope)
        if isinstance(message, journeys_pb2.MessageQueued):
            instance = message.instance
            store.add_send(
                db,
                instance.workspace,
                message.message_id,
                instance.profile_id,
                at,
                instance.journey,
                message.step,
                _CHANNELS.get(message.channel, ""),
                control=False,
            )
        elif isinstance(message, journeys_pb2.MessageSent):
            store.mark_sent(db, message.instance.workspace, message.message_id, at)
        elif isinstance(message, journeys_pb2.MessageSuppressed):
            store.drop_send(db, message.instance.workspace, message.message_id)
        elif isinstance(message, journeys_pb2.SplitAssigned) and message.control:
            instance = message.instance
            held_back = f"control:{instance.journey}:{instance.profile_id}:{instance.entity_key}:{instance.entry_seq}:{message.step}"
            store.add_send(
                db,
                instance.workspace,
                held_back,
                instance.profile_id,
                at,
                instance.journey,
                message.step,
                "",
                control=True,
            )


def _time(envelope: EventEnvelope) -> datetime:
    """When it happened (the warehouse keeps naive UTC times)."""
    stamp = envelope.occurred_at if envelope.HasField("occurred_at") else envelope.recorded_at
    return stamp.ToDatetime(tzinfo=UTC).replace(tzinfo=None)
