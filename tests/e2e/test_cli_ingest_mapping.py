"""The import's client side, in process: CSV/NDJSON lines -> Segment calls -> TrackingEvents, with
line numbers for the lines that cannot become one (the service does every semantic check)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from onefold.cli.client import CliError
from onefold.cli.import_mapping import CallType, map_columns
from onefold.cli.importer import (
    BadRecord,
    default_message_id,
    file_digest,
    read_csv,
    read_csv_header,
    read_ndjson,
    to_event,
)
from onefold.cli.sources import parse_source_documents, plan_from_document, plans_equal
from onefold.contracts.ingest.v1 import ingest_pb2 as pb


def test_csv_columns_map_to_ids_traits_properties_and_dotted_objects(tmp_path: Path) -> None:
    people = tmp_path / "people.csv"
    people.write_text(
        "User_ID,anonymousId,email,name,traits.company.name,context.ip\nu1,,a@example.com,Ann,Acme,10.0.0.1\n"
    )
    [identify] = [r.document for r in read_csv(people, map_columns(read_csv_header(people), None))]
    assert identify == {
        "userId": "u1",
        "type": "identify",
        "traits": {"company": {"name": "Acme"}, "email": "a@example.com", "name": "Ann"},
        "context": {"ip": "10.0.0.1"},
    }
    orders = tmp_path / "orders.csv"
    orders.write_text("userId,anonymousId,Event,price,properties.sku\nu2,anon-2,Order Completed,9.99,SKU-1\n")
    [track] = [r.document for r in read_csv(orders, map_columns(read_csv_header(orders), None))]
    assert track == {
        "userId": "u2",
        "anonymousId": "anon-2",
        "event": "Order Completed",
        "type": "track",
        "properties": {"sku": "SKU-1", "price": "9.99"},
    }


def test_csv_line_numbers_count_physical_lines_and_bad_rows_do_not_stop_reading(tmp_path: Path) -> None:
    data = tmp_path / "c.csv"
    data.write_bytes(b'userId,note\nu1,"two\nlines"\nu2\nu3,\xff\xfe\n\nu4,ok\n')
    records = list(read_csv(data, map_columns(read_csv_header(data), CallType.identify)))
    assert [(r.line, r.error) for r in records] == [
        (2, None),
        (4, "has 1 fields; the header has 2"),
        (5, "the line is not valid UTF-8"),
        (7, None),
    ]


def test_ndjson_bad_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    data = tmp_path / "e.ndjson"
    data.write_text('{"type": "track", "event": "A", "userId": "u"}\n{nope\n\n[1]\n{"n": NaN}\n')
    records = list(read_ndjson(data))
    assert [r.line for r in records] == [1, 2, 4, 5]
    assert records[0].error is None
    assert "not valid JSON" in (records[1].error or "")
    assert "JSON object" in (records[2].error or "")
    assert "NaN" in (records[3].error or "")


def test_documents_become_tracking_events_and_the_service_gets_the_rest() -> None:
    event = to_event(
        {
            "type": "track",
            "userId": 42,
            "event": "Viewed",
            "properties": {"n": 1},
            "timestamp": "2024-01-02T03:04:05+02:00",
            "receivedAt": "ignored",
            "channel": "server",
        },
        None,
        "mid-1",
    )
    assert event.type == pb.EVENT_TYPE_TRACK and event.user_id == "42" and event.message_id == "mid-1"
    assert event.timestamp.ToJsonString() == "2024-01-02T01:04:05Z"
    assert MessageToDict(event.extra) == {"channel": "server"}
    assert to_event({"messageId": "own", "traits": {}}, None, "x").message_id == "own"
    for bad, reason in (
        ({"type": "teleport"}, "type must be one of"),
        ({"type": "track", "event": ["x"]}, "event must be a string"),
        ({"type": "track", "properties": []}, "properties must be a JSON object"),
        ({"type": "track", "timestamp": "soon"}, "ISO-8601"),
        ({"type": "track", "properties": {"big": 2**60}}, r"2\^53"),
        ({"userId": "u"}, "call type is unknown"),
    ):
        with pytest.raises(BadRecord, match=reason):
            to_event(bad, None, "x")


def test_message_ids_are_a_deterministic_hash_of_the_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "f"
    data.write_bytes(b"a\nb")
    sha, lines = file_digest(data)
    assert lines == 2
    assert default_message_id(sha, 2) == default_message_id(sha, 2) != default_message_id(sha, 3)
    # The same CSV line sent under another mapping is another event, not a duplicate to drop.
    assert default_message_id(sha, 2, "mapping-a") != default_message_id(sha, 2, "mapping-b")


def test_plans_compare_by_content_and_unknown_keys_are_named() -> None:
    plan = plan_from_document({"mode": "block", "events": {"A": {"type": "object"}}}, "p")
    source = pb.Source(tracking_plan=pb.TrackingPlan(version=3, mode=pb.PLAN_MODE_BLOCK))
    source.tracking_plan.event_schemas["A"] = '{ "type": "object" }'
    assert plans_equal(source, plan)
    assert not plans_equal(pb.Source(), plan)
    with pytest.raises(CliError, match="unknown key 'nmae'"):
        parse_source_documents([{"kind": "Source", "nmae": "x"}], "s.yaml")
    with pytest.raises(CliError, match="mode must be one of allow, flag, block"):
        plan_from_document({"mode": "strict"}, "p")
