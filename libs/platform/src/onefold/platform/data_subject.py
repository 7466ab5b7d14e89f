"""The data-subject contract, onefold.common.v1.DataSubjectService, as every service registers it:
the same scope everywhere (dsr:write), requests parsed and checked like any typed service's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import grpc

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.platform import auth
from onefold.platform.errors import InvalidArgument
from onefold.platform.grpc_server import ServiceRegistration, typed_registration

SERVICE = pb.DESCRIPTOR.services_by_name["DataSubjectService"]
SCOPES = dict.fromkeys(("ExportSubject", "EraseSubject"), "dsr:write")


def registration(servicer: data_subject_pb2_grpc.DataSubjectServiceServicer) -> ServiceRegistration:
    return typed_registration(SERVICE, pb, servicer, SCOPES)


def require_subject(request: pb.ExportSubjectRequest | pb.EraseSubjectRequest) -> None:
    """A request names the person by profile id or identifier; one naming nobody is a caller's
    mistake, never an answer of "nothing held"."""
    if not request.profile_ids and not request.identifiers:
        raise InvalidArgument(
            "name the data subject: profile_ids or identifiers",
            violations=[("identifiers", "profile_ids or identifiers required")],
        )


def values_of(identifiers: Sequence[pb.SubjectIdentifier], kind: str) -> list[str]:
    """The values of the identifiers of one type, in order, without repeats."""
    return list(dict.fromkeys(i.value for i in identifiers if i.type == kind and i.value))


class HeldByProfile(Protocol):
    """The use cases of a service that keys what it holds about a person by profile id."""

    async def export_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]: ...

    async def erase_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]: ...


class ByProfileServicer(data_subject_pb2_grpc.DataSubjectServiceServicer):
    """The contract for such a service: it answers from `profile_ids` (consent has identity resolve
    the person's identifiers to those), in the caller's workspace."""

    def __init__(self, application: HeldByProfile) -> None:
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
