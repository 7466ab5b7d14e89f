"""The Segment-compatible HTTP tracking API through a real HTTP server (uvicorn on a free port, as the
service composition starts it), backed by the real IngestApplication: SQLite log, group commit,
relay to a real nats-server. Each call type, every limit and error, gzip, auth, dedupe, isolation."""

from __future__ import annotations

import asyncio
import base64
import gzip
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from test_ingest_grpc_harness import ON_BOTH_DATABASES, Harness, ingest, shared_nats  # noqa: F401

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.ingest.entrypoints.http import HttpServer, serve
from onefold.platform.config import ConfigError, HttpSettings

# The Segment HTTP API documentation's examples (user 019mr8mf4r of Initech), with current times:
# the documented 2012 timestamps would be quarantined as too old.
USER = "019mr8mf4r"


def now(offset: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + offset).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def examples() -> dict[str, dict[str, Any]]:
    return {
        "identify": {
            "userId": USER,
            "traits": {"email": "pgibbons@example.com", "name": "Peter Gibbons", "industry": "Technology"},
            "context": {"ip": "24.5.68.47"},
            "timestamp": now(),
        },
        "track": {
            "userId": USER,
            "event": "Item Purchased",
            "properties": {"name": "Leap to Conclusions Mat", "revenue": 14.99},
            "context": {"ip": "24.5.68.47"},
            "timestamp": now(),
        },
        "page": {"userId": USER, "name": "Tracking HTTP API", "timestamp": now()},
        "screen": {"userId": USER, "name": "Tracking HTTP API", "timestamp": now()},
        "group": {
            "userId": USER,
            "groupId": "8e9df332ac",
            "traits": {"name": "Initech", "industry": "Technology", "employees": 420},
            "timestamp": now(),
        },
        "alias": {"previousId": "39239-239239-239239-23923", "userId": USER, "timestamp": now()},
    }


def batch_example() -> dict[str, Any]:
    return {
        "batch": [
            {
                "type": "identify",
                "userId": USER,
                "traits": {"email": "pgibbons@example.com", "name": "Peter Gibbons"},
                "timestamp": now(),
            },
            {
                "type": "track",
                "userId": USER,
                "event": "Song Played",
                "properties": {"name": "Fallin for You", "artist": "Dierks Bentley"},
                "timestamp": now(),
            },
            {"type": "identify", "userId": "971mj8mk7p", "traits": {"email": "npoge@example.com"}},
            {
                "type": "track",
                "userId": "971mj8mk7p",
                "event": "Song Played",
                "properties": {"name": "Get Right"},
            },
        ],
        "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}},
    }


class Api:
    """An HTTP client of one source of the harness's workspace."""

    def __init__(self, harness: Harness, client: httpx.AsyncClient, write_key: str, source_id: str) -> None:
        self.ingest, self.client, self.write_key, self.source_id = harness, client, write_key, source_id

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        content: bytes | None = None,
        key: str | None = "",
        **kwargs: Any,
    ) -> httpx.Response:
        key = self.write_key if key == "" else key
        auth = (key, "") if key is not None else None
        if content is None:
            content = orjson.dumps(body)
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return await self.client.post(path, content=content, auth=auth, headers=headers, **kwargs)


@pytest.fixture
async def http(ingest: Harness) -> AsyncIterator[Api]:  # noqa: F811
    created = await ingest.create_source("website")
    server = ingest.http
    assert isinstance(server, HttpServer)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield Api(ingest, client, created.write_key, created.source.source_id)


def ok(
    response: httpx.Response, accepted: int = 1, duplicates: int = 0, quarantined: int = 0
) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is True
    assert (body["accepted"], body["duplicates"], body["quarantined"]) == (
        accepted,
        duplicates,
        quarantined,
    ), body
    return body


