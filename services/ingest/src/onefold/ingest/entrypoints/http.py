"""The Segment-compatible HTTP tracking API: `POST /v1/track|identify|page|screen|group|alias|batch|b`.

A thin adapter over IngestApplication, so existing Segment and RudderStack SDKs work unchanged:

- the write key is the basic-auth user name (empty password), or `writeKey` in the body;
- bodies are JSON, optionally `Content-Encoding: gzip` (decompressed incrementally and never past
  the limit, so a decompression bomb costs at most the limit in memory);
- limits as Segment's: 32 KB per call or event, 500 KB per batch, 2,500 events per batch; past them
  the answer is 400, as Segment's (not 413);
- 200 `{"success": true, ...}` only once the events are durably recorded. An event that breaks the
  spec or the tracking plan is quarantined with its reasons and the request still succeeds (SDKs drop
  a whole request on a 400); the answer's `events` lists every event that was not simply accepted
  (duplicates, quarantined, flagged), so dedupe and quarantine are visible to the caller;
- errors map from OnefoldError in one place (`STATUS_BY_ERROR`): a sentence, a stable `reason`, field
  `violations`, `Retry-After` for 429 / 503. Never a stack trace; never a 5xx for bad input.

`serve(application, settings)` runs it with uvicorn inside the service's own event loop; the platform
owns the signals, so uvicorn installs no handlers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import uvicorn
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from onefold.contracts.common.v1 import errors_pb2
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.ingest.application import IngestApplication, Source
from onefold.ingest.domain import DEFAULT_LIMITS, Limits, PayloadTooLarge, parse_request
from onefold.ingest.domain.segment import load_request, parse_loaded
from onefold.ingest.entrypoints.http_openapi import BATCH_PATHS, CALL_DOCS, openapi_document
from onefold.platform.auth import DenialLog
from onefold.platform.config import ConfigError, HttpSettings
from onefold.platform.errors import (
    MAX_DESCRIPTION_CHARS,
    MAX_FIELD_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_VIOLATIONS,
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OnefoldError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    bounded,
)
from onefold.platform.telemetry import extract_context, get_logger, tracer

log = get_logger("onefold.ingest.http")
# Refused write keys (401/403): logged by reason and route, never the key, at most N a minute each.
DENIALS = DenialLog("onefold.ingest.http")

HTTP_REQUESTS = Counter(
    "onefold_http_requests_total", "HTTP tracking API requests handled", ["route", "status"]
)
HTTP_DURATION = Histogram(
    "onefold_http_request_duration_seconds",
    "HTTP tracking API handling time, until the events are durably recorded",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# A gzip body may be slightly larger than what it holds (incompressible data); past this much
# compressed input over the limit it cannot decompress to within the limit anyway.
GZIP_OVERHEAD_BYTES = 64 * 1024
# After an early error (401 before the body was read, an oversize body), the rest of a body up to
# this size is read and discarded, so the client reads the answer instead of a connection reset
# (an SDK would retry a reset forever, but drops a 400). Bigger bodies get `Connection: close`.
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024
ENCODINGS = {"": None, "identity": None, "gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}
ENCODINGS["deflate"] = 32 + zlib.MAX_WBITS  # zlib (or gzip) framing, auto-detected

_ACK_STATUS = {
    pb.ACK_STATUS_ACCEPTED: "accepted",
    pb.ACK_STATUS_DUPLICATE: "duplicate",
    pb.ACK_STATUS_QUARANTINED: "quarantined",
}
_KIND = {
    value: name.removeprefix("FAILURE_KIND_").lower()
    for name, value in pb.FailureKind.items()
    if value != pb.FAILURE_KIND_UNSPECIFIED
}


class UnsupportedEncoding(InvalidArgument):
    """A Content-Encoding the API does not decode (HTTP 415)."""


class ClientDisconnected(Exception):
    """The client went away before the body arrived; nothing to answer."""


# --- errors: the one place OnefoldErrors become HTTP statuses -----------------------------------

# First match wins, so subclasses come before their bases.
STATUS_BY_ERROR: tuple[tuple[type[OnefoldError], int], ...] = (
    (UnsupportedEncoding, 415),
    (InvalidArgument, 400),  # includes PayloadTooLarge: Segment answers 400, not 413
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (FailedPrecondition, 403),  # this API's only precondition: the source is enabled
    (NotFound, 404),
    (AlreadyExists, 409),
    (Conflict, 409),
    (ResourceExhausted, 429),
    (Unavailable, 503),
)


def status_for(error: OnefoldError) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def error_response(error: OnefoldError) -> Response:
    status = status_for(error)
    body: dict[str, Any] = {
        "success": False,
        "message": bounded(error.message, MAX_MESSAGE_CHARS),
        "reason": errors_pb2.ErrorReason.Name(error.reason),
    }
    if error.violations:
        body["violations"] = [
            {"field": bounded(f, MAX_FIELD_CHARS), "description": bounded(d, MAX_DESCRIPTION_CHARS)}
            for f, d in error.violations[:MAX_VIOLATIONS]
        ]
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="onefold", charset="UTF-8"'
    if error.retry_after_seconds is not None and status in (429, 503):
        seconds = max(0.0, float(error.retry_after_seconds))
        body["retryAfterSeconds"] = seconds
        headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    return json_response(body, status, headers)


def internal_error(route: str, exc: BaseException) -> Response:
    reference = uuid.uuid4().hex[:12]
    # The stack goes to the service log under the reference; the client gets the sentence only.
    log.error("http.internal_error", route=route, reference=reference, exc_info=exc)
    error = OnefoldError(f"internal error while handling {route}; reference {reference} in the service log")
    return error_response(error)


# --- the request body: size limits, gzip, drain --------------------------------------------------


class BodyReader:
    """Reads an ASGI request body once, within a byte limit, undoing Content-Encoding as it goes."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.complete = True
                raise ClientDisconnected
            self.complete = not message.get("more_body", False)
            chunk: bytes = message.get("body", b"")
            self.received += len(chunk)
            if chunk:
                yield chunk

    async def read(self, limit: int, wbits: int | None, what: str) -> bytes:
        if wbits is None:
            body = bytearray()
            async for chunk in self.chunks():
                body += chunk
                if len(body) > limit:
                    raise _too_large(limit, what)
            return bytes(body)
        return await self._inflate(limit, wbits, what)

    async def _inflate(self, limit: int, wbits: int, what: str) -> bytes:
        out = bytearray()
        inflater = zlib.decompressobj(wbits)
        started = False
        try:
            async for chunk in self.chunks():
                if self.received > limit + GZIP_OVERHEAD_BYTES:
                    raise _too_large(limit, what)
                pending = chunk
                while pending:
                    if inflater.eof:  # a further gzip member (concatenated streams are valid gzip)
                        inflater = zlib.decompressobj(wbits)
                    started = True
                    out += inflater.decompress(pending, limit + 1 - len(out))
                    if len(out) > limit:  # stop here: a bomb never inflates past the limit
                        raise _too_large(limit, what, decompressed=True)
                    pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        except zlib.error:
            raise InvalidArgument(
                "the body is not valid for its Content-Encoding",
                violations=[("body", "must be compressed as its Content-Encoding says")],
            ) from None
        if not started or not inflater.eof:
            raise InvalidArgument(
                "the compressed body ends before its compressed stream does",
                violations=[("body", "must be a complete compressed stream")],
            )
        return bytes(out)

    async def drain(self, declared_length: int | None) -> bool:
        """Discard the rest of the body so the answer reaches the client; False if too big to."""
        if self.complete:
            return True
        if declared_length is not None and declared_length > DRAIN_LIMIT_BYTES:
            return False
        with contextlib.suppress(ClientDisconnected):
            async for _chunk in self.chunks():
                if self.received > DRAIN_LIMIT_BYTES:
                    return False
        return True


