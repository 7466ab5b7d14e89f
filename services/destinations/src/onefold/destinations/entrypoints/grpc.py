"""gRPC servicers of the destinations service: onefold.destinations.v1.DestinationsService and the
data-subject contract, thin adapters to the application (requests bounded and translated)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import grpc

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.contracts.destinations.v1 import destinations_pb2_grpc
from onefold.destinations.application import DestinationsApplication
from onefold.platform import auth, data_subject
from onefold.platform.errors import InvalidArgument
from onefold.platform.grpc_server import ServiceRegistration, typed_registration
from onefold.platform.validation import bounded_text

SERVICE = pb.DESCRIPTOR.services_by_name["DestinationsService"]
SCOPES = {
    **dict.fromkeys(
        ("GetDestination", "ListDestinations", "DestinationsStatus", "ListDeadLetters"), "destinations:read"
    ),
    **dict.fromkeys(
        ("ApplyDestinations", "SetDestinationStatus", "Replay", "SigningSecret"), "destinations:write"
    ),
}
MAX_NAME_CHARS = 64
MAX_PER_APPLY = 200


class DestinationsServicer(destinations_pb2_grpc.DestinationsServiceServicer):
    def __init__(self, application: DestinationsApplication) -> None:
        self.app = application

    async def ApplyDestinations(
        self, request: pb.ApplyDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyDestinationsResponse:
        if len(request.destinations) > MAX_PER_APPLY:
            raise InvalidArgument(
                f"at most {MAX_PER_APPLY} destinations per request",
                violations=[("destinations", f"{len(request.destinations)} given")],
            )
        return await self.app.apply(
            auth.current_workspace(),
            list(request.destinations),
            auth.current_credential_id(),
            dry_run=request.dry_run,
        )

    async def GetDestination(
        self, request: pb.GetDestinationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Destination:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        return await self.app.destinations.get(auth.current_workspace(), name)

    async def ListDestinations(
        self, request: pb.ListDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDestinationsResponse:
        found = await self.app.destinations.listed(auth.current_workspace(), request.include_archived)
        return pb.ListDestinationsResponse(destinations=found)

    async def SetDestinationStatus(
        self, request: pb.SetDestinationStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.Destination:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        return await self.app.set_status(
            auth.current_workspace(), name, request.status, auth.current_credential_id()
        )

    async def DestinationsStatus(
        self, request: pb.DestinationsStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.DestinationsStatusResponse:
        return await self.app.queries.status(auth.current_workspace(), request.name[:MAX_NAME_CHARS])

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        return await self.app.queries.dead_letters(auth.current_workspace(), name, request.page)

    async def Replay(self, request: pb.ReplayRequest, context: grpc.aio.ServicerContext) -> pb.ReplayResponse:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        queued = await self.app.replay(
            auth.current_workspace(),
            name,
            auth.current_credential_id(),
            since=request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None,
            until=request.until.ToDatetime(tzinfo=UTC) if request.HasField("until") else None,
            dead_letters=request.dead_letters,
        )
        return pb.ReplayResponse(queued=queued)

    async def SigningSecret(
        self, request: pb.SigningSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.SigningSecretResponse:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        secret = await self.app.destinations.secret(
            auth.current_workspace(), name, auth.current_credential_id(), rotate=request.rotate
        )
        return pb.SigningSecretResponse(secret=secret)


def registrations(application: DestinationsApplication) -> Sequence[ServiceRegistration]:
    # What destinations holds about a person is keyed by profile id.
    return (
        typed_registration(SERVICE, pb, DestinationsServicer(application), SCOPES),
        data_subject.registration(data_subject.ByProfileServicer(application)),
    )
