"""gRPC servicers of the segments service. Until its API lands it serves the platform's own (health,
reflection, onefold.platform.v1.PlatformService) and the data-subject contract."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.platform import data_subject
from onefold.platform.data_subject import require_subject
from onefold.platform.grpc_server import ServiceRegistration


class SegmentsDataSubjectServicer(data_subject_pb2_grpc.DataSubjectServiceServicer):
    """Segments stores nothing about a person yet, so its honest answer is an empty export and an
    erasure of zero records. When it starts storing personal data (or anything keyed by profile),
    both calls must cover it: a completion record claims every service erased the person."""

    async def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportSubjectResponse:
        require_subject(request)
        return pb.ExportSubjectResponse(counts={"records": 0})

    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseSubjectResponse:
        require_subject(request)
        return pb.EraseSubjectResponse(counts={"records_erased": 0})


def registrations() -> Sequence[ServiceRegistration]:
    return (data_subject.registration(SegmentsDataSubjectServicer()),)
