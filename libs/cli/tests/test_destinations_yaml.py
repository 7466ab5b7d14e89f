"""Destinations from YAML (docs/destinations.md) to onefold.destinations.v1 and back: each kind
converts to the proto it means and reads back as written, durations are friendly, every mistake is
one sentence naming the document and the YAML path, and the other readers of `apply -f` leave
Destination documents alone."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from google.protobuf import struct_pb2

from onefold.cli.destinations_yaml import (
    destination_document,
    destination_from_document,
    duration_text,
    is_destination_document,
    parse_destination_documents,
    seconds_at,
    yaml_path,
)
from onefold.cli.journeys_yaml import parse_journey_documents
from onefold.cli.output import CliError
from onefold.cli.segments_yaml import YamlPath, parse_definition_documents
from onefold.cli.sources import parse_source_documents
from onefold.contracts.destinations.v1 import destinations_pb2 as pb

WEBHOOK = """
kind: Destination
name: crm-webhook
description: Orders and VIP membership to the CRM
purpose: crm_sync
webhook:
  url: "https://crm.example.com/hooks/onefold"
  batch_size: 1
  timeout: 10s
  max_in_flight: 16
  headers: {X-Team: growth}
events:
  - type: track
    name: Order Completed
    where:
      - {field: properties.total, op: gte, value: 100}
      - {field: properties.coupon, op: exists}
      - {field: context.campaign.source, op: in, value: [email, ads]}
    mapping: {order_id: properties.order_id, total: properties.total}
  - type: identify
