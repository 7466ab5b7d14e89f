"""Every service that may hold a person's data serves the data-subject contract
(onefold.common.v1.DataSubjectService) on its real gRPC server, to callers with the dsr:write scope
only: consent's data-subject-request saga relies on all five answering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from onefold.contracts.common.v1 import data_subject_pb2 as ds
from onefold.contracts.common.v1 import data_subject_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.testing.processes import ServiceProcess

CONTRACT = "onefold.common.v1.DataSubjectService"
NOBODY = [ds.SubjectIdentifier(type="user_id", value="nobody-known")]


def served_services(channel: grpc.Channel) -> set[str]:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    return {service.name for answer in answers for service in answer.list_services_response.service}


@pytest.mark.parametrize("name", ["ingest", "identity", "segments", "journeys", "destinations"])
def test_service_serves_the_data_subject_contract_to_dsr_write_only(
    name: str, tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(name, data_dir=tmp_path / "data")
    store = CredentialStore(f"sqlite:///{tmp_path / 'data' / 'auth.db'}")
    dsr = [("authorization", f"Bearer {store.issue('acme', ['dsr:write']).token}")]
    reader = [("authorization", f"Bearer {store.issue('acme', ['profiles:read']).token}")]
    export = ds.ExportSubjectRequest(request_id="r-1", profile_ids=["p-unknown"], identifiers=NOBODY)
    erase = ds.EraseSubjectRequest(request_id="r-1", profile_ids=["p-unknown"], identifiers=NOBODY)
    with grpc.insecure_channel(service.target) as channel:
        assert CONTRACT in served_services(channel)
        stub = data_subject_pb2_grpc.DataSubjectServiceStub(channel)

        exported = stub.ExportSubject(export, metadata=dsr, timeout=30)
        assert not exported.events and all(count == 0 for count in exported.counts.values())
        erased = stub.EraseSubject(erase, metadata=dsr, timeout=30)
        assert not erased.profile_ids

        for call in (
            lambda: stub.ExportSubject(export, metadata=reader, timeout=30),
            lambda: stub.EraseSubject(erase, metadata=reader, timeout=30),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            stub.EraseSubject(erase, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:  # a request naming nobody is refused, not "done"
            stub.EraseSubject(ds.EraseSubjectRequest(request_id="r-1"), metadata=dsr, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    store.engine.dispose()
