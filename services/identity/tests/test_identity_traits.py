"""Profile traits and the identifiers of an event read the same merged traits: top-level `traits`
win over `context.traits` per key, and a group call's traits are the group's, not the user's."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.identity.domain.identifiers import default_rules, extract
from onefold.identity.domain.traits import profile_traits


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _identifiers(**fields: Any) -> set[tuple[str, str]]:
    event = ingest_pb2.TrackingEvent(**{k: v for k, v in fields.items() if k not in ("traits", "context")})
    for name in ("traits", "context"):
        if name in fields:
            getattr(event, name).update(fields[name])
    found = extract(event, default_rules(), lambda type_name, value: f"{type_name}:{value}")
    return {(ident.type, ident.value) for ident in found.identifiers}


def test_phone_is_stored_in_e164_when_it_is_a_valid_number_for_the_region() -> None:
    traits = _struct({"phone": " 138 0013 8000 ", "name": "Ann"})
    assert MessageToDict(profile_traits(traits, "CN")) == {"phone": "+8613800138000", "name": "Ann"}
    assert MessageToDict(profile_traits(_struct({"phone": "030 901820"}), "DE")) == {"phone": "+4930901820"}
    # A number sent as a JSON number is a phone number too.
    assert MessageToDict(profile_traits(_struct({"phone": 13800138000}), "CN")) == {"phone": "+8613800138000"}


def test_a_phone_that_does_not_parse_is_kept_as_sent() -> None:
    for phone in ("12345", "call me", True, 1.5):
        assert MessageToDict(profile_traits(_struct({"phone": phone}), "CN")) == {"phone": phone}


def test_email_is_trimmed_and_lower_cased_and_the_input_is_left_alone() -> None:
    traits = _struct({"email": "  Ann@Example.COM ", "plan": "Pro"})
    assert MessageToDict(profile_traits(traits, "CN")) == {"email": "ann@example.com", "plan": "Pro"}
    assert traits["email"] == "  Ann@Example.COM "
    # Not text: nothing to normalise.
    assert MessageToDict(profile_traits(_struct({"email": 7}), "CN")) == {"email": 7}


def test_top_level_traits_win_over_context_traits_for_identifiers_as_for_traits() -> None:
    both = _identifiers(
        type=ingest_pb2.EVENT_TYPE_IDENTIFY,
        user_id="u1",
        traits={"email": "ann@example.com"},
        context={"traits": {"email": "old@example.com", "phone": "13800138000"}},
    )
    assert both == {("user_id", "u1"), ("email", "ann@example.com"), ("phone", "+8613800138000")}


def test_context_traits_of_a_track_call_still_identify_the_user() -> None:
    found = _identifiers(
        type=ingest_pb2.EVENT_TYPE_TRACK, user_id="u1", context={"traits": {"email": "ann@example.com"}}
    )
    assert found == {("user_id", "u1"), ("email", "ann@example.com")}


def test_group_traits_are_the_group_s_and_never_the_user_s_identifiers() -> None:
    found = _identifiers(
        type=ingest_pb2.EVENT_TYPE_GROUP,
        user_id="u1",
        group_id="acme",
        traits={"email": "billing@acme.example", "phone": "+4930901820"},
        context={"traits": {"email": "ann@example.com"}},
    )
    assert found == {("user_id", "u1"), ("email", "ann@example.com")}