def error(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["reason"] == reason and body["message"], body
    assert "Traceback" not in response.text
    return body


# --- each call type ----------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["track", "identify", "page", "screen", "group", "alias"])
async def test_each_call_type_of_the_segment_docs_is_recorded(http: Api, call: str) -> None:
    body = examples()[call]
    ok(await http.post(f"/v1/{call}", body))
    [recorded] = http.ingest.accepted()
    assert pb.EventType.Name(recorded.event.type) == f"EVENT_TYPE_{call.upper()}"
    assert recorded.event.user_id == USER and recorded.event.message_id  # derived when the SDK sent none
    assert recorded.workspace == http.ingest.workspace and recorded.source_id == http.source_id
    if call == "track":
        assert recorded.event.event == "Item Purchased"
        assert dict(recorded.event.properties) == {"name": "Leap to Conclusions Mat", "revenue": 14.99}
    if call == "alias":
        assert recorded.event.previous_id == "39239-239239-239239-23923"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b"])
async def test_batch_applies_batch_level_context_and_answers_after_commit(http: Api, path: str) -> None:
    ok(await http.post(path, batch_example()), accepted=4)
    recorded = http.ingest.accepted()
    assert [e.event.user_id for e in recorded] == [USER, USER, "971mj8mk7p", "971mj8mk7p"]
    assert all(e.event.context["device"]["name"] == "Apple iPhone 6" for e in recorded)


async def test_write_key_in_the_body_as_some_sdks_send_it(http: Api) -> None:
    body = {**examples()["track"], "writeKey": http.write_key}
    ok(await http.post("/v1/track", body, key=None))
    ok(await http.post("/v1/batch", {**batch_example(), "writeKey": http.write_key}, key=None), accepted=4)
    # The credential is never stored with the event.
    assert all("writeKey" not in e.event.extra for e in http.ingest.accepted())


async def test_browser_sdks_text_plain_and_cors(http: Api) -> None:
    ok(await http.post("/v1/page", examples()["page"], headers={"Content-Type": "text/plain"}))
    preflight = await http.client.options(
        "/v1/track",
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()


# --- dedupe and quarantine, visible in the answer -------------------------------------------------


@ON_BOTH_DATABASES
async def test_dedupe_on_message_id_is_visible_through_the_api(http: Api) -> None:
    event = {**examples()["track"], "messageId": "m-" + uuid.uuid4().hex}
    ok(await http.post("/v1/track", event))
    again = ok(await http.post("/v1/track", event), accepted=0, duplicates=1)
    assert again["events"] == [{"index": 0, "messageId": event["messageId"], "status": "duplicate"}]
    # Within one batch, and against earlier requests, each messageId is accepted once.
    fresh = {**examples()["track"], "type": "track", "messageId": "m-" + uuid.uuid4().hex}
    body = ok(
        await http.post("/v1/batch", {"batch": [fresh, {**event, "type": "track"}, fresh]}),
        accepted=1,
        duplicates=2,
    )
    assert [(e["index"], e["status"]) for e in body["events"]] == [(1, "duplicate"), (2, "duplicate")]
    assert len(http.ingest.accepted()) == 2


@ON_BOTH_DATABASES
async def test_a_bad_event_in_a_batch_is_quarantined_not_a_400(http: Api) -> None:
    good = {"type": "track", "userId": "u1", "event": "Signed Up"}
    no_ids = {"type": "track", "event": "Orphan"}
    oversize = {"type": "track", "userId": "u2", "event": "Big", "properties": {"blob": "x" * 33_000}}
    body = ok(await http.post("/v1/batch", {"batch": [good, no_ids, oversize, "not an object"]}), 1, 0, 3)
    kinds = {e["index"]: e["kind"] for e in body["events"]}
    assert kinds == {1: "protocol_violation", 2: "size_violation", 3: "protocol_violation"}
    assert all(e["status"] == "quarantined" and e["quarantineId"] and e["reasons"] for e in body["events"])
    assert body["events"][0]["reasons"][0]["path"] == "/userId"
    listed, _ = await http.ingest.app.list_quarantined(http.ingest.workspace)
    assert {q.quarantine_id for q in listed} == {e["quarantineId"] for e in body["events"]}


async def test_a_single_call_missing_its_ids_is_quarantined_with_reasons(http: Api) -> None:
    body = ok(await http.post("/v1/track", {"event": "No One"}), 0, 0, 1)
    [detail] = body["events"]
    assert detail["kind"] == "protocol_violation"
    assert {"path": "/userId", "message": "userId or anonymousId is required", "rule": "required"} in detail[
        "reasons"
    ]


# --- limits: 400, as Segment answers --------------------------------------------------------------


async def test_limits_32kb_per_call_500kb_per_batch_2500_events(http: Api) -> None:
    def padded(size: int) -> bytes:
        base = orjson.dumps({"userId": "u", "event": "E", "properties": {"pad": ""}})
        return base.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(base)) + b'"')

    assert len(padded(32 * 1024)) == 32 * 1024
    ok(await http.post("/v1/track", content=padded(32 * 1024)))
    too_big = error(await http.post("/v1/track", content=padded(32 * 1024 + 1)), 400, "PAYLOAD_TOO_LARGE")
    assert "32768 bytes" in too_big["message"]

    item = {"type": "track", "userId": "u", "event": "E", "properties": {"pad": "x" * 900}}
    big_batch = orjson.dumps({"batch": [item] * 560})
    assert len(big_batch) > 500 * 1024
    error(await http.post("/v1/batch", content=big_batch), 400, "PAYLOAD_TOO_LARGE")
    # Refused before the body is read (a wrong key): the rest is drained, so the client reads the
    # answer instead of a connection reset it would retry forever; the connection stays usable.
    error(await http.post("/v1/batch", content=big_batch, key="wrong"), 401, "CREDENTIAL_INVALID")
    ok(await http.post("/v1/track", examples()["track"]))

    small = {"type": "track", "userId": "u", "event": "E", "messageId": ""}
    many = error(await http.post("/v1/batch", {"batch": [small] * 2501}), 400, "PAYLOAD_TOO_LARGE")
    assert "2500" in many["message"] and many["violations"][0]["field"] == "batch"
    items = [{**small, "messageId": f"m{i}"} for i in range(2500)]
    ok(await http.post("/v1/batch", {"batch": items}), accepted=2500)
    assert len(http.ingest.accepted()) == 2502


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"userId": "u", "event": ', "not valid JSON"),
        (b'{"userId": "\xff\xfe", "event": "E"}', "not valid UTF-8"),
        (b'["not", "an", "object"]', "must be a JSON object"),
        (b"", "not valid JSON"),
    ],
)
async def test_unusable_bodies_are_400_with_a_sentence(http: Api, content: bytes, message: str) -> None:
    body = error(await http.post("/v1/track", content=content), 400, "VALIDATION_FAILED")
    assert message in body["message"] and body["violations"][0]["field"] == "body"


