"""The gRPC server every service runs: health, reflection, authentication, errors, tracing.

One interceptor wraps every RPC's behaviour (so ContextVars it sets are visible inside the handler's
own task): it extracts the trace context, authenticates the bearer credential, checks the workspace
named in `x-onefold-workspace` and the method's scope, then maps raised OnefoldErrors to gRPC status
codes with `google.rpc` details. Health checks and reflection are the only unauthenticated methods,
because Kubernetes probes carry no credentials. Every UNAUTHENTICATED / PERMISSION_DENIED answer is
logged (`auth.denied`, rate-limited, see auth.DenialLog).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace

from onefold.contracts.common.v1 import errors_pb2
from onefold.platform import auth
from onefold.platform.auth import CredentialStore
from onefold.platform.config import ConfigError, GrpcSettings
from onefold.platform.errors import InvalidArgument, OnefoldError, Unauthenticated
from onefold.platform.telemetry import RPC_DURATION, RPC_REQUESTS, extract_context, get_logger, tracer
from onefold.platform.validation import check_request

log = get_logger("onefold.grpc")

PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
AUTHENTICATED = ""  # scope marker: any valid credential
_DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass
class MethodPolicy:
    """Scope required per full method name (`/pkg.Service/Method`). Unlisted methods need `admin`."""

    scopes: dict[str, str] = field(default_factory=dict)

    def scope_for(self, method: str) -> str:
        return self.scopes.get(method, "admin")

    def update(self, service_full_name: str, scopes: Mapping[str, str]) -> None:
        for name, scope in scopes.items():
            self.scopes[f"/{service_full_name}/{name}"] = scope


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


class PlatformInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, store: CredentialStore, policy: MethodPolicy, service: str) -> None:
        self.store = store
        self.policy = policy
        self.service = service
        self._tracer = tracer(f"onefold.{service}.grpc")
        self.denials = auth.DenialLog("onefold.grpc")

    def log_denied(self, method: str, error: OnefoldError) -> None:
        """Record a refused call: reason, method and the caller's credential id when it was valid.

        Not the peer address (personal data) nor the message (it may echo request fields)."""
        principal = auth.current_principal_or_none()
        fields = {"credential_id": principal.credential_id} if principal else {}
        reason = errors_pb2.ErrorReason.Name(error.reason)
        self.denials.denied(reason, method, service=self.service, code=error.code.name, **fields)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        return _wrap(handler, method, self._guard)

    async def _authorise(self, method: str, context: grpc.aio.ServicerContext) -> None:
        metadata = _metadata(context)
        header = metadata.get("authorization", "")
        if not header:
            error = Unauthenticated(
                f"{method} needs a credential: send metadata 'authorization: Bearer <credential>'",
            )
            error.reason = errors_pb2.CREDENTIAL_MISSING
            raise error
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer <credential>'")
        token = token.strip()
        # A credential seen within the cache time is answered from memory: no thread hop (and no
        # wait for a free worker thread) on every call.
        principal = self.store.recently_authenticated(token)
        if principal is None:
            principal = await asyncio.to_thread(self.store.authenticate, token)
        auth.bind(principal, metadata.get(auth.WORKSPACE_HEADER))
        scope = self.policy.scope_for(method)
        if scope != AUTHENTICATED:
            auth.require_scope(scope)

    def _guard(self, method: str) -> _Guard:
        return _Guard(self, method)


class _Guard:
    """Per-call context: trace span, authorisation, error mapping."""

    def __init__(self, interceptor: PlatformInterceptor, method: str) -> None:
        self.interceptor = interceptor
        self.method = method

    async def run(self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        # A call is counted before its status is sent where the guard sends it (abort_with_status
        # sends it at once), so whoever saw the answer also sees it counted.
        counted = False
        parent = extract_context(_metadata(context))
        token = otel_context.attach(parent)
        try:
            with self.interceptor._tracer.start_as_current_span(
                self.method, kind=trace.SpanKind.SERVER, attributes={"rpc.system": "grpc"}
            ) as span:
                try:
                    await self.interceptor._authorise(self.method, context)
                    return await call()
                except OnefoldError as error:
                    code = error.code
                    span.set_attribute("rpc.grpc.status_code", error.code.value[0])
                    if code in _DENIED:
                        self.interceptor.log_denied(self.method, error)
                    self._count(code, started)
                    counted = True
                    await context.abort_with_status(rpc_status.to_status(error.to_status()))
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    code = context.code() or grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    if context.code() not in (None, grpc.StatusCode.OK):
                        code = context.code()
                        raise  # the handler already set a status via context.abort
                    code = grpc.StatusCode.INTERNAL
                    reference = uuid.uuid4().hex[:12]
                    span.record_exception(exc)
                    log.exception("rpc.internal_error", method=self.method, reference=reference)
                    internal = OnefoldError(
                        f"internal error while handling {self.method}; reference {reference} in the service log"
                    )
                    self._count(code, started)
                    counted = True
                    await context.abort_with_status(rpc_status.to_status(internal.to_status()))
        finally:
            otel_context.detach(token)
            if not counted:
                self._count(code, started)

    def _count(self, code: grpc.StatusCode, started: float) -> None:
        service = self.interceptor.service
        RPC_REQUESTS.labels(service, self.method, code.name).inc()
        RPC_DURATION.labels(service, self.method).observe(time.perf_counter() - started)


def _wrap(
    handler: grpc.RpcMethodHandler, method: str, guard_for: Callable[[str], _Guard]
) -> grpc.RpcMethodHandler:
    guard = guard_for(method)
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await guard.run(context, lambda: inner_uu(request, context))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await guard.run(context, lambda: inner_su(requests, context))

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    # Streaming responses: authorise under the guard, then stream, still mapping OnefoldErrors.
    inner_stream = handler.unary_stream or handler.stream_stream
    is_unary_request = handler.unary_stream is not None

    async def authorised() -> bool:
        return True

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await guard.run(context, authorised)
        try:
            async for item in inner_stream(request, context):
                yield item
        except OnefoldError as error:
            await context.abort_with_status(rpc_status.to_status(error.to_status()))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception("rpc.internal_error", method=method, reference=reference)
            internal = OnefoldError(
                f"internal error while handling {method}; reference {reference} in the service log"
            )
            await context.abort_with_status(rpc_status.to_status(internal.to_status()))

    factory = (
        grpc.unary_stream_rpc_method_handler if is_unary_request else grpc.stream_stream_rpc_method_handler
    )
    return factory(streaming, handler.request_deserializer, handler.response_serializer)


Registrar = Callable[[grpc.aio.Server], None]


@dataclass
class ServiceRegistration:
    """A servicer to add: the generated `add_*_to_server` call plus its full name and scopes."""

    full_name: str
    register: Registrar
    scopes: Mapping[str, str]


class _Malformed:
    """What a request that is not valid protobuf deserialises to (answered INVALID_ARGUMENT)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"the request is not a valid {self.type_name} message", violations=[("", "malformed protobuf")]
        )


