"""Identify traits from `traits` and `context.traits` (top-level wins per key), Segment's reserved
traits normalised from either place, and the parser and tracking plan using that merged view."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from onefold.ingest.domain import (
    CallType,
    CanonicalEvent,
    Disposition,
    PlanCache,
    PlanMode,
    TrackingPlan,
    decide,
    parse_event,
    to_json,
)
from onefold.ingest.domain.traits import RESERVED_TRAITS, identify_traits, normalise_traits, reserved_name

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
REQUIRES_EMAIL = TrackingPlan(
    source_id="src",
    version=1,
    mode=PlanMode.BLOCK,
    identify_traits_schema={
        "type": "object",
        "required": ["email"],
        "properties": {"email": {"type": "string", "format": "email"}},
    },
)

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# Keys drawn from reserved names in other spellings as well as free text, so collisions happen.
spellings = st.sampled_from(
    ["email", "Email", " EMAIL", "first_name", "firstName", "FirstName", "created-at", "createdAt", "plan"]
)
trait_objects = st.dictionaries(spellings | st.text(max_size=8), json_values, max_size=8)


def parse(body: dict[str, Any]) -> CanonicalEvent:
    intake = parse_event(body, received_at=NOW)
    assert intake.event is not None, intake.verdict
    return intake.event


def test_rudderstack_identify_traits_come_from_context_traits() -> None:
    # rudder-sdk-python sends identify traits only in context.traits.
    event = parse(
        {
            "type": "identify",
            "userId": "u1",
            "context": {"traits": {"email": "ann@example.com", "plan": "pro"}, "library": {"name": "x"}},
        }
    )
    assert event.traits == {"email": "ann@example.com", "plan": "pro"}
    # The context is kept exactly as sent.
    assert event.context["traits"] == {"email": "ann@example.com", "plan": "pro"}


def test_top_level_traits_win_over_context_traits_per_key() -> None:
    merged = identify_traits(
        {"plan": "pro", "email": "ann@example.com"},
        {"traits": {"plan": "free", "logins": 3, "email": "old@example.com"}},
    )
    assert merged == {"plan": "pro", "email": "ann@example.com", "logins": 3}


def test_context_traits_that_are_not_an_object_are_context_only() -> None:
    assert identify_traits({"plan": "pro"}, {"traits": "free"}) == {"plan": "pro"}
    assert identify_traits({}, {"traits": ["a"]}) == {}


def test_reserved_traits_take_their_reserved_spelling() -> None:
    traits = {
        "first_name": "Ann",
        "Last Name": "Lee",
        "created_at": "2024-01-01T00:00:00Z",
        "E-mail": "Ann@Example.COM",
        "USERNAME": " ann ",
        "favourite_colour": " Blue ",
    }
    assert normalise_traits(traits) == {
        "firstName": "Ann",
        "lastName": "Lee",
        "createdAt": "2024-01-01T00:00:00Z",
        "email": "ann@example.com",
        "username": "ann",
        "favourite_colour": " Blue ",  # custom traits are kept as sent
    }


def test_the_reserved_spelling_wins_over_other_spellings_in_one_object() -> None:
    assert normalise_traits({"first_name": "A", "firstName": "B", "FirstName": "C"}) == {"firstName": "B"}
    # Without it, the first of the others in sorted order, whatever order they came in.
    assert normalise_traits({"first_name": "A", "FirstName": "C"}) == {"firstName": "C"}
    assert normalise_traits({"FirstName": "C", "first_name": "A"}) == {"firstName": "C"}


def test_a_snake_case_top_level_trait_wins_over_the_same_trait_in_context() -> None:
    assert identify_traits({"first_name": "Ann"}, {"traits": {"firstName": "Old"}}) == {"firstName": "Ann"}


def test_every_reserved_trait_is_recognised_in_snake_case() -> None:
    for name in RESERVED_TRAITS:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
        assert reserved_name(snake) == name
    assert reserved_name("plan") is None


def test_only_identify_merges_context_traits() -> None:
    context = {"traits": {"email": "Ann@Example.com"}}
    for body in (
        {"type": "track", "event": "Viewed"},
        {"type": "page", "name": "Home"},
        {"type": "screen", "name": "Home"},
    ):
        event = parse({"userId": "u1", "context": context, **body})
        assert event.traits == {} and event.context == context
    # A group call's traits are the group's: kept as sent, never normalised as a person's.
    group = parse(
        {
            "type": "group",
            "userId": "u1",
            "groupId": "g1",
            "traits": {"Email": " X@Acme.com"},
            "context": context,
        }
    )
    assert group.traits == {"Email": " X@Acme.com"}


def test_a_plan_that_requires_email_judges_both_sdk_shapes_alike() -> None:
    compiled = PlanCache().get(REQUIRES_EMAIL)
    segment = {"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"}}
    rudderstack = {"type": "identify", "userId": "u1", "context": {"traits": {"email": "ann@example.com"}}}
    neither = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    verdicts = [
        decide(parse_event(body, received_at=NOW), compiled).disposition
        for body in (segment, rudderstack, neither)
    ]
    assert verdicts == [Disposition.ACCEPTED, Disposition.ACCEPTED, Disposition.QUARANTINED]


def test_the_identify_traits_limit_counts_the_merged_traits() -> None:
    body = {
        "type": "identify",
        "userId": "u1",
        "traits": {f"t{i}": i for i in range(200)},
        "context": {"traits": {f"c{i}": i for i in range(100)}},
    }
    intake = parse_event(body, received_at=NOW)
    assert intake.event is None
    [violation] = intake.verdict.violations
    assert (violation.path, violation.rule) == ("/traits", "maxProperties")
    assert "300 traits" in violation.message


@settings(max_examples=300, deadline=None)
@given(trait_objects)
def test_normalising_is_idempotent(traits: dict[str, Any]) -> None:
    once = normalise_traits(traits)
    assert normalise_traits(once) == once
    # No trait is lost except to another spelling of the same reserved trait.
    assert {reserved_name(k) or k for k in traits} == set(once)


@settings(max_examples=300, deadline=None)
@given(trait_objects, trait_objects)
def test_top_level_keys_always_win_and_context_keys_are_never_lost(
    traits: dict[str, Any], context_traits: dict[str, Any]
) -> None:
    merged = identify_traits(traits, {"traits": context_traits})
    top = normalise_traits(traits)
    assert {k: merged[k] for k in top} == top
    assert set(merged) == set(top) | set(normalise_traits(context_traits))
    # Merging the stored view with the same context again changes nothing (replay, re-parse).
    assert identify_traits(merged, {"traits": context_traits}) == merged


@settings(max_examples=150, deadline=None)
@given(trait_objects, trait_objects)
def test_an_identify_event_round_trips_through_its_json(
    traits: dict[str, Any], context_traits: dict[str, Any]
) -> None:
    body = {"type": "identify", "userId": "u1", "traits": traits, "context": {"traits": context_traits}}
    intake = parse_event(body, received_at=NOW)
    if intake.event is None:  # e.g. an unsafe integer: the parser's own tests cover those
        return
    assert intake.event.type is CallType.IDENTIFY
    again = parse_event(to_json(intake.event), received_at=NOW).event
    assert again == intake.event
