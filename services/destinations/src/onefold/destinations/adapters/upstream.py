"""Destinations' typed clients of the services it asks: consent (CheckConsentBatch before every
delivery, the purposes a destination may name) and segments (the segments it may name, and their
members when a destination starts naming one). Calls go
through `Peers` with the service credential, acting for the workspace; they fail fast and raise
gRPC's errors; a service with no address configured raises Unavailable (nothing is delivered
unchecked)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from onefold.contracts.common.v1 import pagination_pb2
from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.segments.v1 import segments_pb2, segments_pb2_grpc
from onefold.destinations.domain.definitions import Known
from onefold.platform.client import Peers
from onefold.platform.errors import Unavailable

# CheckConsentBatch takes this many checks per call (consent's own bound).
CHECKS_PER_CALL = 500
MEMBERS_PER_PAGE = 1000


@dataclass(frozen=True)
class ConsentCheck:
    profile_id: str
    purpose: str


class Upstream:
    def __init__(self, peers: Peers, call_timeout_seconds: float) -> None:
        self.peers = peers
        self.timeout = call_timeout_seconds

    def _channel(self, service: str) -> grpc.aio.Channel:
        channel = self.peers.channel(service)
        if channel is None:
            raise Unavailable(f"destinations has no address of {service} (peers.{service})")
        return channel

    async def check_consent(
        self, workspace: str, checks: Sequence[ConsentCheck]
    ) -> list[consent_pb2.CheckConsentResponse]:
        """One answer per check, in order (CHECKS_PER_CALL a call); a destination is no channel, so
        each check is of the purpose itself (channel "")."""
        stub = consent_pb2_grpc.ConsentServiceStub(self._channel("consent"))
        answers: list[consent_pb2.CheckConsentResponse] = []
        for start in range(0, len(checks), CHECKS_PER_CALL):
            request = consent_pb2.CheckConsentBatchRequest(
                checks=[
                    consent_pb2.CheckConsentRequest(
                        subject=identity_pb2.ProfileRef(profile_id=c.profile_id), purpose_id=c.purpose
                    )
                    for c in checks[start : start + CHECKS_PER_CALL]
                ]
            )
            response = await stub.CheckConsentBatch(
                request, metadata=self.peers.acting_for(workspace), timeout=self.timeout
            )
            answers.extend(response.results)
        return answers

    async def known(self, workspace: str) -> Known:
        """The workspace's consent purposes and live segments, which a destination may name."""
        metadata = self.peers.acting_for(workspace)
        consent = consent_pb2_grpc.ConsentServiceStub(self._channel("consent"))
        segments = segments_pb2_grpc.SegmentsServiceStub(self._channel("segments"))
        try:
            try:
                model = await consent.GetModel(
                    consent_pb2.GetModelRequest(), metadata=metadata, timeout=self.timeout
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                model = consent_pb2.ConsentModel()
            listed = await segments.ListDefinitions(
                segments_pb2.ListDefinitionsRequest(), metadata=metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"cannot check what the destination names: consent or segments answered {exc.code().name}"
            ) from None
        return Known(
            purposes=frozenset(p.purpose_id for p in model.purposes),
            segments=frozenset(d.name for d in listed.definitions if d.WhichOneof("kind") == "segment"),
        )

    async def members_page(self, workspace: str, segment: str, page_token: str) -> tuple[list[str], str]:
        """One page of the profile ids in `segment` now, and the next page's token ("" at the end)."""
        stub = segments_pb2_grpc.SegmentsServiceStub(self._channel("segments"))
        page = await stub.ListMembers(
            segments_pb2.ListMembersRequest(
                segment=segment,
                page=pagination_pb2.PageRequest(page_size=MEMBERS_PER_PAGE, page_token=page_token),
            ),
            metadata=self.peers.acting_for(workspace),
            timeout=self.timeout,
        )
        return list(page.profile_ids), page.page.next_page_token
