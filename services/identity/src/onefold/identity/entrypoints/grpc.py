"""gRPC servicer of the identity service: onefold.identity.v1.IdentityService, a thin adapter to the
application."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2_grpc
from onefold.identity.application import IdentityApplication
from onefold.identity.entrypoints.data_subject import IdentityDataSubjectServicer
from onefold.platform import auth, data_subject
from onefold.platform.grpc_server import ServiceRegistration, typed_registration
from onefold.platform.validation import (
    MAX_IDENTIFIER_TYPE_CHARS,
    bounded_text,
    optional_timestamp,
    profile_ref_arg,
)

SERVICE = pb.DESCRIPTOR.services_by_name["IdentityService"]
SCOPES = {
    **dict.fromkeys(
        ("GetProfile", "Resolve", "ListTimeline", "GetMergeHistory", "SearchProfiles", "GetRules"),
        "profiles:read",
    ),
    **dict.fromkeys(("MergeProfiles", "UnmergeProfile", "SetProtection"), "profiles:write"),
    "SetRules": "admin",
    "RectifyProfile": "dsr:write",
}


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, application: IdentityApplication) -> None:
        self.app = application

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.Profile:
        return await self.app.get_profile(
            auth.current_workspace(),
            profile_ref_arg("profile", request.profile),
            as_of=optional_timestamp(request, "as_of"),
            occurred_axis=request.axis == pb.TIME_AXIS_OCCURRED,
        )

    async def Resolve(
        self, request: pb.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveResponse:
        # Only the type is bounded: a value too long to have been recorded is simply not found.
        bounded_text("identifier.type", request.identifier.type, MAX_IDENTIFIER_TYPE_CHARS)
        return await self.app.resolve_identifier(auth.current_workspace(), request.identifier)

    async def ListTimeline(
        self, request: pb.ListTimelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTimelineResponse:
        entries, token = await self.app.timeline(
            auth.current_workspace(),
            profile_ref_arg("profile", request.profile),
            page_size=request.page.page_size,
            page_token=request.page.page_token,
            names=list(request.event_names),
            types=list(request.types),
            since=optional_timestamp(request, "since"),
            until=optional_timestamp(request, "until"),
        )
        response = pb.ListTimelineResponse(entries=entries)
        response.page.next_page_token = token
        return response

    async def GetMergeHistory(
        self, request: pb.GetMergeHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMergeHistoryResponse:
        records = await self.app.merge_history(
            auth.current_workspace(), profile_ref_arg("profile", request.profile)
        )
        return pb.GetMergeHistoryResponse(records=records)

    async def SearchProfiles(
        self, request: pb.SearchProfilesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchProfilesResponse:
        found = await self.app.search(
            auth.current_workspace(), request.trait, request.value, request.page.page_size
        )
        return pb.SearchProfilesResponse(profile_ids=found)

    async def MergeProfiles(
        self, request: pb.MergeProfilesRequest, context: grpc.aio.ServicerContext
    ) -> pb.MergeProfilesResponse:
        workspace = auth.current_workspace()
        survivor = await self.app.merge(
            workspace,
            profile_ref_arg("survivor", request.survivor),
            profile_ref_arg("merged", request.merged),
            request.reason,
            auth.current_credential_id(),
        )
        profile = await self.app.get_profile(workspace, pb.ProfileRef(profile_id=survivor))
        return pb.MergeProfilesResponse(profile=profile)

    async def UnmergeProfile(
        self, request: pb.UnmergeProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnmergeProfileResponse:
        workspace = auth.current_workspace()
        parts = await self.app.unmerge(
            workspace,
            profile_ref_arg("profile", request.profile),
            identifier=request.identifier if request.WhichOneof("split") == "identifier" else None,
            event_id=request.event_id,
            reason=request.reason,
            actor=auth.current_credential_id(),
        )
        profiles = [await self.app.get_profile(workspace, pb.ProfileRef(profile_id=part)) for part in parts]
        return pb.UnmergeProfileResponse(profiles=profiles)

    async def SetProtection(
        self, request: pb.SetProtectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Profile:
        workspace = auth.current_workspace()
        live = await self.app.set_protection(
            workspace,
            profile_ref_arg("profile", request.profile),
            request.protected,
            auth.current_credential_id(),
        )
        return await self.app.get_profile(workspace, pb.ProfileRef(profile_id=live))

    async def GetRules(
        self, request: pb.GetRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.IdentityRules:
        return await self.app.get_rules(auth.current_workspace())

    async def SetRules(
        self, request: pb.SetRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.IdentityRules:
        return await self.app.set_rules(auth.current_workspace(), request.rules, auth.current_credential_id())

    async def RectifyProfile(
        self, request: pb.RectifyProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.Profile:
        workspace = auth.current_workspace()
        live = await self.app.rectify(
            workspace,
            profile_ref_arg("profile", request.profile),
            request.traits,
            request.request_id,
            auth.current_credential_id(),
        )
        return await self.app.get_profile(workspace, pb.ProfileRef(profile_id=live))


def registrations(application: IdentityApplication) -> Sequence[ServiceRegistration]:
    return (
        typed_registration(SERVICE, pb, IdentityServicer(application), SCOPES),
        data_subject.registration(IdentityDataSubjectServicer(application)),
    )
