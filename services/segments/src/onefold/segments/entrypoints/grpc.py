"""gRPC servicers of the segments service: onefold.segments.v1.SegmentsService and the data-subject
contract, thin adapters to the application (requests translated, answers translated, nothing else)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.contracts.segments.v1 import segments_pb2_grpc
from onefold.platform import auth, data_subject
from onefold.platform.errors import InvalidArgument
from onefold.platform.grpc_server import ServiceRegistration, typed_registration
from onefold.platform.validation import bounded_text, optional_timestamp
from onefold.segments.application import SegmentsApplication

SERVICE = pb.DESCRIPTOR.services_by_name["SegmentsService"]
SCOPES = {
    **dict.fromkeys(
        (
            "GetDefinition",
            "ListDefinitions",
            "Preview",
            "ListMembers",
            "GetProfileSegments",
            "GetMembershipHistory",
            "GetBackfill",
        ),
        "segments:read",
    ),
    **dict.fromkeys(("ApplyDefinition", "ApplyDefinitions", "ArchiveDefinition"), "segments:write"),
}
MAX_NAME_CHARS = 64
MAX_DEFINITIONS_PER_APPLY = 500
MAX_ID_CHARS = 128


class SegmentsServicer(segments_pb2_grpc.SegmentsServiceServicer):
    def __init__(self, application: SegmentsApplication) -> None:
        self.app = application

    async def ApplyDefinition(
        self, request: pb.ApplyDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyDefinitionResponse:
        return await self.app.definitions.apply(
            auth.current_workspace(),
            request.definition,
            auth.current_credential_id(),
            dry_run=request.dry_run,
        )

    async def ApplyDefinitions(
        self, request: pb.ApplyDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyDefinitionsResponse:
        if len(request.definitions) > MAX_DEFINITIONS_PER_APPLY:
            raise InvalidArgument(
                f"at most {MAX_DEFINITIONS_PER_APPLY} definitions per request",
                violations=[("definitions", f"{len(request.definitions)} given")],
            )
        results = await self.app.definitions.apply_all(
            auth.current_workspace(),
            list(request.definitions),
            auth.current_credential_id(),
            dry_run=request.dry_run,
        )
        return pb.ApplyDefinitionsResponse(results=results)

    async def ArchiveDefinition(
        self, request: pb.ArchiveDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Definition:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        return await self.app.definitions.archive(
            auth.current_workspace(), name, auth.current_credential_id()
        )

    async def GetDefinition(
        self, request: pb.GetDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Definition:
        return await self.app.definitions.get(
            auth.current_workspace(), bounded_text("name", request.name, MAX_NAME_CHARS)
        )

    async def ListDefinitions(
        self, request: pb.ListDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDefinitionsResponse:
        found = await self.app.definitions.listed(auth.current_workspace(), request.include_archived)
        return pb.ListDefinitionsResponse(definitions=found)

    async def Preview(
        self, request: pb.PreviewRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewResponse:
        size, sample = await self.app.definitions.preview(auth.current_workspace(), request.definition)
        return pb.PreviewResponse(size=size, sample_profile_ids=sample)

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMembersResponse:
        name = bounded_text("segment", request.segment, MAX_NAME_CHARS)
        return await self.app.queries.members(auth.current_workspace(), name, request.page)

    async def GetProfileSegments(
        self, request: pb.GetProfileSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProfileSegments:
        profile_id = bounded_text("profile_id", request.profile_id, MAX_ID_CHARS)
        return await self.app.queries.profile(
            auth.current_workspace(), profile_id, optional_timestamp(request, "as_of")
        )

    async def GetMembershipHistory(
        self, request: pb.GetMembershipHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMembershipHistoryResponse:
        profile_id = bounded_text("profile_id", request.profile_id, MAX_ID_CHARS)
        return await self.app.queries.history(
            auth.current_workspace(), profile_id, request.segment[:MAX_NAME_CHARS], request.page
        )

    async def GetBackfill(
        self, request: pb.GetBackfillRequest, context: grpc.aio.ServicerContext
    ) -> pb.Backfill:
        backfill_id = bounded_text("backfill_id", request.backfill_id, MAX_ID_CHARS)
        return await self.app.queries.backfill(auth.current_workspace(), backfill_id)


def registrations(application: SegmentsApplication) -> Sequence[ServiceRegistration]:
    # What segments holds about a person is keyed by profile id.
    return (
        typed_registration(SERVICE, pb, SegmentsServicer(application), SCOPES),
        data_subject.registration(data_subject.ByProfileServicer(application)),
    )