async def test_a_malformed_batch_envelope_is_400(http: Api) -> None:
    error(await http.post("/v1/batch", {"batch": {"type": "track"}}), 400, "VALIDATION_FAILED")
    error(await http.post("/v1/batch", {"batch": [], "context": "phone"}), 400, "VALIDATION_FAILED")
    error(
        await http.post("/v1/track", {**examples()["track"], "writeKey": 7}, key=None),
        400,
        "VALIDATION_FAILED",
    )


# --- gzip -----------------------------------------------------------------------------------------


async def test_gzip_and_deflate_bodies(http: Api) -> None:
    ok(
        await http.post(
            "/v1/batch",
            content=gzip.compress(orjson.dumps(batch_example())),
            headers={"Content-Encoding": "gzip"},
        ),
        accepted=4,
    )
    ok(
        await http.post(
            "/v1/track",
            content=zlib.compress(orjson.dumps(examples()["track"])),
            headers={"Content-Encoding": "deflate"},
        )
    )
    # Two gzip members back to back are one valid gzip body.
    raw = orjson.dumps(examples()["page"])
    ok(
        await http.post(
            "/v1/page",
            content=gzip.compress(raw[:10]) + gzip.compress(raw[10:]),
            headers={"Content-Encoding": "gzip"},
        )
    )