def _too_large(limit: int, what: str, *, decompressed: bool = False) -> PayloadTooLarge:
    size = "decompressed body" if decompressed else "body"
    return PayloadTooLarge(
        f"the {size} is larger than {limit} bytes, the limit for {what}",
        violations=[("body", f"must be at most {limit} bytes")],
    )


def content_encoding_wbits(header: str | None) -> int | None:
    name = (header or "").strip().lower()
    if name not in ENCODINGS:
        raise UnsupportedEncoding(
            f"Content-Encoding '{name[:40]}' is not supported; send gzip, deflate or identity",
            violations=[("Content-Encoding", "must be gzip, deflate or identity")],
        )
    return ENCODINGS[name]


# --- authentication ----------------------------------------------------------------------------

MISSING_KEY = (
    "a write key is required: send it as the basic-auth user name with an empty password, "
    "or as writeKey in the body"
)


def write_key_from_header(header: str | None) -> str | None:
    """The basic-auth user name, or None when the header carries no write key (then the body may)."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unauthenticated(
            "the Authorization header must be 'Basic base64(<write key>:)'",
            violations=[("Authorization", "must be basic auth with the write key as the user name")],
        ) from None
    user, _, _password = decoded.partition(":")
    return user.strip() or None


def _missing_key() -> Unauthenticated:
    error = Unauthenticated(MISSING_KEY, violations=[("Authorization", "must carry the write key")])
    error.reason = errors_pb2.CREDENTIAL_MISSING
    return error


# --- the answer -----------------------------------------------------------------------------------


def success_body(acks: Sequence[pb.EventAck]) -> dict[str, Any]:
    counts = {"accepted": 0, "duplicates": 0, "quarantined": 0}
    details: list[dict[str, Any]] = []
    for ack in acks:
        if ack.status == pb.ACK_STATUS_DUPLICATE:
            counts["duplicates"] += 1
        elif ack.status == pb.ACK_STATUS_QUARANTINED:
            counts["quarantined"] += 1
        else:
            counts["accepted"] += 1
            if not ack.reasons:
                continue
        detail: dict[str, Any] = {
            "index": ack.index,
            "messageId": ack.message_id,
            "status": _ACK_STATUS.get(ack.status, "accepted"),
        }
        if ack.kind in _KIND:
            detail["kind"] = _KIND[ack.kind]
        if ack.quarantine_id:
            detail["quarantineId"] = ack.quarantine_id
        if ack.reasons:
            detail["reasons"] = [{"path": r.path, "message": r.message, "rule": r.rule} for r in ack.reasons]
        details.append(detail)
    body: dict[str, Any] = {"success": True, **counts}
    if details:
        body["events"] = details
    return body


# --- the application ------------------------------------------------------------------------------


Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TrackingApi:
    """The request handling, separate from Starlette's routing so each step reads top to bottom."""

    def __init__(self, application: IngestApplication, clock: Clock = _utc_now) -> None:
        self.application = application
        self.clock = clock
        self._tracer = tracer("onefold.ingest.http")

    def endpoint(self, call: str) -> Callable[[Request], Awaitable[Response]]:
        route = "/v1/batch" if call == "b" else f"/v1/{call}"

        async def handle(request: Request) -> Response:
            return await self.handle(request, call, route)

        handle.__name__ = f"post_{call}"
        return handle

    async def handle(self, request: Request, call: str, route: str) -> Response:
        started = time.perf_counter()
        reader = BodyReader(request.receive)
        token = otel_context.attach(extract_context(request.headers))
        status = 500
        try:
            with self._tracer.start_as_current_span(
                f"POST {route}", kind=trace.SpanKind.SERVER, attributes={"http.route": route}
            ) as span:
                try:
                    response = await self._ingest(request, reader, call)
                except OnefoldError as error:
                    if isinstance(error, Unauthenticated | PermissionDenied):
                        DENIALS.denied(
                            errors_pb2.ErrorReason.Name(error.reason), route, status=status_for(error)
                        )
                    response = error_response(error)
                except ClientDisconnected:
                    response = Response(status_code=400)
                except Exception as exc:
                    span.record_exception(exc)
                    response = internal_error(route, exc)
                status = response.status_code
                span.set_attribute("http.status_code", status)
                if not await reader.drain(_declared_length(request)):
                    response.headers["Connection"] = "close"
                return response
        finally:
            otel_context.detach(token)
            HTTP_REQUESTS.labels(route, str(status)).inc()
            HTTP_DURATION.labels(route).observe(time.perf_counter() - started)

    async def _ingest(self, request: Request, reader: BodyReader, call: str) -> Response:
        wbits = content_encoding_wbits(request.headers.get("content-encoding"))
        key = write_key_from_header(request.headers.get("authorization"))
        source: Source | None = None
        if key is not None:  # authenticate before reading the body
            source = self.application.source_for_write_key(key)
        limits = source.limits if source is not None else DEFAULT_LIMITS
        limit, what = _limit(limits, call)
        body = await reader.read(limit, wbits, what)
        received_at = self.clock()
        if source is None:
            # The key is in the body: load its JSON once, find the source by the key, then parse the
            # events with the source (their source id, its limits) from that same document.
            loaded = load_request(body, call, limits=limits)
            key = (loaded.write_key or "").strip()
            if not key:
                # An unusable body says so (400) before the missing key does (401).
                parse_loaded(loaded, received_at=received_at, limits=limits)
                raise _missing_key()
            source = self.application.source_for_write_key(key)
            parsed = parse_loaded(
                loaded, received_at=received_at, source_id=source.source_id, limits=source.limits
            )
        else:
            parsed = parse_request(
                body, call, received_at=received_at, source_id=source.source_id, limits=source.limits
            )
        self.application.check_rate(source, len(parsed.intakes))
        acks = await self.application.submit(source, parsed.intakes)
        return json_response(success_body(acks))


