"""The client of the data-subject contract (onefold.common.v1.DataSubjectService) that consent's
data-subject-request saga calls on every other service: one typed call per service, the same
request everywhere (each service answers from what it holds), the caller's workspace acted for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from onefold.contracts.common.v1 import data_subject_pb2 as pb
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.platform.client import Peers


@dataclass(frozen=True)
class DataSubject:
    """The person a request is about, every way the platform knows them."""

    request_id: str
    profile_ids: Sequence[str]
    identifiers: Sequence[identity_pb2.Identifier]


def _typed(identifiers: Sequence[identity_pb2.Identifier]) -> list[pb.SubjectIdentifier]:
    return [pb.SubjectIdentifier(type=i.type, value=i.value) for i in identifiers]


class DataSubjects:
    """Calls fail fast (no wait-for-ready) and raise grpc.aio.AioRpcError as gRPC does; None means
    the service is not reachable from here (no address or service credential configured)."""

    def __init__(self, peers: Peers, call_timeout_seconds: float) -> None:
        self.peers = peers
        self.call_timeout_seconds = call_timeout_seconds

    def _stub(self, service: str) -> data_subject_pb2_grpc.DataSubjectServiceStub | None:
        channel = self.peers.channel(service)
        return None if channel is None else data_subject_pb2_grpc.DataSubjectServiceStub(channel)

    async def export(
        self, service: str, workspace: str, subject: DataSubject
    ) -> pb.ExportSubjectResponse | None:
        stub = self._stub(service)
        if stub is None:
            return None
        request = pb.ExportSubjectRequest(
            request_id=subject.request_id,
            profile_ids=subject.profile_ids,
            identifiers=_typed(subject.identifiers),
        )
        return await stub.ExportSubject(
            request, metadata=self.peers.acting_for(workspace), timeout=self.call_timeout_seconds
        )

    async def erase(
        self, service: str, workspace: str, subject: DataSubject
    ) -> pb.EraseSubjectResponse | None:
        stub = self._stub(service)
        if stub is None:
            return None
        request = pb.EraseSubjectRequest(
            request_id=subject.request_id,
            profile_ids=subject.profile_ids,
            identifiers=_typed(subject.identifiers),
        )
        return await stub.EraseSubject(
            request, metadata=self.peers.acting_for(workspace), timeout=self.call_timeout_seconds
        )