async def test_gzip_bomb_stops_at_the_limit(http: Api) -> None:
    # 50 MB of spaces inside a valid batch compress to ~50 KB; decompression stops past 500 KB.
    bomb = gzip.compress(b'{"batch": [' + b" " * (50 * 1024 * 1024) + b"]}", compresslevel=9)
    assert len(bomb) < 100 * 1024
    body = error(
        await http.post("/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"}),
        400,
        "PAYLOAD_TOO_LARGE",
    )
    assert "decompressed" in body["message"]  # refused by the streaming limit, not after inflating 50 MB
    # A single call's limit applies after decompression too.
    event = {"userId": "u", "event": "E", "properties": {"pad": "a" * 40_000}}
    error(
        await http.post(
            "/v1/track", content=gzip.compress(orjson.dumps(event)), headers={"Content-Encoding": "gzip"}
        ),
        400,
        "PAYLOAD_TOO_LARGE",
    )


async def test_broken_or_unknown_encodings(http: Api) -> None:
    raw = orjson.dumps(examples()["track"])
    error(
        await http.post("/v1/track", content=raw, headers={"Content-Encoding": "gzip"}),
        400,
        "VALIDATION_FAILED",
    )
    truncated = gzip.compress(raw)[:-12]
    body = error(
        await http.post("/v1/track", content=truncated, headers={"Content-Encoding": "gzip"}),
        400,
        "VALIDATION_FAILED",
    )
    assert "ends before" in body["message"]
    error(
        await http.post("/v1/track", content=raw, headers={"Content-Encoding": "br"}),
        415,
        "VALIDATION_FAILED",
    )
    assert http.ingest.accepted() == []


# --- authentication and workspaces ----------------------------------------------------------------


async def test_missing_malformed_and_wrong_write_keys_are_401(http: Api) -> None:
    body = examples()["track"]
    missing = await http.post("/v1/track", body, key=None)
    error(missing, 401, "CREDENTIAL_MISSING")
    assert missing.headers["www-authenticate"].startswith("Basic")
    error(await http.post("/v1/track", body, key="ofw_" + "x" * 32), 401, "CREDENTIAL_INVALID")
    error(await http.post("/v1/track", {**body, "writeKey": "nope"}, key=None), 401, "CREDENTIAL_INVALID")
    error(
        await http.post("/v1/track", body, key=None, headers={"Authorization": "Basic %%%not-base64"}),
        401,
        "CREDENTIAL_INVALID",
    )
    # The write key in the header wins over one in the body.
    error(
        await http.post("/v1/track", {**body, "writeKey": http.write_key}, key="wrong"),
        401,
        "CREDENTIAL_INVALID",
    )
    # A password is ignored (some SDKs send the key as both), as Segment ignores it.
    basic = base64.b64encode(f"{http.write_key}:{http.write_key}".encode()).decode()
    ok(await http.post("/v1/track", body, key=None, headers={"Authorization": f"Basic {basic}"}))
    assert len(http.ingest.accepted()) == 1


async def test_another_workspaces_write_key_cannot_see_or_affect_the_first(http: Api) -> None:
    other_workspace = f"other-{uuid.uuid4().hex[:6]}"
    other_admin = http.ingest.token(["admin"], workspace=other_workspace)
    other = await http.ingest.create_source("their site", token=other_admin)
    event = {**examples()["track"], "messageId": "shared-" + uuid.uuid4().hex}

    ok(await http.post("/v1/track", event))
    # The same messageId from the other workspace is theirs: accepted, not a duplicate of ours.
    ok(await http.post("/v1/track", event, key=other.write_key))
    ok(await http.post("/v1/track", event), accepted=0, duplicates=1)
    # Their quarantine is theirs; ours stays empty.
    quarantined = ok(await http.post("/v1/track", {"event": "no ids"}, key=other.write_key), 0, 0, 1)
    ours, _ = await http.ingest.app.list_quarantined(http.ingest.workspace)
    theirs, _ = await http.ingest.app.list_quarantined(other_workspace)
    assert ours == [] and [q.quarantine_id for q in theirs] == [quarantined["events"][0]["quarantineId"]]
    by_workspace = {(e.workspace, e.source_id) for e in http.ingest.accepted()}
    assert by_workspace == {
        (http.ingest.workspace, http.source_id),
        (other_workspace, other.source.source_id),
    }


