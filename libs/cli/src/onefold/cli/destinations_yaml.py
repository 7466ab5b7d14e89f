"""Destinations as YAML (docs/destinations.md): `kind: Destination` documents to
`onefold.destinations.v1.Destination` and back.

    kind: Destination
    name: crm-webhook
    purpose: crm_sync
    webhook: {url: "https://crm.example.com/hooks/onefold", timeout: 10s}
    events:
      - type: track
        name: Order Completed
        where: [{field: properties.total, op: gte, value: 100}]
        mapping: {order_id: properties.order_id, total: properties.total}
    segments: [vip]
    traits: [email, plan]
    retry: {max_attempts: 8, initial_backoff: 1s, max_backoff: 10m}

Exactly one of `webhook`, `table` and `files`; durations as 10s, 500ms, 10m or a number of seconds.
Only the shape is checked here (keys, types, operator names, ranges the proto states); the service
checks the rest. A mistake is one sentence naming the document and the YAML path. The conversion
back (`destination_document`) writes the same form, so `onefold destinations get NAME` reads as
applied.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import duration_pb2, struct_pb2

from onefold.cli.journeys_yaml import json_value_at
from onefold.cli.output import CliError
from onefold.cli.segments_yaml import (
    NANOS,
    YamlPath,
    checked_mapping,
    format_duration,
    parse_duration,
    plain_value,
    shown,
    text_at,
)
from onefold.contracts.destinations.v1 import destinations_pb2 as pb

KINDS = ("Destination",)
NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
TABLE_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,40}")
TARGETS = ("webhook", "table", "files")
DESTINATION_KEYS = (
    "kind",
    "api_version",
    "name",
    "description",
    "purpose",
    *TARGETS,
    "events",
    "segments",
    "traits",
    "retry",
)
WEBHOOK_KEYS = ("url", "headers", "header_envs", "batch_size", "timeout", "max_in_flight")
TABLE_KEYS = ("url_env", "url", "table")
FILES_KEYS = ("directory", "format", "endpoint", "batch_size")
EVENT_KEYS = ("type", "name", "where", "mapping")
FILTER_KEYS = ("field", "op", "value")
RETRY_KEYS = ("max_attempts", "initial_backoff", "max_backoff")
EVENT_TYPES = ("track", "identify", "page", "screen")
OPS = {
    name.removeprefix("FILTER_OP_").lower(): value
    for name, value in pb.FilterOp.items()
    if value != pb.FILTER_OP_UNSPECIFIED
}
OP_NAMES = {value: name for name, value in OPS.items()}
FORMATS = {"csv": pb.FILE_FORMAT_CSV, "parquet": pb.FILE_FORMAT_PARQUET}
FORMAT_NAMES = {value: name for name, value in FORMATS.items()}
STATUS_NAMES = {
    value: name.removeprefix("DESTINATION_STATUS_").lower()
    for name, value in pb.DestinationStatus.items()
    if value != pb.DESTINATION_STATUS_UNSPECIFIED
}
DELIVERY_KIND_NAMES = {
    value: name.removeprefix("DELIVERY_KIND_").lower()
    for name, value in pb.DeliveryKind.items()
    if value != pb.DELIVERY_KIND_UNSPECIFIED
}
# The proto's ranges (destinations.proto), checked here so a typo is named before any call.
MAX_WEBHOOK_BATCH = 1000
MAX_FILES_BATCH = 100_000
MAX_ATTEMPTS = 50
INT32_MAX = 2**31 - 1
DURATION_EXAMPLE = "a duration like 10s, 500ms or 10m, or a number of seconds"


# --- reading YAML --------------------------------------------------------------------------------


def is_destination_document(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") in KINDS


def parse_destination_documents(documents: list[Any], where: str) -> list[pb.Destination]:
    """The file's Destination documents in the file's order (each named `where (document N)` in
    messages when the file has several); a name given twice is refused."""
    destinations: list[pb.Destination] = []
    seen: dict[str, str] = {}
    for number, document in enumerate(documents, start=1):
        if not is_destination_document(document):
            continue
        at = where if len(documents) == 1 else f"{where} (document {number})"
        destination = destination_from_document(document, at)
        if destination.name in seen:
            raise CliError(
                f"{at}: destination name {destination.name!r} is also used by {seen[destination.name]}"
            )
        seen[destination.name] = at
        destinations.append(destination)
    return destinations


def destination_from_document(document: Any, where: str) -> pb.Destination:
    at = YamlPath(where)
    if not isinstance(document, dict):
        raise at.error("must be a mapping with kind: Destination")
    name = text_at(document.get("name"), at.key("name"), required=True)
    if not NAME.fullmatch(name):
        raise at.key("name").error(
            "must be lower case letters, digits, _ and - starting with a letter, at most 64 "
            f"(got {shown(name)})"
        )
    at = YamlPath(f"{where} ({name})")
    fields = checked_mapping(document, at, DESTINATION_KEYS, "a Destination")
    destination = pb.Destination(
        name=name,
        description=text_at(fields.get("description"), at.key("description")),
        purpose=text_at(fields.get("purpose"), at.key("purpose")),
    )
    targets = [key for key in TARGETS if key in fields]
    if len(targets) != 1:
        raise at.error(f"needs exactly one of {', '.join(TARGETS)} (got {', '.join(targets) or 'none'})")
    target = targets[0]
    if target == "webhook":
        destination.webhook.CopyFrom(_webhook(fields["webhook"], at.key("webhook")))
    elif target == "table":
        destination.table.CopyFrom(_table(fields["table"], at.key("table")))
    else:
        destination.files.CopyFrom(_files(fields["files"], at.key("files")))
    here = at.key("events")
    destination.events.extend(
        _event_flow(item, here.index(i)) for i, item in enumerate(_list(fields.get("events"), here))
    )
    destination.segments.extend(_names(fields.get("segments"), at.key("segments")))
    destination.traits.extend(_names(fields.get("traits"), at.key("traits")))
    if fields.get("retry") is not None:
        destination.retry.CopyFrom(_retry(fields["retry"], at.key("retry")))
    return destination


def _list(value: Any, at: YamlPath) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise at.error(f"must be a list (got {shown(value)})")
    return value


def _names(value: Any, at: YamlPath) -> list[str]:
    return [text_at(item, at.index(i), required=True) for i, item in enumerate(_list(value, at))]


def _count(value: Any, at: YamlPath, high: int, low: int = 1) -> int:
    """A whole number in [low, high]; absent: 0, the service's default."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise at.error(f"must be a whole number from {low} to {high} (got {shown(value)})")
    return value


