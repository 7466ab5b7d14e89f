"""What every identity use case shares: the service log, the in-memory identity graphs, the caches,
and how a profile is found from a reference.

Concurrency: every write runs on the service's one writer thread (`write`, and the ingest
subscriber's batches), so the graphs are only ever changed by that thread and need no lock. Reads
run on the service's read threads (`read`: a pool of their own, so no write, subscriber batch or
other blocking call queues in front of them) on their own connections and never touch a graph,
except for a workspace's rules (one attribute read). A write first makes sure the graphs are the fold of the log as committed
(`_sync`): the graph of a workspace is loaded from the read model on first use; if anything else
wrote to the log meanwhile (another worker process, or a transaction of ours that failed to commit),
the log head differs from the one the graphs know: the events since are folded into the graphs (a
failed transaction drops them first, so they are loaded again).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.eventlog.models import NewEvent, RecordedEvent
from onefold.eventlog.service import ServiceLog
from onefold.eventlog.streams import PARTITION_KEY
from onefold.identity.adapters.profile_cache import ProfileCache
from onefold.identity.adapters.read_model import family, identifiers, profiles
from onefold.identity.adapters.read_model import rules as rules_table
from onefold.identity.domain.fold import GraphFold
from onefold.identity.domain.graph import Created, IdentityGraph, Linked, Merged, Operation
from onefold.identity.domain.identifiers import (
    Ident,
    Invalid,
    Rules,
    default_rules,
    normalise_value,
    rules_from_proto,
)
from onefold.identity.domain.streams import profile_stream, subject_of
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound

T = TypeVar("T")
_KEY_CHARS = 32  # 128 bits of the HMAC
_KEY_CACHE_SIZE = 500_000
# Events another process wrote since a write here, folded into the loaded graphs; beyond this many,
# reloading the graphs from the read model is the cheaper way back in sync.
FOLD_IN_AT_MOST = 20_000
_GRAPH_TYPES = GraphFold.handled_types()
_SCALAR_KINDS = ("string_value", "number_value", "bool_value")
# Statements of every read, built once (building one costs more than running it).
_WHERE_IT_LIVES = sa.select(profiles.c.merged_into, profiles.c.workspace).where(
    profiles.c.profile_id == sa.bindparam("profile_id")
)
_FAMILY = sa.select(family.c.member_id).where(family.c.profile_id == sa.bindparam("profile_id"))
_OWNERS = sa.select(identifiers.c.key, identifiers.c.profile_id).where(
    identifiers.c.workspace == sa.bindparam("workspace"),
    identifiers.c.key.in_(sa.bindparam("keys", expanding=True)),
    identifiers.c.retired.is_(False),
)
READ_THREADS = 4
PROFILE_CACHE_SIZE = 10_000
PROFILE_CACHE_BYTES = 32 * 1024 * 1024


def new_profile_id() -> str:
    return str(uuid.uuid4())


class IdentityState:
    def __init__(self, log: ServiceLog) -> None:
        self.log = log
        self.store = log.store
        self._graphs: dict[str, IdentityGraph] = {}
        self._head = -1
        self._keys: dict[tuple[str, str], str] = {}
        self._trait_keys: dict[tuple[str, bytes], str] = {}
        self.profile_cache = ProfileCache(PROFILE_CACHE_SIZE, PROFILE_CACHE_BYTES)
        self._reads = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="identity-read")

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run the read `fn(*args, **kwargs)` on a read thread (with the caller's context: its trace)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._reads, call)

    async def close(self) -> None:
        """Stop the read threads (after the last read)."""
        await asyncio.to_thread(self._reads.shutdown, wait=True)

    # ------------------------------------------------------------------------------ keys

    def key_of(self, type_name: str, value: str) -> str:
        cache_key = (type_name, value)
        key = self._keys.get(cache_key)
        if key is None:
            key = self.store.blind_index(f"{type_name}:{value}", field="identity", case_sensitive=True)[
                :_KEY_CHARS
            ]
            if len(self._keys) > _KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def trait_keys(self, traits: struct_pb2.Struct) -> list[str]:
        """Keyed hashes of each scalar trait's "name=value" (the search index; values stay private).

        Remembered by the value's bytes: a person's identify calls repeat the same traits, and the
        JSON form and the HMAC of each cost more than the rest of resolving the event."""
        keys = []
        for name, value in traits.fields.items():
            if value.WhichOneof("kind") not in _SCALAR_KINDS:
                continue
            remembered = (name, value.SerializeToString())
            key = self._trait_keys.get(remembered)
            if key is None:
                key = self.trait_key(name, MessageToDict(value))
                if len(self._trait_keys) > _KEY_CACHE_SIZE:
                    self._trait_keys.clear()
                self._trait_keys[remembered] = key
            keys.append(key)
        return keys

    def trait_key(self, name: str, value: object) -> str:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return self.store.blind_index(f"{name}={text}", field="trait", case_sensitive=True)[:_KEY_CHARS]

    # ------------------------------------------------------------------------------ the graphs

    def rules(self, conn: Connection, workspace: str) -> Rules:
        graph = self._graphs.get(workspace)
        if graph is not None:
            return graph.rules
        row = conn.execute(sa.select(rules_table.c.rules).where(rules_table.c.workspace == workspace)).first()
        if row is None:
            return default_rules()
        return rules_from_proto(pb.IdentityRules.FromString(row[0]))

    def graph(self, conn: Connection, workspace: str) -> IdentityGraph:
        """The workspace's graph (writer thread only): loaded from the read model on first use."""
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

    def _sync(self, conn: Connection) -> None:
        head = self.store.head_position(conn=conn)
        if head == self._head:
            return
        if self._graphs and 0 <= self._head < head <= self._head + FOLD_IN_AT_MOST:
            # Another worker process wrote meanwhile: fold its events in, from their public fields.
            for event in self.store.read(after_position=self._head, limit=head - self._head, conn=conn):
                if event.type in _GRAPH_TYPES:
                    message = self.store.decode(event, conn=conn, decrypt=False)
                    graph = self._graphs.get(getattr(message, "workspace", ""))
                    if graph is not None:
                        GraphFold(graph).fold(event, message)
        else:
            self._graphs.clear()
        self._head = head

    def _invalidate(self) -> None:
        self._graphs.clear()
        self._head = -1

    # ------------------------------------------------------------------------------ writing

    def in_sync(self, work: Callable[[Connection], T], conn: Connection) -> T:
        """Run `work(conn)` in a write transaction with the graphs in sync with the log; a failure
        drops them (they may hold decisions that are now rolled back)."""
        self._sync(conn)
        try:
            return work(conn)
        except BaseException:
            self._invalidate()
            raise

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work(conn)` in one write transaction on the writer thread (`Projector.write`: run
        again after a catch-up when the read model was behind)."""
        result: T = await self.log.writer.run(self.log.projector.write, functools.partial(self.in_sync, work))
        return result

    def record(self, conn: Connection, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append `events` and fold them into the read model (the one write path)."""
        recorded = self.log.projector.record(conn, events)
        if recorded:
            self._head = recorded[-1].position
        return recorded

    def record_change(self, conn: Connection, workspace: str, events: Sequence[NewEvent]) -> None:
        """Record events decided by hand and fold them into the workspace's graph, if loaded."""
        recorded = self.record(conn, events)
        graph = self._graphs.get(workspace)
        if graph is not None:
            fold = GraphFold(graph)
            for event, new in zip(recorded, events, strict=True):
                fold.fold(event, new.message)

    def operation_event(
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
        """The event recording a decision of the graph (None when there is nothing to record)."""
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

    def manual_event(
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

    def live(self, conn: Connection, workspace: str, profile_id: str) -> str:
        """The profile `profile_id` lives on as now (NotFound when it is not one of the workspace's)."""
        seen = 0
        while True:
            row = conn.execute(_WHERE_IT_LIVES, {"profile_id": profile_id}).first()
            if row is None or row.workspace != workspace:
                raise NotFound(f"no profile {profile_id} in this workspace")
            if not row.merged_into:
                return profile_id
            profile_id = row.merged_into
            seen += 1
            if seen > 1000:
                raise FailedPrecondition("the profile's merge history forms a cycle")

    def live_of(self, conn: Connection, workspace: str) -> Callable[[str], str]:
        """`live` for the duration of one read (memoised: a history names the same ids often)."""
        seen: dict[str, str] = {}

        def live_of(profile_id: str) -> str:
            if profile_id not in seen:
                seen[profile_id] = self.live(conn, workspace, profile_id)
            return seen[profile_id]

        return live_of

    def locate(self, conn: Connection, workspace: str, ref: pb.ProfileRef) -> tuple[str, str]:
        """(live profile id, the merged id asked for or ""). NotFound when nothing matches."""
        which = ref.WhichOneof("ref")
        if which == "profile_id":
            live = self.live(conn, workspace, ref.profile_id)
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
            return self.live(conn, workspace, row.profile_id), ""
        raise InvalidArgument(
            "name the profile by profile_id or identifier", violations=[("profile", "required")]
        )

    def family(self, conn: Connection, profile_id: str) -> list[str]:
        """Every profile id whose streams hold part of `profile_id`'s history (itself at least)."""
        members = [m for (m,) in conn.execute(_FAMILY, {"profile_id": profile_id})]
        return members or [profile_id]

    def owners(self, conn: Connection, workspace: str, keys: Iterable[str]) -> dict[str, str]:
        """key -> the live profile holding it, for the keys still held."""
        wanted = sorted(set(keys))
        owners: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            rows = conn.execute(_OWNERS, {"workspace": workspace, "keys": wanted[start : start + 500]})
            owners.update({key: profile_id for key, profile_id in rows})
        return owners

    def decoded(
        self, conn: Connection, events: Sequence[RecordedEvent]
    ) -> list[tuple[RecordedEvent, Message]]:
        """Own-log events with their messages, through the store (decrypted, upcast)."""
        decode = self.store.decode
        return [(event, decode(event, conn=conn)) for event in events]
