"""Fuzz the HTTP tracking API from its own OpenAPI document (schemathesis), against the real server
and application: no 5xx for anything, every answer conforms to the document (status, content type,
headers, body schema), every request the document calls valid is accepted (2xx), and every request
it calls invalid is refused (4xx): the document states exactly the server's 400 boundary.

Valid (positive) and invalid (negative) requests are generated for every operation with a fixed
seed. The request schemas hold only what a 400 enforces (not JSON, not an object, `batch` not an
array or too long, a non-string writeKey, ...); an event that breaks its event schema (a track
without `event`, no userId/anonymousId) is *quarantined* with its reasons and answered 200, as
Segment answers 200, so the event schemas are documented apart (`x-onefold-event-schema`) and a
generated event that breaks them is checked to come back quarantined, not accepted.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_ingest_grpc_harness import Harness, ingest, shared_nats  # noqa: F401

from onefold.ingest.entrypoints.http import HttpServer
from onefold.ingest.entrypoints.http_openapi import BATCH_PATHS, CALL_DOCS

EXAMPLES_PER_OPERATION_AND_MODE = 30
EVENT_EXAMPLES_PER_OPERATION = 60
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def run_operation(
    operation: Any, mode: GenerationMode, base_url: str, auth: str, statuses: Counter[tuple[str, str, int]]
) -> None:
    checks = [
        *CONFORMANCE,
        positive_data_acceptance if mode is GenerationMode.POSITIVE else negative_data_rejection,
    ]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        derandomize=True,  # a fixed seed: the same requests every run
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, headers={"Authorization": auth}, checks=checks)
        statuses[(operation.label, mode.value, response.status_code)] += 1

    run()


def fuzz(base_url: str, write_key: str) -> tuple[Counter[tuple[str, str, int]], list[str]]:
    """Blocking (schemathesis calls with requests): run in a thread beside the server's loop."""
    document = httpx.get(f"{base_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    auth = httpx.BasicAuth(write_key, "")._auth_header
    statuses: Counter[tuple[str, str, int]] = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            try:
                run_operation(operation, mode, base_url, auth, statuses)
            except Exception as exc:  # collect every operation's failure, not just the first
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return statuses, failures


@pytest.mark.timeout(120)
async def test_schemathesis_finds_no_5xx_and_the_api_conforms_to_its_document(ingest: Harness) -> None:  # noqa: F811
    created = await ingest.create_source("fuzzed")
    server = ingest.http
    assert isinstance(server, HttpServer)
    statuses, failures = await asyncio.to_thread(fuzz, server.url, created.write_key)
    assert not failures, "\n\n".join(failures)
    assert not [key for key in statuses if key[2] >= 500]
    # Every call type was exercised with valid data and accepted (200), and invalid data got 4xx too.
    for path in (
        "/v1/track",
        "/v1/identify",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/v1/b",
    ):
        assert statuses[(f"POST {path}", "positive", 200)] > 0, path
        assert any(
            key[0] == f"POST {path}" and key[1] == "negative" and 400 <= key[2] < 500 for key in statuses
        ), path
    total = sum(statuses.values())
    assert total >= 8 * EXAMPLES_PER_OPERATION_AND_MODE


def event_documents(document: dict[str, Any]) -> dict[str, Any]:
    """The document with each single call's request body replaced by its event schema."""
    derived = copy.deepcopy(document)
    for path, item in derived["paths"].items():
        operation = item.get("post")
        if operation is None or path in BATCH_PATHS:
            continue
        event_schema = operation["x-onefold-event-schema"]
        operation["requestBody"]["content"]["application/json"]["schema"] = {"$ref": event_schema}
    return derived


def fuzz_events(base_url: str, write_key: str) -> tuple[Counter[str], list[str]]:
    """Invalid events by their event schemas: each must be refused (400, when it is not even an
    object) or quarantined, never accepted."""
    document = httpx.get(f"{base_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(event_documents(document))
    auth = httpx.BasicAuth(write_key, "")._auth_header
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "POST" or operation.path in BATCH_PATHS:
            continue

        @settings(
            max_examples=EVENT_EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        def run(case: Any) -> None:
            if case.meta is None or not case.meta.is_negative_at(ParameterLocation.BODY):
                outcomes["skipped"] += 1
                return  # a negative header or the like: the write key sent below makes it valid
            response = case.call(base_url=base_url, headers={"Authorization": auth})
            if response.status_code == 400:
                outcomes["refused"] += 1
                return
            body = response.json()
            if response.status_code != 200 or body["accepted"] != 0 or body["quarantined"] != 1:
                failures.append(
                    f"{case.operation.label}: {response.status_code} {response.text[:300]} for {case.body!r:.3000}"
                )
            outcomes["quarantined"] += 1

        run()
    return outcomes, failures


@pytest.mark.timeout(120)
async def test_an_event_its_event_schema_refuses_is_quarantined_never_accepted(ingest: Harness) -> None:  # noqa: F811
    created = await ingest.create_source("fuzzed events")
    server = ingest.http
    assert isinstance(server, HttpServer)
    outcomes, failures = await asyncio.to_thread(fuzz_events, server.url, created.write_key)
    assert not failures, "\n".join(failures[:20])
    assert outcomes["quarantined"] >= len(CALL_DOCS) * 10, outcomes