def seconds_at(value: Any, at: YamlPath) -> float:
    """A duration above zero as seconds: 10s, 500ms, 10m, 1h30m, or a number (of seconds);
    absent: 0, the service's default."""
    if value is None:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise at.error(f"must be {DURATION_EXAMPLE}, above zero (got {shown(value)})")
        return float(value)
    try:
        duration = parse_duration(value, at)
    except CliError:
        raise at.error(f"must be {DURATION_EXAMPLE}, above zero (got {shown(value)})") from None
    return duration.seconds + duration.nanos / NANOS


def _url(value: Any, at: YamlPath, schemes: tuple[str, ...]) -> str:
    url = text_at(value, at, required=True)
    if urlsplit(url).scheme not in schemes or not urlsplit(url).netloc:
        raise at.error(f"must be a {' or '.join(schemes)} URL (got {shown(url)})")
    return url


def _webhook(value: Any, at: YamlPath) -> pb.Webhook:
    fields = checked_mapping(value, at, WEBHOOK_KEYS, ", ".join(WEBHOOK_KEYS))
    webhook = pb.Webhook(
        url=_url(fields.get("url"), at.key("url"), ("http", "https")),
        batch_size=_count(fields.get("batch_size"), at.key("batch_size"), MAX_WEBHOOK_BATCH),
        timeout_seconds=seconds_at(fields.get("timeout"), at.key("timeout")),
        max_in_flight=_count(fields.get("max_in_flight"), at.key("max_in_flight"), INT32_MAX),
    )
    headers = fields.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise at.key("headers").error(f"must map header names to values (got {shown(headers)})")
        for header, text in headers.items():
            webhook.headers[str(header)] = text_at(text, at.key("headers").key(str(header)), required=True)
    header_envs = fields.get("header_envs")
    if header_envs is not None:
        if not isinstance(header_envs, dict):
            raise at.key("header_envs").error(
                f"must map header names to environment variables (got {shown(header_envs)})"
            )
        for header, variable in header_envs.items():
            where = at.key("header_envs").key(str(header))
            webhook.header_envs[str(header)] = text_at(variable, where, required=True)
    return webhook


