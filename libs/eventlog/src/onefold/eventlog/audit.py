"""onefold.eventlog.v1.EventLogService: every event-sourced service answers for its own log.

`Verify` re-hashes the whole chain, checks it against the digests recorded earlier and against the
hashes the caller brings from the witnesses (the witness stream, downstream services' consumed
heads: `onefold audit verify` reads them from NATS), and names the first position that is wrong
and the witness it disagrees with; `Head` gives the current head. Both answer for the whole
installation's log (every workspace's events), so they need `installation:admin` — held by the
bootstrap admin and service credentials, never implied by one workspace's `admin` or `audit:read`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc

from onefold.contracts.eventlog.v1 import eventlog_pb2 as pb
from onefold.eventlog.models import ChainDigest, VerifyResult
from onefold.eventlog.store import EventStore
from onefold.platform.auth import INSTALLATION_ADMIN
from onefold.platform.grpc_server import ServiceRegistration, typed_registration

SERVICE = pb.DESCRIPTOR.services_by_name["EventLogService"]
SCOPES = {"Verify": INSTALLATION_ADMIN, "Head": INSTALLATION_ADMIN, "Lag": INSTALLATION_ADMIN}
MAX_EXPECTED = 100_000


def verify_response(service: str, result: VerifyResult, *, digests_checked: int) -> pb.VerifyResponse:
    """A verification's answer, as the Verify RPC and `onefold audit verify --database` give it."""
    answer = pb.VerifyResponse(
        service=service,
        ok=result.ok,
        events_checked=result.events_checked,
        head_position=result.head.position,
        head_hash=result.head.hash,
        first_bad_position=result.first_bad_position or 0,
        problem=result.problem,
        digests_checked=digests_checked,
        witness=result.witness,
    )
    answer.verified_at.FromDatetime(datetime.now(UTC))
    return answer


BacklogProbe = Callable[[], Awaitable[pb.LagResponse]]


class EventLogServicer:
    def __init__(self, store: EventStore, service: str, backlog: BacklogProbe) -> None:
        self.store = store
        self.service = service
        self.backlog = backlog

    def _verify(self, witnessed: list[ChainDigest]) -> pb.VerifyResponse:
        # The witnesses first: where they and the local table disagree, the witness is named.
        digests = [*witnessed, *self.store.recorded_digests()]
        result = self.store.verify(expected=digests)
        return verify_response(self.service, result, digests_checked=len(digests))

    async def Verify(self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext) -> pb.VerifyResponse:
        if len(request.expected) > MAX_EXPECTED:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_EXPECTED} expected hashes per call"
            )
        witnessed = [ChainDigest(w.position, w.hash, w.witness[:200]) for w in request.expected]
        return await asyncio.to_thread(self._verify, witnessed)

    async def Head(self, request: pb.HeadRequest, context: grpc.aio.ServicerContext) -> pb.HeadResponse:
        digest = await asyncio.to_thread(self.store.head_digest)
        return pb.HeadResponse(service=self.service, position=digest.position, hash=digest.hash)

    async def Lag(self, request: pb.LagRequest, context: grpc.aio.ServicerContext) -> pb.LagResponse:
        return await self.backlog()


def registration(store: EventStore, service: str, backlog: BacklogProbe) -> ServiceRegistration:
    return typed_registration(SERVICE, pb, EventLogServicer(store, service, backlog), SCOPES)
