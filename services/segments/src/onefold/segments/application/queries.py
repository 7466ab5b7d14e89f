"""Who is in what, and why: members, a profile's memberships and tags now or as of a moment (replayed
from its stream of change events), its membership history, a backfill's progress. Reads run on
their own connections and never wait behind the writer.

Merges are followed as a compliance reading expects: as of a moment, an id answers as the profile it
stood for then (a later merge or unmerge does not rewrite the past); a history is that of the profile
the id stands for now, with the changes recorded under every profile merged into it."""

from __future__ import annotations

import asyncio
from datetime import datetime

import sqlalchemy as sa
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from onefold.contracts.common.v1 import pagination_pb2
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.models import to_micros
from onefold.eventlog.service import ServiceLog
from onefold.platform.errors import InvalidArgument, NotFound
from onefold.segments.adapters.profile_states import ProfileStates
from onefold.segments.adapters.read_model import holder_at, members
from onefold.segments.application.workspaces import Workspaces
from onefold.segments.domain.features import to_value
from onefold.segments.domain.streams import profile_stream

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def _page_size(page: pagination_pb2.PageRequest) -> int:
    return min(page.page_size or DEFAULT_PAGE, MAX_PAGE)


def _offset(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 12:
        raise InvalidArgument(
            "the page token is not one this service gave", violations=[("page.page_token", "unknown token")]
        )
    return int(token)


class Queries:
    def __init__(self, log: ServiceLog, states: ProfileStates, workspaces: Workspaces) -> None:
        self.log = log
        self.states = states
        self.workspaces = workspaces

    def _require_definition(self, conn: sa.Connection, workspace: str, name: str) -> None:
        if name not in {d.name for d in self.workspaces.load(conn, workspace)[1]}:
            raise NotFound(f"no definition named {name!r} in this workspace")

    # -------------------------------------------------------------------------- members

    async def members(
        self, workspace: str, name: str, page: pagination_pb2.PageRequest
    ) -> pb.ListMembersResponse:
        return await asyncio.to_thread(self._members, workspace, name, page)

    def _members(self, workspace: str, name: str, page: pagination_pb2.PageRequest) -> pb.ListMembersResponse:
        size = _page_size(page)
        with self.log.store.engine.connect() as conn:
            self._require_definition(conn, workspace, name)
            where = (members.c.workspace == workspace) & (members.c.name == name)
            query = sa.select(members.c.profile_id).where(where)
            if page.page_token:
                query = query.where(members.c.profile_id > page.page_token)
            ids = [str(r[0]) for r in conn.execute(query.order_by(members.c.profile_id).limit(size + 1))]
            total = int(
                conn.execute(sa.select(sa.func.count()).select_from(members).where(where)).scalar() or 0
            )
        more = len(ids) > size
        ids = ids[:size]
        return pb.ListMembersResponse(
            profile_ids=ids,
            page=pagination_pb2.PageResponse(next_page_token=ids[-1] if more else "", total_size=total),
        )

    # -------------------------------------------------------------------------- one profile

    async def profile(self, workspace: str, profile_id: str, as_of: datetime | None) -> pb.ProfileSegments:
        if as_of is not None:
            return await asyncio.to_thread(self._profile_as_of, workspace, profile_id, as_of)
        return await asyncio.to_thread(self._profile_now, workspace, profile_id)

    def _profile_now(self, workspace: str, profile_id: str) -> pb.ProfileSegments:
        with self.log.store.engine.connect() as conn:
            live = self.states.live(conn, workspace, [profile_id])[profile_id]
            state = self.states.load(conn, workspace, [live]).get(live)
        answer = pb.ProfileSegments(profile_id=live)
        if state is None:
            return answer
        for name, output in sorted(state.outputs.items()):
            reasons = [r.to_proto() for r in output.reasons]
            if output.kind == "segment":
                membership = answer.segments.add(segment=name, reasons=reasons)
                membership.since.FromMicroseconds(output.since)
            elif output.kind == "computed_trait":
                answer.computed_traits[name].CopyFrom(to_value(output.value))
            else:
                answer.tags.add(
                    tag=name,
                    value=str(output.value),
                    reasons=reasons,
                    model=output.model,
                    model_version=output.model_version,
                )
        return answer

    def _profile_as_of(self, workspace: str, profile_id: str, as_of: datetime) -> pb.ProfileSegments:
        """Replayed up to `as_of` from the change events of the profile `profile_id` stood for then.
        The survivor of a merge was evaluated on both histories from the merge on, so its own
        stream is the whole answer."""
        with self.log.store.engine.connect() as conn:
            holder = holder_at(conn, workspace, profile_id, to_micros(as_of))
        segments: dict[str, pb.ProfileSegments.Membership] = {}
        tags: dict[str, pb.ProfileSegments.TagValue] = {}
        computed: dict[str, object] = {}
        store = self.log.store
        for event in store.read_stream(profile_stream(workspace, holder), occurred_before=as_of):
            message = store.decode(event)
            if isinstance(message, pb.SegmentEntered):
                membership = pb.ProfileSegments.Membership(segment=message.segment, reasons=message.reasons)
                membership.since.FromDatetime(event.occurred_at)
                segments[message.segment] = membership
            elif isinstance(message, pb.SegmentExited):
                segments.pop(message.segment, None)
            elif isinstance(message, pb.TagChanged):
                if message.value:
                    tags[message.tag] = pb.ProfileSegments.TagValue(
                        tag=message.tag,
                        value=message.value,
                        reasons=message.reasons,
                        model=message.model,
                        model_version=message.model_version,
                    )
                else:
                    tags.pop(message.tag, None)
            elif isinstance(message, pb.ComputedTraitChanged):
                if message.value.WhichOneof("kind") in (None, "null_value"):
                    computed.pop(message.name, None)
                else:
                    computed[message.name] = message.value
        answer = pb.ProfileSegments(
            profile_id=holder,
            segments=[segments[k] for k in sorted(segments)],
            tags=[tags[k] for k in sorted(tags)],
        )
        for name, value in computed.items():
            answer.computed_traits[name].CopyFrom(value)  # type: ignore[arg-type]
        return answer

    async def history(
        self, workspace: str, profile_id: str, name: str, page: pagination_pb2.PageRequest
    ) -> pb.GetMembershipHistoryResponse:
        return await asyncio.to_thread(self._history, workspace, profile_id, name, page)

    def _history(
        self, workspace: str, profile_id: str, name: str, page: pagination_pb2.PageRequest
    ) -> pb.GetMembershipHistoryResponse:
        store = self.log.store
        with store.engine.connect() as conn:
            live = self.states.live(conn, workspace, [profile_id])[profile_id]
            folded = self.states.family(conn, workspace, [live])
            events = store.read_streams(
                [profile_stream(workspace, p) for p in folded], types=_CHANGE_TYPES, conn=conn
            )
        changes: list[pb.MembershipChange] = []
        for event in events:
            change = _change(store.decode(event))
            if not name or change.segment == name:
                change.at.FromDatetime(event.occurred_at)
                changes.append(change)
        start, size = _offset(page.page_token), _page_size(page)
        shown = changes[start : start + size]
        more = start + size < len(changes)
        return pb.GetMembershipHistoryResponse(
            profile_id=live,
            changes=shown,
            page=pagination_pb2.PageResponse(
                next_page_token=str(start + size) if more else "", total_size=len(changes)
            ),
        )

    # -------------------------------------------------------------------------- backfills

    async def backfill(self, workspace: str, backfill_id: str) -> pb.Backfill:
        def read() -> pb.Backfill:
            with self.log.store.engine.connect() as conn:
                found = self.states.backfill(conn, workspace, backfill_id)
            if found is None:
                raise NotFound("no backfill with this id in this workspace")
            return found.to_proto()

        return await asyncio.to_thread(read)


_CHANGE_TYPES = [
    m.DESCRIPTOR.full_name
    for m in (pb.SegmentEntered, pb.SegmentExited, pb.TagChanged, pb.ComputedTraitChanged)
]


def _change(message: Message) -> pb.MembershipChange:
    if isinstance(message, pb.SegmentEntered):
        return pb.MembershipChange(
            profile_id=message.profile_id,
            segment=message.segment,
            change="entered",
            definition_version=message.definition_version,
            reasons=message.reasons,
        )
    if isinstance(message, pb.SegmentExited):
        return pb.MembershipChange(
            profile_id=message.profile_id,
            segment=message.segment,
            change="exited",
            value=message.why,
            definition_version=message.definition_version,
        )
    if isinstance(message, pb.TagChanged):
        return pb.MembershipChange(
            profile_id=message.profile_id,
            segment=message.tag,
            change="tag",
            value=message.value,
            definition_version=message.definition_version,
            reasons=message.reasons,
        )
    assert isinstance(message, pb.ComputedTraitChanged)
    return pb.MembershipChange(
        profile_id=message.profile_id,
        segment=message.name,
        change="computed_trait",
        value=MessageToJson(message.value, indent=None),
        definition_version=message.definition_version,
    )
