"""gRPC servicers of the consent service: onefold.consent.v1.ConsentService (the ledger, checks and
data-subject requests) and onefold.consent.v1.AuditService (compliance officers), thin adapters to
the application's use cases (which are async: writes on the writer thread, reads in threads)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from onefold.consent.adapters.subjects import resolve_subject
from onefold.consent.application import ConsentApplication, Written
from onefold.consent.domain.subject_request import TERMINAL_STATES
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.consent.v1 import consent_pb2_grpc
from onefold.platform import auth
from onefold.platform.client import Peers
from onefold.platform.errors import FailedPrecondition, InvalidArgument
from onefold.platform.grpc_server import ServiceRegistration, typed_registration
from onefold.platform.telemetry import get_logger
from onefold.platform.validation import id_arg, optional_timestamp, profile_ref_arg

CONSENT = pb.DESCRIPTOR.services_by_name["ConsentService"]
AUDIT = pb.DESCRIPTOR.services_by_name["AuditService"]
CONSENT_SCOPES = {
    **dict.fromkeys(("CheckConsent", "CheckConsentBatch", "GetConsents", "GetModel"), "consent:read"),
    **dict.fromkeys(("GrantConsent", "WithdrawConsent", "RecordObjection", "SetPreference"), "consent:write"),
    "SetModel": "admin",
    **dict.fromkeys(
        ("OpenRequest", "GetRequest", "RetryRequest", "ExtendRequest", "RefuseRequest", "ListRequests"),
        "dsr:write",
    ),
}
AUDIT_SCOPES = {"ConsentAsOf": "audit:read", "History": "audit:read"}
MAX_BATCH = 1000
log = get_logger("onefold.consent.grpc")


def _request_id(
    request: pb.GetRequestRequest
    | pb.RetryRequestRequest
    | pb.ExtendRequestRequest
    | pb.RefuseRequestRequest,
) -> str:
    return id_arg("request_id", request.request_id, "data-subject request")


def _written(written: Written) -> pb.LedgerWriteResponse:
    answer = pb.LedgerWriteResponse(profile_id=written.profile_id, states=written.state.states())
    for event in written.recorded:
        evidence = answer.recorded.add(
            event_id=event.event_id, position=event.position, hash=event.hash, event_type=event.type
        )
        evidence.recorded_at.FromDatetime(event.recorded_at)
        evidence.occurred_at.FromDatetime(event.occurred_at)
    return answer


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, application: ConsentApplication, peers: Peers) -> None:
        self.app = application
        self.peers = peers
        self.requests = application.requests

    async def _subject(self, ref: object) -> tuple[str, str]:
        workspace = auth.current_workspace()
        return workspace, await resolve_subject(self.peers, workspace, profile_ref_arg("subject", ref))

    async def CheckConsent(
        self, request: pb.CheckConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckConsentResponse:
        workspace, profile_id = await self._subject(request.subject)
        live, outcome = await self.app.checks.check(
            workspace,
            profile_id,
            request.purpose_id,
            request.channel,
            at=optional_timestamp(request, "at"),
            jurisdiction=request.jurisdiction,
        )
        return outcome.to_proto(live)

    async def CheckConsentBatch(
        self, request: pb.CheckConsentBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckConsentBatchResponse:
        if len(request.checks) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} checks per batch",
                violations=[("checks", f"{len(request.checks)} given")],
            )
        workspace = auth.current_workspace()
        checks = []
        for i, check in enumerate(request.checks):
            subject = profile_ref_arg(f"checks[{i}].subject", check.subject)
            profile_id = await resolve_subject(self.peers, workspace, subject, f"checks[{i}].subject")
            at = optional_timestamp(check, "at", f"checks[{i}].at")
            checks.append((profile_id, check.purpose_id, check.channel, at, int(check.jurisdiction)))
        results = await self.app.checks.check_batch(workspace, checks)
        return pb.CheckConsentBatchResponse(results=[outcome.to_proto(live) for live, outcome in results])

    async def GrantConsent(
        self, request: pb.GrantConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.LedgerWriteResponse:
        workspace, profile_id = await self._subject(request.subject)
        return _written(
            await self.app.ledger.grant(workspace, profile_id, request, auth.current_credential_id())
        )

    async def WithdrawConsent(
        self, request: pb.WithdrawConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.LedgerWriteResponse:
        workspace, profile_id = await self._subject(request.subject)
        return _written(
            await self.app.ledger.withdraw(workspace, profile_id, request, auth.current_credential_id())
        )

    async def RecordObjection(
        self, request: pb.RecordObjectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.LedgerWriteResponse:
        workspace, profile_id = await self._subject(request.subject)
        return _written(
            await self.app.ledger.record_objection(
                workspace, profile_id, request, auth.current_credential_id()
            )
        )

    async def SetPreference(
        self, request: pb.SetPreferenceRequest, context: grpc.aio.ServicerContext
    ) -> pb.LedgerWriteResponse:
        workspace, profile_id = await self._subject(request.subject)
        return _written(
            await self.app.ledger.set_preference(workspace, profile_id, request, auth.current_credential_id())
        )

    async def GetConsents(
        self, request: pb.GetConsentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConsentsResponse:
        workspace, profile_id = await self._subject(request.subject)
        return await self.app.history.consents(workspace, profile_id)

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConsentModel:
        return await self.app.model.get_model(auth.current_workspace())

    async def SetModel(
        self, request: pb.SetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConsentModel:
        return await self.app.model.set_model(
            auth.current_workspace(), request.model, auth.current_credential_id()
        )

    # -------------------------------------------------------------------------- data-subject requests

    async def _pass(self, workspace: str, request_id: str) -> pb.SubjectRequest:
        """One saga pass, shielded: a caller that gives up does not cut a pass (and the calls it has
        made) short; what it recorded stays, and the background loop carries on."""
        task = asyncio.ensure_future(self.requests.process(workspace, request_id))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:  # the request is recorded either way: answer with what it is now
            log.exception("dsr.pass_failed", workspace=workspace, request_id=request_id)
            return await self.requests.get(workspace, request_id)

    async def OpenRequest(
        self, request: pb.OpenRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubjectRequest:
        workspace, profile_id = await self._subject(request.subject)
        opened = await self.requests.open(workspace, profile_id, request, auth.current_credential_id())
        if opened.state in TERMINAL_STATES:
            return opened
        return await self._pass(workspace, opened.request_id)

    async def GetRequest(
        self, request: pb.GetRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubjectRequest:
        return await self.requests.get(auth.current_workspace(), _request_id(request))

    async def RetryRequest(
        self, request: pb.RetryRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubjectRequest:
        workspace = auth.current_workspace()
        current = await self.requests.get(workspace, _request_id(request))
        if current.state in TERMINAL_STATES:
            state = pb.RequestState.Name(current.state).removeprefix("REQUEST_STATE_").lower()
            raise FailedPrecondition(
                f"the request is {state}: nothing is left to retry", violations=[("request_id", state)]
            )
        return await self._pass(workspace, request.request_id)

    async def ExtendRequest(
        self, request: pb.ExtendRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubjectRequest:
        return await self.requests.extend(
            auth.current_workspace(),
            _request_id(request),
            request.days,
            request.reason,
            auth.current_credential_id(),
        )

    async def RefuseRequest(
        self, request: pb.RefuseRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubjectRequest:
        return await self.requests.refuse(
            auth.current_workspace(),
            _request_id(request),
            request.reason,
            auth.current_credential_id(),
        )

    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRequestsResponse:
        listed = await self.requests.list_requests(
            auth.current_workspace(),
            overdue_only=request.overdue_only,
            state=request.state,
        )
        return pb.ListRequestsResponse(requests=listed)


class AuditServicer(consent_pb2_grpc.AuditServiceServicer):
    def __init__(self, application: ConsentApplication, peers: Peers) -> None:
        self.app = application
        self.peers = peers

    async def ConsentAsOf(
        self, request: pb.ConsentAsOfRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConsentAsOfResponse:
        workspace = auth.current_workspace()
        profile_id = await resolve_subject(self.peers, workspace, profile_ref_arg("subject", request.subject))
        live, state = await self.app.history.as_of(
            workspace,
            profile_id,
            as_of=optional_timestamp(request, "as_of"),
            known_at=optional_timestamp(request, "known_at"),
        )
        return pb.ConsentAsOfResponse(
            profile_id=live,
            states=state.states(),
            objections=sorted(state.objections),
            restricted=state.restricted is not None,
            events_replayed=state.events,
        )

    async def History(
        self, request: pb.HistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.HistoryResponse:
        workspace = auth.current_workspace()
        profile_id = await resolve_subject(self.peers, workspace, profile_ref_arg("subject", request.subject))
        answer = await self.app.history.history(workspace, profile_id)
        answer.requests.extend(
            await self.app.requests.of_subjects(workspace, list({answer.profile_id, profile_id}))
        )
        return answer


def registrations(application: ConsentApplication, peers: Peers) -> Sequence[ServiceRegistration]:
    return (
        typed_registration(CONSENT, pb, ConsentServicer(application, peers), CONSENT_SCOPES),
        typed_registration(AUDIT, pb, AuditServicer(application, peers), AUDIT_SCOPES),
    )
