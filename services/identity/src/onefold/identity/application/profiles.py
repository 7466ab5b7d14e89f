"""Reading profiles: the profile 360 (now, or as of a moment on either time axis), resolving an
identifier, the timeline, the merge history and search by trait. Each read runs in a worker thread
on a connection of its own (`asyncio.to_thread`), never behind the writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.eventlog.models import RecordedEvent, from_micros, to_micros
from onefold.identity.adapters.read_model import identifiers, profiles, trait_index
from onefold.identity.application.state import IdentityState
from onefold.identity.domain.fold import GraphFold
from onefold.identity.domain.graph import IdentityGraph
from onefold.identity.domain.profile import MergeHistory, ProfileAssembly, belongs, keys_in
from onefold.identity.domain.streams import events_stream, profile_stream
from onefold.platform.errors import InvalidArgument, NotFound

MAX_PAGE = 500
DEFAULT_PAGE = 50
PROFILE_CACHE_SIZE = 10_000
# What each read folds, as its folds declare it: the profile 360 now, as of a moment (the graph of
# the family then, too), the merge history; the timeline is the family's resolved events.
_ASSEMBLED_TYPES = sorted(ProfileAssembly.handled_types())
_AS_OF_TYPES = sorted(ProfileAssembly.handled_types() | GraphFold.handled_types())
_HISTORY_TYPES = sorted(MergeHistory.handled_types())
_RESOLVED = [pb.EventResolved.DESCRIPTOR.full_name]


class ProfileReads(IdentityState):
    async def get_profile(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        *,
        as_of: datetime | None = None,
        occurred_axis: bool = False,
    ) -> pb.Profile:
        return await asyncio.to_thread(
            self.read_profile, workspace, ref, as_of=as_of, occurred_axis=occurred_axis
        )

    async def resolve_identifier(self, workspace: str, identifier: pb.Identifier) -> pb.ResolveResponse:
        return await asyncio.to_thread(self._resolve_identifier, workspace, identifier)

    async def timeline(
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
        return await asyncio.to_thread(
            self.read_timeline,
            workspace,
            ref,
            page_size=page_size,
            page_token=page_token,
            names=names,
            types=types,
            since=since,
            until=until,
        )

    async def merge_history(self, workspace: str, ref: pb.ProfileRef) -> list[pb.MergeRecord]:
        return await asyncio.to_thread(self.read_merge_history, workspace, ref)

    async def search(self, workspace: str, trait: str, value: struct_pb2.Value, page_size: int) -> list[str]:
        return await asyncio.to_thread(self._search, workspace, trait, value, page_size)

    # ------------------------------------------------------------------------------ in a worker thread

    def read_profile(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        *,
        as_of: datetime | None = None,
        occurred_axis: bool = False,
    ) -> pb.Profile:
        with self.store.engine.connect() as conn:
            live, redirected = self.locate(conn, workspace, ref)
            members = self.family(conn, live)
            streams = [profile_stream(workspace, m) for m in members]
            if as_of is None:
                profile = self._current_profile(conn, workspace, live, members, streams)
            else:
                history = self.store.read_streams(streams, types=_AS_OF_TYPES, conn=conn)
                profile = self._as_of(conn, workspace, ref, members, history, as_of, occurred_axis)
            profile.redirected_from = redirected
            return profile

    def _current_profile(
        self, conn: Connection, workspace: str, live: str, members: list[str], streams: list[str]
    ) -> pb.Profile:
        row = conn.execute(sa.select(profiles).where(profiles.c.profile_id == live)).one()
        # Identities and traits change only with the family's profile streams: a cached
        # assembly is current while their newest position is the same.
        marker = (self.store.streams_head(streams, conn=conn), tuple(members))
        cached = self._profiles.get((workspace, live))
        profile = pb.Profile()
        if cached is not None and cached[0] == marker:
            profile.CopyFrom(cached[1])
        else:
            history = self.decoded(conn, self.store.read_streams(streams, types=_ASSEMBLED_TYPES, conn=conn))
            owners = self.owners(conn, workspace, keys_in(message for _, message in history))
            profile = self._assemble(conn, workspace, live, history, owners, self.live_of(conn, workspace))
            if len(self._profiles) >= PROFILE_CACHE_SIZE:
                with contextlib.suppress(KeyError):  # another read emptied it meanwhile
                    self._profiles.popitem(last=False)
            kept = pb.Profile()
            kept.CopyFrom(profile)
            self._profiles[(workspace, live)] = (marker, kept)
        profile.protected = bool(row.protected)
        profile.erased = bool(row.erased)
        if row.first_seen is not None:
            profile.first_seen.FromDatetime(from_micros(row.first_seen))
            profile.last_seen.FromDatetime(from_micros(row.last_seen))
        profile.event_count = row.event_count
        return profile

    def _assemble(
        self,
        conn: Connection,
        workspace: str,
        live: str,
        history: Sequence[tuple[RecordedEvent, Message]],
        owners: dict[str, str],
        live_of: Callable[[str], str],
    ) -> pb.Profile:
        """`live_of(profile_id)`: the profile that id lives on as now (or as of the read)."""
        assembly = ProfileAssembly(workspace, live, self.rules(conn, workspace), owners, live_of)
        for event, message in history:
            assembly.fold(event, message)
        return assembly.assembled()

    def _as_of(
        self,
        conn: Connection,
        workspace: str,
        ref: pb.ProfileRef,
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
        fold = GraphFold(graph)
        decoded = self.decoded(conn, seen)
        for event, message in decoded:
            fold.fold(event, message)
        which = ref.WhichOneof("ref")
        if which == "identifier":
            key = self.normalised(conn, workspace, ref.identifier).key
            target = graph.owner.get(key, "")
        else:
            target = graph.live(ref.profile_id) if ref.profile_id in graph.created else ""
        if not target:
            raise NotFound(f"the profile did not exist yet at {moment.isoformat()}")
        owners = dict(graph.owner)
        profile = self._assemble(conn, workspace, target, decoded, owners, graph.live)
        profile.erased = target in graph.erased
        profile.protected = target in graph.protected
        resolved = self.store.read_streams(
            [events_stream(workspace, m) for m in members], types=_RESOLVED, conn=conn
        )
        count, first, last = 0, None, None
        for event, message in self.decoded(conn, [event for event in resolved if when(event) <= cut]):
            assert isinstance(message, pb.EventResolved)
            if belongs(message.keys, message.profile_id, owners, target, graph.live):
                count += 1
                first = event.occurred_at if first is None or event.occurred_at < first else first
                last = event.occurred_at if last is None or event.occurred_at > last else last
        profile.event_count = count
        if first is not None and last is not None:
            profile.first_seen.FromDatetime(first)
            profile.last_seen.FromDatetime(last)
        return profile

    def _resolve_identifier(self, workspace: str, identifier: pb.Identifier) -> pb.ResolveResponse:
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
                answer.profile_id = self.live(conn, workspace, row.profile_id)
            return answer

    def read_timeline(
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
            members = self.family(conn, live)
            streams = [events_stream(workspace, m) for m in members]
            live_of = self.live_of(conn, workspace)
            exhausted = False
            # One entry more than the page is looked for: a next-page token only when there is one.
            while len(entries) <= size and not exhausted:
                batch = self.store.read_streams(
                    streams,
                    types=_RESOLVED,
                    before_position=before,
                    limit=size * 2,
                    newest_first=True,
                    conn=conn,
                )
                exhausted = len(batch) < size * 2
                if not batch:
                    break
                before = batch[-1].position
                in_window = self.decoded(
                    conn,
                    [
                        event
                        for event in batch
                        if (since is None or event.occurred_at >= since)
                        and (until is None or event.occurred_at <= until)
                    ],
                )
                owners = self.owners(conn, workspace, keys_of_resolved(in_window))
                for event, message in in_window:
                    assert isinstance(message, pb.EventResolved)
                    if not belongs(message.keys, message.profile_id, owners, live, live_of):
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

    def read_merge_history(self, workspace: str, ref: pb.ProfileRef) -> list[pb.MergeRecord]:
        with self.store.engine.connect() as conn:
            live, _ = self.locate(conn, workspace, ref)
            members = self.family(conn, live)
            events = self.store.read_streams(
                [profile_stream(workspace, m) for m in members], types=_HISTORY_TYPES, conn=conn
            )
            history = MergeHistory()
            return [history.record(event, message) for event, message in self.decoded(conn, events)]

    def _search(self, workspace: str, trait: str, value: struct_pb2.Value, page_size: int) -> list[str]:
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
                    live = self.live(conn, workspace, candidate)
                except NotFound:
                    continue
                if live in found:
                    continue
                # The index says the trait once had this value: confirm it still has.
                profile = self.read_profile(workspace, pb.ProfileRef(profile_id=live))
                if any(t.name == trait and MessageToDict(t.value) == plain for t in profile.traits):
                    found.append(live)
                if len(found) >= size:
                    break
        return found


def keys_of_resolved(resolved: Sequence[tuple[RecordedEvent, Message]]) -> list[str]:
    keys: list[str] = []
    for _, message in resolved:
        assert isinstance(message, pb.EventResolved)
        keys.extend(message.keys)
    return keys
