"""Errors a service raises on purpose, and how they travel over gRPC.

Handlers raise these; the platform interceptor turns each into a gRPC status code, a sentence a
person understands, and `google.rpc` details (ErrorInfo with a stable reason, BadRequest with field
violations) that a program can read. Anything else becomes INTERNAL with a reference to the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from onefold.contracts.common.v1 import errors_pb2

ERROR_DOMAIN = "onefold"
# The last defence against echoing a client's input whole (a megabyte id would not even fit in the
# status trailer): every status message, field path and description is cut to these lengths.
MAX_MESSAGE_CHARS = 1024
MAX_FIELD_CHARS = 256
MAX_DESCRIPTION_CHARS = 512
MAX_VIOLATIONS = 100


def bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OnefoldError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: errors_pb2.ErrorReason.ValueType = errors_pb2.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = list(violations)
        self.metadata = dict(metadata or {})
        self.retry_after_seconds = retry_after_seconds

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(
            reason=errors_pb2.ErrorReason.Name(self.reason),
            domain=ERROR_DOMAIN,
            metadata={key: bounded(value, MAX_FIELD_CHARS) for key, value in self.metadata.items()},
        )
        details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=bounded(f, MAX_FIELD_CHARS), description=bounded(d, MAX_DESCRIPTION_CHARS)
                    )
                    for f, d in self.violations[:MAX_VIOLATIONS]
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_seconds is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(int(self.retry_after_seconds * 1000))
            details.append(_pack(retry))
        return status_pb2.Status(
            code=_CODE[self.code], message=bounded(self.message, MAX_MESSAGE_CHARS), details=details
        )


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


_CODE = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}


class Unauthenticated(OnefoldError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = errors_pb2.CREDENTIAL_INVALID


class PermissionDenied(OnefoldError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = errors_pb2.SCOPE_MISSING


class InvalidArgument(OnefoldError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = errors_pb2.VALIDATION_FAILED


class NotFound(OnefoldError):
    code = grpc.StatusCode.NOT_FOUND
    reason = errors_pb2.NOT_FOUND


class AlreadyExists(OnefoldError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = errors_pb2.ALREADY_EXISTS


class Conflict(OnefoldError):
    """Optimistic concurrency lost: someone else wrote first. Safe to retry after re-reading."""

    code = grpc.StatusCode.ABORTED
    reason = errors_pb2.CONCURRENCY_CONFLICT


class FailedPrecondition(OnefoldError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = errors_pb2.FAILED_PRECONDITION


class ResourceExhausted(OnefoldError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = errors_pb2.RATE_LIMITED


class Unavailable(OnefoldError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = errors_pb2.UNAVAILABLE


def details_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[str, list[tuple[str, str]]]:
    """Client side: the ErrorInfo reason and field violations carried by a failed call."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    reason: str = ""
    violations: list[tuple[str, str]] = []
    if status is None:
        return reason, violations
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, violations
