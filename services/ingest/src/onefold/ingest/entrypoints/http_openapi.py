"""The OpenAPI 3 document of the Segment-compatible HTTP tracking API (served at GET /openapi.json).

Written by hand rather than derived, so it states exactly what the wire accepts: the Segment spec's
event shapes, the write key as HTTP basic auth, the limits, and every status the API answers. It is
precise enough for schemathesis to generate valid and invalid requests from it.

Two levels, as in the domain, and the document keeps them apart so that it says exactly what the
server does:

- the request bodies (`Call`, `Batch`) are what a 400 enforces: a JSON object, a string writeKey,
  for a batch an array of at most 2,500 items with object (or null) context and integrations; plus
  what a schema cannot say, in the descriptions: the byte limits and the nesting depth;
- the per-event rules (`TrackEvent` ... `AliasEvent`, `BatchItem`: required ids, `event` for track,
  types) say what is accepted rather than quarantined. An event that breaks them is quarantined with
  its reasons and the request still answers 200, like Segment (an SDK drops the whole request on a
  400, losing the good events with it). Each operation names its event schema in
  `x-onefold-event-schema`; the request body does not require it, because the server does not.
"""

from __future__ import annotations

from typing import Any

from onefold.ingest.domain import DEFAULT_LIMITS, MAX_NESTING_DEPTH, Limits

CALL_DOCS: dict[str, tuple[str, str]] = {
    "track": ("Track", "Record an action the user performed (`event` names it)."),
    "identify": ("Identify", "Tie a user to their actions and record traits about them."),
    "page": ("Page", "Record a page view on a website."),
    "screen": ("Screen", "Record a screen view in a mobile app."),
    "group": ("Group", "Associate a user with a group (an account or company)."),
    "alias": ("Alias", "Merge two user identities: `previousId` into `userId`."),
}
BATCH_PATHS = ("/v1/batch", "/v1/b")

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    if headers:
        response["headers"] = headers
    return response


def _schemas(limits: Limits) -> dict[str, Any]:
    # An absent key and a null one are the same to the server, so optional fields are nullable.
    identifier = {
        "description": "A string, or an integer (stored as its decimal string). Surrounding spaces are "
        "removed; an empty one counts as absent.",
        "anyOf": [
            {"type": "string", "maxLength": limits.max_id_length, "nullable": True},
            {"type": "integer"},
        ],
    }
    required_identifier = {
        **identifier,
        "anyOf": [{"type": "string", "maxLength": limits.max_id_length}, {"type": "integer"}],
    }
    timestamp = {
        "description": "An ISO-8601 date and time (RFC 3339, e.g. 2024-05-01T12:30:00.000Z; no zone means "
        "UTC) or epoch milliseconds; an empty string counts as absent. After Segment's clock-skew correction it must lie within the "
        "source's age and future limits, or the event is quarantined.",
        "anyOf": [
            {"type": "string", "pattern": r"^$|^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}", "nullable": True},
            {"type": "number"},
        ],
    }
    free_object = {"type": "object", "additionalProperties": True, "nullable": True}
    text = {"type": "string", "nullable": True}
    common = {
        "messageId": {
            "type": "string",
            "maxLength": limits.max_message_id_length,
            "nullable": True,
            "description": "The dedupe key; derived from the content when absent.",
        },
        "anonymousId": identifier,
        "userId": identifier,
        "context": {
            **free_object,
            "description": "Context of the call. `context.consent.categoryPreferences` maps each "
            "purpose to true (granted) or false (denied).",
        },
        "integrations": free_object,
        "timestamp": timestamp,
        "originalTimestamp": timestamp,
        "sentAt": timestamp,
        "receivedAt": {"description": "Set by the server; a client value is ignored."},
    }
    user_or_anonymous = [{"required": ["userId"]}, {"required": ["anonymousId"]}]

    def call(
        extra: dict[str, Any], required: list[str] | None = None, ids: bool = True, **more: Any
    ) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {**common, **extra},
            "additionalProperties": True,
            **more,
        }
        if required:
            schema["required"] = required
        if ids:
            schema["anyOf"] = user_or_anonymous
        return schema

    events = {
        "Track": call({"event": {"type": "string", "pattern": r"\S"}, "properties": free_object}, ["event"]),
        "Identify": call(
            {"traits": {**free_object, "maxProperties": limits.max_identify_traits}},
        ),
        "Page": call({"name": text, "category": text, "properties": free_object}),
        "Screen": call({"name": text, "category": text, "properties": free_object}),
        "Group": call({"groupId": required_identifier, "traits": free_object}, ["groupId"]),
        "Alias": call(
            {"userId": required_identifier, "previousId": required_identifier},
            ["userId", "previousId"],
            ids=False,
        ),
    }
    batch_item = {
        "description": "One call of a batch; `type` names it. Batch-level `context`, `integrations` and "
        "`sentAt` apply to every item (an item's own keys win).",
        "anyOf": [
            {
                "allOf": [
                    _ref(f"{name}Event"),
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string", "enum": [name.lower()]}},
                    },
                ]
            }
            for name in events
        ],
    }
    write_key = {
        "type": "string",
        "nullable": True,
        "description": "The source's write key, for clients that cannot send basic auth.",
    }
    depth = (
        f"Events may nest objects and arrays at most {MAX_NESTING_DEPTH} levels deep (the event itself "
        "is level 1); a deeper one makes the whole request a 400 naming its field path, because no "
        "consumer could read it."
    )
    single_call = {
        "type": "object",
        "description": "One event, checked against its event schema (`x-onefold-event-schema` of the "
        "operation): what breaks it is quarantined with its reasons (200), not refused. " + depth,
        "properties": {"writeKey": write_key},
        "additionalProperties": True,
    }
    batch = {
        "type": "object",
        "description": "Many events; each item is checked against `BatchItem` and quarantined with its "
        "reasons (200) when it breaks it. " + depth,
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "maxItems": limits.max_batch_events, "items": {}},
            "context": {**free_object, "nullable": True},
            "integrations": {**free_object, "nullable": True},
            "sentAt": {
                "description": "Applies to every item; a bad value quarantines the items it applies to."
            },
            "writeKey": write_key,
        },
        "additionalProperties": True,
    }
    violation = {
        "type": "object",
        "required": ["path", "message", "rule"],
        "properties": {
            "path": {"type": "string", "description": "JSON pointer into the event"},
            "message": {"type": "string"},
            "rule": {"type": "string"},
        },
    }
    event_result = {
        "type": "object",
        "description": "An event that was not simply accepted: a duplicate, quarantined, or flagged by "
        "the tracking plan.",
        "required": ["index", "messageId", "status"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "messageId": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "duplicate", "quarantined"]},
            "kind": {
                "type": "string",
                "enum": [
                    "schema_violation",
                    "size_violation",
                    "protocol_violation",
                    "timestamp_violation",
                    "unplanned_event",
                ],
            },
            "quarantineId": {"type": "string"},
            "reasons": {"type": "array", "items": _ref("Violation")},
        },
    }
    success = {
        "type": "object",
        "required": ["success", "accepted", "duplicates", "quarantined"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "accepted": {"type": "integer", "minimum": 0},
            "duplicates": {"type": "integer", "minimum": 0},
            "quarantined": {"type": "integer", "minimum": 0},
            "events": {"type": "array", "items": _ref("EventResult")},
        },
    }
    error = {
        "type": "object",
        "required": ["success", "message", "reason"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "message": {"type": "string", "description": "One sentence for a person."},
            "reason": {"type": "string", "description": "Stable machine-readable reason"},
            "violations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "description"],
                    "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                },
            },
            "retryAfterSeconds": {"type": "number", "minimum": 0},
        },
    }
    health = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    }
    return {
        **{f"{name}Event": schema for name, schema in events.items()},
        "BatchItem": batch_item,
        "Call": single_call,
        "Batch": batch,
        "Violation": violation,
        "EventResult": event_result,
        "Success": success,
        "Error": error,
        "Health": health,
    }


