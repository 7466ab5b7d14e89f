"""gRPC servicer of the insights service: onefold.insights.v1.InsightsService, a thin adapter."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.contracts.insights.v1 import insights_pb2_grpc
from onefold.insights.application import InsightsApplication
from onefold.insights.entrypoints import analyses
from onefold.platform import auth, data_subject
from onefold.platform.grpc_server import ServiceRegistration, typed_registration

SERVICE = pb.DESCRIPTOR.services_by_name["InsightsService"]
SCOPES = {
    **dict.fromkeys(
        ("GetStatus", "Funnel", "Attribution", "Cohorts", "Roi", "ListCampaignCosts"), "insights:read"
    ),
    "SetCampaignCost": "insights:write",
}


class InsightsServicer(insights_pb2_grpc.InsightsServiceServicer):
    def __init__(self, application: InsightsApplication) -> None:
        self.app = application

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.InsightsStatus:
        return await self.app.status(auth.current_workspace())

    async def Funnel(self, request: pb.FunnelRequest, context: grpc.aio.ServicerContext) -> pb.FunnelResult:
        spec = analyses.funnel_spec(request)
        return analyses.funnel_message(await self.app.funnel(auth.current_workspace(), spec))

    async def Attribution(
        self, request: pb.AttributionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AttributionResult:
        spec = analyses.attribution_spec(request)
        return analyses.attribution_message(await self.app.attribution(auth.current_workspace(), spec))

    async def Cohorts(
        self, request: pb.CohortsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CohortsResult:
        spec = analyses.cohort_spec(request)
        return analyses.cohorts_message(await self.app.cohorts(auth.current_workspace(), spec))

    async def Roi(self, request: pb.RoiRequest, context: grpc.aio.ServicerContext) -> pb.RoiResult:
        spec = analyses.roi_spec(request)
        return analyses.roi_message(await self.app.roi(auth.current_workspace(), spec))

    async def SetCampaignCost(
        self, request: pb.SetCampaignCostRequest, context: grpc.aio.ServicerContext
    ) -> pb.CampaignCost:
        return await self.app.costs.set(auth.current_workspace(), request.cost, auth.current_credential_id())

    async def ListCampaignCosts(
        self, request: pb.ListCampaignCostsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCampaignCostsResponse:
        return pb.ListCampaignCostsResponse(costs=await self.app.costs.listed(auth.current_workspace()))


def registrations(application: InsightsApplication) -> Sequence[ServiceRegistration]:
    # What insights holds about a person is keyed by profile id.
    return (
        typed_registration(SERVICE, pb, InsightsServicer(application), SCOPES),
        data_subject.registration(data_subject.ByProfileServicer(application)),
    )
