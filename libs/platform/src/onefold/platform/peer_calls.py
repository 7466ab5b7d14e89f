"""The calls services make of consent and segments on a person's behalf, written once: consent
checks in consent's batches, the purposes and live segments a definition may name, and a page of a
segment's members. Through `Peers`, with the service credential acting for the workspace; they fail
fast and raise gRPC's errors, and a service with no address configured raises Unavailable (so
nothing is ever done unchecked)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from onefold.contracts.common.v1 import pagination_pb2
from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.segments.v1 import segments_pb2, segments_pb2_grpc
from onefold.platform.client import Peers
from onefold.platform.errors import Unavailable

# CheckConsentBatch takes this many checks per call (consent's own bound).
CHECKS_PER_CALL = 500
MEMBERS_PER_PAGE = 1000


@dataclass(frozen=True)
class ConsentCheck:
    profile_id: str
    purpose: str
    channel: str = ""  # consent's channel name ("email", "sms", …); "" = the purpose itself


@dataclass(frozen=True)
class Nameable:
    """What a definition may name outside its own service."""

    purposes: frozenset[str]  # the workspace's consent purposes (none without a consent model)
    segments: frozenset[str]  # its live segments


class PeerCalls:
    def __init__(self, peers: Peers, caller: str, call_timeout_seconds: float) -> None:
        self.peers = peers
        self.caller = caller  # the calling service, named when a peer has no address
        self.timeout = call_timeout_seconds

    def _channel(self, service: str) -> grpc.aio.Channel:
        channel = self.peers.channel(service)
        if channel is None:
            raise Unavailable(f"{self.caller} has no address of {service} (peers.{service})")
        return channel

    async def check_consent(
        self, workspace: str, checks: Sequence[ConsentCheck]
    ) -> list[consent_pb2.CheckConsentResponse]:
        """One answer per check, in order (CHECKS_PER_CALL a call, the calls at once: consent
        answers one while the next is built and sent)."""
        stub = consent_pb2_grpc.ConsentServiceStub(self._channel("consent"))
        metadata = self.peers.acting_for(workspace)
        calls = [
            stub.CheckConsentBatch(
                consent_pb2.CheckConsentBatchRequest(
                    checks=[
                        consent_pb2.CheckConsentRequest(
                            subject=identity_pb2.ProfileRef(profile_id=c.profile_id),
                            purpose_id=c.purpose,
                            channel=c.channel,
                        )
                        for c in checks[start : start + CHECKS_PER_CALL]
                    ]
                ),
                metadata=metadata,
                timeout=self.timeout,
            )
            for start in range(0, len(checks), CHECKS_PER_CALL)
        ]
        # Every call finishes before one's error is raised: none is left running unread.
        answers: list[consent_pb2.CheckConsentResponse] = []
        for response in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(response, BaseException):
                raise response
            answers.extend(response.results)
        return answers

    async def nameable(self, workspace: str, what: str) -> Nameable:
        """The workspace's consent purposes and live segments, which `what` ("the journey", …) may
        name; Unavailable, saying so, when either service cannot answer."""
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
                f"cannot check what {what} names: consent or segments answered {exc.code().name}"
            ) from None
        return Nameable(
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
