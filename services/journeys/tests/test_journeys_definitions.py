"""Journeys checked and compiled: every problem at once, each with its field path."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from journeys_domain_builders import KNOWN, T0, cart_journey, compiled, journey, send, track, wait

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.segments.v1 import segments_pb2 as spb
from onefold.journeys.domain.definitions import (
    Check,
    InvalidJourney,
    OnEvent,
    Problem,
    SendStep,
    WaitForEventStep,
    compile_journey,
    validate,
)


def problems(data: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p.path, p.reason) for p in validate(journey(data), KNOWN)}


def test_a_valid_journey_compiles_into_its_graph() -> None:
    graph = compiled(cart_journey(), version=3)
    assert graph.name == "abandoned_cart" and graph.version == 3
    assert graph.start == "hold"
    assert graph.entity_key == "cart_id"
    assert isinstance(graph.entry.trigger, OnEvent)
    assert graph.entry.reentry == pb.REENTRY_AFTER_EXIT
    hold = graph.steps["hold"]
    assert isinstance(hold, WaitForEventStep) and hold.timeout == timedelta(hours=1)
    assert hold.on_timeout == "remind" and hold.on_event == ""
    assert graph.steps["sms"] == SendStep("sms", pb.CHANNEL_SMS, "cart_sms", "marketing", "")
    assert graph.goals[0].window == timedelta(days=7) and graph.goals[0].revenue_property == "revenue"
    assert graph.exit_rules[0].reason == "ordered"
    with pytest.raises(TypeError):
        graph.steps["new"] = graph.steps["sms"]  # type: ignore[index]


def test_every_problem_is_listed_with_its_path() -> None:
    data = cart_journey(
        time_zone="Mars/Olympus",
        steps=[
            {
                "name": "hold",
                "wait_for_event": {
                    "event": {"event": "Checkout Started"},
                    "timeout": "0s",
                    "on_timeout": "remind",
                },
            },
            send("remind", "no_such_template", "sms"),
            {
                "name": "pick",
                "split": {
                    "arms": [
                        {"name": "a", "percent": 50, "next": "remind"},
                        {"name": "b", "percent": 40, "next": "remind"},
                    ]
                },
            },
            {
                "name": "check",
                "branch": {
                    "arms": [{"when": {"in_segment": "whales"}, "next": "remind"}],
                    "otherwise": "remind",
                },
            },
        ],
    )
    data["steps"][1]["send"]["purpose"] = "spam"
    data["entry"] = {"schedule": {"cron": "every day", "time_zone": "Nowhere/City"}}
    assert problems(data) == {
        ("time_zone", "not an IANA time zone (e.g. Asia/Shanghai)"),
        ("entry.schedule.cron", "must be a cron expression of 5 (or 6) fields"),
        ("entry.schedule.time_zone", "not an IANA time zone (e.g. Asia/Shanghai)"),
        ("steps[0].wait_for_event.timeout", "must be longer than zero"),
        ("steps[1].send.template", 'no template named "no_such_template"'),
        ("steps[1].send.purpose", 'no consent purpose named "spam"'),
        ("steps[2].split.arms", "percentages must sum to 100, not 90"),
        ("steps[3].branch.arms[0].when.in_segment", 'no segment named "whales"'),
        ("steps[1].send.next", 'no step named "sms"'),
        ("steps[2]", 'step "pick" is unreachable from "hold"'),
        ("steps[3]", 'step "check" is unreachable from "hold"'),
    }


def test_graph_problems_unreachable_steps_and_loops_without_a_wait() -> None:
    data = cart_journey(
        steps=[
            {
                "name": "check",
                "branch": {
                    "arms": [
                        {
                            "when": {"trait": {"trait": "plan", "predicate": {"op": "OPERATOR_EXISTS"}}},
                            "next": "mail",
                        }
                    ],
                    "otherwise": "pause",
                },
            },
            send("mail", "welcome", "check"),
            wait("pause", 60, "check"),
            send("orphan", "welcome"),
        ]
    )
    assert problems(data) == {
        ("steps[3]", 'step "orphan" is unreachable from "check"'),
        ("steps[0]", "a loop without a wait: check -> mail -> check"),
    }


def test_a_loop_through_a_wait_is_allowed() -> None:
    data = cart_journey(steps=[send("mail", "welcome", "pause"), wait("pause", 86_400, "mail")])
    assert problems(data) == set()


def test_the_message_of_an_invalid_journey_names_every_problem() -> None:
    data = cart_journey(steps=[send("mail", "welcome", "sms"), wait("mail", -5)])
    with pytest.raises(InvalidJourney) as refused:
        compile_journey(journey(data), KNOWN)
    assert refused.value.problems == (
        Problem("steps[1].name", "steps[0] has this name already"),
        Problem("steps[1].wait.duration", "must be longer than zero"),
        Problem("steps[0].send.next", 'no step named "sms"'),
    )
    assert str(refused.value).startswith('journey "abandoned_cart" is not valid: steps[1].name: ')
    assert ("steps[0].send.next", 'no step named "sms"') in refused.value.violations


def test_entry_and_step_requirements() -> None:
    data = {
        "name": "Bad Name",
        "steps": [
            {"name": "s"},
            {"name": "w", "wait": {"local_time": "25:00"}},
            {"name": "u", "update_trait": {}},
            {"name": "c", "send": {"template": "welcome"}},
        ],
        "goals": [{"name": "g", "event": {"event": "Order Completed"}, "conversion_window": "-1s"}],
    }
    assert problems(data) == {
        ("name", "must match [a-z][a-z0-9_]{0,62}"),
        ("entry", "required: how people enter"),
        ("steps[0]", "set one of wait, wait_for_event, branch, split, send, update_trait, exit"),
        ("steps[1].wait.local_time", 'must be a 24-hour time of day "HH:MM" (e.g. "09:30")'),
        ("steps[2].update_trait.trait", "required"),
        ("steps[2].update_trait.value", "required (null clears the trait)"),
        ("steps[3].send.channel", "required: email, sms, push or wechat"),
        ("steps[3].send.purpose", "required: the consent purpose the message is sent for"),
        ("goals[0].conversion_window", "must be longer than zero"),
        ("steps[1]", 'step "w" is unreachable from "s"'),
        ("steps[2]", 'step "u" is unreachable from "s"'),
        ("steps[3]", 'step "c" is unreachable from "s"'),
    }


def test_schedules_take_a_cron_or_a_moment_and_split_control_arms_lead_nowhere() -> None:
    data = cart_journey(
        entry={"schedule": {}, "cooldown": "0s"},
        steps=[
            {
                "name": "pick",
                "split": {
                    "arms": [
                        {"name": "mail", "percent": 90, "next": "mail"},
                        {"name": "holdout", "percent": 10, "control": True, "next": "mail"},
                    ]
                },
            },
            send("mail", "welcome"),
        ],
    )
    assert problems(data) == {
        ("entry.schedule", "set exactly one of cron and once_at"),
        ("entry.cooldown", "must be longer than zero"),
        ("steps[0].split.arms[1].next", "a control arm is held out: it leads nowhere"),
    }
    once = cart_journey(entry={"schedule": {"once_at": "2026-04-01T09:00:00Z", "segment": "vip"}})
    assert problems(once) == set()


def test_predicates_are_checked() -> None:
    arms = [
        {
            "when": {"trait": {"trait": "plan", "predicate": {"op": "OPERATOR_IN", "value": "gold"}}},
            "next": "",
        },
        {"when": {"tag": {"tag": "", "predicate": {"op": "OPERATOR_GT", "value": True}}}, "next": ""},
        {"when": {"entry_property": {"path": "total", "predicate": {"op": "OPERATOR_EXISTS", "value": 1}}}},
        {"when": {"all_of": {}}},
    ]
    data = cart_journey(steps=[{"name": "check", "branch": {"arms": arms}}])
    prefix = "steps[0].branch.arms"
    assert problems(data) == {
        (f"{prefix}[0].when.trait.predicate.value", "IN and NOT_IN take `values`, not `value`"),
        (f"{prefix}[0].when.trait.predicate.values", "needs at least one value"),
        (f"{prefix}[1].when.tag.tag", "required"),
        (f"{prefix}[1].when.tag.predicate.value", "GT, GE, LT, LE compare numbers or strings"),
        (f"{prefix}[2].when.entry_property.predicate.value", "EXISTS and NOT_EXISTS take no value"),
        (f"{prefix}[3].when.all_of.conditions", "needs at least one condition"),
    }


def test_a_stored_version_compiles_without_the_workspace_references() -> None:
    # Checked when it was applied; a segment archived since must not strand its instances.
    data = cart_journey(entry={"segment": {"segment": "retired_segment"}})
    assert ("entry.segment.segment", 'no segment named "retired_segment"') in problems(data)
    assert compile_journey(journey(data), None).entry.trigger.segment == "retired_segment"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("check", "found", "holds"),
    [
        (Check(spb.OPERATOR_EQ, 1.0), 1, True),
        (Check(spb.OPERATOR_EQ, 1.0), True, False),  # a boolean is not a number
        (Check(spb.OPERATOR_EQ, True), True, True),
        (Check(spb.OPERATOR_NE, "a"), None, False),  # missing: only NOT_EXISTS holds
        (Check(spb.OPERATOR_NOT_IN, None, ("a",)), None, False),
        (Check(spb.OPERATOR_NE, "a"), "b", True),
        (Check(spb.OPERATOR_GT, 10.0), 10.5, True),
        (Check(spb.OPERATOR_GT, 10.0), "11", False),  # no comparing across types
        (Check(spb.OPERATOR_LE, "b"), "a", True),
        (Check(spb.OPERATOR_IN, None, ("a", "b")), "b", True),
        (Check(spb.OPERATOR_NOT_IN, None, ("a", "b")), "c", True),
        (Check(spb.OPERATOR_CONTAINS, "x"), ["x", "y"], True),
        (Check(spb.OPERATOR_CONTAINS, "ell"), "hello", True),
        (Check(spb.OPERATOR_STARTS_WITH, "he"), "hello", True),
        (Check(spb.OPERATOR_EXISTS), None, False),
        (Check(spb.OPERATOR_NOT_EXISTS), None, True),
    ],
)
def test_checks(check: Check, found: Any, holds: bool) -> None:
    assert check.holds(found) is holds


def test_event_filters_match_type_name_and_properties() -> None:
    data = cart_journey(
        exit_rules=[
            {
                "event": {
                    "event": "Order Completed",
                    "where": [{"path": "order.total", "predicate": {"op": "OPERATOR_GE", "value": 100}}],
                }
            }
        ]
    )
    rule = compiled(data).exit_rules[0]
    assert rule.reason == "exit rule: Order Completed"
    assert rule.event.matches(track("Order Completed", T0, order={"total": 150}))
    assert not rule.event.matches(track("Order Completed", T0, order={"total": 50}))
    assert not rule.event.matches(track("Order Completed", T0))
    assert not rule.event.matches(track("Order Refunded", T0, order={"total": 150}))


def test_property_and_trait_paths_are_names_joined_by_dots() -> None:
    data = cart_journey(
        entry={"event": {"event": {"event": "Cart Updated"}, "entity_key": "cart..id"}},
        steps=[{"name": "set", "update_trait": {"trait": ".plan", "value": "gold"}}],
        exit_rules=[
            {
                "event": {
                    "event": "Order Completed",
                    "where": [{"path": "", "predicate": {"op": "OPERATOR_EXISTS"}}],
                }
            }
        ],
    )
    dots = 'must be names joined by dots (e.g. "address.city")'
    assert problems(data) == {
        ("entry.event.entity_key", dots),
        ("steps[0].update_trait.trait", dots),
        ("exit_rules[0].event.where[0].path", "required"),
    }


def test_a_wait_for_an_event_needs_the_event_and_a_timeout() -> None:
    data = cart_journey(steps=[{"name": "hold", "wait_for_event": {"on_event": "", "on_timeout": ""}}])
    assert problems(data) == {
        ("steps[0].wait_for_event.event.event", "required: the track event's name"),
        ("steps[0].wait_for_event.timeout", "required: how long to wait for the event"),
    }
