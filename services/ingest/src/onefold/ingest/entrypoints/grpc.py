"""gRPC servicer of the ingest service: onefold.ingest.v1.IngestService, a thin adapter to the
application. Callers authenticate with platform credentials (bearer); collection calls name the
source in the request, and the source must belong to the caller's workspace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import grpc

from onefold.contracts.common.v1 import pagination_pb2
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc
from onefold.ingest.application import IngestApplication, Source, source_to_proto
from onefold.ingest.domain import (
    CallType,
    PayloadTooLarge,
    parse_batch_request,
    parse_tracking_event,
    raise_if_undeliverable,
)
from onefold.ingest.entrypoints.data_subject import IngestDataSubjectServicer
from onefold.platform import auth, data_subject
from onefold.platform.errors import InvalidArgument, ResourceExhausted
from onefold.platform.grpc_server import ServiceRegistration, typed_registration

SERVICE = pb.DESCRIPTOR.services_by_name["IngestService"]
COLLECT = "ingest:write"
SCOPES = {
    **dict.fromkeys(("Track", "Identify", "Page", "Screen", "Group", "Alias", "Batch", "Upload"), COLLECT),
    "ListQuarantined": "audit:read",  # quarantined events hold personal data: a reader's scope
    "ReplayQuarantined": COLLECT,
    **dict.fromkeys(
        ("CreateSource", "GetSource", "ListSources", "RotateWriteKey", "SetTrackingPlan", "DisableSource"),
        "admin",
    ),
}
MAX_UPLOAD_WAIT_SECONDS = 5.0  # an Upload stream waits out its rate limit instead of failing


def _counts(acks: Sequence[pb.EventAck]) -> tuple[int, int, int]:
    accepted = duplicates = quarantined = 0
    for answer in acks:
        if answer.status == pb.ACK_STATUS_ACCEPTED:
            accepted += 1
        elif answer.status == pb.ACK_STATUS_DUPLICATE:
            duplicates += 1
        else:
            quarantined += 1
    return accepted, duplicates, quarantined


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, application: IngestApplication) -> None:
        self.app = application

    # ---------------------------------------------------------------------------- collection

    def _source(self, source_id: str) -> Source:
        return self.app.collecting_source(auth.current_workspace(), source_id)

    async def _single(self, event: pb.TrackingEvent, source_id: str, call: CallType) -> pb.EventAck:
        source = self._source(source_id or event.source_id)
        size = event.ByteSize()
        if size > source.limits.max_event_bytes:
            raise PayloadTooLarge(
                f"the event is {size} bytes; the limit is {source.limits.max_event_bytes} bytes",
                violations=[("event", f"must be at most {source.limits.max_event_bytes} bytes")],
            )
        self.app.check_rate(source, 1)
        intake = parse_tracking_event(
            event, call=call, received_at=self.app.clock(), source_id=source.source_id, limits=source.limits
        )
        raise_if_undeliverable([intake], prefix_batch=False, prefix="event")
        return (await self.app.submit(source, [intake]))[0]

    async def Track(self, request: pb.TrackRequest, context: grpc.aio.ServicerContext) -> pb.EventAck:
        return await self._single(request.event, request.source_id, CallType.TRACK)

    async def Identify(self, request: pb.IdentifyRequest, context: grpc.aio.ServicerContext) -> pb.EventAck:
        return await self._single(request.event, request.source_id, CallType.IDENTIFY)

    async def Page(self, request: pb.PageRequest, context: grpc.aio.ServicerContext) -> pb.EventAck:
        return await self._single(request.event, request.source_id, CallType.PAGE)

    async def Screen(self, request: pb.ScreenRequest, context: grpc.aio.ServicerContext) -> pb.EventAck:
        return await self._single(request.event, request.source_id, CallType.SCREEN)

    async def Group(self, request: pb.GroupRequest, context: grpc.aio.ServicerContext) -> pb.EventAck:
        return await self._single(request.event, request.source_id, CallType.GROUP)

    async def Alias(self, request: pb.AliasRequest, context: grpc.aio.ServicerContext) -> pb.EventAck:
        return await self._single(request.event, request.source_id, CallType.ALIAS)

    async def Batch(self, request: pb.BatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchResponse:
        source = self._source(request.source_id)
        parsed = parse_batch_request(
            request, received_at=self.app.clock(), source_id=source.source_id, limits=source.limits
        )
        self.app.check_rate(source, len(parsed.intakes))
        acks = await self.app.submit(source, parsed.intakes)
        accepted, duplicates, quarantined = _counts(acks)
        return pb.BatchResponse(
            results=acks, accepted=accepted, duplicates=duplicates, quarantined=quarantined
        )

    async def Upload(
        self, request_iterator: AsyncIterator[pb.BatchRequest], context: grpc.aio.ServicerContext
    ) -> pb.UploadResponse:
        response = pb.UploadResponse()
        source: Source | None = None
        index = 0
        async for batch in request_iterator:
            if source is None:
                source = self._source(batch.source_id)
            elif batch.source_id and batch.source_id != source.source_id:
                raise InvalidArgument(
                    "every message of an upload must name the same source",
                    violations=[("source_id", f"the stream started with '{source.source_id}'")],
                )
            parsed = parse_batch_request(
                batch,
                received_at=self.app.clock(),
                source_id=source.source_id,
                limits=source.limits,
                first_index=index,
            )
            await self._wait_for_rate(source, len(parsed.intakes))
            acks = await self.app.submit(source, parsed.intakes)
            index += len(parsed.intakes)
            accepted, duplicates, quarantined = _counts(acks)
            response.accepted += accepted
            response.duplicates += duplicates
            response.quarantined += quarantined
            response.not_accepted.extend(
                answer for answer in acks if answer.status != pb.ACK_STATUS_ACCEPTED or answer.reasons
            )
        return response

    async def _wait_for_rate(self, source: Source, events: int) -> None:
        """Bulk uploads are paced by the rate limit (back-pressure) rather than refused mid-stream."""
        waited = 0.0
        while True:
            try:
                self.app.check_rate(source, events)
                return
            except ResourceExhausted as limited:
                delay = min(limited.retry_after_seconds or 0.1, 1.0)
                if waited + delay > MAX_UPLOAD_WAIT_SECONDS:
                    raise
                waited += delay
                await asyncio.sleep(delay)

    # ---------------------------------------------------------------------------- quarantine

    async def ListQuarantined(
        self, request: pb.ListQuarantinedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQuarantinedResponse:
        events, next_token = await self.app.list_quarantined(
            auth.current_workspace(),
            source_id=request.source_id,
            kind=request.kind,
            include_replayed=request.include_replayed,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return pb.ListQuarantinedResponse(
            events=events, page=pagination_pb2.PageResponse(next_page_token=next_token)
        )

    async def ReplayQuarantined(
        self, request: pb.ReplayQuarantinedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReplayQuarantinedResponse:
        results = await self.app.replay_quarantined(
            auth.current_workspace(),
            quarantine_ids=list(request.quarantine_ids),
            source_id=request.source_id,
            kind=request.kind,
            dry_run=request.dry_run,
        )
        return pb.ReplayQuarantinedResponse(results=results)

    # ------------------------------------------------------------------------------- sources

    async def CreateSource(
        self, request: pb.CreateSourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSourceResponse:
        workspace = auth.require_workspace(request.workspace)
        source, write_key = await self.app.create_source(
            workspace,
            request.name,
            tracking_plan=request.tracking_plan if request.HasField("tracking_plan") else None,
            rate_limit_per_second=request.rate_limit_per_second,
        )
        return pb.CreateSourceResponse(source=source_to_proto(source), write_key=write_key)

    async def GetSource(self, request: pb.GetSourceRequest, context: grpc.aio.ServicerContext) -> pb.Source:
        return source_to_proto(self.app.source(auth.current_workspace(), request.source_id))

    async def ListSources(
        self, request: pb.ListSourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSourcesResponse:
        found, next_token = await self.app.list_sources(
            auth.require_workspace(request.workspace),
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return pb.ListSourcesResponse(
            sources=[source_to_proto(source) for source in found],
            page=pagination_pb2.PageResponse(next_page_token=next_token),
        )

    async def RotateWriteKey(
        self, request: pb.RotateWriteKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateWriteKeyResponse:
        source, write_key = await self.app.rotate_write_key(
            auth.current_workspace(), request.source_id, grace=timedelta(seconds=request.grace_seconds)
        )
        return pb.RotateWriteKeyResponse(source=source_to_proto(source), write_key=write_key)

    async def SetTrackingPlan(
        self, request: pb.SetTrackingPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.Source:
        if not request.HasField("tracking_plan"):
            raise InvalidArgument(
                "a tracking plan is required", violations=[("tracking_plan", "is required")]
            )
        source = await self.app.set_tracking_plan(
            auth.current_workspace(), request.source_id, request.tracking_plan
        )
        return source_to_proto(source)

    async def DisableSource(
        self, request: pb.DisableSourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Source:
        return source_to_proto(await self.app.disable_source(auth.current_workspace(), request.source_id))


def registrations(application: IngestApplication) -> Sequence[ServiceRegistration]:
    return (
        typed_registration(SERVICE, pb, IngestServicer(application), SCOPES),
        data_subject.registration(IngestDataSubjectServicer(application)),
    )