def _table(value: Any, at: YamlPath) -> pb.SqlTable:
    fields = checked_mapping(value, at, TABLE_KEYS, ", ".join(TABLE_KEYS))
    given = [key for key in ("url_env", "url") if fields.get(key) is not None]
    if len(given) != 1:
        raise at.error(f"needs exactly one of url_env, url (got {', '.join(given) or 'none'})")
    table = pb.SqlTable(
        url_env=text_at(fields.get("url_env"), at.key("url_env")),
        url=text_at(fields.get("url"), at.key("url")),
        table=text_at(fields.get("table"), at.key("table"), required=True),
    )
    # A definition is kept in the log for good: a password must never reach it.
    if table.url and urlsplit(table.url).password:
        raise at.key("url").error(
            "holds a password; set the URL in an environment variable of the destinations service "
            "and name it in url_env"
        )
    if not TABLE_PREFIX.fullmatch(table.table):
        raise at.key("table").error(
            f"must be lower case letters, digits and _ starting with a letter, at most 41 (got {shown(table.table)})"
        )
    return table


def _files(value: Any, at: YamlPath) -> pb.Files:
    fields = checked_mapping(value, at, FILES_KEYS, ", ".join(FILES_KEYS))
    files = pb.Files(
        directory=text_at(fields.get("directory"), at.key("directory"), required=True),
        endpoint=text_at(fields.get("endpoint"), at.key("endpoint")),
        batch_size=_count(fields.get("batch_size"), at.key("batch_size"), MAX_FILES_BATCH),
    )
    if fields.get("format") is not None:
        name = text_at(fields["format"], at.key("format")).lower()
        if name not in FORMATS:
            raise at.key("format").error(
                f"must be one of {', '.join(FORMATS)} (got {shown(fields['format'])})"
            )
        files.format = FORMATS[name]
    return files


def _event_flow(value: Any, at: YamlPath) -> pb.EventFlow:
    fields = checked_mapping(value, at, EVENT_KEYS, ", ".join(EVENT_KEYS))
    flow = pb.EventFlow(
        type=text_at(fields.get("type"), at.key("type"), required=True),
        name=text_at(fields.get("name"), at.key("name")),
    )
    if flow.type not in EVENT_TYPES:
        raise at.key("type").error(f"must be one of {', '.join(EVENT_TYPES)} (got {shown(flow.type)})")
    here = at.key("where")
    flow.where.extend(_filter(item, here.index(i)) for i, item in enumerate(_list(fields.get("where"), here)))
    mapping = fields.get("mapping")
    if mapping is not None:
        if not isinstance(mapping, dict):
            raise at.key("mapping").error(
                f"must map output fields to dotted paths into the event (got {shown(mapping)})"
            )
        for output, path in mapping.items():
            flow.mapping[str(output)] = text_at(path, at.key("mapping").key(str(output)), required=True)
    return flow


def _filter(value: Any, at: YamlPath) -> pb.Filter:
    """`{field, op, value}`: exists takes no value, in takes a list."""
    fields = checked_mapping(value, at, FILTER_KEYS, ", ".join(FILTER_KEYS))
    field = text_at(fields.get("field"), at.key("field"), required=True)
    op_name = text_at(fields.get("op"), at.key("op"), required=True).lower()
    if op_name not in OPS:
        raise at.key("op").error(f"must be one of {', '.join(OPS)} (got {shown(fields.get('op'))})")
    op = OPS[op_name]
    if op == pb.FILTER_OP_EXISTS:
        if "value" in fields:
            raise at.key("value").error("is not for exists (it tests that the field is there)")
        return pb.Filter(field=field, op=op)
    if "value" not in fields:
        raise at.key("value").error(f"is required for {op_name}")
    if op == pb.FILTER_OP_IN and not isinstance(fields["value"], list):
        raise at.key("value").error(f"must be a list for in (got {shown(fields['value'])})")
    return pb.Filter(field=field, op=op, value=json_value_at(fields["value"], at.key("value")))


def _retry(value: Any, at: YamlPath) -> pb.RetryPolicy:
    fields = checked_mapping(value, at, RETRY_KEYS, ", ".join(RETRY_KEYS))
    return pb.RetryPolicy(
        max_attempts=_count(fields.get("max_attempts"), at.key("max_attempts"), MAX_ATTEMPTS),
        initial_backoff_seconds=seconds_at(fields.get("initial_backoff"), at.key("initial_backoff")),
        max_backoff_seconds=seconds_at(fields.get("max_backoff"), at.key("max_backoff")),
    )


