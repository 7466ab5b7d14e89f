"""Ingest's side of the data-subject contract (onefold.common.v1.DataSubjectService): the events
collected under the person's user_ids and anonymous_ids, exported or crypto-shredded."""

from __future__ import annotations

import grpc

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.ingest.application import IngestApplication
from onefold.platform import auth
from onefold.platform.data_subject import require_subject, values_of


class IngestDataSubjectServicer(data_subject_pb2_grpc.DataSubjectServiceServicer):
    def __init__(self, application: IngestApplication) -> None:
        self.app = application

    async def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportSubjectResponse:
        require_subject(request)
        user_ids = values_of(request.identifiers, "user_id")
        anonymous_ids = values_of(request.identifiers, "anonymous_id")
        if not user_ids and not anonymous_ids:
            # Ingest files events only under these two; a person known otherwise has none here.
            return pb.ExportSubjectResponse(counts={"events": 0, "erased_identifiers": 0})
        envelopes, erased = await self.app.export_subject(auth.current_workspace(), user_ids, anonymous_ids)
        return pb.ExportSubjectResponse(
            counts={"events": len(envelopes), "erased_identifiers": erased}, events=envelopes
        )

    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseSubjectResponse:
        require_subject(request)
        user_ids = values_of(request.identifiers, "user_id")
        anonymous_ids = values_of(request.identifiers, "anonymous_id")
        if not user_ids and not anonymous_ids:
            return pb.EraseSubjectResponse(counts={"identifiers_erased": 0, "events_affected": 0})
        erased, affected = await self.app.erase_subject(auth.current_workspace(), user_ids, anonymous_ids)
        return pb.EraseSubjectResponse(counts={"identifiers_erased": erased, "events_affected": affected})
