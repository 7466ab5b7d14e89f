"""Properties of the journeys domain: split buckets are stable and spread as the percentages say,
the fold of a stream equals the state built decision by decision, message ids never repeat within
a run, and personal values are sealed by the event log."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journeys_domain_builders import KNOWN, NO_FACTS, T0, Run, cart_journey, compiled, journey, track

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.cipher import DataKeyCipher, new_data_key
from onefold.eventlog.mapper import ERASED, EventMapper
from onefold.journeys.domain import instance as decide
from onefold.journeys.domain.definitions import InvalidJourney, SplitArm, compile_journey, validate
from onefold.journeys.domain.events import REGISTRY
from onefold.journeys.domain.instance import Facts, Instance, bucket, split_arm

ids = st.text(st.characters(codec="utf-8"), max_size=20)


@given(journey=ids, profile=ids, key=ids)
def test_a_bucket_is_stable_and_in_range(journey: str, profile: str, key: str) -> None:
    chosen = bucket(journey, profile, key)
    assert 0 <= chosen < 100 and chosen == bucket(journey, profile, key)


@given(percents=st.lists(st.integers(1, 100), min_size=1, max_size=5).filter(lambda p: sum(p) <= 100))
def test_split_arms_cover_every_bucket_by_their_percent(percents: list[int]) -> None:
    arms = [SplitArm(f"a{i}", p, "", False) for i, p in enumerate(percents)]
    arms.append(SplitArm("rest", 100 - sum(percents), "", False))
    counted = Counter(split_arm(arms, b).name for b in range(100))
    assert all(counted[arm.name] == arm.percent for arm in arms)


def test_buckets_spread_evenly_over_many_profiles() -> None:
    # Deterministic (a hash, no randomness): 20,000 profiles, 200 expected per bucket.
    counted = Counter(bucket("promo", f"profile-{i}", "") for i in range(20_000))
    assert set(counted) == set(range(100))
    assert max(counted.values()) < 260 and min(counted.values()) > 140
    arms = [SplitArm("treated", 90, "", False), SplitArm("control", 10, "", True)]
    control = sum(split_arm(arms, bucket("promo", f"profile-{i}", "")).control for i in range(20_000))
    assert 1800 < control < 2200


def test_the_bucket_depends_on_journey_profile_and_key() -> None:
    base = [bucket("promo", f"p-{i}", "") for i in range(200)]
    assert base != [bucket("other", f"p-{i}", "") for i in range(200)]
    assert base != [bucket("promo", f"p-{i}", "cart") for i in range(200)]


# A run: the profile enters, then a series of moves, each one hour later than the last.
MOVES = st.lists(
    st.sampled_from(["timer", "checkout", "order", "other_cart", "withdraw", "enter", "archive", "sent"]),
    max_size=12,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(moves=MOVES, reentry=st.sampled_from(["REENTRY_NEVER", "REENTRY_AFTER_EXIT", "REENTRY_ALWAYS"]))
def test_replaying_the_stream_gives_the_state_built_incrementally(moves: list[str], reentry: str) -> None:
    run = Run(
        compiled(
            cart_journey(
                entry={
                    "event": {"event": {"event": "Cart Updated"}, "entity_key": "cart_id"},
                    "reentry": reentry,
                }
            )
        )
    )
    run.enter(T0, entity_key="c-1")
    now = T0
    for move in moves:
        now += timedelta(hours=13)
        instance, graph = run.instance, run.graph
        if move == "timer":
            events = decide.on_timer(instance, graph, now, NO_FACTS)
        elif move in ("checkout", "order", "other_cart"):
            name = "Checkout Started" if move == "checkout" else "Order Completed"
            cart = "c-2" if move == "other_cart" else "c-1"
            events = decide.on_event(
                instance, graph, track(name, now, cart_id=cart, revenue=3), now, NO_FACTS
            )
        elif move == "withdraw":
            events = decide.withdraw_consent(instance, "marketing", pb.CHANNEL_UNSPECIFIED, "ev")
        elif move == "enter":
            events = decide.enter(
                instance,
                graph,
                now,
                NO_FACTS,
                workspace="acme",
                profile_id="p-1",
                entity_key="c-1",
                trigger="event",
            )
        elif move == "archive":
            events = decide.archive(instance)
        else:
            pending = instance.pending()
            events = [pb.MessageSent(instance=instance.ref, message_id=pending[0])] if pending else []
        run.record(now, events)
        # Nothing is left half-done: an active instance always waits on a timer.
        assert not run.instance.active or run.instance.fires_at is not None
    assert Instance.fold(run.log) == run.instance
    queued = [event.message_id for _, event in run.log if isinstance(event, pb.MessageQueued)]
    assert len(queued) == len(set(queued))  # every send of every entry has its own id
    stopped = {event.message_id for _, event in run.log if isinstance(event, pb.MessageSuppressed)}
    sent = {event.message_id for _, event in run.log if isinstance(event, pb.MessageSent)}
    assert not stopped & sent  # a message is either sent or suppressed, never both


def test_personal_values_are_marked_for_sealing() -> None:
    personal = {
        name: REGISTRY.for_name(f"onefold.journeys.v1.{name}").pii.names
        for name in (
            "JourneyEntered",
            "MessageSent",
            "TraitUpdateRequested",
            "GoalReached",
            "JourneyDraftSaved",
        )
    }
    assert personal == {
        "JourneyEntered": ("properties",),
        "MessageSent": ("recipient",),
        "TraitUpdateRequested": ("value",),
        "GoalReached": ("revenue",),
        "JourneyDraftSaved": (),  # the author's code, not a person's data
    }
    assert all(REGISTRY.for_name(name).schema_version == 1 for name in REGISTRY.names())


def test_the_event_log_seals_personal_values_and_shreds_them_on_erasure() -> None:
    ref = pb.InstanceRef(workspace="acme", journey="welcome", version=1, profile_id="p-1", entry_seq=1)
    entered = pb.JourneyEntered(instance=ref, trigger="event")
    entered.properties["email"] = "ana@example.com"
    trait = pb.TraitUpdateRequested(instance=ref, step="set", trait="nickname")
    trait.value.string_value = "Annie"
    sent = pb.MessageSent(instance=ref, message_id="msg_1", recipient="ana@example.com")
    goal = pb.GoalReached(instance=ref, goal="buy", revenue=1234.5)
    subject = decide.subject_of("acme", "p-1")
    cipher = DataKeyCipher(new_data_key())
    erased = {}
    for message in (entered, trait, sent, goal):
        event_type = REGISTRY.for_message(message)
        stored = EventMapper.encode(event_type, message, subject, cipher)
        assert b"ana@example.com" not in stored and b"Annie" not in stored
        assert EventMapper.decode(event_type, stored, subject, cipher) == message
        # The subject's key destroyed: what is not personal stays readable, the rest is gone.
        erased[message.DESCRIPTOR.name] = EventMapper.decode(event_type, stored, subject, None)
    assert all(message.instance == ref for message in erased.values())  # type: ignore[attr-defined]
    assert dict(erased["JourneyEntered"].properties) == {ERASED: ERASED}  # type: ignore[attr-defined]
    assert erased["TraitUpdateRequested"] == pb.TraitUpdateRequested(
        instance=ref, step="set", trait="nickname"
    )
    assert erased["MessageSent"].recipient == ERASED  # type: ignore[attr-defined]
    assert erased["GoalReached"].revenue == 0  # type: ignore[attr-defined]


# Random journeys of a few steps: each leads on to the next one (so most are reachable) and, for
# branches and splits, also anywhere, backwards included, which makes loops.
STEP_NAMES = ["a", "b", "c", "d", "e"]


@st.composite
def random_steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, len(STEP_NAMES)))
    names = STEP_NAMES[:count]
    anywhere = st.sampled_from([*names, ""])
    steps: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        following = names[i + 1] if i + 1 < count else ""
        kinds = ["wait", "send", "branch", "split", "update_trait"] + (["exit"] if not following else [])
        kind = draw(st.sampled_from(kinds))
        onward = draw(st.sampled_from([following, following, following, *names, ""]))
        if kind == "wait":
            body: dict[str, Any] = {"duration": "60s", "next": onward}
        elif kind == "send":
            body = {"channel": "CHANNEL_PUSH", "template": "welcome", "purpose": "marketing", "next": onward}
        elif kind == "branch":
            body = {"arms": [{"when": {"in_segment": "vip"}, "next": following}], "otherwise": draw(anywhere)}
        elif kind == "split":
            arms = [
                {"name": "x", "percent": 50, "next": following},
                {"name": "y", "percent": 50, "next": draw(anywhere)},
            ]
            body = {"arms": arms}
        elif kind == "update_trait":
            body = {"trait": "seen", "value": True, "next": onward}
        else:
            body = {}
        steps.append({"name": name, kind: body})
    return steps


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(steps=random_steps(), vip=st.booleans(), profile=st.sampled_from(["p-1", "p-2", "p-3", "p-4"]))
def test_a_journey_without_problems_always_comes_to_rest(
    steps: list[dict[str, Any]], vip: bool, profile: str
) -> None:
    data = {"name": "random", "entry": {"api": {}, "reentry": "REENTRY_ALWAYS"}, "steps": steps}
    message = journey(data)
    problems = validate(message, KNOWN)
    if problems:
        with pytest.raises(InvalidJourney):
            compile_journey(message, KNOWN)
        return
    graph = compile_journey(message, KNOWN)
    facts = Facts(segments=frozenset({"vip"}) if vip else frozenset())
    run = Run(graph, profile)
    now = T0
    run.enter(now, facts)
    # Every decision ends waiting or exited, and a waiting instance's timers move it on until it exits
    # or keeps looping through waits (bounded here).
    for _ in range(10):
        assert not run.instance.active or run.instance.fires_at is not None
        if not run.instance.active:
            break
        now = run.instance.fires_at or now
        run.record(now, decide.on_timer(run.instance, graph, now, facts))
