"""Journeys and templates from YAML (docs/journeys.md) to onefold.journeys.v1 and back: the example
converts to the protos it means and the service's own checker accepts them, every friendly spelling
reaches its proto field, every mistake is one sentence naming the document and the YAML path, the
service's refusals land under their documents, `journeys get` writes what `apply` reads, and the
stats report shows the numbers it was given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import duration_pb2, struct_pb2

from onefold.cli.journeys import dump_documents, problems_by_document
from onefold.cli.journeys_report import stats_html, uplift_sentence
from onefold.cli.journeys_yaml import (
    journey_document,
    journey_from_document,
    parse_journey_documents,
    template_document,
    yaml_path,
)
from onefold.cli.output import CliError
from onefold.cli.segments_yaml import parse_definition_documents
from onefold.cli.sources import load_document, parse_source_documents
from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.segments.v1 import segments_pb2 as spb
from onefold.journeys.domain import templates
from onefold.journeys.domain.definitions import Known, validate

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"
DAY = 86_400


def one(text: str) -> pb.Journey:
    return journey_from_document(yaml.safe_load(text), "f.yaml")


def refusal(text: str) -> str:
    with pytest.raises(CliError) as raised:
        parse_journey_documents(list(yaml.safe_load_all(text)), "f.yaml")
    message = raised.value.message
    assert "\n" not in message
    return message


def event(name: str) -> spb.EventFilter:
    return spb.EventFilter(event=name)


def test_the_example_converts_to_the_journey_and_templates_it_means() -> None:
    parsed = parse_journey_documents(load_document(EXAMPLES / "journeys.yaml"), "journeys.yaml")
    assert [spec.journey.name for spec in parsed.journeys] == ["abandoned_cart"]
    assert parsed.journeys[0].where == "journeys.yaml (document 1)"
    expected = pb.Journey(
        name="abandoned_cart",
        description="Remind people of the cart they left, by email the next morning, then by SMS",
        time_zone="Asia/Shanghai",
        entry=pb.Entry(
            event=pb.EventTrigger(event=event("Product Added"), entity_key="cart_id"),
            reentry=pb.REENTRY_AFTER_EXIT,
        ),
        start="holdout",
        steps=[
            pb.Step(
                name="holdout",
                split=pb.Split(
                    arms=[
                        pb.Split.Arm(name="control", percent=10, control=True),
                        pb.Split.Arm(name="treated", percent=90, next="next_morning"),
                    ]
                ),
            ),
            pb.Step(name="next_morning", wait=pb.Wait(local_time="09:00", next="email_reminder")),
            pb.Step(
                name="email_reminder",
                send=pb.Send(
                    channel=pb.CHANNEL_EMAIL,
                    template="cart_reminder",
                    purpose="marketing",
                    next="wait_for_order",
                ),
            ),
            pb.Step(
                name="wait_for_order",
                wait_for_event=pb.WaitForEvent(
                    event=event("Order Completed"),
                    timeout=duration_pb2.Duration(seconds=2 * DAY),
                    on_event="ordered",
                    on_timeout="sms_reminder",
                ),
            ),
            pb.Step(
                name="sms_reminder",
                send=pb.Send(channel=pb.CHANNEL_SMS, template="cart_sms", purpose="marketing"),
            ),
            pb.Step(name="ordered", exit=pb.Exit(reason="ordered")),
        ],
        exit_rules=[pb.ExitRule(event=event("Order Completed"), reason="ordered")],
        goals=[
            pb.Goal(
                name="purchase",
                event=event("Order Completed"),
                conversion_window=duration_pb2.Duration(seconds=7 * DAY),
                revenue_property="total",
            )
        ],
    )
    assert parsed.journeys[0].journey == expected

    by_name = {spec.template.name: spec.template for spec in parsed.templates}
    assert set(by_name) == {"cart_reminder", "cart_sms"}
    email = by_name["cart_reminder"]
    assert email.channel == pb.CHANNEL_EMAIL
    assert email.subject == "{{ traits.firstName }}, your cart is waiting"
    assert "{{ event.cart_id }}" in email.text and "{{ event.cart_id }}" in email.html
    assert email.html.startswith("<p>Hello {{ traits.firstName }},</p>")
    assert by_name["cart_sms"].channel == pb.CHANNEL_SMS
    assert "{{ event.cart_id }}" in by_name["cart_sms"].text

    # The service's own checker accepts them, naming the purpose the consent example declares.
    consent = load_document(EXAMPLES / "consent.yaml")[0]
    purposes = frozenset(purpose["id"] for purpose in consent["purposes"])
    assert "marketing" in purposes
    known = Known(purposes=purposes, templates={name: t.channel for name, t in by_name.items()})
    assert validate(expected, known) == []
    for name, template in by_name.items():
        assert templates.problems(template, name) == []


def test_the_example_reads_back_as_written_through_journeys_get() -> None:
    parsed = parse_journey_documents(load_document(EXAMPLES / "journeys.yaml"), "journeys.yaml")
    documents = [journey_document(s.journey) for s in parsed.journeys]
    documents += [template_document(s.template) for s in parsed.templates]
    written = dump_documents(documents)
    assert "text: |" in written  # a body of several lines stays a block
    again = parse_journey_documents(list(yaml.safe_load_all(written)), "again.yaml")
    assert [s.journey for s in again.journeys] == [s.journey for s in parsed.journeys]
    assert [s.template for s in again.templates] == [s.template for s in parsed.templates]


EVERY_STEP = """
kind: Journey
name: every_step
description: each kind of step
timeZone: Europe/Berlin
entry:
  event: {type: track, event: Order Completed, where: {total: {gte: 50}, currency: EUR}}
  entityKey: order_id
  reentry: REENTRY_ALWAYS
  cooldown: 1d12h
