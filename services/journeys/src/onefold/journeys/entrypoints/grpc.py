"""gRPC servicers of the journeys service: they translate requests, call the application and
translate its answers — no SQL, no business rules. Until its API lands the service serves the
platform's own (health, reflection, onefold.platform.v1.PlatformService, the event log's) and the
data-subject contract."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.journeys.application import JourneysApplication
from onefold.platform import auth, data_subject
from onefold.platform.data_subject import require_subject
from onefold.platform.grpc_server import ServiceRegistration


class JourneysDataSubjectServicer(data_subject_pb2_grpc.DataSubjectServiceServicer):
    """Journeys' side of the data-subject contract. It keys what it holds by profile, so it answers
    from `profile_ids` (identity resolves the identifiers to those)."""

    def __init__(self, application: JourneysApplication) -> None:
        self.app = application

    async def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportSubjectResponse:
        require_subject(request)
        counts = await self.app.export_subject(auth.current_workspace(), request.profile_ids)
        return pb.ExportSubjectResponse(counts=counts)

    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseSubjectResponse:
        require_subject(request)
        counts = await self.app.erase_subject(auth.current_workspace(), request.profile_ids)
        return pb.EraseSubjectResponse(counts=counts)


def registrations(application: JourneysApplication) -> Sequence[ServiceRegistration]:
    return (data_subject.registration(JourneysDataSubjectServicer(application)),)
