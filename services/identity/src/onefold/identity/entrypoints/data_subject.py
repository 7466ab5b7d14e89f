"""Identity's side of the data-subject contract (onefold.common.v1.DataSubjectService): the profiles
the person's identifiers lead to, exported (profiles, timelines, merge history) or crypto-shredded
with their identifiers retired."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.identity.application import IdentityApplication
from onefold.platform import auth
from onefold.platform.data_subject import require_subject


def _identifiers(request: pb.ExportSubjectRequest | pb.EraseSubjectRequest) -> list[identity_pb2.Identifier]:
    return [identity_pb2.Identifier(type=i.type, value=i.value) for i in request.identifiers]


class IdentityDataSubjectServicer(data_subject_pb2_grpc.DataSubjectServiceServicer):
    def __init__(self, application: IdentityApplication) -> None:
        self.app = application

    # Identity finds a person by identifiers (a profile id alone may be one merged away). A request
    # naming none — consent found no profile to collect them from — finds nothing held here.

    async def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportSubjectResponse:
        require_subject(request)
        export = identity_pb2.SubjectExport()
        if request.identifiers:
            export = await self.app.export_subject(auth.current_workspace(), _identifiers(request))
        records = any_pb2.Any()
        records.Pack(export)
        counts = {
            "profiles": len(export.profiles),
            "timeline": len(export.events),
            "merges": len(export.history),
        }
        return pb.ExportSubjectResponse(counts=counts, records=records)

    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseSubjectResponse:
        require_subject(request)
        profile_ids: list[str] = []
        unlinked = 0
        if request.identifiers:
            profile_ids, unlinked = await self.app.erase_subject(
                auth.current_workspace(),
                _identifiers(request),
                request.request_id,
                auth.current_credential_id(),
            )
        return pb.EraseSubjectResponse(counts={"identifiers_unlinked": unlinked}, profile_ids=profile_ids)