start: first_wait
steps:
  - {name: first_wait, wait: 30m, next: morning}
  - {name: morning, wait: {until: "21:30"}, next: fork}
  - name: fork
    branch:
      arms:
        - when:
            all_of:
              - {trait: plan, in: [gold, platinum]}
              - {trait: address.city, op: starts_with, value: Ber}
              - not: {tag: lifecycle_stage, eq: lost}
          next: push
        - when:
            any_of:
              - {tag: vip}
              - {in_segment: big_spenders}
              - {entryProperty: total, gt: 100}
              - {entry_property: coupon, exists: true}
          next: halves
      otherwise: mark
  - name: halves
    split:
      arms:
        - {name: a, percent: 45, next: wechat}
        - {name: b, percent: 45, next: email}
        - {name: holdout, percent: 10, control: true}
  - {name: push, send: {channel: push, template: p, purpose: marketing}, next: mark}
  - {name: wechat, send: {channel: CHANNEL_WECHAT, template: w, purpose: marketing}}
  - {name: email, send: {channel: Email, template: e, purpose: marketing}, next: wait_order}
  - name: wait_order
    wait_for_event: {event: Order Completed, timeout: 2h, on_event: done, on_timeout: mark}
  - name: mark
    update_trait: {trait: journeys.last, value: {at: "2026-12-01", tries: [1, 2.5], ok: true, none: null}}
    next: done
  - {name: done, exit: {reason: finished}}
  - {name: plain_end, exit: {}}
  - {name: bare_end, exit: }
exitRules:
  - {event: Refund Issued}
  - {event: {type: page, event: Unsubscribe}, reason: unsubscribed}
goals:
  - {name: bought, event: Order Completed, window: 7d, revenue_property: revenue, exit_on_reach: true}
  - {name: visited, event: {type: screen, event: Home}}