def _post(
    summary: str, description: str, schema: str, event_schema: str, limit: int, limits: Limits
) -> dict[str, Any]:
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    return {
        "summary": summary,
        "description": f"{description}\n\nThe body is a JSON object of at most {limit} bytes "
        f"(after `Content-Encoding: gzip` is undone); each event at most {limits.max_event_bytes} bytes. "
        "Content-Type is not checked (browser SDKs send text/plain). Answers only after the events are "
        "durably recorded. An event that breaks the spec or the tracking plan is quarantined with its "
        "reasons; the request still succeeds.",
        "operationId": summary[0].lower() + summary[1:],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(schema)}}},
        "x-onefold-event-schema": f"#/components/schemas/{event_schema}",
        "responses": {
            "200": {
                "description": "Recorded: accepted, deduplicated or quarantined, as `events` details.",
                "content": {JSON: {"schema": _ref("Success")}},
            },
            "400": _error_response(
                "The request is unusable: not UTF-8, not JSON, not an object, too large, too many events, "
                f"or an event nested more than {MAX_NESTING_DEPTH} levels deep."
            ),
            "401": _error_response(
                "Missing or unknown write key.",
                {"WWW-Authenticate": {"schema": {"type": "string"}}},
            ),
            "403": _error_response("The source is disabled."),
            "415": _error_response("A Content-Encoding other than gzip, deflate or identity."),
            "429": _error_response("The source is over its rate limit.", retry_after),
            "503": _error_response("The service cannot record events right now; retry.", retry_after),
        },
    }


def openapi_document(limits: Limits = DEFAULT_LIMITS, server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for call, (name, text) in CALL_DOCS.items():
        paths[f"/v1/{call}"] = {
            "post": _post(name, text, "Call", f"{name}Event", limits.max_event_bytes, limits)
        }
    for path in BATCH_PATHS:
        operation = _post(
            "Batch",
            f"Many calls in one request (at most {limits.max_batch_events} events); "
            "`/v1/b` is the same endpoint.",
            "Batch",
            "BatchItem",
            limits.max_batch_bytes,
            limits,
        )
        if path != BATCH_PATHS[0]:
            operation["operationId"] = "batchShort"
        paths[path] = {"post": operation}
    paths["/health"] = {
        "get": {
            "summary": "Liveness of the HTTP listener",
            "operationId": "health",
            "security": [],
            "responses": {
                "200": {"description": "Serving", "content": {JSON: {"schema": _ref("Health")}}},
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "security": [],
            "responses": {
                "200": {
                    "description": "OpenAPI 3 document",
                    "content": {JSON: {"schema": {"type": "object"}}},
                }
            },
        }
    }
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Onefold tracking API",
            "version": "1.0.0",
            "description": "Compatible with the Segment HTTP tracking API: point a Segment or RudderStack "
            "SDK at this host. Authenticate with the source's write key as the basic-auth user name and "
            "an empty password (or `writeKey` in the body).",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(limits),
            "securitySchemes": {
                "writeKey": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "The write key as the user name, empty password.",
                }
            },
        },
        "security": [{"writeKey": []}],
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
