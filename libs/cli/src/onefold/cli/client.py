"""The CLI as a client of the services, shared by every command: where they are, which credential,
and failures as one sentence.

The CLI is a client like any other: it speaks each service's API (the generated stubs) and lets the
service validate. The target comes from `--target` or the data dir's run/endpoints.json (written
by `onefold up`); the credential from `--token` or ONEFOLD_TOKEN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from onefold.cli.options import DataDir as DataDir
from onefold.cli.options import Target as Target
from onefold.cli.options import Token as Token
from onefold.cli.output import CliError, fail
from onefold.cli.output import err_console as err_console
from onefold.cli.supervisor import read_endpoints
from onefold.platform.config_error import ConfigError

# gRPC and the generated stubs load when a command first calls a service, not when it parses.
if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message

    from onefold.contracts.ingest.v1 import ingest_pb2_grpc

T = TypeVar("T")
S = TypeVar("S")  # a generated gRPC stub

# 32 MB: an Upload/Batch answer for a large batch of quarantined events can be big.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 32 * 1024 * 1024),)


def same_apart_from_version(left: Message, right: Message) -> bool:
    """Whether two applied documents (a model, rules) are equal but for the server's version number:
    `apply` then reports "unchanged"."""

    def content(message: Message) -> bytes:
        copy = type(message)()
        copy.CopyFrom(message)
        copy.ClearField("version")
        return copy.SerializeToString(deterministic=True)

    return content(left) == content(right)


@dataclass(frozen=True)
class Connection:
    target: str
    token: str
    service: str = "ingest"


def resolve(data_dir: Path, target: str | None, token: str | None, service: str = "ingest") -> Connection:
    if not token:
        raise CliError("no credential: pass --token or set ONEFOLD_TOKEN (see `onefold credentials create`)")
    if not target:
        try:
            state = read_endpoints(data_dir.resolve())
        except ConfigError as error:
            raise CliError(f"{error}, or pass --target host:port") from None
        target = state.get("services", {}).get(service)
        if not target:
            raise CliError(f"the {service} service is not listed in {data_dir / 'run' / 'endpoints.json'}")
    return Connection(target=target, token=token, service=service)


@asynccontextmanager
async def service_stub(conn: Connection, stub_class: Callable[[grpc.aio.Channel], S]) -> AsyncIterator[S]:
    """A service's generated stub on an authenticated channel, closed when the block ends."""
    from onefold.platform.client import authenticated_channel

    channel = authenticated_channel(conn.target, conn.token, options=CHANNEL_OPTIONS)
    try:
        yield stub_class(channel)
    finally:
        await channel.close()


def ingest_stub(conn: Connection) -> AbstractAsyncContextManager[ingest_pb2_grpc.IngestServiceStub]:
    from onefold.contracts.ingest.v1 import ingest_pb2_grpc

    return service_stub(conn, ingest_pb2_grpc.IngestServiceStub)


def describe_rpc_error(
    error: grpc.aio.AioRpcError | grpc.RpcError, target: str, service: str = "ingest"
) -> str:
    """One sentence for a failed call: what the service said, plus field violations if any."""
    import grpc

    from onefold.platform.errors import details_of

    code = error.code() if callable(getattr(error, "code", None)) else None
    message = (error.details() if callable(getattr(error, "details", None)) else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE and (not message or "connect" in message.lower()):
        return f"cannot reach the {service} service at {target}; is `onefold up` running?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {service} service at {target} did not answer in time"
    try:
        _, violations = details_of(error)
    except Exception:  # a status without rich details (e.g. from a proxy)
        violations = []
    message = message.rstrip(".")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        message = f"the credential was not accepted ({message or 'unauthenticated'})"
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        message = f"permission denied: {message}"
    if violations:
        message += " (" + "; ".join(f"{field}: {text}" for field, text in violations[:5]) + ")"
    return message + "."


def run_async(
    conn: Connection,
    factory: Callable[[], Awaitable[T]],
    exit_codes: Mapping[grpc.StatusCode, int] | None = None,
) -> T:
    """Run a coroutine; turn RPC failures and CliError into one sentence on stderr and an exit code
    (2, or what `exit_codes` says for the failure's status code)."""
    import asyncio

    import grpc

    try:
        return asyncio.run(_call(factory))
    except CliError as error:
        raise fail(error.message, error.code) from None
    except grpc.RpcError as error:
        code = error.code() if callable(getattr(error, "code", None)) else None
        status = (exit_codes or {}).get(code, 2) if code is not None else 2
        raise fail(describe_rpc_error(error, conn.target, conn.service), status) from None


async def _call(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def connect(data_dir: Path, target: str | None, token: str | None, service: str = "ingest") -> Connection:
    try:
        return resolve(data_dir, target, token, service)
    except CliError as error:
        raise fail(error.message, error.code) from None
