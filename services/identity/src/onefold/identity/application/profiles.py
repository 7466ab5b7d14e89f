"""Reading profiles: the profile 360 (now, or as of a moment on either time axis), resolving an
identifier, the timeline, the merge history and search by trait. Each read runs on a read thread on
a connection of its own (`IdentityState.read`), never behind the writer.

The profile 360 now is kept in a cache (`ProfileCache`) that follows the log: every read first
looks its profile up together with the log's head and erasure epoch (one statement, one snapshot),
and before it consults the cache, the events committed since the cache last followed the log
invalidate the profiles they concern (their profile stream's profile; the profiles a merge, an
unmerge or an erasure names). A write of any process is thus seen by the first read that starts
after its commit. A new rules version, or an erasure (the epoch: a destroyed key must not survive
in a decrypted copy), empties the cache; an erased profile is never kept nor answered from it. The
flags and counters (first and last seen, events), which every resolved event moves, are not kept:
each read takes them from the row it looked the profile up with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.eventlog.models import RecordedEvent, from_micros, to_micros
from onefold.identity.adapters.profile_cache import ProfileKey
from onefold.identity.adapters.read_model import Located, identifiers, locate, trait_index
from onefold.identity.application.state import IdentityState
from onefold.identity.domain.fold import GraphFold
from onefold.identity.domain.graph import IdentityGraph
from onefold.identity.domain.profile import (
    NAMING_OTHER_PROFILES,
    MergeHistory,
    ProfileAssembly,
    belongs,
    keys_in,
    profiles_named,
)
from onefold.identity.domain.streams import (
    events_stream,
    is_events_stream,
    profile_of_stream,
    profile_stream,
)
from onefold.platform.errors import InvalidArgument, NotFound

MAX_PAGE = 500
DEFAULT_PAGE = 50
# Further behind than this, the cache is emptied rather than the log read to invalidate it.
FOLLOW_AT_MOST = 10_000
_NAMING_TYPES = frozenset(t.DESCRIPTOR.full_name for t in NAMING_OTHER_PROFILES)
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
        return await self.read(self.read_profile, workspace, ref, as_of=as_of, occurred_axis=occurred_axis)

    async def resolve_identifier(self, workspace: str, identifier: pb.Identifier) -> pb.ResolveResponse:
        return await self.read(self._resolve_identifier, workspace, identifier)

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
        return await self.read(
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
        return await self.read(self.read_merge_history, workspace, ref)

    async def search(self, workspace: str, trait: str, value: struct_pb2.Value, page_size: int) -> list[str]:
        return await self.read(self._search, workspace, trait, value, page_size)

    # ------------------------------------------------------------------------------ on a read thread

    def read_profile(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        *,
        as_of: datetime | None = None,
        occurred_axis: bool = False,
    ) -> pb.Profile:
        with self.store.engine.connect() as conn:
            if as_of is None:
                return self._current_profile(conn, workspace, ref)
            live, redirected = self.locate(conn, workspace, ref)
            members = self.family(conn, live)
            history = self.store.read_streams(
                [profile_stream(workspace, m) for m in members], types=_AS_OF_TYPES, conn=conn
            )
            profile = self._as_of(conn, workspace, ref, members, history, as_of, occurred_axis)
            profile.redirected_from = redirected
            return profile

    def _current_profile(self, conn: Connection, workspace: str, ref: pb.ProfileRef) -> pb.Profile:
        cache = self.profile_cache
        # Before the lookup: a change committed after it refuses this read's fill of the cache.
        ticket = cache.ticket()
        which = ref.WhichOneof("ref")
        if which == "profile_id":
            found = locate(conn, workspace, profile_id=ref.profile_id)
            if found.profile_id is None or found.workspace != workspace:
                raise NotFound(f"no profile {ref.profile_id} in this workspace")
        elif which == "identifier":
            ident = self.normalised(conn, workspace, ref.identifier)
            found = locate(conn, workspace, key=ident.key)
            if found.profile_id is None or found.retired or found.workspace != workspace:
                raise NotFound(f"no profile has that {ident.type}")
        else:
            raise InvalidArgument(
                "name the profile by profile_id or identifier", violations=[("profile", "required")]
            )
        ticket = self._follow_log(conn, found.head, found.erasure_epoch, ticket)
        live = found.profile_id
        if found.merged_into:
            live = self.live(conn, workspace, found.merged_into)
            found = locate(conn, workspace, profile_id=live)
        key: ProfileKey = (workspace, live)
        # An erased profile is read afresh every time: nothing decrypted before survives its erasure.
        profile = None if found.erased else cache.get(key)
        if profile is None:
            profile = self._assembled_now(conn, workspace, live)
            if not found.erased:
                cache.put(key, ticket, profile)
        _count_into(profile, found)
        if which == "profile_id" and live != ref.profile_id:
            profile.redirected_from = ref.profile_id
        return profile

    def _assembled_now(self, conn: Connection, workspace: str, live: str) -> pb.Profile:
        """The profile 360 of `live` from its family's profile streams (without its counters)."""
        members = self.family(conn, live)
        streams = [profile_stream(workspace, m) for m in members]
        history = self.decoded(conn, self.store.read_streams(streams, types=_ASSEMBLED_TYPES, conn=conn))
        owners = self.owners(conn, workspace, keys_in(message for _, message in history))
        return self._assemble(conn, workspace, live, history, owners, self.live_of(conn, workspace))

    def _follow_log(self, conn: Connection, head: int, erasure_epoch: int, ticket: int) -> int:
        """Invalidate the cached profiles the events committed up to `head` concern (`head` and
        `erasure_epoch` as a read saw them, with `ticket` taken before). Returns the ticket for
        that read's fill: a newer one when the cache has followed the log exactly to `head`, as
        the read's snapshot then holds every change invalidated so far."""
        cache = self.profile_cache
        with cache.following:
            if erasure_epoch > cache.epoch or head - cache.followed > FOLLOW_AT_MOST:
                cache.clear()
                cache.epoch = max(cache.epoch, erasure_epoch)
                cache.followed = max(cache.followed, head)
            elif head > cache.followed:
                cache.invalidate(self._changed_since(conn, cache.followed, head))
                cache.followed = head
            return cache.ticket() if cache.followed == head else ticket

    def _changed_since(self, conn: Connection, position: int, head: int) -> set[ProfileKey]:
        """The profiles the events after `position` up to `head` concern."""
        changed: set[ProfileKey] = set()
        for event in self.store.read(after_position=position, limit=head - position, conn=conn):
            if is_events_stream(event.stream_id):
                continue  # resolved events move only the counters, read with each profile
            profile_id = profile_of_stream(event.stream_id)
            if profile_id is None:  # the rules: identifiers and traits may read differently now
                self.profile_cache.clear()
                continue
            changed.add((event.workspace, profile_id))
            if event.type in _NAMING_TYPES:
                # Only public fields are read (profile ids): no subject key is needed.
                message = self.store.decode(event, conn=conn, decrypt=False)
                changed.update((event.workspace, named) for named in profiles_named(message))
        return changed

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


def _count_into(profile: pb.Profile, row: Located) -> None:
    """The read model's flags and counters of the profile (`row`: its own, as just read)."""
    profile.protected = bool(row.protected)
    profile.erased = bool(row.erased)
    if row.first_seen is not None and row.last_seen is not None:
        profile.first_seen.FromDatetime(from_micros(row.first_seen))
        profile.last_seen.FromDatetime(from_micros(row.last_seen))
    else:
        profile.ClearField("first_seen")
        profile.ClearField("last_seen")
    profile.event_count = row.event_count or 0


def keys_of_resolved(resolved: Sequence[tuple[RecordedEvent, Message]]) -> list[str]:
    keys: list[str] = []
    for _, message in resolved:
        assert isinstance(message, pb.EventResolved)
        keys.extend(message.keys)
    return keys