# --- server field paths --------------------------------------------------------------------------

# The proto spells durations in seconds (`webhook.timeout_seconds`); the YAML without the unit.
_SECONDS = re.compile(r"(timeout|initial_backoff|max_backoff)_seconds\b")


def yaml_path(field: str) -> str:
    """A field path of the service's violations inside one destination as its YAML writes it."""
    return _SECONDS.sub(r"\1", field)


# --- back to YAML --------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """Seconds as seconds_at reads them, in the largest whole unit: 10s, 500ms, 10m."""
    nanos = round(seconds * NANOS)
    return format_duration(duration_pb2.Duration(seconds=nanos // NANOS, nanos=nanos % NANOS))


def destination_document(destination: pb.Destination) -> dict[str, Any]:
    """The YAML document of a stored destination (what `onefold apply -f` reads back to it); the
    server's version facts are left to the caller (a comment). Unset fields (the service's
    defaults) stay unwritten."""
    document: dict[str, Any] = {"kind": "Destination", "name": destination.name}
    if destination.description:
        document["description"] = destination.description
    if destination.purpose:
        document["purpose"] = destination.purpose
    target = destination.WhichOneof("target")
    if target == "webhook":
        document["webhook"] = _webhook_document(destination.webhook)
    elif target == "table":
        table = destination.table
        document["table"] = {
            **({"url_env": table.url_env} if table.url_env else {}),
            **({"url": table.url} if table.url else {}),
            "table": table.table,
        }
    elif target == "files":
        document["files"] = _files_document(destination.files)
    if destination.events:
        document["events"] = [_event_flow_document(flow) for flow in destination.events]
    if destination.segments:
        document["segments"] = list(destination.segments)
    if destination.traits:
        document["traits"] = list(destination.traits)
    if destination.HasField("retry"):
        retry = destination.retry
        document["retry"] = {
            **({"max_attempts": retry.max_attempts} if retry.max_attempts else {}),
            **(
                {"initial_backoff": duration_text(retry.initial_backoff_seconds)}
                if retry.initial_backoff_seconds
                else {}
            ),
            **(
                {"max_backoff": duration_text(retry.max_backoff_seconds)} if retry.max_backoff_seconds else {}
            ),
        }
    return document


def _webhook_document(webhook: pb.Webhook) -> dict[str, Any]:
    document: dict[str, Any] = {"url": webhook.url}
    if webhook.batch_size:
        document["batch_size"] = webhook.batch_size
    if webhook.timeout_seconds:
        document["timeout"] = duration_text(webhook.timeout_seconds)
    if webhook.max_in_flight:
        document["max_in_flight"] = webhook.max_in_flight
    if webhook.headers:
        document["headers"] = dict(sorted(webhook.headers.items()))
    if webhook.header_envs:
        document["header_envs"] = dict(sorted(webhook.header_envs.items()))
    return document


def _files_document(files: pb.Files) -> dict[str, Any]:
    document: dict[str, Any] = {"directory": files.directory}
    if files.format in FORMAT_NAMES:
        document["format"] = FORMAT_NAMES[files.format]
    if files.endpoint:
        document["endpoint"] = files.endpoint
    if files.batch_size:
        document["batch_size"] = files.batch_size
    return document


def _event_flow_document(flow: pb.EventFlow) -> dict[str, Any]:
    document: dict[str, Any] = {"type": flow.type}
    if flow.name:
        document["name"] = flow.name
    if flow.where:
        document["where"] = [_filter_document(condition) for condition in flow.where]
    if flow.mapping:
        document["mapping"] = dict(sorted(flow.mapping.items()))
    return document


def _filter_document(condition: pb.Filter) -> dict[str, Any]:
    document: dict[str, Any] = {"field": condition.field, "op": OP_NAMES.get(condition.op, str(condition.op))}
    if condition.op != pb.FILTER_OP_EXISTS:
        document["value"] = value_document(condition.value)
    return document


def value_document(value: struct_pb2.Value) -> Any:
    """A google.protobuf.Value as YAML writes it (whole numbers without `.0`)."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [value_document(item) for item in value.list_value.values]
    if kind == "struct_value":
        return {key: value_document(item) for key, item in value.struct_value.fields.items()}
    return plain_value(value)