"""


def test_every_step_kind_and_spelling_reaches_its_proto_field_and_reads_back() -> None:
    journey = one(EVERY_STEP)
    assert journey.time_zone == "Europe/Berlin"
    entry = journey.entry
    assert entry.event.entity_key == "order_id"
    assert entry.reentry == pb.REENTRY_ALWAYS
    assert entry.cooldown.seconds == 36 * 3600
    assert {w.path: w.predicate.op for w in entry.event.event.where} == {
        "total": spb.OPERATOR_GE,
        "currency": spb.OPERATOR_EQ,
    }
    steps = {step.name: step for step in journey.steps}
    assert steps["first_wait"].wait == pb.Wait(duration=duration_pb2.Duration(seconds=1800), next="morning")
    assert steps["morning"].wait == pb.Wait(local_time="21:30", next="fork")
    arms = steps["fork"].branch.arms
    first = arms[0].when.all_of.conditions
    assert first[0].trait.trait == "plan" and first[0].trait.predicate.op == spb.OPERATOR_IN
    assert first[1].trait.predicate == spb.Predicate(
        op=spb.OPERATOR_STARTS_WITH, value={"string_value": "Ber"}
    )
    assert first[2].negated.tag == pb.TagTest(
        tag="lifecycle_stage", predicate=spb.Predicate(op=spb.OPERATOR_EQ, value={"string_value": "lost"})
    )
    second = arms[1].when.any_of.conditions
    assert second[0].tag == pb.TagTest(tag="vip") and not second[0].tag.HasField("predicate")
    assert second[1].in_segment == "big_spenders"
    assert second[2].entry_property.path == "total"
    assert second[2].entry_property.predicate.op == spb.OPERATOR_GT
    assert second[3].entry_property.predicate.op == spb.OPERATOR_EXISTS
    assert steps["fork"].branch.otherwise == "mark"
    assert [(a.name, a.percent, a.next, a.control) for a in steps["halves"].split.arms] == [
        ("a", 45, "wechat", False),
        ("b", 45, "email", False),
        ("holdout", 10, "", True),
    ]
    assert [steps[n].send.channel for n in ("push", "wechat", "email")] == [
        pb.CHANNEL_PUSH,
        pb.CHANNEL_WECHAT,
        pb.CHANNEL_EMAIL,
    ]
    assert steps["push"].send.next == "mark" and steps["wechat"].send.next == ""
    waiting = steps["wait_order"].wait_for_event
    assert (waiting.timeout.seconds, waiting.on_event, waiting.on_timeout) == (7200, "done", "mark")
    update = steps["mark"].update_trait
    assert (update.trait, update.next) == ("journeys.last", "done")
    value = update.value.struct_value.fields
    assert value["at"].string_value == "2026-12-01"
    assert [v.number_value for v in value["tries"].list_value.values] == [1, 2.5]
    assert value["ok"].bool_value is True
    assert value["none"].WhichOneof("kind") == "null_value"
    assert steps["done"].exit.reason == "finished"
    assert steps["plain_end"].HasField("exit") and steps["bare_end"].HasField("exit")
    assert journey.exit_rules[0] == pb.ExitRule(event=spb.EventFilter(event="Refund Issued"))
    assert journey.exit_rules[1].event.type == "page" and journey.exit_rules[1].reason == "unsubscribed"
    bought, visited = journey.goals
    assert (bought.conversion_window.seconds, bought.revenue_property, bought.exit_on_reach) == (
        7 * DAY,
        "revenue",
        True,
    )
    assert visited.event.type == "screen" and not visited.HasField("conversion_window")
    assert journey_from_document(yaml.safe_load(dump_documents([journey_document(journey)])), "x") == journey


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{segment: vip, on_exit: true, reentry: never}", pb.Entry(
            segment=pb.SegmentTrigger(segment="vip", on_exit=True), reentry=pb.REENTRY_NEVER
        )),
        ("{segment: vip, reentry: afterExit}", pb.Entry(
            segment=pb.SegmentTrigger(segment="vip"), reentry=pb.REENTRY_AFTER_EXIT
        )),
        ("{schedule: {cron: '0 9 * * 1', time_zone: Asia/Shanghai, segment: vip}}", pb.Entry(
            schedule=pb.ScheduleTrigger(cron="0 9 * * 1", time_zone="Asia/Shanghai", segment="vip")
        )),
        ("{api: true, reentry: always, cooldown: 2w}", pb.Entry(
            api=pb.ApiTrigger(), reentry=pb.REENTRY_ALWAYS, cooldown=duration_pb2.Duration(seconds=14 * DAY)
        )),
    ],
)  # fmt: skip
def test_every_trigger_reads_and_reads_back(entry: str, expected: pb.Entry) -> None:
    journey = one(f"kind: Journey\nname: j\nentry: {entry}\nsteps: [{{name: end, exit: {{}}}}]")
    assert journey.entry == expected
    assert journey_from_document(journey_document(journey), "x") == journey


def test_a_one_off_schedule_is_a_moment_with_its_offset() -> None:
    journey = one(
        "kind: Journey\nname: j\nentry: {schedule: {once_at: 2026-12-24T09:00:00+08:00}}\n"
        "steps: [{name: end, exit: {}}]"
    )
    assert journey.entry.schedule.once_at.ToJsonString() == "2026-12-24T01:00:00Z"
    quoted = one(
        "kind: Journey\nname: j\nentry: {schedule: {once_at: '2026-12-24T01:00:00Z'}}\n"
        "steps: [{name: end, exit: {}}]"
    )
    assert quoted == journey
    assert journey_from_document(journey_document(journey), "x") == journey


def test_templates_of_every_channel_keep_their_bodies_as_written() -> None:
    parsed = parse_journey_documents(
        list(
            yaml.safe_load_all(
                "kind: Template\nname: e\nchannel: email\nsubject: Hi\ntext: |\n  line one\n    indented\n"
                "html: <b>{{ traits.first_name }}</b>\n---\n"
                "kind: Template\nname: p\nchannel: PUSH\nsubject: Title\ntext: body\n---\n"
                "kind: Template\nname: w\nchannel: CHANNEL_WECHAT\ntext: hello\n---\n"
                "kind: Template\nname: s\nchannel: sms\ntext: '  spaced  '\n"
            )
        ),
        "t.yaml",
    )
    by_name = {spec.template.name: spec.template for spec in parsed.templates}
    assert by_name["e"].text == "line one\n  indented\n"
    assert by_name["e"].html == "<b>{{ traits.first_name }}</b>"
    assert [by_name[n].channel for n in "epws"] == [
        pb.CHANNEL_EMAIL,
        pb.CHANNEL_PUSH,
        pb.CHANNEL_WECHAT,
        pb.CHANNEL_SMS,
    ]
    assert by_name["s"].text == "  spaced  "
    assert by_name["p"].subject == "Title"
    assert parsed.templates[0].label == "template/e" and parsed.templates[0].where == "t.yaml (document 1)"
    for template in by_name.values():
        document = yaml.safe_load(dump_documents([template_document(template)]))
        assert parse_journey_documents([document], "x").templates[0].template == template


J = "kind: Journey\nname: j\n"
END = "steps: [{name: end, exit: {}}]\n"
ERRORS: list[tuple[str, str]] = [
    ("kind: Journey\nentry: {api: true}\n" + END, "f.yaml: name is required"),
    ("kind: Journey\nname: Cart Flow\n", "f.yaml: name must be lower case"),
    (J + "colour: red\nentry: {api: true}\n" + END, "f.yaml (j): colour is not a known key"),
    (J + END, "f.yaml (j): entry is required"),
    (J + "entry: {api: true}\n", "f.yaml (j): steps must be a non-empty list"),
    (J + "entry: {api: true, when: now}\n" + END, "f.yaml (j): entry.when is not a known key"),
    (J + "entry: {reentry: never}\n" + END, "f.yaml (j): entry needs exactly one trigger"),
    (J + "entry: {api: true, segment: vip}\n" + END, "f.yaml (j): entry needs exactly one trigger"),
    (J + "entry: {api: false}\n" + END, "f.yaml (j): entry.api is written `api: true`"),
    (
        J + "entry: {segment: vip, entity_key: id}\n" + END,
        "f.yaml (j): entry.entity_key belongs to the event trigger",
    ),
    (
        J + "entry: {event: X, on_exit: true}\n" + END,
        "f.yaml (j): entry.on_exit belongs to the segment trigger",
    ),
    (J + "entry: {api: true, reentry: sometimes}\n" + END, "f.yaml (j): entry.reentry must be one of never"),
    (J + "entry: {api: true, cooldown: 3x}\n" + END, "f.yaml (j): entry.cooldown must be a duration like"),
    (J + "entry: {api: true, cooldown: 0m}\n" + END, "f.yaml (j): entry.cooldown must be longer than zero"),
    (
        J + "entry: {event: {event: X, whre: {a: 1}}}\n" + END,
        "f.yaml (j): entry.event.whre is not a known key",
    ),
    (
        J + "entry: {schedule: {cron: '* * * * *', every: 1d}}\n" + END,
        "f.yaml (j): entry.schedule.every is not",
    ),
    (
        J + "entry: {schedule: {once_at: '2026-12-24 09:00:00'}}\n" + END,
        "f.yaml (j): entry.schedule.once_at needs its offset from UTC",
    ),
    (J + "entry: {schedule: {once_at: soon}}\n" + END, "f.yaml (j): entry.schedule.once_at must be a time"),
    (J + "entry: {api: true}\nsteps: [{name: a}]\n", "f.yaml (j): steps[0] needs exactly one of wait"),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait: 1h, send: {}}]\n",
        "f.yaml (j): steps[0] needs exactly one of wait",
    ),
    (J + "entry: {api: true}\nsteps: [{wait: 1h}]\n", "f.yaml (j): steps[0].name is required"),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait: 1h, then: b}]\n",
        "f.yaml (j): steps[0].then is not a known",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait: 3 days}]\n",
        "f.yaml (j): steps[0].wait must be a duration",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait: 1y}]\n",
        "f.yaml (j): steps[0].wait must be a duration",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait: {until: 9:30}}]\n",
        "f.yaml (j): steps[0].wait.until must be",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait: {until: '25:00'}}]\n",
        "f.yaml (j): steps[0].wait.until",
    ),
    (J + "entry: {api: true}\nsteps: [{name: a, wait: {for: 1h}}]\n", "f.yaml (j): steps[0].wait.for is not"),
    (
        J + "entry: {api: true}\nsteps: [{name: a, exit: {}, next: b}]\n",
        "f.yaml (j): steps[0].next is not for exit steps",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait_for_event: {event: X}}]\n",
        "f.yaml (j): steps[0].wait_for_event.timeout is required",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, wait_for_event: {event: X, timeout: 2 days}}]\n",
        "f.yaml (j): steps[0].wait_for_event.timeout must be a duration",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, send: {channel: fax, template: t, purpose: p}}]\n",
        "f.yaml (j): steps[0].send.channel must be one of email, sms, push, wechat",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, send: {channel: sms, template: t}}]\n",
        "f.yaml (j): steps[0].send.purpose is required",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, send: {channel: sms, template: t, purpose: p, to: me}}]\n",
        "f.yaml (j): steps[0].send.to is not a known key",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, branch: {arms: [{when: {trait: plan}, next: b}]}}]\n",
        "f.yaml (j): steps[0].branch.arms[0].when needs a test beside trait",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, branch: {arms: [{when: {computed_trait: s, gte: 1}}]}}]\n",
        "f.yaml (j): steps[0].branch.arms[0].when needs exactly one of all_of",
    ),
    (
        J
        + "entry: {api: true}\nsteps: [{name: a, branch: {arms: [{when: {not: {trait: x, bigger: 1}}}]}}]\n",
        "f.yaml (j): steps[0].branch.arms[0].when.not.bigger must be one of eq",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, branch: {arms: [{when: {in_segment: v, eq: 1}}]}}]\n",
        "f.yaml (j): steps[0].branch.arms[0].when.eq cannot stand beside it",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, branch: {arms: [{next: b}]}}]\n",
        "f.yaml (j): steps[0].branch.arms[0].when is required",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, split: {arms: [{name: x, percent: 150}]}}]\n",
        "f.yaml (j): steps[0].split.arms[0].percent must be a whole number from 0 to 100",
    ),
    (
        J
        + "entry: {api: true}\nsteps: [{name: a, split: {arms: [{name: x, percent: 100, control: yes please}]}}]\n",
        "f.yaml (j): steps[0].split.arms[0].control must be true or false",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, update_trait: {trait: t}}]\n",
        "f.yaml (j): steps[0].update_trait.value is required (null clears the trait)",
    ),
    (
        J + "entry: {api: true}\nsteps: [{name: a, update_trait: {trait: t, value: 2026-12-01}}]\n",
        "f.yaml (j): steps[0].update_trait.value must be JSON; write a date or time in quotes",
    ),
    (
        J + "entry: {api: true}\n" + END + "exit_rules: [{reason: x}]\n",
        "f.yaml (j): exit_rules[0].event is required",
    ),
    (J + "entry: {api: true}\n" + END + "goals: [{event: X}]\n", "f.yaml (j): goals[0].name is required"),
    (
        J + "entry: {api: true}\n" + END + "goals: [{name: g, event: X, conversion_window: 7d}]\n",
        "f.yaml (j): goals[0].conversion_window is not a known key",
    ),
    (
        J + "entry: {api: true}\n" + END + "goals: [{name: g, event: X, window: 7 days}]\n",
        "f.yaml (j): goals[0].window must be a duration like 30d",
    ),
    ("kind: Template\nname: t\ntext: hi\n", "f.yaml (t): channel is required"),
    ("kind: Template\nname: t\nchannel: email\nbody: hi\n", "f.yaml (t): body is not a known key"),
    ("kind: Template\nname: t\nchannel: email\ntext: [a]\n", "f.yaml (t): text must be text"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1][:70] for e in ERRORS])
def test_each_mistake_is_one_sentence_naming_its_yaml_path(text: str, expected: str) -> None:
    assert refusal(text).startswith(expected)


def test_documents_are_numbered_and_a_name_given_twice_is_refused() -> None:
    text = "kind: Source\nname: web\n---\nkind: Journey\nname: j\nentry: {api: true}\nsteps: [{name: a, wait: 3x}]\n"
    assert refusal(text).startswith("f.yaml (document 2) (j): steps[0].wait must be a duration")
    twice = (
        "kind: Template\nname: t\nchannel: sms\ntext: a\n---\n"
        "kind: Template\nname: t\nchannel: sms\ntext: b\n"
    )
    assert refusal(twice) == "f.yaml (document 2): template name 't' is also used by f.yaml (document 1)"
    # A journey and a template may share a name: they are different things.
    both = (
        "kind: Template\nname: t\nchannel: sms\ntext: a\n---\nkind: Journey\nname: t\nentry: {api: true}\n"
        + END
    )
    assert len(parse_journey_documents(list(yaml.safe_load_all(both)), "f.yaml").journeys) == 1


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("name", "name"),
        ("entry.trigger", "entry"),
        ("entry.event.event.event", "entry.event.event"),
        ("entry.event.event.where[0].predicate.value", "entry.event.where[0].value"),
        ("entry.event.entity_key", "entry.entity_key"),
        ("entry.segment.segment", "entry.segment"),
        ("entry.schedule.cron", "entry.schedule.cron"),
        ("steps[2].send.next", "steps[2].next"),
        ("steps[2].send.template", "steps[2].send.template"),
        ("steps[0].wait.duration", "steps[0].wait"),
        ("steps[0].wait.local_time", "steps[0].wait.until"),
        ("steps[1].update_trait.trait", "steps[1].update_trait.trait"),
        ("steps[3].wait_for_event.on_timeout", "steps[3].wait_for_event.on_timeout"),
        (
            "steps[3].branch.arms[0].when.all_of.conditions[1].negated.trait.predicate.value",
            "steps[3].branch.arms[0].when.all_of[1].not.value",
        ),
        ("steps[3].branch.arms[0].when.tag.tag", "steps[3].branch.arms[0].when.tag"),
        ("steps[3].branch.arms[1].when.entry_property.path", "steps[3].branch.arms[1].when.entry_property"),
        ("steps[4].split.arms[1].percent", "steps[4].split.arms[1].percent"),
        ("goals[0].conversion_window", "goals[0].window"),
        ("exit_rules[1].event.event", "exit_rules[1].event.event"),
    ],
)
def test_the_services_field_paths_read_as_yaml_paths(field: str, path: str) -> None:
    assert yaml_path(field) == path


def test_the_services_refusals_land_under_their_documents() -> None:
    documents = parse_journey_documents(
        list(
            yaml.safe_load_all(
                "kind: Template\nname: t\nchannel: email\ntext: a\n---\n"
                "kind: Journey\nname: first\nentry: {api: true}\n" + END + "---\n"
                "kind: Journey\nname: second\nentry: {api: true}\n" + END
            )
        ),
        "f.yaml",
    )
    problems = problems_by_document(
        documents,
        [
            ("templates[0].subject", "required for email"),
            ("journeys[1].steps[0].send.next", 'no step named "x"'),
            ("journeys[1].entry.segment.segment", "no segment named vip"),
            ("journeys", "at most 100 journeys in one request"),
        ],
    )
    assert [(p.where, p.label, p.violations) for p in problems] == [
        ("f.yaml (document 2)", "journey/first", [("journeys", "at most 100 journeys in one request")]),
        (
            "f.yaml (document 3)",
            "journey/second",
            [("steps[0].next", 'no step named "x"'), ("entry.segment", "no segment named vip")],
        ),
        ("f.yaml (document 1)", "template/t", [("subject", "required for email")]),
    ]
    # A refusal without field violations still names the document.
    assert [(p.where, p.violations) for p in problems_by_document(documents, [])] == [
        ("f.yaml (document 2)", [])
    ]


def test_other_readers_leave_journeys_and_templates_alone_and_a_misspelt_kind_names_them() -> None:
    documents: list[Any] = [
        {"kind": "Journey", "name": "j", "entry": {"api": True}, "steps": [{"name": "e", "exit": {}}]},
        {"kind": "Template", "name": "t", "channel": "sms", "text": "hi"},
    ]
    assert parse_source_documents(documents, "f.yaml") == []
    assert parse_definition_documents(documents, "f.yaml") == []
    with pytest.raises(CliError) as raised:
        parse_source_documents([{"kind": "Journy", "name": "j"}], "f.yaml")
    assert "Journey, Template" in raised.value.message and "'Journy'" in raised.value.message


def stats_response() -> pb.JourneyStatsResponse:
    stats = pb.JourneyStatsResponse(
        journey="abandoned_cart",
        entered=1234,
        active=56,
        exited=1178,
        converted=321,
        revenue=98765.43,
        uplift=pb.Uplift(
            treated=1100,
            treated_converted=310,
            control=134,
            control_converted=11,
            uplift=0.2497,
            ci_low=0.1981,
            ci_high=0.3013,
        ),
        steps=[
            pb.StepStats(step="next_morning", entered=1100),
            pb.StepStats(
                step="email_reminder",
                entered=1090,
                queued=1090,
                sent=977,
                suppressed=113,
                delivered=951,
                failed=26,
            ),
            pb.StepStats(
                step="sms_<reminder>", entered=400, queued=400, sent=388, suppressed=12, delivered=380
            ),
        ],
    )
    stats.exits_by_reason.update({"completed": 700, "exit_rule: ordered": 344, "control": 134})
    return stats


def test_the_stats_report_is_one_self_contained_page_with_every_number() -> None:
    page = stats_html(stats_response(), version=3)
    assert page.startswith("<!DOCTYPE html>")
    assert "Journey abandoned_cart (version 3)" in page
    for number in ("1,234", "56", "1,178", "321", "98,765.43", "700", "344", "134"):
        assert f"<td>{number}" in page, number
    for number in ("1,090", "977", "113", "951", "26", "388", "12", "380"):
        assert f">{number}</text>" in page, number  # each bar is labelled with its count
    assert "exit_rule: ordered" in page
    assert "uplift +25.0 pp (95% CI +19.8 pp to +30.1 pp)" in page
    assert "treated 310/1,100 converted (28.2%), control 11/134 (8.2%)" in page
    # A bar chart per send step only, each in its own SVG; nothing is fetched or run.
    assert page.count("<svg") == 2
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0
    # What the service sent is escaped.
    assert "sms_&lt;reminder&gt;" in page and "sms_<reminder>" not in page


def test_bars_are_scaled_to_the_steps_largest_count() -> None:
    page = stats_html(stats_response())
    assert "Journey abandoned_cart (every version)" in page
    # email_reminder: 1,090 queued is the full bar (360); 977 sent is 323 of it.
    assert 'width="323" height="18" fill="#2f6fdb"><title>sent: 977</title>' in page


def test_without_a_control_group_there_is_no_uplift_and_an_empty_report_still_renders() -> None:
    empty = pb.JourneyStatsResponse(journey="new")
    assert uplift_sentence(empty).startswith("uplift: none yet")
    page = stats_html(empty)
    assert "none yet" in page and "no step entered yet" in page and "<svg" not in page


def test_update_trait_values_are_json() -> None:
    journey = one(J + "entry: {api: true}\nsteps: [{name: a, update_trait: {trait: t, value: 3}}]\n")
    assert journey.steps[0].update_trait.value == struct_pb2.Value(number_value=3)
    cleared = one(J + "entry: {api: true}\nsteps: [{name: a, update_trait: {trait: t, value: null}}]\n")
    assert cleared.steps[0].update_trait.value.WhichOneof("kind") == "null_value"
