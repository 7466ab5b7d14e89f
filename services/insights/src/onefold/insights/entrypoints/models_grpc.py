"""gRPC servicer of the models written back: onefold.insights.v1.ModelsService, a thin adapter."""

from __future__ import annotations

import grpc

from onefold.contracts.insights.v1 import models_pb2 as pb
from onefold.contracts.insights.v1 import models_pb2_grpc
from onefold.insights.application.models import ModelTraining
from onefold.platform import auth
from onefold.platform.grpc_server import ServiceRegistration, typed_registration

SERVICE = pb.DESCRIPTOR.services_by_name["ModelsService"]
# Training writes tags to every profile of the workspace: a write, not a read.
SCOPES = {"TrainModels": "insights:write", "ListModels": "insights:read"}


class ModelsServicer(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self, models: ModelTraining) -> None:
        self.models = models

    async def TrainModels(
        self, request: pb.TrainModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainModelsResponse:
        return await self.models.train(auth.current_workspace(), list(request.models))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return await self.models.list_models(auth.current_workspace())


def registration(models: ModelTraining) -> ServiceRegistration:
    return typed_registration(SERVICE, pb, ModelsServicer(models), SCOPES)
