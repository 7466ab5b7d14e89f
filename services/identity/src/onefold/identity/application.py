"""Use cases of the identity service: resolve accepted events into profiles, read the profile 360,
merge / unmerge by hand, rules, and the data-subject duties (export, erase).

Writes follow one pattern: inside a store transaction (the log's write lock), take the graph lock,
make sure the in-memory graph is the fold of the log as committed (`_sync`), decide with the graph,
append the events, fold them into the read model in the same transaction. The in-memory graph of a
workspace is loaded from the read model on first use; if anything else wrote to the log meanwhile
(another replica's RPC, or a transaction of ours that failed to commit), the log head differs from
the one the graph knows and the graphs are dropped and reloaded.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog import EventRegistry, EventStore
from onefold.eventlog.models import NewEvent, RecordedEvent, from_micros, to_micros
from onefold.eventlog.projections import tracking_name
from onefold.eventlog.streams import PARTITION_KEY
from onefold.identity.domain.graph import (
    Created,
    IdentityGraph,
    Linked,
    Merged,
    Operation,
    Part,
)
from onefold.identity.domain.identifiers import (
    Ident,
    Invalid,
    Rules,
    RulesError,
    default_rules,
    extract,
    normalise_value,
    rules_from_proto,
    rules_to_proto,
)
from onefold.identity.domain.traits import profile_traits
from onefold.identity.projections import (
    IdentityProjection,
    events_stream,
    family,
    identifiers,
    profile_stream,
    profiles,
    rules_stream,
    subject_of,
    trait_index,
)
from onefold.identity.projections import rules as rules_table
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound

ACCEPTED = ingest_pb2.EventAccepted.DESCRIPTOR.full_name
_KEY_CHARS = 32  # 128 bits of the HMAC
_PROFILE_TYPES = tuple(
    message.DESCRIPTOR.full_name
    for message in (
        pb.ProfileCreated,
        pb.IdentifierLinked,
        pb.LinkRefused,
        pb.ProfilesMerged,
        pb.ProfileUnmerged,
        pb.TraitsUpdated,
        pb.ProfileProtectionSet,
        pb.ProfileErased,
    )
)
_RESOLVED = pb.EventResolved.DESCRIPTOR.full_name
_HISTORY_TYPES = tuple(
    m.DESCRIPTOR.full_name for m in (pb.ProfilesMerged, pb.ProfileUnmerged, pb.LinkRefused)
)
MAX_PAGE = 500
PROFILE_CACHE_SIZE = 10_000
RECTIFICATION_SOURCE = "rectification:"
DEFAULT_PAGE = 50


def event_registry() -> EventRegistry:
    """The event types this service appends to its log (protobuf full names, with upcasters)."""
    registry = EventRegistry()
    for message in (
        pb.ProfileCreated,
        pb.IdentifierLinked,
        pb.LinkRefused,
        pb.ProfilesMerged,
        pb.ProfileUnmerged,
        pb.TraitsUpdated,
        pb.EventResolved,
        pb.IdentityRulesSet,
        pb.ProfileProtectionSet,
        pb.ProfileErased,
    ):
        registry.register(message)
    return registry


def _new_profile_id() -> str:
    return str(uuid.uuid4())


class IdentityApplication:
    def __init__(self, store: EventStore, projection: IdentityProjection | None = None) -> None:
        self.store = store
        self.projection = projection or IdentityProjection()
        self._tracking = tracking_name(self.projection)
        self._lock = threading.RLock()
        self._graphs: dict[str, IdentityGraph] = {}
        self._head = -1
        self._keys: dict[tuple[str, str], str] = {}
        # (workspace, live profile) -> ((family streams' head, family), the assembled profile 360).
        self._profiles: dict[tuple[str, str], tuple[tuple[int, tuple[str, ...]], pb.Profile]] = {}

    # ------------------------------------------------------------------------------ keys

    def key_of(self, type_name: str, value: str) -> str:
        cache_key = (type_name, value)
        key = self._keys.get(cache_key)
        if key is None:
            key = self.store.blind_index(f"{type_name}:{value}", field="identity", case_sensitive=True)[
                :_KEY_CHARS
            ]
            if len(self._keys) > 500_000:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def trait_keys(self, traits: struct_pb2.Struct) -> list[str]:
        """Keyed hashes of each scalar trait's "name=value" (the search index; values stay private)."""
        return [
            self.trait_key(name, value)
            for name, value in MessageToDict(traits).items()
            if isinstance(value, str | int | float | bool)
        ]

    def trait_key(self, name: str, value: object) -> str:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return self.store.blind_index(f"{name}={text}", field="trait", case_sensitive=True)[:_KEY_CHARS]

    # ------------------------------------------------------------------------------ the graph

    def _sync(self, conn: Connection) -> None:
        head = self.store.head_position(conn=conn)
        if head != self._head:
            self._graphs.clear()
            self._head = head

    def _invalidate(self) -> None:
        self._graphs.clear()
        self._head = -1

    def rules(self, conn: Connection, workspace: str) -> Rules:
        graph = self._graphs.get(workspace)
        if graph is not None:
            return graph.rules
        row = conn.execute(sa.select(rules_table.c.rules).where(rules_table.c.workspace == workspace)).first()
        if row is None:
            return default_rules()
        return rules_from_proto(pb.IdentityRules.FromString(row[0]))

    def _graph(self, conn: Connection, workspace: str) -> IdentityGraph:
        graph = self._graphs.get(workspace)
        if graph is not None:
            return graph
        graph = IdentityGraph(self.rules(conn, workspace))
        rows = conn.execute(
            sa.select(
                profiles.c.profile_id,
                profiles.c.merged_into,
                profiles.c.created_position,
                profiles.c.protected,
                profiles.c.erased,
            )
            .where(profiles.c.workspace == workspace)
            .order_by(profiles.c.created_position)
        )
        for profile_id, merged_into, created, protected, erased in rows:
            graph.create(profile_id, created)
            if merged_into:
                graph.merged_into[profile_id] = merged_into
                graph.members.pop(profile_id, None)
            if protected:
                graph.protected.add(profile_id)
            if erased:
                graph.erased.add(profile_id)
                graph.members.pop(profile_id, None)
        rows = conn.execute(
            sa.select(
                identifiers.c.key,
                identifiers.c.type,
                identifiers.c.profile_id,
                identifiers.c.split,
                identifiers.c.retired,
            ).where(identifiers.c.workspace == workspace)
        )
        for key, type_name, profile_id, split, retired in rows:
            if retired:
                graph.retired.add(key)
                continue
            graph.link(profile_id, key, type_name)
            if split:
                graph.split_keys.add(key)
        self._graphs[workspace] = graph
        return graph

    # ------------------------------------------------------------------------------ writing

    def _append(self, conn: Connection, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        if not events:
            return []
        recorded = self.store.append(events, conn=conn)
        handle = self.projection.handle
        for stored, new in zip(recorded, events, strict=True):
            handle(conn, stored, new.message)
        self.projection.flush(conn)
        last = recorded[-1]
        self.store.record_tracking(conn, self._tracking, last.position, last.event_id)
        self._head = last.position
        return recorded

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction holding the graph lock (in that order: the log's lock first, so the
        subscriber, which is handed an open transaction, takes them in the same order)."""
        with self.store.transaction() as conn, self._lock:
            self._sync(conn)
            try:
                yield conn
            except BaseException:
                self._invalidate()
                raise

    def catch_up(self) -> None:
        """Fold what the read model has not seen yet (after a crash between append and fold, or a
        rebuild), before anything reads the graph."""
        from onefold.eventlog.projections import Projector

        Projector(self.store, [self.projection]).catch_up(self.projection)

    def handle_accepted(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """The ingest subscriber's handler: resolve each accepted event, in one transaction."""
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
        if not batch:
            return
        with self._lock:
            self._sync(conn)
            try:
                events: list[NewEvent] = []
                for envelope, accepted, resolved_id in batch:
                    self._resolve(conn, envelope, accepted, resolved_id, events)
                self._append(conn, events)
            except BaseException:
                self._invalidate()
                raise

    def _resolve(
        self,
        conn: Connection,
        envelope: EventEnvelope,
        accepted: ingest_pb2.EventAccepted,
        resolved_id: str,
        out: list[NewEvent],
    ) -> None:
        workspace = accepted.workspace or envelope.workspace
        graph = self._graph(conn, workspace)
        extracted = extract(accepted.event, graph.rules, self.key_of)
        resolution = graph.resolve(extracted.identifiers, envelope.event_id, _new_profile_id)
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
            new = self._operation_event(workspace, op, occurred, meta, profile_id)
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

    def _operation_event(
        self,
        workspace: str,
        op: Operation,
        occurred: datetime | None,
        meta: dict[str, str],
        resolved: str,
        *,
        reason: str = "",
        actor: str = "",
    ) -> NewEvent | None:
        message: Message
        if isinstance(op, Linked):
            message = pb.IdentifierLinked(
                profile_id=op.profile_id,
                workspace=workspace,
                identifier=pb.Identifier(type=op.ident.type, value=op.ident.value),
                key=op.ident.key,
                type=op.ident.type,
                evidence_event_id=op.evidence,
                rule=op.rule,
            )
            profile_id, subject = op.profile_id, subject_of(workspace, op.profile_id)
        elif isinstance(op, Created):
            message = pb.ProfileCreated(
                profile_id=op.profile_id, workspace=workspace, evidence_event_id=op.evidence
            )
            profile_id, subject = op.profile_id, ""
        elif isinstance(op, Merged):
            message = pb.ProfilesMerged(
                survivor_id=op.survivor_id,
                merged_id=op.merged_id,
                workspace=workspace,
                rule=op.rule,
                evidence_event_id=op.evidence,
                reason=reason,
                actor=actor,
            )
            profile_id = op.survivor_id
            subject = subject_of(workspace, profile_id) if reason else ""
        else:
            profile_id = op.profile_id or resolved
            if not profile_id:
                return None  # nothing to hold the refused identifier's value under; nothing changed
            message = pb.LinkRefused(
                profile_id=profile_id,
                workspace=workspace,
                identifier=pb.Identifier(type=op.ident.type, value=op.ident.value),
                key=op.ident.key,
                type=op.ident.type,
                evidence_event_id=op.evidence,
                reason=op.reason,
                other_profile_id=op.other_profile_id,
            )
            # The identifier is the other profile's when it has one: encrypted with its key, so erasing
            # that person also makes this record of the refused link unreadable.
            subject = subject_of(workspace, op.other_profile_id or profile_id)
        return NewEvent(
            stream_id=profile_stream(workspace, profile_id),
            message=message,
            subject=subject,
            workspace=workspace,
            occurred_at=occurred,
            metadata=meta,
        )

    def _manual_event(
        self, workspace: str, profile_id: str, message: Message, actor: str, *, personal: bool = False
    ) -> NewEvent:
        """An event an operator's or a data-subject request's call appends to a profile's stream
        (`personal`: it holds personal data, sealed with the profile's key)."""
        return NewEvent(
            stream_id=profile_stream(workspace, profile_id),
            message=message,
            subject=subject_of(workspace, profile_id) if personal else "",
            workspace=workspace,
            metadata={"actor": actor, PARTITION_KEY: profile_id},
        )

    # ------------------------------------------------------------------------------ rules

    def get_rules(self, workspace: str) -> pb.IdentityRules:
        with self.store.engine.connect() as conn:
            return rules_to_proto(self.rules(conn, workspace))

    def set_rules(self, workspace: str, message: pb.IdentityRules, actor: str) -> pb.IdentityRules:
        try:
            validated = rules_from_proto(message)
        except RulesError as error:
            raise InvalidArgument(
                f"identity rules: {error}", violations=[(error.field, str(error))]
            ) from None
        with self._writing() as conn:
            current = self.rules(conn, workspace)
            stored = rules_to_proto(validated)
            if current.version:
                # The same rules again (`onefold apply` re-run) are no new version: nothing to record.
                unchanged = rules_to_proto(current)
                stored.version = unchanged.version
                if stored == unchanged:
                    return unchanged
            stored.version = current.version + 1
            self._append(
                conn,
                [
                    NewEvent(
                        stream_id=rules_stream(workspace),
                        message=pb.IdentityRulesSet(workspace=workspace, rules=stored, actor=actor),
                        workspace=workspace,
                        metadata={"actor": actor},
                    )
                ],
            )
            graph = self._graphs.get(workspace)
            if graph is not None:
                graph.rules = rules_from_proto(stored)
            return stored

    # ------------------------------------------------------------------------------ finding profiles

    def normalised(self, conn: Connection, workspace: str, identifier: pb.Identifier) -> Ident:
        rules = self.rules(conn, workspace)
        rule = rules.by_type.get(identifier.type)
        if rule is None:
            raise InvalidArgument(
                f"unknown identifier type {identifier.type!r}; the workspace resolves on "
                + ", ".join(r.type for r in rules.types),
                violations=[("identifier.type", "unknown identifier type")],
            )
        value = normalise_value(rule, identifier.value, rules.default_phone_region)
        if isinstance(value, Invalid):
            raise InvalidArgument(
                f"the {identifier.type} is {value.reason}", violations=[("identifier.value", value.reason)]
            )
        if not value:
            raise InvalidArgument(
                "the identifier has no value", violations=[("identifier.value", "required")]
            )
        return Ident(rule.type, value, self.key_of(rule.type, value))

    def _live(self, conn: Connection, workspace: str, profile_id: str) -> str:
        seen = 0
        while True:
            row = conn.execute(
                sa.select(profiles.c.merged_into, profiles.c.workspace).where(
                    profiles.c.profile_id == profile_id
                )
            ).first()
            if row is None or row.workspace != workspace:
                raise NotFound(f"no profile {profile_id} in this workspace")
            if not row.merged_into:
                return profile_id
            profile_id = row.merged_into
            seen += 1
            if seen > 1000:
                raise FailedPrecondition("the profile's merge history forms a cycle")

    def _live_of(self, conn: Connection, workspace: str) -> Callable[[str], str]:
        """`_live` for the duration of one read (memoised: a history names the same ids often)."""
        seen: dict[str, str] = {}

        def live_of(profile_id: str) -> str:
            if profile_id not in seen:
                seen[profile_id] = self._live(conn, workspace, profile_id)
            return seen[profile_id]

        return live_of

    def locate(self, conn: Connection, workspace: str, ref: pb.ProfileRef) -> tuple[str, str]:
        """(live profile id, the merged id asked for or ""). NotFound when nothing matches."""
        which = ref.WhichOneof("ref")
        if which == "profile_id":
            live = self._live(conn, workspace, ref.profile_id)
            return live, ref.profile_id if live != ref.profile_id else ""
        if which == "identifier":
            ident = self.normalised(conn, workspace, ref.identifier)
            row = conn.execute(
                sa.select(identifiers.c.profile_id, identifiers.c.retired).where(
                    identifiers.c.workspace == workspace, identifiers.c.key == ident.key
                )
            ).first()
            if row is None or row.retired:
                raise NotFound(f"no profile has that {ident.type}")
            return self._live(conn, workspace, row.profile_id), ""
        raise InvalidArgument(
            "name the profile by profile_id or identifier", violations=[("profile", "required")]
        )

    def _family(self, conn: Connection, profile_id: str) -> list[str]:
        members = [
            m for (m,) in conn.execute(sa.select(family.c.member_id).where(family.c.profile_id == profile_id))
        ]
        return members or [profile_id]

    def _owners(self, conn: Connection, workspace: str, keys: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(keys))
        owners: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            rows = conn.execute(
                sa.select(identifiers.c.key, identifiers.c.profile_id).where(
                    identifiers.c.workspace == workspace,
                    identifiers.c.key.in_(wanted[start : start + 500]),
                    identifiers.c.retired.is_(False),
                )
            )
            owners.update({key: profile_id for key, profile_id in rows})
        return owners

    # ------------------------------------------------------------------------------ profile 360

    def get_profile(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        *,
        as_of: datetime | None = None,
        occurred_axis: bool = False,
    ) -> pb.Profile:
        with self.store.engine.connect() as conn:
            live, redirected = self.locate(conn, workspace, ref)
            members = self._family(conn, live)
            streams = [profile_stream(workspace, m) for m in members]
            if as_of is None:
                row = conn.execute(sa.select(profiles).where(profiles.c.profile_id == live)).one()
                # Identities and traits change only with the family's profile streams: a cached
                # assembly is current while their newest position is the same.
                marker = (self.store.streams_head(streams, conn=conn), tuple(members))
                cached = self._profiles.get((workspace, live))
                if cached is not None and cached[0] == marker:
                    profile = pb.Profile()
                    profile.CopyFrom(cached[1])
                else:
                    history = self.store.read_streams(streams, types=_PROFILE_TYPES, conn=conn)
                    owners = self._owners(conn, workspace, _keys_in(history))
                    profile = self._assemble(
                        conn, workspace, live, history, owners, self._live_of(conn, workspace)
                    )
                    if len(self._profiles) >= PROFILE_CACHE_SIZE:
                        self._profiles.pop(next(iter(self._profiles)))
                    kept = pb.Profile()
                    kept.CopyFrom(profile)
                    self._profiles[(workspace, live)] = (marker, kept)
                profile.protected = bool(row.protected)
                profile.erased = bool(row.erased)
                if row.first_seen is not None:
                    profile.first_seen.FromDatetime(from_micros(row.first_seen))
                    profile.last_seen.FromDatetime(from_micros(row.last_seen))
                profile.event_count = row.event_count
            else:
                history = self.store.read_streams(streams, types=_PROFILE_TYPES, conn=conn)
                profile = self._as_of(conn, workspace, ref, live, members, history, as_of, occurred_axis)
            profile.redirected_from = redirected
            return profile

    def _assemble(
        self,
        conn: Connection,
        workspace: str,
        live: str,
        history: Sequence[RecordedEvent],
        owners: dict[str, str],
        live_of: Callable[[str], str],
    ) -> pb.Profile:
        """`live_of(profile_id)`: the profile that id lives on as now (or as of the read)."""
        rules = self.rules(conn, workspace)
        profile = pb.Profile(profile_id=live, workspace=workspace)
        linked: dict[str, tuple[RecordedEvent, pb.IdentifierLinked]] = {}
        traits: dict[str, tuple[tuple[int, int, int], pb.Trait]] = {}
        precedence = {source: rank for rank, source in enumerate(rules.trait_source_precedence)}
        for event in history:
            message = self.store.decode(event, conn=conn)
            if isinstance(message, pb.IdentifierLinked):
                if owners.get(message.key) == live:
                    linked[message.key] = (event, message)
            elif isinstance(message, pb.TraitsUpdated):
                if not _belongs(message.keys, message.profile_id, owners, live, live_of):
                    continue
                moment = to_micros(event.occurred_at)
                rank = (
                    0  # a rectification ranks with the most trusted source
                    if message.source_id.startswith(RECTIFICATION_SOURCE)
                    else -precedence.get(message.source_id, len(precedence))
                )
                for name, value in message.traits.fields.items():
                    order = (rank, moment, event.position)
                    if name not in traits or traits[name][0] <= order:
                        trait = pb.Trait(name=name, source_id=message.source_id)
                        trait.value.CopyFrom(value)
                        trait.updated_at.FromDatetime(event.occurred_at)
                        traits[name] = (order, trait)
            elif (
                isinstance(message, pb.ProfilesMerged)
                and message.merged_id != live
                and message.merged_id not in profile.merged_profile_ids
                and live_of(message.merged_id) == live  # not split off again by an unmerge since
            ):
                profile.merged_profile_ids.append(message.merged_id)
        for key in sorted(linked, key=lambda k: rules.rank(linked[k][1].type)):
            event, message = linked[key]
            item = profile.identifiers.add(
                evidence_event_id=message.evidence_event_id, original_profile_id=message.profile_id
            )
            item.identifier.CopyFrom(message.identifier)
            item.linked_at.FromDatetime(event.occurred_at)
        for name in sorted(traits):
            profile.traits.append(traits[name][1])
        return profile

    def _as_of(
        self,
        conn: Connection,
        workspace: str,
        ref: pb.ProfileRef,
        live: str,
        members: Sequence[str],
        history: Sequence[RecordedEvent],
        moment: datetime,
        occurred_axis: bool,
    ) -> pb.Profile:
        """The profile as the log knew it at `moment` (recorded axis) or as it was in the world then
        (occurred axis): fold the family's history up to then into a graph of its own."""
        cut = to_micros(moment)

        def when(event: RecordedEvent) -> int:
            return to_micros(event.occurred_at if occurred_axis else event.recorded_at)

        seen = [event for event in history if when(event) <= cut]
        if occurred_axis:
            seen.sort(key=lambda event: (to_micros(event.occurred_at), event.position))
        graph = IdentityGraph(self.rules(conn, workspace))
        for event in seen:
            message = self.store.decode(event, conn=conn)
            fold_into(graph, event, message)
        which = ref.WhichOneof("ref")
        if which == "identifier":
            key = self.normalised(conn, workspace, ref.identifier).key
            target = graph.owner.get(key, "")
        else:
            target = graph.live(ref.profile_id) if ref.profile_id in graph.created else ""
        if not target:
            raise NotFound(f"the profile did not exist yet at {moment.isoformat()}")
        owners = dict(graph.owner)
        profile = self._assemble(conn, workspace, target, seen, owners, graph.live)
        profile.erased = target in graph.erased
        profile.protected = target in graph.protected
        resolved = self.store.read_streams(
            [events_stream(workspace, m) for m in members], types=[_RESOLVED], conn=conn
        )
        count, first, last = 0, None, None
        for event in resolved:
            if when(event) > cut:
                continue
            message = pb.EventResolved.FromString(event.payload)
            if _belongs(message.keys, message.profile_id, owners, target, graph.live):
                count += 1
                first = event.occurred_at if first is None or event.occurred_at < first else first
                last = event.occurred_at if last is None or event.occurred_at > last else last
        profile.event_count = count
        if first is not None and last is not None:
            profile.first_seen.FromDatetime(first)
            profile.last_seen.FromDatetime(last)
        return profile

    def resolve_identifier(self, workspace: str, identifier: pb.Identifier) -> pb.ResolveResponse:
        with self.store.engine.connect() as conn:
            ident = self.normalised(conn, workspace, identifier)
            answer = pb.ResolveResponse(normalised=pb.Identifier(type=ident.type, value=ident.value))
            row = conn.execute(
                sa.select(identifiers.c.profile_id, identifiers.c.retired).where(
                    identifiers.c.workspace == workspace, identifiers.c.key == ident.key
                )
            ).first()
            if row is not None and not row.retired:
                answer.found = True
                answer.profile_id = self._live(conn, workspace, row.profile_id)
            return answer

    def timeline(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        *,
        page_size: int,
        page_token: str,
        names: Sequence[str] = (),
        types: Sequence[int] = (),
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[pb.TimelineEntry], str]:
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        try:
            before = int(page_token) if page_token else None
        except ValueError:
            raise InvalidArgument(
                "page_token is not one this service issued", violations=[("page.page_token", "invalid")]
            ) from None
        entries: list[pb.TimelineEntry] = []
        positions: list[int] = []
        with self.store.engine.connect() as conn:
            live, _ = self.locate(conn, workspace, ref)
            members = self._family(conn, live)
            streams = [events_stream(workspace, m) for m in members]
            live_of = self._live_of(conn, workspace)
            exhausted = False
            # One entry more than the page is looked for: a next-page token only when there is one.
            while len(entries) <= size and not exhausted:
                batch = self.store.read_streams(
                    streams,
                    types=[_RESOLVED],
                    before_position=before,
                    limit=size * 2,
                    newest_first=True,
                    conn=conn,
                )
                exhausted = len(batch) < size * 2
                if not batch:
                    break
                before = batch[-1].position
                owners = self._owners(
                    conn, workspace, (k for e in batch for k in pb.EventResolved.FromString(e.payload).keys)
                )
                for event in batch:
                    if (since is not None and event.occurred_at < since) or (
                        until is not None and event.occurred_at > until
                    ):
                        continue
                    message = self.store.decode(event, conn=conn)
                    assert isinstance(message, pb.EventResolved)
                    if not _belongs(message.keys, message.profile_id, owners, live, live_of):
                        continue
                    tracked = message.event
                    if types and tracked.type not in types:
                        continue
                    if names and (tracked.event or tracked.name) not in names:
                        continue
                    entry = pb.TimelineEntry(
                        event_id=message.event_id, resolved_profile_id=message.profile_id
                    )
                    entry.occurred_at.FromDatetime(event.occurred_at)
                    entry.event.CopyFrom(tracked)
                    entries.append(entry)
                    positions.append(event.position)
                    if len(entries) > size:
                        break
        if len(entries) > size:
            return entries[:size], str(positions[size - 1])
        return entries, ""

    def merge_history(self, workspace: str, ref: pb.ProfileRef) -> list[pb.MergeRecord]:
        with self.store.engine.connect() as conn:
            live, _ = self.locate(conn, workspace, ref)
            members = self._family(conn, live)
            events = self.store.read_streams(
                [profile_stream(workspace, m) for m in members], types=_HISTORY_TYPES, conn=conn
            )
            return [_history_record(event, self.store.decode(event, conn=conn)) for event in events]

    def search(self, workspace: str, trait: str, value: struct_pb2.Value, page_size: int) -> list[str]:
        if not trait:
            raise InvalidArgument("name the trait to search by", violations=[("trait", "required")])
        plain = MessageToDict(value)
        if not isinstance(plain, str | int | float | bool):
            raise InvalidArgument(
                "search matches a scalar trait value (string, number or boolean)",
                violations=[("value", "scalar")],
            )
        key = self.trait_key(trait, plain)
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        found: list[str] = []
        with self.store.engine.connect() as conn:
            candidates = [
                pid
                for (pid,) in conn.execute(
                    sa.select(trait_index.c.profile_id).where(
                        trait_index.c.workspace == workspace, trait_index.c.trait_key == key
                    )
                )
            ]
            for candidate in candidates:
                try:
                    live = self._live(conn, workspace, candidate)
                except NotFound:
                    continue
                if live in found:
                    continue
                # The index says the trait once had this value: confirm it still has.
                profile = self.get_profile(workspace, pb.ProfileRef(profile_id=live))
                if any(t.name == trait and MessageToDict(t.value) == plain for t in profile.traits):
                    found.append(live)
                if len(found) >= size:
                    break
        return found

    # ------------------------------------------------------------------------------ manual changes

    def merge(
        self, workspace: str, survivor: pb.ProfileRef, merged: pb.ProfileRef, reason: str, actor: str
    ) -> str:
        if not reason.strip():
            raise InvalidArgument("a manual merge needs a reason", violations=[("reason", "required")])
        with self._writing() as conn:
            keep, _ = self.locate(conn, workspace, survivor)
            gone, _ = self.locate(conn, workspace, merged)
            if keep == gone:
                raise FailedPrecondition("both references name the same profile")
            graph = self._graph(conn, workspace)
            if keep in graph.erased or gone in graph.erased:
                raise FailedPrecondition("an erased profile cannot be merged")
            if not graph._fits(keep, gone):
                over = _over_limits(graph, keep, gone)
                raise FailedPrecondition(
                    f"merging would break the workspace's limits: {over}; unmerge or change the rules first",
                    violations=[("merged", over)],
                )
            op = Merged(keep, gone, "manual", "")
            graph.apply(op)
            new = self._operation_event(
                workspace, op, None, {"actor": actor, PARTITION_KEY: keep}, keep, reason=reason, actor=actor
            )
            assert new is not None
            self._append(conn, [new])
            return keep

    def set_protection(self, workspace: str, ref: pb.ProfileRef, protected: bool, actor: str) -> str:
        with self._writing() as conn:
            live, _ = self.locate(conn, workspace, ref)
            self._graph(conn, workspace).set_protected(live, protected)
            self._append(
                conn,
                [
                    self._manual_event(
                        workspace,
                        live,
                        pb.ProfileProtectionSet(
                            profile_id=live, workspace=workspace, protected=protected, actor=actor
                        ),
                        actor,
                    )
                ],
            )
            return live

    def unmerge(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        *,
        identifier: pb.Identifier | None,
        event_id: str,
        reason: str,
        actor: str,
    ) -> list[str]:
        if not reason.strip():
            raise InvalidArgument("an unmerge needs a reason", violations=[("reason", "required")])
        if identifier is None and not event_id:
            raise InvalidArgument(
                "name the identifier or the event to split along", violations=[("split", "required")]
            )
        with self._writing() as conn:
            live, _ = self.locate(conn, workspace, ref)
            graph = self._graph(conn, workspace)
            split_key = ""
            if identifier is not None:
                split_key = self.normalised(conn, workspace, identifier).key
                if graph.owner.get(split_key) != live:
                    raise NotFound("the profile does not hold that identifier")
            members = self._family(conn, live)
            resolved = self.store.read_streams(
                [events_stream(workspace, m) for m in members], types=[_RESOLVED], conn=conn
            )
            link_sets = []
            for event in resolved:
                message = pb.EventResolved.FromString(event.payload)
                link_sets.append((message.event_id, tuple(message.keys)))
            if event_id and all(evidence != event_id for evidence, _ in link_sets):
                raise NotFound(f"no event {event_id} was resolved into this profile")
            created_by = {}
            for event in self.store.read_streams(
                [profile_stream(workspace, m) for m in members],
                types=[pb.ProfileCreated.DESCRIPTOR.full_name],
                conn=conn,
            ):
                created = pb.ProfileCreated.FromString(event.payload)
                created_by[created.evidence_event_id] = created.profile_id
            parts = graph.plan_unmerge(
                live, link_sets, created_by, split_key=split_key, split_event=event_id, new_id=_new_profile_id
            )
            if len(parts) == 1:
                raise FailedPrecondition(
                    "splitting along that leaves the profile whole: other events link the same identifiers"
                )
            graph.split(parts, split_key)
            unmerged = pb.ProfileUnmerged(
                profile_id=live,
                workspace=workspace,
                parts=[pb.ProfileUnmerged.Part(profile_id=p.profile_id, keys=p.keys) for p in parts],
                split_key=split_key,
                split_event_id=event_id,
                reason=reason,
                actor=actor,
            )
            self._append(conn, [self._manual_event(workspace, live, unmerged, actor, personal=True)])
            return [part.profile_id for part in parts]

    # ------------------------------------------------------------------------------ data subjects

    def rectify(
        self, workspace: str, ref: pb.ProfileRef, traits: struct_pb2.Struct, request_id: str, actor: str
    ) -> str:
        """Record corrected trait values (GDPR Art. 16, PIPL Art. 46) on the live profile."""
        if not traits.fields:
            raise InvalidArgument("name the traits to correct", violations=[("traits", "required")])
        if not request_id or len(request_id) > 64:
            raise InvalidArgument(
                "a rectification names the request it carries out", violations=[("request_id", "required")]
            )
        with self._writing() as conn:
            live, _ = self.locate(conn, workspace, ref)
            if conn.execute(sa.select(profiles.c.erased).where(profiles.c.profile_id == live)).scalar():
                raise FailedPrecondition("the profile was erased; there is nothing to correct")
            traits = profile_traits(traits, self.rules(conn, workspace).default_phone_region)
            self._append(
                conn,
                [
                    self._manual_event(
                        workspace,
                        live,
                        pb.TraitsUpdated(
                            profile_id=live,
                            workspace=workspace,
                            traits=traits,
                            source_id=RECTIFICATION_SOURCE + request_id,
                            trait_keys=self.trait_keys(traits),
                        ),
                        actor,
                        personal=True,
                    )
                ],
            )
            return live

    def _subject_profiles(
        self, conn: Connection, workspace: str, identifiers_: Sequence[pb.Identifier]
    ) -> list[str]:
        if not identifiers_:
            raise InvalidArgument("name at least one identifier", violations=[("identifiers", "required")])
        found: list[str] = []
        for identifier in identifiers_:
            key = self.normalised(conn, workspace, identifier).key
            row = conn.execute(
                sa.select(identifiers.c.profile_id).where(
                    identifiers.c.workspace == workspace, identifiers.c.key == key
                )
            ).first()
            if row is None or not row.profile_id:
                continue
            live = self._live(conn, workspace, row.profile_id)
            if live not in found:
                found.append(live)
        return found

    def export_subject(self, workspace: str, identifiers_: Sequence[pb.Identifier]) -> pb.SubjectExport:
        with self.store.engine.connect() as conn:
            found = self._subject_profiles(conn, workspace, identifiers_)
        answer = pb.SubjectExport()
        for profile_id in found:
            ref = pb.ProfileRef(profile_id=profile_id)
            answer.profiles.append(self.get_profile(workspace, ref))
            token = ""
            while True:
                entries, token = self.timeline(workspace, ref, page_size=MAX_PAGE, page_token=token)
                answer.events.extend(entries)
                if not token:
                    break
            answer.history.extend(self.merge_history(workspace, ref))
        return answer

    def erase_subject(
        self, workspace: str, identifiers_: Sequence[pb.Identifier], request_id: str, actor: str
    ) -> tuple[list[str], int]:
        """Crypto-shred every profile the identifiers lead to (with everything merged into it), then
        retire its identifiers so they never resolve again: (the profile ids erased, identifiers
        unlinked). Idempotent: a repeated request finds the same profiles (retired identifiers still
        name them) and completes what is missing."""
        with self.store.engine.connect() as conn:
            found = self._subject_profiles(conn, workspace, identifiers_)
            plan = []
            for profile_id in found:
                # Only the ids that live on as this profile: a family member that is a live profile
                # of its own again (split off by an unmerge) is another person.
                members = [
                    m for m in self._family(conn, profile_id) if self._live(conn, workspace, m) == profile_id
                ]
                keys = [
                    key
                    for (key,) in conn.execute(
                        sa.select(identifiers.c.key).where(
                            identifiers.c.workspace == workspace, identifiers.c.profile_id == profile_id
                        )
                    )
                ]
                plan.append((profile_id, members, keys))
        erased_ids: list[str] = []
        unlinked = 0
        for profile_id, members, keys in plan:
            # First retire the identifiers (no new event can reach the profile from then on), then
            # destroy the keys. A crash in between is completed by repeating the request.
            with self._writing() as conn:
                erased = conn.execute(
                    sa.select(profiles.c.erased).where(profiles.c.profile_id == profile_id)
                ).scalar()
                if not erased:
                    self._graph(conn, workspace).erase(members, keys)
                    self._append(
                        conn,
                        [
                            self._manual_event(
                                workspace,
                                profile_id,
                                pb.ProfileErased(
                                    profile_id=profile_id,
                                    workspace=workspace,
                                    profile_ids=members,
                                    keys=keys,
                                    request_id=request_id,
                                    actor=actor,
                                ),
                                actor,
                            )
                        ],
                    )
            for member in members:
                self.store.erase_subject(subject_of(workspace, member))
            erased_ids.extend(members)
            unlinked += len(keys)
        return erased_ids, unlinked


_RESOLVED_IDS = uuid.UUID("6f9a1c2e-5b7d-4e0a-9c3f-1d2b8e7a4f60")


def resolved_event_id(upstream_event_id: str) -> str:
    """The id of the EventResolved for an upstream event: the same on every delivery."""
    return str(uuid.uuid5(_RESOLVED_IDS, upstream_event_id))


def fold_into(graph: IdentityGraph, event: RecordedEvent, message: Message) -> None:
    """Fold one identity-log event into an in-memory graph (as-of reads, rebuilds, benchmarks)."""
    if isinstance(message, pb.IdentifierLinked):
        graph.link(message.profile_id, message.key, message.type)
    elif isinstance(message, pb.ProfileCreated):
        graph.create(message.profile_id, event.position)
    elif isinstance(message, pb.ProfilesMerged):
        graph.merge(message.survivor_id, message.merged_id)
    elif isinstance(message, pb.ProfileUnmerged):
        graph.split(
            [Part(p.profile_id, tuple(p.keys)) for p in message.parts], message.split_key, event.position
        )
    elif isinstance(message, pb.ProfileProtectionSet):
        graph.set_protected(message.profile_id, message.protected)
    elif isinstance(message, pb.ProfileErased):
        graph.erase(message.profile_ids, message.keys)


def _keys_in(history: Sequence[RecordedEvent]) -> set[str]:
    keys: set[str] = set()
    for event in history:
        if event.type == pb.IdentifierLinked.DESCRIPTOR.full_name:
            keys.add(pb.IdentifierLinked.FromString(event.payload).key)
        elif event.type == pb.TraitsUpdated.DESCRIPTOR.full_name:
            keys.update(pb.TraitsUpdated.FromString(event.payload).keys)
    return keys


def _belongs(
    keys: Sequence[str], resolved_to: str, owners: dict[str, str], live: str, live_of: Callable[[str], str]
) -> bool:
    """An event (and the traits it set) goes with the live profile holding its first identifier that
    anyone still holds; with none held any more (erased), with the profile it was resolved into."""
    for key in keys:
        owner = owners.get(key)
        if owner is not None:
            return owner == live
    return live_of(resolved_to) == live


def _over_limits(graph: IdentityGraph, left: str, right: str) -> str:
    a, b = graph.members.get(left, {}), graph.members.get(right, {})
    problems = []
    for type_name in sorted(set(a) | set(b)):
        total = len(a.get(type_name, ())) + len(b.get(type_name, ()))
        if total > graph.rules.limit(type_name):
            problems.append(f"{total} {type_name} identifiers, limit {graph.rules.limit(type_name)}")
    return "; ".join(problems)


def _history_record(event: RecordedEvent, message: Message) -> pb.MergeRecord:
    record = pb.MergeRecord(position=event.position)
    record.recorded_at.FromDatetime(event.recorded_at)
    if isinstance(message, pb.ProfilesMerged):
        record.kind = pb.MergeRecord.KIND_MERGED
        record.survivor_id, record.merged_id, record.rule = (
            message.survivor_id,
            message.merged_id,
            message.rule,
        )
        record.evidence_event_id, record.reason, record.actor = (
            message.evidence_event_id,
            message.reason,
            message.actor,
        )
    elif isinstance(message, pb.ProfileUnmerged):
        record.kind = pb.MergeRecord.KIND_UNMERGED
        record.survivor_id, record.reason, record.actor = message.profile_id, message.reason, message.actor
        record.evidence_event_id = message.split_event_id
        record.parts.extend(message.parts)
    elif isinstance(message, pb.LinkRefused):
        record.kind = pb.MergeRecord.KIND_LINK_REFUSED
        record.survivor_id, record.merged_id, record.rule = (
            message.profile_id,
            message.other_profile_id,
            message.reason,
        )
        record.evidence_event_id = message.evidence_event_id
    return record
