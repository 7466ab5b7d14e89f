"""Naming the data subject: a ProfileRef by profile id is taken as is; by identifier it is resolved
through the identity service (which owns identifiers), with this service's own credential."""

from __future__ import annotations

import grpc

from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.platform.client import Peers
from onefold.platform.errors import InvalidArgument, NotFound, Unavailable

RESOLVE_TIMEOUT_SECONDS = 5.0


async def resolve_subject(
    peers: Peers, workspace: str, ref: identity_pb2.ProfileRef, field: str = "subject"
) -> str:
    which = ref.WhichOneof("ref")
    if which == "profile_id":
        return ref.profile_id
    if which != "identifier":
        raise InvalidArgument(
            f"name the {field} by profile_id or identifier", violations=[(field, "required")]
        )
    channel = peers.channel("identity")
    if channel is None:
        raise Unavailable(
            "subjects named by identifier are resolved by the identity service, which is not configured "
            "here (peers.identity); name the subject by profile_id"
        )
    try:
        answer = await identity_pb2_grpc.IdentityServiceStub(channel).Resolve(
            identity_pb2.ResolveRequest(identifier=ref.identifier),
            metadata=peers.acting_for(workspace),
            timeout=RESOLVE_TIMEOUT_SECONDS,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgument(
                f"{field}.identifier: {error.details()}", violations=[(f"{field}.identifier", "invalid")]
            ) from None
        raise Unavailable(f"the identity service could not resolve the subject: {error.details()}") from None
    if not answer.found:
        raise NotFound(f"no profile has that {answer.normalised.type or ref.identifier.type}")
    return answer.profile_id