def _limit(limits: Limits, call: str) -> tuple[int, str]:
    if call in ("batch", "b"):
        return limits.max_batch_bytes, "a batch"
    return limits.max_event_bytes, f"a {call} call"


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers.get("content-length", ""))
    except ValueError:
        return None


_CALL_PATHS = ", ".join(f"/v1/{call}" for call in CALL_DOCS) + ", /v1/batch"


async def _not_found(request: Request, exc: Exception) -> Response:
    """Routing's own refusals, in the shape of every other error: a sentence that says what to send."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    path = request.url.path[:100]
    messages = {
        404: f"no such endpoint: {path}; the tracking API takes POST to {_CALL_PATHS}",
        405: f"{request.method[:10]} is not allowed on {path}; it takes {headers.get('Allow', 'POST')}",
    }
    body = {"success": False, "message": messages.get(status, "request failed"), "reason": "NOT_FOUND"}
    if status == 405:
        body["reason"] = "VALIDATION_FAILED"
    return json_response(body, status, headers)


def create_app(
    application: IngestApplication, *, clock: Clock = _utc_now, limits: Limits = DEFAULT_LIMITS
) -> Starlette:
    """The ASGI app. `limits` only shapes the OpenAPI document; requests use their source's limits."""
    api = TrackingApi(application, clock)
    document = orjson.dumps(openapi_document(limits))

    async def openapi(_request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def health(_request: Request) -> Response:
        return json_response({"status": "ok"})

    routes = [Route(f"/v1/{call}", api.endpoint(call), methods=["POST"]) for call in CALL_DOCS]
    routes += [Route(path, api.endpoint(path.rsplit("/", 1)[1]), methods=["POST"]) for path in BATCH_PATHS]
    routes += [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    # Browser SDKs post from every site that embeds them, as to Segment's own API.
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
        max_age=86400,
    )
    return Starlette(routes=routes, middleware=[cors], exception_handlers={HTTPException: _not_found})


# --- serving: uvicorn inside the service's event loop ---------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the platform's runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0 = a free port), or a ConfigError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == 98 or "in use" in str(error.strerror):
            raise ConfigError(
                f"port {port} on {host} is already in use, so the HTTP tracking API cannot listen there"
            ) from None
        raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """The tracking API served by uvicorn as a task of the running event loop."""

    def __init__(
        self,
        app: Starlette,
        settings: HttpSettings,
        *,
        graceful_seconds: int = 10,
        limit_concurrency: int | None = 1024,
    ) -> None:
        self.app = app
        self.settings = settings
        self.graceful_seconds = graceful_seconds
        self.limit_concurrency = limit_concurrency
        self._port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the HTTP server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> int:
        if self._task is not None:
            return self.port
        sock = bind_socket(self.settings.host, self.settings.port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=self.graceful_seconds,
            limit_concurrency=self.limit_concurrency,
        )
        server = _Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="onefold-ingest-http")
        while not server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped it
                raise ConfigError(f"the HTTP server on port {self._port} stopped while starting")
            await asyncio.sleep(0.005)
        log.info("http.ready", url=self.url)
        return self._port

    async def stop(self) -> None:
        """Stop accepting connections, let requests in flight finish (up to `graceful_seconds`)."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        finally:
            self._server = self._task = None
            log.info("http.stopped", port=self._port)


def serve(application: IngestApplication, settings: HttpSettings, *, clock: Clock = _utc_now) -> HttpServer:
    """The HTTP tracking API of `application` on settings.host:port; call `await .start()`."""
    return HttpServer(create_app(application, clock=clock), settings)
