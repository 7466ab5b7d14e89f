"""The CSV column -> Segment field rules of `onefold import` (docs/import.md), as a pure function of the
header and the --map choices."""

from __future__ import annotations

import pytest

from onefold.cli.import_mapping import (
    CallType,
    MappingError,
    map_columns,
    parse_map_document,
    parse_map_options,
)


def fields(header: list[str], call: CallType | None = None, explicit: dict[str, str] | None = None) -> dict:
    mapping = map_columns(header, call, explicit)
    assert mapping.ok, mapping.problem()
    return {c.column: c.field for c in mapping.columns}


def refused(header: list[str], call: CallType | None = None, explicit: dict[str, str] | None = None) -> dict:
    mapping = map_columns(header, call, explicit)
    assert not mapping.ok
    return {r.column: r.reason for r in mapping.refused}


def test_identify_plain_columns_are_traits_and_reserved_traits_take_segments_spelling() -> None:
    assert fields(["User_ID", "name", "first_name", "E-Mail", "plan", "Plan Type", "created at"]) == {
        "User_ID": "userId",
        "name": "traits.name",  # the probe's bug: never a top-level field
        "first_name": "traits.firstName",
        "E-Mail": "traits.email",
        "plan": "traits.plan",
        "Plan Type": "traits.Plan Type",
        "created at": "traits.createdAt",
    }


def test_track_plain_columns_are_properties_and_an_event_column_makes_it_a_track_import() -> None:
    mapping = map_columns(["anonymous_id", "Event", "name", "revenue", "timestamp"], None)
    assert mapping.call_type is CallType.track and mapping.ok
    assert [c.field for c in mapping.columns] == [
        "anonymousId",
        "event",
        "properties.name",
        "properties.revenue",
        "timestamp",
    ]


def test_dotted_columns_go_into_the_objects_of_the_call() -> None:
    assert fields(["userId", "traits.company.name", "Context.ip"]) == {
        "userId": "userId",
        "traits.company.name": "traits.company.name",
        "Context.ip": "context.ip",
    }
    assert fields(["userId", "event", "properties.sku", "context.traits.email"]) == {
        "userId": "userId",
        "event": "event",
        "properties.sku": "properties.sku",
        "context.traits.email": "context.traits.email",
    }


def test_columns_that_cannot_be_placed_are_refused_with_the_reason() -> None:
    reasons = refused(
        ["userId", "groupId", "receivedAt", "foo.bar", "properties.sku", "traits", "traits..x", "", "userId"],
        CallType.identify,
    )
    assert reasons["groupId"] == "groupId belongs to group calls"
    assert reasons["receivedAt"] == "receivedAt is set by the service"
    assert "'foo' is not an object of identify calls" in reasons["foo.bar"]
    assert "identify calls carry no properties" in reasons["properties.sku"]
    assert "use traits.KEY columns" in reasons["traits"]
    assert "empty part" in reasons["traits..x"]
    assert reasons["column 8"] == "it has no name in the header row"
    assert reasons["userId"] == "the header names it twice"
    assert "context.traits" in refused(["userId", "event", "traits.plan"])["traits.plan"]
    assert "event names track calls" in refused(["userId", "event"], CallType.identify)["event"]


def test_columns_landing_on_the_same_field_are_refused() -> None:
    assert refused(["userId", "email", "traits.email"]) == {
        "traits.email": "it maps to traits.email, as does column 'email'"
    }
    assert (
        "as does column 'traits.company'"
        in refused(["userId", "traits.company", "traits.company.name"])["traits.company.name"]
    )


def test_an_import_without_an_id_or_a_track_import_without_an_event_is_refused() -> None:
    assert map_columns(["email"], None).missing == (
        "no column gives the userId or anonymousId every call needs",
    )
    assert map_columns(["userId", "sku"], CallType.track).missing == (
        "a track import needs an event column (the event name)",
    )


def test_explicit_mapping_renames_skips_and_is_checked_like_the_rest() -> None:
    explicit = {"Full Name": "traits.name", "groupId": "-", "customer": "userId", "tier": "traits.plan"}
    assert fields(["customer", "Full Name", "groupId", "tier"], None, explicit) == {
        "customer": "userId",
        "Full Name": "traits.name",
        "groupId": None,
        "tier": "traits.plan",
    }
    assert map_columns(["customer", "what"], None, {"customer": "userId", "what": "-"}).columns[1].rule == (
        "skipped (--map)"
    )
    reasons = refused(["userId", "x"], None, {"x": "groupId", "nope": "traits.y"})
    assert "--map x=groupId: 'groupId' is not a top-level field of identify calls" in reasons["x"]
    assert reasons["nope"] == "--map names it but the header has no such column"
    # A column mapped to event makes the import a track import.
    assert map_columns(["userId", "what"], None, {"what": "event"}).call_type is CallType.track


def test_the_refusal_names_columns_and_how_to_map_them_never_values() -> None:
    mapping = map_columns(["userId", "groupId"], None)
    problem = mapping.problem()
    assert "'groupId' (groupId belongs to group calls)" in problem
    assert "--map COLUMN=FIELD" in problem and "--map COLUMN=-" in problem and "docs/import.md" in problem


def test_rows_become_calls_and_empty_cells_are_absent() -> None:
    mapping = map_columns(["userId", "name", "traits.company.name", "type"], None)
    assert mapping.document(["u1", "Ann", "", "Identify"]) == {
        "userId": "u1",
        "traits": {"name": "Ann"},
        "type": "identify",
    }
    with pytest.raises(ValueError, match="another call type than this identify import"):
        mapping.document(["u1", "Ann", "", "track"])


def test_map_options_and_map_files_are_parsed_or_refused_in_one_sentence() -> None:
    assert parse_map_options(["a=b=traits.c", " Name = traits.name ", "x=-"]) == {
        "a=b": "traits.c",
        "Name": "traits.name",
        "x": "-",
    }
    with pytest.raises(MappingError, match="must be COLUMN=FIELD"):
        parse_map_options(["just-a-column"])
    assert parse_map_document({"Full Name": "traits.name", "junk": None}, "m.yaml") == {
        "Full Name": "traits.name",
        "junk": "-",
    }
    with pytest.raises(MappingError, match=r"m\.yaml must be a YAML mapping"):
        parse_map_document(["a"], "m.yaml")
    with pytest.raises(MappingError, match="every key must be a column name"):
        parse_map_document({"a": 3}, "m.yaml")
