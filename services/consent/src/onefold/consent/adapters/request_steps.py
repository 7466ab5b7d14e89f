"""One step of a data-subject request at another service, over gRPC: the data-subject contract
(ExportSubject, EraseSubject) through DataSubjects, and identity's GetProfile and RectifyProfile.
Each attempt comes to a StepOutcome; a service not reachable from here is PENDING, not failed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2, symbol_database
from google.protobuf.json_format import MessageToDict

from onefold.consent.adapters.data_subjects import DataSubject, DataSubjects
from onefold.consent.domain.subject_request import StepOutcome
from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.platform.client import Peers
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.consent.requests")
_ERASURE, _RECTIFICATION = pb.REQUEST_TYPE_ERASURE, pb.REQUEST_TYPE_RECTIFICATION


def _rpc_failure(service: str, method: str, error: grpc.aio.AioRpcError) -> StepOutcome:
    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return StepOutcome(
            pb.STEP_STATE_PENDING, error=f"{service} does not offer {method} yet (UNIMPLEMENTED): {details}"
        )
    return StepOutcome(pb.STEP_STATE_FAILED, error=f"{service} {method}: {code.name}: {details}")


def _envelope(envelope: EventEnvelope) -> dict[str, Any]:
    """An event envelope as JSON, its payload decoded (a person reads fields, not base64)."""
    document = MessageToDict(envelope, preserving_proto_field_name=True)
    try:
        message_class = symbol_database.Default().GetSymbol(envelope.type)
    except KeyError:
        return document
    document["payload"] = MessageToDict(
        message_class.FromString(envelope.payload), preserving_proto_field_name=True
    )
    return document


class PeerSteps:
    """Calls fail fast (no wait-for-ready), each with `call_timeout_seconds`."""

    def __init__(self, peers: Peers, call_timeout_seconds: float) -> None:
        self.peers = peers
        self.call_timeout_seconds = call_timeout_seconds
        self.data_subjects = DataSubjects(peers, call_timeout_seconds)

    def unreachable(self, service: str) -> str:
        if service == "consent" or self.peers.known(service):
            return ""
        return (
            f"{service} is not reachable from here: no address or service credential is configured "
            f"(peers.{service}, auth.service_token); the step waits until one is"
        )

    async def profile_identifiers(
        self, request: pb.SubjectRequest
    ) -> list[identity_pb2.Identifier] | StepOutcome:
        """The subject's identifiers from identity's GetProfile ([] when identity knows no such
        profile), or the failed attempt."""
        channel = self.peers.channel("identity")
        assert channel is not None  # the caller checked `unreachable("identity")`
        try:
            profile = await identity_pb2_grpc.IdentityServiceStub(channel).GetProfile(
                identity_pb2.GetProfileRequest(
                    profile=identity_pb2.ProfileRef(profile_id=request.profile_id)
                ),
                metadata=self.peers.acting_for(request.workspace),
                timeout=self.call_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return []
            return _rpc_failure("identity", "GetProfile", error)
        named = dict.fromkeys((p.identifier.type, p.identifier.value) for p in profile.identifiers)
        return [identity_pb2.Identifier(type=kind, value=value) for kind, value in named]

    async def call(
        self, service: str, request: pb.SubjectRequest, identifiers: Sequence[identity_pb2.Identifier]
    ) -> StepOutcome:
        erasure = request.type == _ERASURE
        method = {_ERASURE: "EraseSubject", _RECTIFICATION: "RectifyProfile"}.get(
            request.type, "ExportSubject"
        )
        try:
            if request.type == _RECTIFICATION:
                return await self._rectify(request, identifiers)
            subject = DataSubject(request.request_id, (request.profile_id,), identifiers)
            if erasure:
                erased = await self.data_subjects.erase(service, request.workspace, subject)
                if erased is None:
                    return StepOutcome(
                        pb.STEP_STATE_PENDING, error=self.unreachable(service), attempted=False
                    )
                confirmation: dict[str, Any] = dict(erased.counts)
                if erased.profile_ids:
                    confirmation["profile_ids"] = list(erased.profile_ids)
                return StepOutcome(pb.STEP_STATE_DONE, confirmation)
            exported = await self.data_subjects.export(service, request.workspace, subject)
            if exported is None:
                return StepOutcome(pb.STEP_STATE_PENDING, error=self.unreachable(service), attempted=False)
            part: dict[str, Any] = {"counts": dict(exported.counts)}
            if exported.events:
                part["events"] = [_envelope(e) for e in exported.events]
            if exported.HasField("records"):
                part["records"] = MessageToDict(exported.records, preserving_proto_field_name=True)
            return StepOutcome(pb.STEP_STATE_DONE, dict(exported.counts), part=part)
        except grpc.aio.AioRpcError as error:
            return _rpc_failure(service, method, error)
        except Exception as error:  # a bad answer, a broken channel: the step fails and is retried
            log.warning("dsr.call_failed", service=service, method=method, error=repr(error))
            return StepOutcome(
                pb.STEP_STATE_FAILED, error=f"{service} {method}: {type(error).__name__}: {error}"
            )

    async def _rectify(
        self, request: pb.SubjectRequest, identifiers: Sequence[identity_pb2.Identifier]
    ) -> StepOutcome:
        """Identity owns traits: the corrections replace what was set before (RectifyProfile)."""
        if not identifiers:
            return StepOutcome(
                pb.STEP_STATE_FAILED, error="identity knows no such profile: nothing to correct"
            )
        channel = self.peers.channel("identity")
        if channel is None:
            return StepOutcome(pb.STEP_STATE_PENDING, error=self.unreachable("identity"), attempted=False)
        corrections = struct_pb2.Struct()
        corrections.update(json.loads(request.rectification))
        corrected = await identity_pb2_grpc.IdentityServiceStub(channel).RectifyProfile(
            identity_pb2.RectifyProfileRequest(
                profile=identity_pb2.ProfileRef(profile_id=request.profile_id),
                traits=corrections,
                request_id=request.request_id,
            ),
            metadata=self.peers.acting_for(request.workspace),
            timeout=self.call_timeout_seconds,
        )
        done = {"profile_id": corrected.profile_id, "traits_corrected": sorted(corrections.fields)}
        return StepOutcome(pb.STEP_STATE_DONE, done, part=done)