async def test_a_disabled_source_is_403(http: Api) -> None:
    admin = http.ingest.stub(http.ingest.admin_token)
    await admin.DisableSource(pb.DisableSourceRequest(source_id=http.source_id))
    error(await http.post("/v1/track", examples()["track"]), 403, "FAILED_PRECONDITION")


async def test_rate_limit_is_429_with_retry_after(http: Api) -> None:
    limited = await http.ingest.create_source("slow", rate=1)
    still = http.ingest.app.clock()
    http.ingest.app.clock = lambda: still  # no refill while the burst is sent, however slow the machine
    item = {"type": "track", "userId": "u", "event": "E"}
    # The bucket holds one full batch: the first 2,500 events pass, the next call does not.
    ok(
        await http.post(
            "/v1/batch",
            {"batch": [{**item, "messageId": f"r{i}"} for i in range(2500)]},
            key=limited.write_key,
        ),
        2500,
    )
    response = await http.post("/v1/track", item, key=limited.write_key)
    body = error(response, 429, "RATE_LIMITED")
    assert int(response.headers["retry-after"]) >= 1
    assert body["retryAfterSeconds"] > 0
    # Another source is not slowed down by it.
    ok(await http.post("/v1/track", item))


# --- the rest of the surface ----------------------------------------------------------------------


async def test_health_openapi_unknown_paths_and_methods(http: Api) -> None:
    assert (await http.client.get("/health")).json() == {"status": "ok"}
    document = (await http.client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert {p for p in document["paths"] if p.startswith("/v1/")} == {
        "/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias", "/v1/batch", "/v1/b",
    }  # fmt: skip
    assert document["components"]["securitySchemes"]["writeKey"] == {
        "type": "http",
        "scheme": "basic",
        "description": "The write key as the user name, empty password.",
    }
    missing = error(await http.post("/v1/identfy", {}), 404, "NOT_FOUND")
    assert missing["message"] == (
        "no such endpoint: /v1/identfy; the tracking API takes POST to /v1/track, /v1/identify, "
        "/v1/page, /v1/screen, /v1/group, /v1/alias, /v1/batch"
    )
    wrong_method = await http.client.get("/v1/track")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["message"] == "GET is not allowed on /v1/track; it takes POST"
    # Starlette lists the allowed methods in no fixed order: the message names them as Allow does.
    health = await http.client.post("/health")
    assert health.json()["message"] == f"POST is not allowed on /health; it takes {health.headers['allow']}"


async def test_serve_binds_a_free_port_and_refuses_a_taken_one(http: Api) -> None:
    taken = http.ingest.http
    assert taken is not None and taken.port > 0
    with pytest.raises(ConfigError, match=f"port {taken.port} .* already in use"):
        await serve(http.ingest.app, HttpSettings(port=taken.port)).start()


async def test_stop_lets_requests_in_flight_finish(http: Api) -> None:
    server = serve(http.ingest.app, HttpSettings(port=0))
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        # Headers now, the body later: the request is in flight while the server stops.
        gate = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield b'{"userId": "late", '
            await gate.wait()
            yield b'"event": "Still Counted"}'

        request = asyncio.create_task(
            client.post("/v1/track", content=slow_body(), auth=(http.write_key, ""))
        )
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()
        gate.set()
        ok(await request)
        await stopping
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.get("/health")
    assert [e.event.user_id for e in http.ingest.accepted()] == ["late"]