segments: [vip]
traits: [email, plan]
retry: {max_attempts: 8, initial_backoff: 1s, max_backoff: 10m}
"""

TABLE = """
kind: Destination
name: crm_table
purpose: crm_sync
table: {url_env: CRM_DATABASE_URL, table: crm}
traits: ["*"]
"""

FILES = """
kind: Destination
name: exports
purpose: analytics
files: {directory: "s3://exports/onefold", format: parquet, endpoint: "http://127.0.0.1:9000", batch_size: 1000}
events: [{type: page}]
segments: [vip, churn_risk]
"""


def one(text: str) -> pb.Destination:
    return destination_from_document(yaml.safe_load(text), "f.yaml")


def refusal(text: str) -> str:
    with pytest.raises(CliError) as raised:
        parse_destination_documents(list(yaml.safe_load_all(text)), "f.yaml")
    message = raised.value.message
    assert "\n" not in message
    return message


def number(value: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=value)


def test_a_webhook_converts_to_the_destination_it_means() -> None:
    expected = pb.Destination(
        name="crm-webhook",
        description="Orders and VIP membership to the CRM",
        purpose="crm_sync",
        webhook=pb.Webhook(
            url="https://crm.example.com/hooks/onefold",
            headers={"X-Team": "growth"},
            batch_size=1,
            timeout_seconds=10,
            max_in_flight=16,
        ),
        events=[
            pb.EventFlow(
                type="track",
                name="Order Completed",
                where=[
                    pb.Filter(field="properties.total", op=pb.FILTER_OP_GTE, value=number(100)),
                    pb.Filter(field="properties.coupon", op=pb.FILTER_OP_EXISTS),
                    pb.Filter(
                        field="context.campaign.source",
                        op=pb.FILTER_OP_IN,
                        value=struct_pb2.Value(
                            list_value=struct_pb2.ListValue(
                                values=[
                                    struct_pb2.Value(string_value="email"),
                                    struct_pb2.Value(string_value="ads"),
                                ]
                            )
                        ),
                    ),
                ],
                mapping={"order_id": "properties.order_id", "total": "properties.total"},
            ),
            pb.EventFlow(type="identify"),
        ],
        segments=["vip"],
        traits=["email", "plan"],
        retry=pb.RetryPolicy(max_attempts=8, initial_backoff_seconds=1, max_backoff_seconds=600),
    )
    assert one(WEBHOOK) == expected


def test_a_table_and_files_convert_to_the_destinations_they_mean() -> None:
    assert one(TABLE) == pb.Destination(
        name="crm_table",
        purpose="crm_sync",
        table=pb.SqlTable(url_env="CRM_DATABASE_URL", table="crm"),
        traits=["*"],
    )
    assert one(TABLE.replace("url_env: CRM_DATABASE_URL", "url: sqlite:///crm.db")).table == pb.SqlTable(
        url="sqlite:///crm.db", table="crm"
    )
    assert one(FILES) == pb.Destination(
        name="exports",
        purpose="analytics",
        files=pb.Files(
            directory="s3://exports/onefold",
            format=pb.FILE_FORMAT_PARQUET,
            endpoint="http://127.0.0.1:9000",
            batch_size=1000,
        ),
        events=[pb.EventFlow(type="page")],
        segments=["vip", "churn_risk"],
    )
    assert one(FILES.replace("parquet", "CSV")).files.format == pb.FILE_FORMAT_CSV


@pytest.mark.parametrize("text", [WEBHOOK, TABLE, FILES], ids=["webhook", "table", "files"])
def test_each_kind_reads_back_as_written(text: str) -> None:
    written = yaml.safe_load(text)
    destination = one(text)
    assert destination_document(destination) == written
    # What `destinations get` prints is what `apply -f` reads: the same proto again.
    assert destination_from_document(destination_document(destination), "f.yaml") == destination


def test_unset_fields_stay_unwritten_so_the_services_defaults_show_as_defaults() -> None:
    minimal = one("kind: Destination\nname: d\npurpose: p\nwebhook: {url: 'http://h/x'}\nsegments: [vip]\n")
    assert minimal.webhook == pb.Webhook(url="http://h/x")
    assert not minimal.HasField("retry")
    assert destination_document(minimal) == {
        "kind": "Destination",
        "name": "d",
        "purpose": "p",
        "webhook": {"url": "http://h/x"},
        "segments": ["vip"],
    }


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("2d", 172_800.0),
        (3, 3.0),
        (2.5, 2.5),
        (None, 0.0),
    ],
)
def test_durations_are_friendly_and_numbers_are_seconds(written: Any, seconds: float) -> None:
    assert seconds_at(written, YamlPath("f.yaml")) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1s"), (0.5, "500ms"), (600, "10m"), (90, "90s"), (3600, "1h"), (1.25, "1250ms")],
)
def test_durations_read_back_in_their_largest_whole_unit(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
    assert seconds_at(text, YamlPath("f.yaml")) == seconds


D = "kind: Destination\nname: crm\npurpose: p\n"
HOOK = "webhook: {url: 'https://h/x'}\n"

ERRORS = [
    ("kind: Destination\npurpose: p\n" + HOOK, "f.yaml: name is required"),
    ("kind: Destination\nname: Crm\n" + HOOK, "f.yaml: name must be lower case letters, digits, _ and -"),
    (D + HOOK + "colour: red\n", "f.yaml (crm): colour is not a known key here"),
    (D + "segments: [vip]\n", "f.yaml (crm): needs exactly one of webhook, table, files (got none)"),
    (
        D + HOOK + "table: {url_env: X, table: t}\n",
        "f.yaml (crm): needs exactly one of webhook, table, files (got webhook, table)",
    ),
    (D + "webhook: https://h/x\n", "f.yaml (crm): webhook must be a mapping of url, headers"),
    (D + "webhook: {timeout: 1s}\n", "f.yaml (crm): webhook.url is required"),
    (D + "webhook: {url: 'ftp://h/x'}\n", "f.yaml (crm): webhook.url must be a http or https URL"),
    (
        D + "webhook: {url: 'https://h', retries: 3}\n",
        "f.yaml (crm): webhook.retries is not a known key here",
    ),
    (
        D + "webhook: {url: 'https://h', batch_size: 0}\n",
        "f.yaml (crm): webhook.batch_size must be a whole number from 1 to 1000",
    ),
    (
        D + "webhook: {url: 'https://h', batch_size: 1001}\n",
        "f.yaml (crm): webhook.batch_size must be a whole number from 1 to 1000",
    ),
    (
        D + "webhook: {url: 'https://h', batch_size: '10'}\n",
        "f.yaml (crm): webhook.batch_size must be a whole number",
    ),
    (
        D + "webhook: {url: 'https://h', max_in_flight: true}\n",
        "f.yaml (crm): webhook.max_in_flight must be a whole number",
    ),
    (
        D + "webhook: {url: 'https://h', timeout: 10 seconds}\n",
        "f.yaml (crm): webhook.timeout must be a duration like 10s",
    ),
    (
        D + "webhook: {url: 'https://h', timeout: 0}\n",
        "f.yaml (crm): webhook.timeout must be a duration like 10s, 500ms or 10m, or a number of seconds, above zero",
    ),
    (D + "webhook: {url: 'https://h', timeout: 0s}\n", "f.yaml (crm): webhook.timeout must be a duration"),
    (
        D + "webhook: {url: 'https://h', headers: [a]}\n",
        "f.yaml (crm): webhook.headers must map header names to values",
    ),
    (
        D + "webhook: {url: 'https://h', headers: {X-A: [1]}}\n",
        "f.yaml (crm): webhook.headers.X-A must be text",
    ),
    (D + "table: {table: t}\n", "f.yaml (crm): table needs exactly one of url_env, url (got none)"),
    (
        D + "table: {url_env: X, url: 'sqlite://', table: t}\n",
        "f.yaml (crm): table needs exactly one of url_env, url (got url_env, url)",
    ),
    (
        D + "table: {url: 'postgresql://u:secret@db/crm', table: t}\n",
        "f.yaml (crm): table.url holds a password",
    ),
    (D + "table: {url_env: X}\n", "f.yaml (crm): table.table is required"),
    (D + "table: {url_env: X, table: Crm-Table}\n", "f.yaml (crm): table.table must be lower case letters"),
    (D + "table: {url_env: X, table: t, schema: s}\n", "f.yaml (crm): table.schema is not a known key here"),
    (D + "files: {format: csv}\n", "f.yaml (crm): files.directory is required"),
    (D + "files: {directory: /x, format: xlsx}\n", "f.yaml (crm): files.format must be one of csv, parquet"),
    (
        D + "files: {directory: /x, batch_size: 100001}\n",
        "f.yaml (crm): files.batch_size must be a whole number from 1 to 100000",
    ),
    (D + HOOK + "events: {type: track}\n", "f.yaml (crm): events must be a list"),
    (
        D + HOOK + "events: [track]\n",
        "f.yaml (crm): events[0] must be a mapping of type, name, where, mapping",
    ),
    (D + HOOK + "events: [{name: X}]\n", "f.yaml (crm): events[0].type is required"),
    (
        D + HOOK + "events: [{type: alias}]\n",
        "f.yaml (crm): events[0].type must be one of track, identify, page, screen",
    ),
    (
        D + HOOK + "events: [{type: track, wher: []}]\n",
        "f.yaml (crm): events[0].wher is not a known key here",
    ),
    (
        D + HOOK + "events: [{type: track, where: {field: x}}]\n",
        "f.yaml (crm): events[0].where must be a list",
    ),
    (
        D + HOOK + "events: [{type: track, where: [{op: eq, value: 1}]}]\n",
        "f.yaml (crm): events[0].where[0].field is required",
    ),
    (
        D + HOOK + "events: [{type: track, where: [{field: x, value: 1}]}]\n",
        "f.yaml (crm): events[0].where[0].op is required",
    ),
    (
        D + HOOK + "events: [{type: track}, {type: track, where: [{field: x, op: bigger, value: 1}]}]\n",
        "f.yaml (crm): events[1].where[0].op must be one of eq, ne, gt, gte, lt, lte, in, exists, contains",
    ),
    (
        D + HOOK + "events: [{type: track, where: [{field: x, op: eq}]}]\n",
        "f.yaml (crm): events[0].where[0].value is required for eq",
    ),
    (
        D + HOOK + "events: [{type: track, where: [{field: x, op: in, value: a}]}]\n",
        "f.yaml (crm): events[0].where[0].value must be a list for in",
    ),
    (
        D + HOOK + "events: [{type: track, where: [{field: x, op: exists, value: true}]}]\n",
        "f.yaml (crm): events[0].where[0].value is not for exists",
    ),
    (
        D + HOOK + "events: [{type: track, where: [{field: x, op: eq, value: 2026-12-01}]}]\n",
        "f.yaml (crm): events[0].where[0].value must be JSON",
    ),
    (
        D + HOOK + "events: [{type: track, where: [{field: x, op: eq, value: 1, not: true}]}]\n",
        "f.yaml (crm): events[0].where[0].not is not a known key here",
    ),
    (
        D + HOOK + "events: [{type: track, mapping: [order_id]}]\n",
        "f.yaml (crm): events[0].mapping must map output fields to dotted paths",
    ),
    (
        D + HOOK + "events: [{type: track, mapping: {order_id: {path: x}}}]\n",
        "f.yaml (crm): events[0].mapping.order_id must be text",
    ),
    (D + HOOK + "segments: vip\n", "f.yaml (crm): segments must be a list"),
    (D + HOOK + "traits: [email, {plan: 1}]\n", "f.yaml (crm): traits[1] must be text"),
    (D + HOOK + "traits: ['']\n", "f.yaml (crm): traits[0] is required"),
    (
        D + HOOK + "retry: {max_attempts: 51}\n",
        "f.yaml (crm): retry.max_attempts must be a whole number from 1 to 50",
    ),
    (D + HOOK + "retry: {initial_backoff: soon}\n", "f.yaml (crm): retry.initial_backoff must be a duration"),
    (D + HOOK + "retry: {max_backoff: -5}\n", "f.yaml (crm): retry.max_backoff must be a duration"),
    (D + HOOK + "retry: {jitter: full}\n", "f.yaml (crm): retry.jitter is not a known key here"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1][:70] for e in ERRORS])
def test_each_mistake_is_one_sentence_naming_its_yaml_path(text: str, expected: str) -> None:
    assert refusal(text).startswith(expected)


def test_documents_are_numbered_and_a_name_given_twice_is_refused() -> None:
    text = "kind: Source\nname: web\n---\n" + D + "webhook: {url: 'https://h', timeout: later}\n"
    assert refusal(text).startswith("f.yaml (document 2) (crm): webhook.timeout must be a duration")
    twice = D + HOOK + "---\n" + D + "table: {url_env: X, table: t}\n"
    assert refusal(twice) == "f.yaml (document 2): destination name 'crm' is also used by f.yaml (document 1)"


def test_mixed_files_give_each_reader_its_own_documents() -> None:
    documents: list[Any] = list(
        yaml.safe_load_all(
            "kind: Source\nname: web\n---\n"
            + D
            + HOOK
            + "segments: [vip]\n---\n"
            + "kind: Segment\nname: vip\ncondition: {trait: plan, eq: gold}\n---\n"
            + "kind: Template\nname: t\nchannel: sms\ntext: hi\n"
        )
    )
    assert [d.name for d in parse_destination_documents(documents, "f.yaml")] == ["crm"]
    assert [s.name for s in parse_source_documents(documents, "f.yaml")] == ["web"]
    assert [s.definition.name for s in parse_definition_documents(documents, "f.yaml")] == ["vip"]
    assert [s.template.name for s in parse_journey_documents(documents, "f.yaml").templates] == ["t"]
    assert is_destination_document(documents[1]) and not is_destination_document(documents[0])


def test_a_misspelt_kind_names_the_destination_kinds() -> None:
    with pytest.raises(CliError) as raised:
        parse_source_documents([{"kind": "Destinaton", "name": "crm"}], "f.yaml")
    assert "destinations kind (Destination)" in raised.value.message
    assert "'Destinaton'" in raised.value.message


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("webhook.timeout_seconds", "webhook.timeout"),
        ("webhook.url", "webhook.url"),
        ("retry.initial_backoff_seconds", "retry.initial_backoff"),
        ("retry.max_backoff_seconds", "retry.max_backoff"),
        ("events[2].where[0].value", "events[2].where[0].value"),
        ("table.url_env", "table.url_env"),
    ],
)
def test_the_services_field_paths_read_as_yaml_paths(field: str, path: str) -> None:
    assert yaml_path(field) == path


def test_a_webhooks_credential_headers_name_environment_variables() -> None:
    [parsed] = parse_destination_documents(
        [
            {
                "kind": "Destination",
                "name": "crm",
                "purpose": "crm_sync",
                "webhook": {
                    "url": "https://crm.example.com/h",
                    "header_envs": {"Authorization": "CRM_TOKEN"},
                },
                "events": [{"type": "track"}],
            }
        ],
        "f.yaml",
    )
    assert dict(parsed.webhook.header_envs) == {"Authorization": "CRM_TOKEN"}
