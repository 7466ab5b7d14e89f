"""Checks every RPC makes on its request before using it, written once.

`check_request` runs for every request the platform's gRPC server deserialises (see
`grpc_server.typed_registration`): each Timestamp set anywhere in the request must lie in
0001-01-01 .. 9999-12-31 UTC with nanos 0 .. 999,999,999 (what `ToDatetime` and every database can
hold), each enum must hold a value its enum defines (proto3 lets a client send any int32), and each
number in a google.protobuf.Struct or Value must be finite (JSON has no NaN or infinity, so no
reader could take it back). Each answers INVALID_ARGUMENT naming the field path, never INTERNAL.

Servicers use the others for what only they know: `optional_timestamp` to read a Timestamp,
`id_arg` for an id the caller names (too long to exist: NOT_FOUND), `profile_ref_arg` for a person
named by profile id or identifier, `bounded_text` for a text with a size limit (INVALID_ARGUMENT),
`echo` to quote client input in an error sentence without ever quoting more than a few dozen
characters of it. The platform's error mapping (errors.OnefoldError.to_status) bounds every message
as the last defence.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from onefold.platform.errors import InvalidArgument, NotFound

# google.protobuf.Timestamp's own range (RFC 3339 years 1-9999), in seconds since the epoch.
MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_NANOS = 999_999_999
# How much of a client's input an error sentence may quote.
MAX_ECHO_CHARS = 64
# Ids this platform issues are UUIDs or short prefixed tokens; a longer one cannot exist.
MAX_ID_CHARS = 256
# Identifier types are names like "email" or "user_id"; values are bounded as ingest bounds the ids
# it accepts (Limits.max_id_length), so a longer one was never recorded.
MAX_IDENTIFIER_TYPE_CHARS = 64
MAX_IDENTIFIER_VALUE_CHARS = 1024
# Messages whose content the service validates itself, field by field, with its own verdicts:
# ingest quarantines a tracked event with an unknown type or a NaN, with the reason.
_NOT_WALKED = frozenset({"onefold.ingest.v1.TrackingEvent"})
_JSON = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_VIOLATIONS = 20
TIMESTAMP_RANGE = "must be a time from 0001-01-01 to 9999-12-31 UTC, with nanos from 0 to 999999999"


def echo(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`value` quoted for an error sentence: at most `limit` characters, control characters escaped,
    and how long it really was when cut."""
    shown = value[:limit].encode("unicode_escape").decode("ascii")
    if len(value) > limit:
        return f"'{shown}…' ({len(value)} characters)"
    return f"'{shown}'"


def timestamp_problem(ts: Timestamp) -> str | None:
    if not MIN_TIMESTAMP_SECONDS <= ts.seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= ts.nanos <= MAX_NANOS:
        return TIMESTAMP_RANGE
    return None


def timestamp_arg(field: str, ts: Timestamp) -> datetime:
    """The Timestamp as an aware UTC datetime, or INVALID_ARGUMENT naming `field`."""
    problem = timestamp_problem(ts)
    if problem is not None:
        raise InvalidArgument(f"{field} {problem}", violations=[(field, problem)])
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def optional_timestamp(message: Message, name: str, field: str = "") -> datetime | None:
    """`message.<name>` as a datetime when set, else None; INVALID_ARGUMENT when out of range."""
    if not message.HasField(name):
        return None
    return timestamp_arg(field or name, getattr(message, name))


def bounded_text(field: str, value: str, max_chars: int) -> str:
    """INVALID_ARGUMENT when `value` is longer than the limit (the message never quotes it whole)."""
    if len(value) > max_chars:
        message = f"must be at most {max_chars} characters"
        raise InvalidArgument(
            f"{field} is {len(value)} characters; it {message}", violations=[(field, message)]
        )
    return value


def id_arg(field: str, value: str, what: str, max_chars: int = MAX_ID_CHARS) -> str:
    """An id the caller names: NOT_FOUND when it is too long to be one this platform issued."""
    if len(value) > max_chars:
        raise NotFound(
            f"no {what} {echo(value)}", violations=[(field, f"ids are at most {max_chars} characters")]
        )
    return value


def check_request(message: Message) -> None:
    """INVALID_ARGUMENT for any out-of-range Timestamp or unknown enum value in the request."""
    problems: list[tuple[str, str]] = []
    _walk(message, "", problems)
    if problems:
        field, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidArgument(f"{field} {problem}{more}", violations=problems[:_MAX_VIOLATIONS])


def _walk(message: Message, at: str, problems: list[tuple[str, str]]) -> None:
    for field, value in message.ListFields():
        path = f"{at}.{field.name}" if at else field.name
        if field.type == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None  # an enum field always has its enum type
            known = enum.values_by_number
            for i, number in enumerate(value if field.is_repeated else (value,)):
                if number not in known:
                    where = f"{path}[{i}]" if field.is_repeated else path
                    problems.append((where, f"is not a value of {enum.name}"))
            continue
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        kind = field.message_type
        assert kind is not None  # a message field always has its message type
        if kind.full_name in _NOT_WALKED:
            continue
        if kind.GetOptions().map_entry:
            value_kind = kind.fields_by_name["value"].message_type
            if value_kind is not None and value_kind.full_name not in _NOT_WALKED:
                for key, item in value.items():
                    _check(item, f"{path}[{echo(str(key), 32)}]", problems)
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                _check(item, f"{path}[{i}]", problems)
        else:
            _check(value, path, problems)


def _check(message: Message, path: str, problems: list[tuple[str, str]]) -> None:
    name = message.DESCRIPTOR.full_name
    if name == _TIMESTAMP:
        problem = timestamp_problem(message)  # type: ignore[arg-type]
        if problem is not None:
            problems.append((path, problem))
    elif name in _JSON:
        _check_json(message, path, problems)
    else:
        _walk(message, path, problems)


def _check_json(message: Any, path: str, problems: list[tuple[str, str]]) -> None:
    """A Struct, ListValue or Value: every number finite."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Struct":
        for key, item in message.fields.items():
            _check_json(item, f"{path}.{key[:32]}", problems)
    elif name == "google.protobuf.ListValue":
        for i, item in enumerate(message.values):
            _check_json(item, f"{path}[{i}]", problems)
    else:
        kind = message.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(message.number_value):
            problems.append((path, "must be a finite number (JSON has no NaN or infinity)"))
        elif kind == "struct_value":
            _check_json(message.struct_value, path, problems)
        elif kind == "list_value":
            _check_json(message.list_value, path, problems)


def profile_ref_arg(field: str, ref: Any) -> Any:
    """A onefold.identity.v1.ProfileRef (the shape every service names a person by), bounded: a
    profile id or identifier too long to exist is NOT_FOUND, an unreasonable identifier type
    INVALID_ARGUMENT. The identifier's value is personal data and is never quoted."""
    which = ref.WhichOneof("ref")
    at = f"{field}." if field else ""
    if which == "profile_id":
        id_arg(f"{at}profile_id", ref.profile_id, "profile")
    elif which == "identifier":
        bounded_text(f"{at}identifier.type", ref.identifier.type, MAX_IDENTIFIER_TYPE_CHARS)
        if len(ref.identifier.value) > MAX_IDENTIFIER_VALUE_CHARS:
            raise NotFound(
                "no profile has that identifier",
                violations=[
                    (
                        f"{at}identifier.value",
                        f"identifiers are at most {MAX_IDENTIFIER_VALUE_CHARS} characters",
                    )
                ],
            )
    return ref
