"""gRPC servicer of the insights service: onefold.insights.v1.InsightsService, a thin adapter."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.contracts.insights.v1 import insights_pb2_grpc
from onefold.insights.application import InsightsApplication
from onefold.platform import auth, data_subject
from onefold.platform.grpc_server import ServiceRegistration, typed_registration

SERVICE = pb.DESCRIPTOR.services_by_name["InsightsService"]
SCOPES = {"GetStatus": "insights:read"}


class InsightsServicer(insights_pb2_grpc.InsightsServiceServicer):
    def __init__(self, application: InsightsApplication) -> None:
        self.app = application

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.InsightsStatus:
        return await self.app.status(auth.current_workspace())


def registrations(application: InsightsApplication) -> Sequence[ServiceRegistration]:
    # What insights holds about a person is keyed by profile id.
    return (
        typed_registration(SERVICE, pb, InsightsServicer(application), SCOPES),
        data_subject.registration(data_subject.ByProfileServicer(application)),
    )
