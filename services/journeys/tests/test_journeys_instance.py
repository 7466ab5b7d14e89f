"""One person's run through a journey: entry, waits, the race of an event with its timeout, exit
rules, goals, sends, re-entry, consent withdrawal, erasure, and the fold of it all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from journeys_domain_builders import (
    NO_FACTS,
    T0,
    Run,
    cart_journey,
    compiled,
    send,
    track,
    types,
    wait,
)

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.journeys.domain import instance as decide
from onefold.journeys.domain.instance import (
    Facts,
    Instance,
    message_id,
    next_local_time,
    next_scheduled_entry,
)

HOUR = timedelta(hours=1)


def cart_run(**overrides: Any) -> Run:
    return Run(compiled(cart_journey(**overrides)))


def test_entering_runs_to_the_first_wait() -> None:
    run = cart_run()
    events = run.enter(T0, entity_key="c-1", cart_id="c-1", total=80)
    assert types(events) == ["JourneyEntered", "StepEntered", "WaitScheduled"]
    entered, _, scheduled = events
    assert isinstance(entered, pb.JourneyEntered) and isinstance(scheduled, pb.WaitScheduled)
    assert entered.instance == pb.InstanceRef(
        workspace="acme", journey="abandoned_cart", version=1, profile_id="p-1", entity_key="c-1", entry_seq=1
    )
    assert scheduled.reason == "event_timeout"
    assert scheduled.fires_at.ToDatetime(tzinfo=UTC) == T0 + HOUR
    assert run.instance.active and run.instance.step == "hold" and run.instance.fires_at == T0 + HOUR
    assert run.instance.properties == {"cart_id": "c-1", "total": 80}


def test_the_timeout_sends_the_reminder_then_waits_a_day() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    assert decide.on_timer(run.instance, run.graph, T0 + HOUR - timedelta(microseconds=1), NO_FACTS) == []
    events = run.record(T0 + HOUR, decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS))
    assert types(events) == ["StepEntered", "MessageQueued", "StepEntered", "WaitScheduled"]
    remind, queued, _, scheduled = events
    assert isinstance(remind, pb.StepEntered) and (remind.step, remind.via) == ("remind", "timeout")
    assert isinstance(queued, pb.MessageQueued)
    assert (queued.channel, queued.template, queued.purpose) == (
        pb.CHANNEL_EMAIL,
        "cart_reminder",
        "marketing",
    )
    assert queued.message_id == message_id(run.instance.ref, "remind")
    assert isinstance(scheduled, pb.WaitScheduled) and scheduled.reason == "duration"
    assert run.instance.pending() == [queued.message_id]
    # A day later the SMS is queued and the journey completes; the e-mail queued earlier stays queued.
    day = T0 + HOUR + timedelta(days=1)
    events = run.record(day, decide.on_timer(run.instance, run.graph, day, NO_FACTS))
    assert types(events) == ["StepEntered", "MessageQueued", "JourneyExited"]
    assert isinstance(events[-1], pb.JourneyExited) and events[-1].reason == "completed"
    assert not run.instance.active and len(run.instance.pending()) == 2


def test_the_awaited_event_before_its_timeout_wins_even_when_it_arrives_late() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    checkout = track("Checkout Started", T0 + HOUR - timedelta(seconds=1), cart_id="c-1")
    # Processed after the timer came due, but it happened before: the event path is taken.
    events = run.record(
        T0 + 2 * HOUR, decide.on_event(run.instance, run.graph, checkout, T0 + 2 * HOUR, NO_FACTS)
    )
    assert types(events) == ["JourneyExited"]  # on_event "" completes the journey
    assert run.instance.exit_reason == "completed"
    assert all(not isinstance(m, pb.MessageQueued) for _, m in run.log)


def test_an_event_at_or_after_the_timeout_leaves_the_instance_to_its_timer() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    late = track("Checkout Started", T0 + HOUR, cart_id="c-1")
    assert decide.on_event(run.instance, run.graph, late, T0 + HOUR, NO_FACTS) == []


def test_the_wait_for_event_path_is_recorded_as_via_event() -> None:
    graph = compiled(
        cart_journey(
            steps=[
                {
                    "name": "hold",
                    "wait_for_event": {
                        "event": {"event": "Checkout Started"},
                        "timeout": "3600s",
                        "on_event": "thanks",
                        "on_timeout": "",
                    },
                },
                send("thanks", "welcome"),
            ]
        )
    )
    run = Run(graph)
    run.enter(T0)
    events = run.record(T0, decide.on_event(run.instance, graph, track("Checkout Started", T0), T0, NO_FACTS))
    assert isinstance(events[0], pb.StepEntered) and (events[0].step, events[0].via) == ("thanks", "event")


def test_an_exit_rule_stops_the_instance_and_its_unsent_messages() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    run.record(T0 + HOUR, decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS))
    queued = run.instance.pending()
    order = track("Order Completed", T0 + 2 * HOUR, "e-9", cart_id="c-1", revenue=120.5)
    events = run.record(
        T0 + 2 * HOUR, decide.on_event(run.instance, run.graph, order, T0 + 2 * HOUR, NO_FACTS)
    )
    assert types(events) == ["GoalReached", "MessageSuppressed", "JourneyExited"]
    goal, suppressed, exited = events
    assert isinstance(goal, pb.GoalReached) and (goal.goal, goal.revenue, goal.cause_event_id) == (
        "purchase",
        120.5,
        "e-9",
    )
    assert isinstance(suppressed, pb.MessageSuppressed) and [suppressed.message_id] == queued
    assert isinstance(exited, pb.JourneyExited) and exited.reason == "exit_rule: ordered"
    assert run.instance.goals == {"purchase": 120.5} and run.instance.pending() == []


def test_events_of_another_cart_do_not_touch_this_instance() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    other = track("Order Completed", T0 + HOUR, cart_id="c-2", revenue=10)
    assert decide.on_event(run.instance, run.graph, other, T0 + HOUR, NO_FACTS) == []
    numeric = cart_run()
    numeric.enter(T0, entity_key="42")
    same = track("Order Completed", T0 + HOUR, cart_id=42.0)  # JSON numbers arrive as floats
    assert "JourneyExited" in types(decide.on_event(numeric.instance, numeric.graph, same, T0, NO_FACTS))


def test_goals_count_only_within_their_window_and_may_end_the_journey() -> None:
    goal = {
        "name": "purchase",
        "event": {"event": "Order Completed"},
        "conversion_window": "86400s",
        "revenue_property": "order.revenue",
        "exit_on_reach": True,
    }
    run = cart_run(exit_rules=[], goals=[goal])
    run.enter(T0)
    too_late = track("Order Completed", T0 + timedelta(days=1, seconds=1), order={"revenue": 5})
    assert decide.on_event(run.instance, run.graph, too_late, too_late.at, NO_FACTS) == []
    in_time = track("Order Completed", T0 + timedelta(days=1), order={"revenue": "19.90"})
    events = run.record(in_time.at, decide.on_event(run.instance, run.graph, in_time, in_time.at, NO_FACTS))
    assert types(events) == ["GoalReached", "JourneyExited"]
    assert isinstance(events[0], pb.GoalReached) and events[0].revenue == 19.9
    assert run.instance.exit_reason == "goal: purchase"


def test_reentry_rules_and_cooldown() -> None:
    never = cart_run(entry={"api": {}})
    never.enter(T0)
    assert (
        decide.may_enter(never.instance, never.graph, T0 + timedelta(days=30))
        == "reentry: never (entered before)"
    )

    after_exit = cart_run(entry={"api": {}, "reentry": "REENTRY_AFTER_EXIT", "cooldown": "86400s"})
    after_exit.enter(T0)
    assert (
        decide.may_enter(after_exit.instance, after_exit.graph, T0)
        == "reentry: after exit (still in the journey)"
    )
    after_exit.record(T0 + HOUR, decide.archive(after_exit.instance))
    refusal = decide.may_enter(after_exit.instance, after_exit.graph, T0 + 2 * HOUR)
    assert refusal == f"cooldown until {(T0 + timedelta(days=1)).isoformat()}"
    assert (
        decide.enter(
            after_exit.instance,
            after_exit.graph,
            T0 + 2 * HOUR,
            NO_FACTS,
            workspace="acme",
            profile_id="p-1",
            trigger="api",
        )
        == []
    )
    again = after_exit.enter(T0 + timedelta(days=1))
    assert isinstance(again[0], pb.JourneyEntered) and again[0].instance.entry_seq == 2

    always = cart_run(entry={"api": {}, "reentry": "REENTRY_ALWAYS"})
    always.enter(T0)
    always.record(T0 + HOUR, decide.on_timer(always.instance, always.graph, T0 + HOUR, NO_FACTS))
    pending = always.instance.pending()
    events = always.enter(T0 + 2 * HOUR)
    assert types(events)[:3] == ["MessageSuppressed", "JourneyExited", "JourneyEntered"]
    assert isinstance(events[0], pb.MessageSuppressed) and [events[0].message_id] == pending
    assert isinstance(events[1], pb.JourneyExited) and events[1].reason == "restarted"
    assert always.instance.entry_seq == 2 and always.instance.messages == {}


def test_message_ids_are_deterministic_per_entry_and_step() -> None:
    ref = pb.InstanceRef(workspace="acme", journey="j", version=1, profile_id="p", entity_key="", entry_seq=1)
    same = pb.InstanceRef()
    same.CopyFrom(ref)
    assert message_id(ref, "mail") == message_id(same, "mail")
    variants = [message_id(ref, "other")]
    for field_name, value in (("entry_seq", 2), ("version", 2), ("profile_id", "q"), ("entity_key", "k")):
        changed = pb.InstanceRef()
        changed.CopyFrom(ref)
        setattr(changed, field_name, value)
        variants.append(message_id(changed, "mail"))
    assert len({message_id(ref, "mail"), *variants}) == 6
    # Length-prefixed parts: moving a separator between fields changes the id.
    a = pb.InstanceRef(journey="j", profile_id="p:x", entity_key="")
    b = pb.InstanceRef(journey="j", profile_id="p", entity_key=":x")
    assert message_id(a, "s") != message_id(b, "s")


def test_a_restart_queues_the_same_message_id() -> None:
    first, second = cart_run(), cart_run()
    for run in (first, second):
        run.enter(T0, entity_key="c-1")
        run.record(T0 + HOUR, decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS))
    assert first.instance.pending() == second.instance.pending() != []


BRANCHY = {
    "name": "welcome_series",
    "entry": {"api": {}},
    "steps": [
        {
            "name": "route",
            "branch": {
                "arms": [
                    {"when": {"in_segment": "vip"}, "next": "vip"},
                    {
                        "when": {
                            "all_of": {
                                "conditions": [
                                    {
                                        "trait": {
                                            "trait": "address.country",
                                            "predicate": {"op": "OPERATOR_EQ", "value": "CN"},
                                        }
                                    },
                                    {"negated": {"tag": {"tag": "lifecycle"}}},
                                ]
                            }
                        },
                        "next": "cn",
                    },
                    {
                        "when": {
                            "entry_property": {
                                "path": "source",
                                "predicate": {"op": "OPERATOR_EQ", "value": "ad"},
                            }
                        },
                        "next": "set_source",
                    },
                ],
                "otherwise": "welcome",
            },
        },
        send("vip", "vip_offer"),
        send("cn", "welcome_wechat", channel="CHANNEL_WECHAT"),
        {"name": "set_source", "update_trait": {"trait": "acquired_by", "value": "ad", "next": "welcome"}},
        send("welcome", "welcome"),
    ],
}


def first_step(facts: Facts, **properties: Any) -> tuple[str, str]:
    run = Run(compiled(BRANCHY))
    events = run.enter(T0, facts, **properties)
    step = next(e for e in events[2:] if isinstance(e, pb.StepEntered))
    first = events[1]
    assert isinstance(first, pb.StepEntered)
    return step.step, step.via


def test_branches_on_segments_traits_tags_and_entry_properties() -> None:
    assert first_step(Facts(segments=frozenset({"vip"}))) == ("vip", "arm 0")
    assert first_step(Facts(traits={"address": {"country": "CN"}})) == ("cn", "arm 1")
    assert first_step(Facts(traits={"address": {"country": "CN"}}, tags={"lifecycle": "active"})) == (
        "welcome",
        "otherwise",
    )
    assert first_step(NO_FACTS, source="ad") == ("set_source", "arm 2")
    assert first_step(NO_FACTS) == ("welcome", "otherwise")


def test_a_trait_update_is_requested_with_its_value() -> None:
    run = Run(compiled(BRANCHY))
    events = run.enter(T0, source="ad")
    requested = next(e for e in events if isinstance(e, pb.TraitUpdateRequested))
    assert (requested.trait, requested.value.string_value) == ("acquired_by", "ad")


def split_journey(goals: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "promo",
        "entry": {"api": {}},
        "steps": [
            {
                "name": "pick",
                "split": {
                    "arms": [
                        {"name": "mail", "percent": 50, "next": "mail"},
                        {"name": "holdout", "percent": 50, "control": True},
                    ]
                },
            },
            send("mail", "welcome"),
        ],
        "goals": goals,
    }


def control_and_treated_profiles() -> tuple[str, str]:
    profiles = [f"p-{i}" for i in range(100)]
    control = next(p for p in profiles if decide.bucket("promo", p, "") >= 50)
    treated = next(p for p in profiles if decide.bucket("promo", p, "") < 50)
    return control, treated


def test_a_control_instance_sends_nothing_but_its_conversions_count_within_the_window() -> None:
    goal = {"name": "buy", "event": {"event": "Order Completed"}, "conversion_window": "172800s"}
    graph = compiled(split_journey([goal]))
    control, treated = control_and_treated_profiles()
    run = Run(graph, control)
    events = run.enter(T0)
    assert types(events) == ["JourneyEntered", "StepEntered", "SplitAssigned", "JourneyExited"]
    assigned, exited = events[2], events[3]
    assert isinstance(assigned, pb.SplitAssigned) and (assigned.arm, assigned.control) == ("holdout", True)
    assert isinstance(exited, pb.JourneyExited) and exited.reason == "control"
    late = track("Order Completed", T0 + timedelta(days=2, seconds=1))
    assert decide.on_event(run.instance, graph, late, late.at, NO_FACTS) == []
    in_time = track("Order Completed", T0 + timedelta(days=2))
    assert types(decide.on_event(run.instance, graph, in_time, in_time.at, NO_FACTS)) == ["GoalReached"]
    assert "MessageQueued" in types(Run(graph, treated).enter(T0))


def test_a_goal_without_a_window_counts_only_while_the_instance_runs() -> None:
    graph = compiled(split_journey([{"name": "buy", "event": {"event": "Order Completed"}}]))
    control, _ = control_and_treated_profiles()
    run = Run(graph, control)
    run.enter(T0)
    assert decide.on_event(run.instance, graph, track("Order Completed", T0), T0, NO_FACTS) == []


def test_a_completed_journey_still_converts_within_the_window_and_ignores_exit_rules() -> None:
    data = cart_journey(
        entry={"api": {}},
        steps=[send("mail", "welcome")],
        goals=[
            {
                "name": "buy",
                "event": {"event": "Order Completed"},
                "conversion_window": "604800s",
                "exit_on_reach": True,
            }
        ],
    )
    run = Run(compiled(data))
    assert types(run.enter(T0))[-1] == "JourneyExited"
    order = track("Order Completed", T0 + timedelta(days=3))
    events = run.record(order.at, decide.on_event(run.instance, run.graph, order, order.at, NO_FACTS))
    assert types(events) == ["GoalReached"]  # no second exit, and the queued mail is not stopped
    assert decide.on_event(run.instance, run.graph, order, order.at, NO_FACTS) == []  # once per entry


def test_withdrawn_consent_stops_the_pending_sends_of_that_purpose_only() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    run.record(T0 + HOUR, decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS))
    (pending,) = run.instance.pending()
    assert decide.withdraw_consent(run.instance, "analytics", pb.CHANNEL_UNSPECIFIED, "ev-1") == []
    assert decide.withdraw_consent(run.instance, "marketing", pb.CHANNEL_SMS, "ev-1") == []
    events = run.record(
        T0 + HOUR, decide.withdraw_consent(run.instance, "marketing", pb.CHANNEL_EMAIL, "ev-1")
    )
    assert events == [
        pb.MessageSuppressed(
            instance=run.instance.ref,
            message_id=pending,
            reason="consent withdrawn",
            consent_evidence_id="ev-1",
        )
    ]
    assert run.instance.pending() == [] and run.instance.active


def test_erasure_and_archive_stop_unsent_messages_and_end_an_active_instance() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    events = run.record(T0, decide.erase(run.instance))
    assert isinstance(events[-1], pb.JourneyExited) and events[-1].reason == "erased"
    assert decide.erase(run.instance) == [] and decide.archive(run.instance) == []
    assert decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS) == []
    # A completed instance whose last message is still queued: erasure stops the message.
    done = Run(compiled(cart_journey(entry={"api": {}}, steps=[send("mail", "welcome")])))
    done.enter(T0)
    (pending,) = done.instance.pending()
    assert decide.erase(done.instance) == [
        pb.MessageSuppressed(instance=done.instance.ref, message_id=pending, reason="stopped: erased")
    ]


def test_late_callbacks_of_an_earlier_entry_leave_the_current_one_alone() -> None:
    run = cart_run(entry={"api": {}, "reentry": "REENTRY_ALWAYS"})
    run.enter(T0)
    run.record(T0 + HOUR, decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS))
    (old,) = run.instance.pending()
    old_ref = pb.InstanceRef()
    old_ref.CopyFrom(run.instance.ref)
    run.enter(T0 + 2 * HOUR)
    run.record(T0 + 3 * HOUR, [pb.MessageDelivered(instance=old_ref, message_id=old)])
    assert old not in run.instance.messages and run.instance.entry_seq == 2


def test_the_local_time_wait_uses_the_persons_time_zone() -> None:
    data = cart_journey(
        entry={"api": {}},
        time_zone="Europe/Berlin",
        steps=[{"name": "morning", "wait": {"local_time": "09:00", "next": ""}}],
    )
    shanghai = Run(compiled(data)).enter(T0, Facts(time_zone="Asia/Shanghai"))  # 16:00 there
    berlin = Run(compiled(data)).enter(T0, Facts(time_zone="Not/AZone"))  # 09:00 in Berlin (UTC+1)
    fires = [
        e.fires_at.ToDatetime(tzinfo=UTC) for e in (*shanghai, *berlin) if isinstance(e, pb.WaitScheduled)
    ]
    assert fires == [datetime(2026, 3, 3, 1, 0, tzinfo=UTC), datetime(2026, 3, 2, 8, 0, tzinfo=UTC)]


def test_next_local_time_across_daylight_saving_changes() -> None:
    new_york = "America/New_York"
    # 2026-03-08: clocks jump from 02:00 to 03:00; 02:30 does not exist that night.
    assert next_local_time(datetime(2026, 3, 8, 5, 0, tzinfo=UTC), new_york, 2, 30) == datetime(
        2026, 3, 8, 7, 30, tzinfo=UTC
    )
    # 2026-11-01: 01:30 happens twice; the first one counts.
    assert next_local_time(datetime(2026, 11, 1, 4, 0, tzinfo=UTC), new_york, 1, 30) == datetime(
        2026, 11, 1, 5, 30, tzinfo=UTC
    )
    # Already past today: tomorrow; exactly now: now.
    assert next_local_time(datetime(2026, 6, 1, 14, 0, tzinfo=UTC), new_york, 9, 0) == datetime(
        2026, 6, 2, 13, 0, tzinfo=UTC
    )
    assert next_local_time(datetime(2026, 6, 1, 13, 0, tzinfo=UTC), new_york, 9, 0) == datetime(
        2026, 6, 1, 13, 0, tzinfo=UTC
    )


def test_the_fold_shows_the_instance_as_get_instance_answers() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    run.record(T0 + HOUR, decide.on_timer(run.instance, run.graph, T0 + HOUR, NO_FACTS))
    (pending,) = run.instance.pending()
    run.record(
        T0 + HOUR, [pb.MessageSent(instance=run.instance.ref, message_id=pending, consent_evidence_id="ev")]
    )
    view = Instance.fold(run.log).to_proto()
    assert view.status == pb.INSTANCE_STATUS_ACTIVE and view.step == "later"
    assert view.fires_at.ToDatetime(tzinfo=UTC) == T0 + HOUR + timedelta(days=1)
    assert view.entered_at.ToDatetime(tzinfo=UTC) == T0 and not view.HasField("exited_at")
    assert [(m.step, m.status) for m in view.messages] == [("remind", "sent")]


def test_what_enters_a_journey() -> None:
    cart = compiled(cart_journey())
    assert decide.enters_on_event(cart, track("Cart Updated", T0, cart_id="c-9"))
    assert not decide.enters_on_event(cart, track("Cart Viewed", T0))
    assert decide.entity_key_of(cart, track("Cart Updated", T0, cart_id=7.0)) == "7"
    assert decide.entity_key_of(cart, track("Cart Updated", T0)) == ""
    leavers = compiled(cart_journey(entry={"segment": {"segment": "vip", "on_exit": True}}))
    assert decide.enters_on_segment(leavers, "vip", exited=True)
    assert not decide.enters_on_segment(leavers, "vip", exited=False)
    assert not decide.enters_on_event(leavers, track("Cart Updated", T0))


def test_when_a_schedule_enters_its_audience() -> None:
    daily = compiled(cart_journey(entry={"schedule": {"cron": "0 9 * * *", "time_zone": "America/New_York"}}))
    # 09:00 in New York: 14:00 UTC in winter, 13:00 UTC once daylight saving starts (8 March 2026).
    assert next_scheduled_entry(daily, datetime(2026, 3, 7, 14, 0, tzinfo=UTC)) == datetime(
        2026, 3, 8, 13, 0, tzinfo=UTC
    )
    once = compiled(cart_journey(entry={"schedule": {"once_at": "2026-04-01T09:00:00Z"}}))
    moment = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
    assert next_scheduled_entry(once, T0) == moment
    assert next_scheduled_entry(once, moment) is None
    assert next_scheduled_entry(compiled(cart_journey()), T0) is None


def test_a_late_event_that_happened_before_the_entry_or_the_wait_changes_nothing() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    before_entry = track("Order Completed", T0 - timedelta(minutes=5), cart_id="c-1", revenue=9)
    assert decide.on_event(run.instance, run.graph, before_entry, T0 + HOUR / 2, NO_FACTS) == []
    data = cart_journey(
        steps=[
            wait("first", 600, "hold"),
            {
                "name": "hold",
                "wait_for_event": {
                    "event": {"event": "Checkout Started"},
                    "timeout": "3600s",
                    "on_event": "",
                },
            },
        ]
    )
    waiting = Run(compiled(data))
    waiting.enter(T0)
    later = T0 + timedelta(minutes=10)
    waiting.record(later, decide.on_timer(waiting.instance, waiting.graph, later, NO_FACTS))
    assert waiting.instance.step == "hold"
    during_first_wait = track("Checkout Started", T0 + timedelta(minutes=5))
    assert decide.on_event(waiting.instance, waiting.graph, during_first_wait, later, NO_FACTS) == []
    in_the_wait = track("Checkout Started", later)
    assert types(decide.on_event(waiting.instance, waiting.graph, in_the_wait, later, NO_FACTS)) == [
        "JourneyExited"
    ]


def test_an_instance_refuses_the_graph_of_another_version() -> None:
    run = cart_run()
    run.enter(T0, entity_key="c-1")
    newer = compiled(cart_journey(), version=2)
    with pytest.raises(ValueError, match="runs abandoned_cart version 1, not abandoned_cart version 2"):
        decide.on_timer(run.instance, newer, T0 + HOUR, NO_FACTS)
    with pytest.raises(ValueError):
        decide.on_event(run.instance, newer, track("Order Completed", T0 + HOUR), T0 + HOUR, NO_FACTS)
    # A new entry runs the version it is given (the published one).
    again = decide.enter(
        run.instance, newer, T0 + HOUR, NO_FACTS, workspace="acme", profile_id="p-1", trigger="api"
    )
    assert again == []  # still in the journey (reentry after exit)
    run.record(T0 + HOUR, decide.archive(run.instance))
    (entered, *_) = decide.enter(
        run.instance, newer, T0 + HOUR, NO_FACTS, workspace="acme", profile_id="p-1", trigger="api"
    )
    assert isinstance(entered, pb.JourneyEntered) and entered.instance.version == 2


def test_stream_and_subject_names() -> None:
    assert decide.instance_stream("acme", "abandoned_cart", "p-1", "c-1") == (
        "journeys-instance:acme:abandoned_cart:p-1:c-1"
    )
    assert decide.subject_of("acme", "p-1") == "acme:j:p-1"


def test_a_null_trait_value_asks_to_clear_the_trait() -> None:
    data = cart_journey(
        entry={"api": {}}, steps=[{"name": "clear", "update_trait": {"trait": "coupon", "value": None}}]
    )
    events = Run(compiled(data)).enter(T0)
    requested = next(e for e in events if isinstance(e, pb.TraitUpdateRequested))
    assert requested.trait == "coupon" and requested.value.WhichOneof("kind") == "null_value"


def test_the_entry_event_given_again_changes_nothing() -> None:
    graph = compiled(cart_journey(exit_rules=[{"event": {"event": "Cart Updated"}, "reason": "changed"}]))
    instance = Instance()
    added = track("Cart Updated", T0, "e-7", cart_id="c-1")
    events = decide.enter(
        instance,
        graph,
        T0,
        NO_FACTS,
        workspace="acme",
        profile_id="p-1",
        entity_key="c-1",
        trigger="event",
        cause_event_id=added.event_id,
        properties=added.properties,
    )
    instance = Instance.fold((T0, event) for event in events)
    assert decide.on_event(instance, graph, added, T0, NO_FACTS) == []
    another = track("Cart Updated", T0, "e-8", cart_id="c-1")
    assert types(decide.on_event(instance, graph, another, T0, NO_FACTS)) == ["JourneyExited"]