def _deserializer(message_class: type[Message]) -> Callable[[bytes], Any]:
    """grpc's generated deserializer lets DecodeError escape as UNKNOWN with internals in the text."""
    parse = message_class.FromString
    malformed = _Malformed(message_class.DESCRIPTOR.full_name)

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RuntimeWarning, ValueError):
            return malformed

    return deserialize


def _checked_unary(behaviour: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            raise request.error()
        check_request(request)
        return await behaviour(request, context)

    return call


def _checked_stream(behaviour: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Malformed):
                    raise request.error()
                check_request(request)
                yield request

        return await behaviour(checked(), context)

    return call


def typed_registration(
    service: ServiceDescriptor, messages: ModuleType, servicer: object, scopes: Mapping[str, str]
) -> ServiceRegistration:
    """Register `servicer`'s `async def` methods for `service`, with requests that fail to parse, or
    hold an out-of-range Timestamp or unknown enum value (validation.check_request), answered
    INVALID_ARGUMENT (never UNKNOWN or INTERNAL) before the servicer sees them. Unary-unary and
    client-streaming methods; `messages` is the generated `_pb2` module holding the message classes."""
    methods: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_class = getattr(messages, method.input_type.name)
        response_class = getattr(messages, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:
            methods[method.name] = grpc.stream_unary_rpc_method_handler(
                _checked_stream(behaviour),
                request_deserializer=_deserializer(request_class),
                response_serializer=response_class.SerializeToString,
            )
        else:
            methods[method.name] = grpc.unary_unary_rpc_method_handler(
                _checked_unary(behaviour),
                request_deserializer=_deserializer(request_class),
                response_serializer=response_class.SerializeToString,
            )
    handlers = grpc.method_handlers_generic_handler(service.full_name, methods)
    return ServiceRegistration(
        full_name=service.full_name,
        register=lambda server: server.add_generic_rpc_handlers((handlers,)),
        scopes=scopes,
    )


class GrpcServer:
    def __init__(
        self,
        service: str,
        settings: GrpcSettings,
        store: CredentialStore,
        registrations: Iterable[ServiceRegistration],
    ) -> None:
        self.service = service
        self.settings = settings
        self.policy = MethodPolicy()
        self.registrations = list(registrations)
        self.health = health.aio.HealthServicer()
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(
            interceptors=[PlatformInterceptor(store, self.policy, service)],
            options=options,
            # A bounded queue: under overload a caller learns at once (RESOURCE_EXHAUSTED) instead
            # of every call waiting longer and longer.
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self.port = 0

    async def start(self) -> int:
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for registration in self.registrations:
            registration.register(self.server)
            self.policy.update(registration.full_name, registration.scopes)
            names.append(registration.full_name)
        reflection.enable_server_reflection(names, self.server)
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ConfigError(f"cannot listen on {address} for gRPC: the port is in use or not allowed")
        await self.server.start()
        await self.set_serving(True)
        return self.port

    async def set_serving(self, serving: bool, name: str = "") -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if name:
            await self.health.set(name, status)
            return
        await self.health.set("", status)
        for registration in self.registrations:
            await self.health.set(registration.full_name, status)

    async def stop(self) -> None:
        # NOT_SERVING first, so load balancers stop routing here while in-flight calls finish.
        await self.set_serving(False)
        await self.server.stop(self.settings.grace_seconds)
