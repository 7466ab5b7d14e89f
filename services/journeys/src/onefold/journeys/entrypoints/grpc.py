"""gRPC servicers of the journeys service: onefold.journeys.v1.JourneysService and the data-subject
contract, thin adapters to the application (requests bounded and translated, answers translated)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.journeys.v1 import journeys_pb2_grpc
from onefold.journeys.application import JourneysApplication
from onefold.platform import auth, data_subject
from onefold.platform.errors import InvalidArgument
from onefold.platform.grpc_server import ServiceRegistration, typed_registration
from onefold.platform.validation import bounded_text

SERVICE = pb.DESCRIPTOR.services_by_name["JourneysService"]
SCOPES = {
    **dict.fromkeys(
        ("GetJourney", "ListJourneys", "GetInstance", "InstanceHistory", "ListTemplates", "JourneyStats"),
        "journeys:read",
    ),
    **dict.fromkeys(
        ("ApplyJourneys", "PublishJourney", "PauseJourney", "ArchiveJourney", "EnterJourney"),
        "journeys:write",
    ),
}
MAX_NAME_CHARS = 64
MAX_ID_CHARS = 128
MAX_ENTITY_KEY_CHARS = 200
MAX_PER_APPLY = 200


def _bounded_count(field: str, given: int) -> None:
    if given > MAX_PER_APPLY:
        raise InvalidArgument(
            f"at most {MAX_PER_APPLY} {field} per request", violations=[(field, f"{given} given")]
        )


class JourneysServicer(journeys_pb2_grpc.JourneysServiceServicer):
    def __init__(self, application: JourneysApplication) -> None:
        self.app = application

    async def ApplyJourneys(
        self, request: pb.ApplyJourneysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyJourneysResponse:
        _bounded_count("journeys", len(request.journeys))
        _bounded_count("templates", len(request.templates))
        applied = await self.app.journeys.apply(
            auth.current_workspace(),
            list(request.journeys),
            list(request.templates),
            auth.current_credential_id(),
            publish=request.publish,
            dry_run=request.dry_run,
        )
        self.app.published()
        return applied

    async def GetJourney(
        self, request: pb.GetJourneyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Journey:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        return await self.app.journeys.get(auth.current_workspace(), name, request.version)

    async def ListJourneys(
        self, request: pb.ListJourneysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJourneysResponse:
        found = await self.app.journeys.listed(auth.current_workspace(), request.include_archived)
        return pb.ListJourneysResponse(journeys=found)

    async def PublishJourney(
        self, request: pb.PublishJourneyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Journey:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        published = await self.app.journeys.publish(
            auth.current_workspace(), name, request.version, auth.current_credential_id()
        )
        self.app.published()
        return published

    async def PauseJourney(
        self, request: pb.PauseJourneyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Journey:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        return await self.app.journeys.pause(auth.current_workspace(), name, auth.current_credential_id())

    async def ArchiveJourney(
        self, request: pb.ArchiveJourneyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Journey:
        name = bounded_text("name", request.name, MAX_NAME_CHARS)
        return await self.app.archive(auth.current_workspace(), name, auth.current_credential_id())

    async def EnterJourney(
        self, request: pb.EnterJourneyRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnterJourneyResponse:
        return await self.app.runs.enter_by_api(
            auth.current_workspace(),
            bounded_text("journey", request.journey, MAX_NAME_CHARS),
            bounded_text("profile_id", request.profile_id, MAX_ID_CHARS),
            request.entity_key[:MAX_ENTITY_KEY_CHARS],
            MessageToDict(request.properties),
        )

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Instance:
        return await self.app.queries.instance(
            auth.current_workspace(),
            bounded_text("journey", request.journey, MAX_NAME_CHARS),
            bounded_text("profile_id", request.profile_id, MAX_ID_CHARS),
            request.entity_key[:MAX_ENTITY_KEY_CHARS],
        )

    async def InstanceHistory(
        self, request: pb.InstanceHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.InstanceHistoryResponse:
        return await self.app.queries.history(
            auth.current_workspace(),
            bounded_text("journey", request.journey, MAX_NAME_CHARS),
            bounded_text("profile_id", request.profile_id, MAX_ID_CHARS),
            request.entity_key[:MAX_ENTITY_KEY_CHARS],
        )

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTemplatesResponse:
        return pb.ListTemplatesResponse(
            templates=await self.app.journeys.listed_templates(auth.current_workspace())
        )

    async def JourneyStats(
        self, request: pb.JourneyStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.JourneyStatsResponse:
        name = bounded_text("journey", request.journey, MAX_NAME_CHARS)
        return await self.app.queries.stats(auth.current_workspace(), name, request.version)


def registrations(application: JourneysApplication) -> Sequence[ServiceRegistration]:
    # What journeys holds about a person is keyed by profile id.
    return (
        typed_registration(SERVICE, pb, JourneysServicer(application), SCOPES),
        data_subject.registration(data_subject.ByProfileServicer(application)),
    )
