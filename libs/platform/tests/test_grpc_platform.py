"""The platform interceptor, through a real grpc.aio server and a real credential store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from onefold.contracts.platform.v1 import platform_pb2, platform_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.platform.config import ConfigError, GrpcSettings
from onefold.platform.errors import InvalidArgument, details_of
from onefold.platform.grpc_server import GrpcServer, ServiceRegistration
from onefold.platform.service import platform_registration

ECHO = "onefold.test.v1.EchoService"


class _SlowCalls:
    """`Slow` calls hold until released: a test fills the server without guessing at timing."""

    def __init__(self) -> None:
        self.entered = 0
        self.released = asyncio.Event()


SLOW_CALLS = _SlowCalls()


def _echo_registration() -> ServiceRegistration:
    async def write(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def invalid(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise InvalidArgument("the email is not valid", violations=[("traits.email", "must contain '@'")])

    async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("secret internals")

    async def unlisted(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"admin only"

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        SLOW_CALLS.entered += 1
        await SLOW_CALLS.released.wait()
        return request

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in {
            "Write": write,
            "Invalid": invalid,
            "Crash": crash,
            "Unlisted": unlisted,
            "Slow": slow,
        }.items()
    }
    return ServiceRegistration(
        full_name=ECHO,
        register=lambda server: server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(ECHO, handlers)]
        ),
        scopes={"Write": "consent:write", "Invalid": "", "Crash": "", "Slow": ""},
    )


@pytest.fixture
async def server(credential_store: CredentialStore) -> AsyncIterator[GrpcServer]:
    srv = GrpcServer(
        "test",
        GrpcSettings(port=0, grace_seconds=0.5),
        credential_store,
        [platform_registration("test", "0.0.0"), _echo_registration()],
    )
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


def bearer(token: str, **extra: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}"), *extra.items()]


async def _call(channel: grpc.aio.Channel, method: str, token: str | None, body: bytes = b"x") -> bytes:
    call = channel.unary_unary(f"/{ECHO}/{method}")
    return await call(body, metadata=bearer(token) if token else None)


async def test_no_credential_is_unauthenticated_with_a_clear_message(channel: grpc.aio.Channel) -> None:
    stub = platform_pb2_grpc.PlatformServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WhoAmI(platform_pb2.WhoAmIRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "needs a credential" in caught.value.details()
    assert details_of(caught.value)[0] == "CREDENTIAL_MISSING"


@pytest.mark.parametrize(
    "header", ["Bearer ofk_0123456789abcdef_" + "x" * 43, "Bearer garbage", "Basic abc", "Bearer "]
)
async def test_unknown_or_malformed_credentials_are_unauthenticated(
    channel: grpc.aio.Channel, header: str
) -> None:
    stub = platform_pb2_grpc.PlatformServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WhoAmI(platform_pb2.WhoAmIRequest(), metadata=[("authorization", header)])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_valid_credential_sees_its_own_workspace(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    issued = credential_store.issue("acme", ["profiles:read"])
    reply = await platform_pb2_grpc.PlatformServiceStub(channel).WhoAmI(
        platform_pb2.WhoAmIRequest(workspace="acme"), metadata=bearer(issued.token)
    )
    assert (reply.workspace, list(reply.scopes), reply.service) == ("acme", ["profiles:read"], "test")


async def test_another_workspaces_credential_is_permission_denied(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    other = credential_store.issue("globex", ["admin"])
    stub = platform_pb2_grpc.PlatformServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as in_body:
        await stub.WhoAmI(platform_pb2.WhoAmIRequest(workspace="acme"), metadata=bearer(other.token))
    assert in_body.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "belongs to workspace 'globex'" in in_body.value.details()
    assert details_of(in_body.value)[0] == "WORKSPACE_MISMATCH"
    with pytest.raises(grpc.aio.AioRpcError) as in_header:
        await stub.WhoAmI(
            platform_pb2.WhoAmIRequest(), metadata=bearer(other.token, **{"x-onefold-workspace": "acme"})
        )
    assert in_header.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_scope_is_enforced_and_admin_implies_it(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    reader = credential_store.issue("acme", ["consent:read"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Write", reader.token)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks the 'consent:write' scope" in caught.value.details()
    writer = credential_store.issue("acme", ["consent:write"])
    assert await _call(channel, "Write", writer.token, b"hello") == b"hello"
    admin = credential_store.issue("acme", ["admin"])
    assert await _call(channel, "Write", admin.token, b"hi") == b"hi"


async def test_methods_without_a_declared_scope_need_admin(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    writer = credential_store.issue("acme", ["consent:write", "profiles:read"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Unlisted", writer.token)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = credential_store.issue("acme", ["admin"])
    assert await _call(channel, "Unlisted", admin.token) == b"admin only"


async def test_revoked_credential_is_refused(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    issued = credential_store.issue("acme", ["admin"])
    assert await _call(channel, "Write", issued.token) == b"x"
    credential_store.revoke(issued.id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Write", issued.token)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in caught.value.details()


async def test_service_credentials_act_for_the_named_workspace(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    service = credential_store.issue("*", ["service"])
    stub = platform_pb2_grpc.PlatformServiceStub(channel)
    reply = await stub.WhoAmI(
        platform_pb2.WhoAmIRequest(), metadata=bearer(service.token, **{"x-onefold-workspace": "acme"})
    )
    assert reply.workspace == "acme"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WhoAmI(platform_pb2.WhoAmIRequest(), metadata=bearer(service.token))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # must say which workspace


async def test_errors_carry_google_rpc_details(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    token = credential_store.issue("acme", ["profiles:read"]).token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Invalid", token)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the email is not valid"
    assert details_of(caught.value) == ("VALIDATION_FAILED", [("traits.email", "must contain '@'")])


async def test_unexpected_exceptions_become_internal_without_leaking(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    token = credential_store.issue("acme", ["profiles:read"]).token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Crash", token)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in caught.value.details()
    assert "reference" in caught.value.details()


async def test_health_and_reflection_need_no_credential(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reply = await health.Check(health_pb2.HealthCheckRequest(service="onefold.platform.v1.PlatformService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"onefold.platform.v1.PlatformService", ECHO, "grpc.health.v1.Health"} <= names


async def test_shutdown_reports_not_serving_first(credential_store: CredentialStore) -> None:
    srv = GrpcServer("test", GrpcSettings(port=0, grace_seconds=1.0), credential_store, [])
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await srv.set_serving(False)
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    await srv.stop()


async def test_port_in_use_is_a_config_error(server: GrpcServer, credential_store: CredentialStore) -> None:
    clash = GrpcServer("test", GrpcSettings(port=server.port), credential_store, [])
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        await clash.start()


async def test_rpc_metrics_count_calls_by_outcome(
    channel: grpc.aio.Channel, credential_store: CredentialStore
) -> None:
    from prometheus_client import REGISTRY

    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "onefold_rpc_requests_total", {"service": "test", "method": f"/{ECHO}/Write", "code": code}
        )
        return value or 0.0

    ok_before, denied_before = count("OK"), count("UNAUTHENTICATED")
    token = credential_store.issue("acme", ["consent:write"]).token
    await _call(channel, "Write", token)
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(channel, "Write", None)
    assert (count("OK"), count("UNAUTHENTICATED")) == (ok_before + 1, denied_before + 1)


async def test_authenticated_channel_carries_credential_and_workspace(
    server: GrpcServer, credential_store: CredentialStore
) -> None:
    from onefold.platform.client import authenticated_channel

    service = credential_store.issue("*", ["service"])
    async with authenticated_channel(f"127.0.0.1:{server.port}", service.token, workspace="acme") as ch:
        reply = await platform_pb2_grpc.PlatformServiceStub(ch).WhoAmI(platform_pb2.WhoAmIRequest())
    assert reply.workspace == "acme"


async def test_calls_beyond_the_concurrency_bound_are_refused_at_once(
    credential_store: CredentialStore,
) -> None:
    global SLOW_CALLS
    SLOW_CALLS = _SlowCalls()
    srv = GrpcServer(
        "test", GrpcSettings(port=0, max_concurrent_rpcs=2), credential_store, [_echo_registration()]
    )
    await srv.start()
    try:
        token = credential_store.issue("acme", ["consent:write"]).token  # Write would be answered
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            busy = [asyncio.create_task(_call(ch, "Slow", token, b"held")) for _ in range(2)]
            async with asyncio.timeout(30):
                while SLOW_CALLS.entered < 2:
                    await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _call(ch, "Write", token, b"one too many")
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            SLOW_CALLS.released.set()
            assert await asyncio.gather(*busy) == [b"held", b"held"]
            assert await _call(ch, "Slow", token, b"room again") == b"room again"
    finally:
        await srv.stop()
