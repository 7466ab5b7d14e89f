"""Segments definitions from YAML (docs/segments.md) to onefold.segments.v1.Definition and back: the
example file converts to definitions the service's own checker accepts, every mistake is one
sentence naming the document and the YAML path, and `segments get` writes what `apply` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import duration_pb2

from onefold.cli.output import CliError
from onefold.cli.segments_yaml import (
    definition_document,
    definition_from_document,
    format_duration,
    parse_definition_documents,
    parse_duration,
    yaml_path,
)
from onefold.cli.sources import load_document, parse_source_documents
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain.definitions import compile_workspace

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "segments.yaml"


def one(text: str) -> pb.Definition:
    return definition_from_document(yaml.safe_load(text), "f.yaml")


def refusal(text: str) -> str:
    with pytest.raises(CliError) as raised:
        parse_definition_documents(list(yaml.safe_load_all(text)), "f.yaml")
    message = raised.value.message
    assert "\n" not in message
    return message


def test_the_example_file_converts_and_the_service_checker_accepts_it() -> None:
    specs = parse_definition_documents(load_document(EXAMPLE), str(EXAMPLE))
    names = [spec.definition.name for spec in specs]
    assert set(names) == {
        "spend_90d",
        "orders_all_time",
        "big_spenders_90d",
        "cart_abandoned",
        "lifecycle_stage",
        "rfm",
        "city",
        "customer_tier",
    }
    compiled = compile_workspace([spec.definition for spec in specs])
    assert set(compiled.definitions) == set(names)
    by_name = {spec.definition.name: spec.definition for spec in specs}
    spend = by_name["spend_90d"].computed_trait
    assert (spend.aggregation, spend.property, spend.event.event) == (
        pb.AGGREGATION_SUM,
        "revenue",
        "Order Completed",
    )
    assert spend.window == duration_pb2.Duration(seconds=90 * 86_400)
    assert by_name["big_spenders_90d"].segment.condition == pb.Condition(
        computed_trait=pb.ComputedTraitTest(
            computed_trait="spend_90d",
            predicate=pb.Predicate(op=pb.OPERATOR_GE, value={"number_value": 1000}),
        )
    )
    assert by_name["rfm"].rfm.cells == []  # the default cells
    assert list(by_name["rfm"].rfm.cut_offs.frequency) == [2, 3, 5, 8]
    assert by_name["city"].tag.copy_trait == "address.city"


def test_every_example_definition_reads_back_as_written() -> None:
    for spec in parse_definition_documents(load_document(EXAMPLE), str(EXAMPLE)):
        document = definition_document(spec.definition)
        assert definition_from_document(yaml.safe_load(yaml.safe_dump(document)), "x") == spec.definition


def test_a_condition_of_every_leaf_converts_and_reads_back() -> None:
    definition = one(
        """
kind: Segment
name: every_leaf
evaluation: batch
schedule: "0 * * * *"
timeZone: Europe/Berlin
condition:
  any_of:
    - all_of:
        - {trait: plan, op: in, values: [gold, platinum]}
        - {trait: address.city, starts_with: Ber}
        - {trait: email, exists: true}
    - not: {tag: lifecycle_stage, eq: lost}
    - tag: city
    - in_segment: big_spenders
    - computed_trait: spend_90d
      op: gte
      value: 1000
    - performed:
        type: page
        event: Pricing
        where: {path.depth: {gt: 2}, referrer: google}
        minCount: 2
        max_count: 5
        within: 1d12h
    - performed: Order Completed
    - not_performed_after:
        after: {event: Product Added, where: {price: {gte: 10}}}
        then_not: Order Completed
        within: 24h
"""
    )
    assert (definition.evaluation, definition.time_zone) == (pb.EVALUATION_BATCH, "Europe/Berlin")
    tests = definition.segment.condition.any_of.conditions
    assert tests[0].all_of.conditions[0].trait.predicate.op == pb.OPERATOR_IN
    assert [v.string_value for v in tests[0].all_of.conditions[0].trait.predicate.values] == [
        "gold",
        "platinum",
    ]
    assert tests[1].negated.tag.predicate == pb.Predicate(op=pb.OPERATOR_EQ, value={"string_value": "lost"})
    assert not tests[2].tag.HasField("predicate")  # any value
    performed = tests[5].performed
    assert (performed.event.type, performed.min_count, performed.max_count) == ("page", 2, 5)
    assert performed.within.seconds == 36 * 3600
    assert {w.path: w.predicate.op for w in performed.event.where} == {
        "path.depth": pb.OPERATOR_GT,
        "referrer": pb.OPERATOR_EQ,
    }
    assert tests[6].performed.event.event == "Order Completed"
    assert tests[7].not_performed_after.within.seconds == 86_400
    assert definition_from_document(definition_document(definition), "x") == definition


def test_short_and_long_predicates_are_the_same_test() -> None:
    short = one("kind: Segment\nname: s\ncondition: {trait: age, gte: 18}")
    long = one("kind: Segment\nname: s\ncondition: {trait: age, op: gte, value: 18}")
    proto_spelling = one("kind: Segment\nname: s\ncondition: {trait: age, op: OPERATOR_GE, value: 18}")
    assert short == long == proto_spelling


@pytest.mark.parametrize(
    ("text", "seconds", "nanos", "written"),
    [
        ("30d", 30 * 86_400, 0, "30d"),
        ("24h", 86_400, 0, "1d"),
        ("15m", 900, 0, "15m"),
        ("90s", 90, 0, "90s"),
        ("1d12h", 36 * 3600, 0, "36h"),
        ("2w", 14 * 86_400, 0, "2w"),
        ("1500ms", 1, 500_000_000, "1500ms"),
    ],
)
def test_durations(text: str, seconds: int, nanos: int, written: str) -> None:
    from onefold.cli.segments_yaml import YamlPath

    duration = parse_duration(text, YamlPath("f.yaml", ("window",)))
    assert (duration.seconds, duration.nanos) == (seconds, nanos)
    assert format_duration(duration) == written


BASE = "kind: Segment\nname: s\ncondition:\n  all_of:\n    - "
ERRORS: list[tuple[str, str]] = [
    ("kind: Segment\ncondition: {in_segment: x}", "f.yaml: name is required"),
    ("kind: Segment\nname: Big Spenders\ncondition: {in_segment: x}", "f.yaml: name must be lower case"),
    (
        "kind: Segment\nname: s\ncolour: red\ncondition: {in_segment: x}",
        "f.yaml (s): colour is not a known key",
    ),
    ("kind: Segment\nname: s", "f.yaml (s): condition is required"),
    (
        "kind: Segment\nname: s\nevaluation: nightly\ncondition: {in_segment: x}",
        "f.yaml (s): evaluation must be",
    ),
    ("kind: Segment\nname: s\ncondition: [a]", "f.yaml (s): condition must be a condition"),
    (
        "kind: Segment\nname: s\ncondition: {trait: plan, tag: x}",
        "f.yaml (s): condition needs exactly one of",
    ),
    ("kind: Segment\nname: s\ncondition: {trait: plan}", "f.yaml (s): condition needs a test beside trait"),
    (BASE + "trait: plan\n      gte: 1\n      lte: 2", "f.yaml (s): condition.all_of[0] needs one test"),
    (
        BASE + "trait: plan\n      op: between\n      value: 1",
        "f.yaml (s): condition.all_of[0].op must be one of",
    ),
    (BASE + "trait: plan\n      value: 1", "f.yaml (s): condition.all_of[0].op is required"),
    (
        BASE + "trait: plan\n      op: eq\n      gte: 1",
        "f.yaml (s): condition.all_of[0].gte cannot stand beside",
    ),
    (
        BASE + "trait: plan\n      eq: [1]",
        "f.yaml (s): condition.all_of[0].eq must be a string, number or boolean",
    ),
    (BASE + "trait: plan\n      in: []", "f.yaml (s): condition.all_of[0].in must be a non-empty list"),
    (BASE + "trait: plan\n      in: [a, {b: 1}]", "f.yaml (s): condition.all_of[0].in[1] must be a string"),
    (
        BASE + "trait: plan\n      exists: false",
        "f.yaml (s): condition.all_of[0].exists is written `exists: true`",
    ),
    (BASE + "trait: ''\n      eq: 1", "f.yaml (s): condition.all_of[0].trait is required"),
    (
        "kind: Segment\nname: s\ncondition: {all_of: []}",
        "f.yaml (s): condition.all_of must be a non-empty list",
    ),
    (
        "kind: Segment\nname: s\ncondition: {any_of: [{in_segment: x}, 3]}",
        "f.yaml (s): condition.any_of[1] must be",
    ),
    (
        "kind: Segment\nname: s\ncondition: {not: {in_segment: x}, tag: y}",
        "f.yaml (s): condition needs exactly one",
    ),
    (
        "kind: Segment\nname: s\ncondition: {in_segment: x, eq: 1}",
        "f.yaml (s): condition.eq cannot stand beside it",
    ),
    (
        BASE + "performed: {event: X, within: 3x}",
        "f.yaml (s): condition.all_of[0].performed.within must be a duration",
    ),
    (
        BASE + "performed: {event: X, within: 0d}",
        "f.yaml (s): condition.all_of[0].performed.within must be longer",
    ),
    (
        BASE + "performed: {event: X, min_count: -1}",
        "f.yaml (s): condition.all_of[0].performed.min_count must be a whole",
    ),
    (
        BASE + "performed: {event: X, type: click}",
        "f.yaml (s): condition.all_of[0].performed.type must be one of",
    ),
    (
        BASE + "performed: {event: X, times: 2}",
        "f.yaml (s): condition.all_of[0].performed.times is not a known key",
    ),
    (
        BASE + "performed: {event: X, where: [total]}",
        "f.yaml (s): condition.all_of[0].performed.where must map",
    ),
    (
        BASE + "performed: {event: X, where: {total: {between: 1}}}",
        "f.yaml (s): condition.all_of[0].performed.where.total.between must be one of",
    ),
    (
        BASE + "not_performed_after: {after: X, within: 1d}",
        "f.yaml (s): condition.all_of[0].not_performed_after.then_not is required",
    ),
    (
        BASE + "not_performed_after: {after: {event: X, extra: 1}, then_not: Y, within: 1d}",
        "f.yaml (s): condition.all_of[0].not_performed_after.after.extra is not a known key",
    ),
    ("kind: Tag\nname: t", "f.yaml (t): a Tag needs either rules"),
    ("kind: Tag\nname: t\ncopy_trait: a\nrules: []", "f.yaml (t): a Tag needs either rules"),
    ("kind: Tag\nname: t\nrules: {vip: x}", "f.yaml (t): rules must be a non-empty list"),
    ("kind: Tag\nname: t\nrules: [{value: vip}]", "f.yaml (t): rules[0].when is required"),
    ("kind: Tag\nname: t\nrules: [{when: {in_segment: x}}]", "f.yaml (t): rules[0].value is required"),
    (
        "kind: Tag\nname: t\nrules: [{value: v, when: {tag: x, gte: {}}}]",
        "f.yaml (t): rules[0].when.gte must be",
    ),
    ("kind: ComputedTrait\nname: c\naggregation: sum", "f.yaml (c): event is required"),
    ("kind: ComputedTrait\nname: c\nevent: X", "f.yaml (c): aggregation is required"),
    (
        "kind: ComputedTrait\nname: c\nevent: X\naggregation: median",
        "f.yaml (c): aggregation must be one of count",
    ),
    (
        "kind: ComputedTrait\nname: c\nevent: X\naggregation: sum\nwindow: 90",
        "f.yaml (c): window must be a duration",
    ),
    (
        "kind: ComputedTrait\nname: c\nevent: {type: track, name: X}\naggregation: count",
        "f.yaml (c): event.name is not a known key",
    ),
    ("kind: Lifecycle\nname: l\nchurning_after: soon", "f.yaml (l): churning_after must be a duration"),
    ("kind: Lifecycle\nname: l\nrelative: lots", "f.yaml (l): relative must be a number"),
    (
        "kind: Lifecycle\nname: l\npurchases: {event: X, revenue: total}",
        "f.yaml (l): purchases.revenue is not a known key",
    ),
    (
        "kind: Rfm\nname: r\ncut_offs: {recency_days: [1, 2, 3]}",
        "f.yaml (r): cut_offs.recency_days must be a list of 4",
    ),
    (
        "kind: Rfm\nname: r\ncut_offs: {recency_days: [1, 2, 3, x]}",
        "f.yaml (r): cut_offs.recency_days[3] must be a number",
    ),
    (
        "kind: Rfm\nname: r\ncut_offs: {recency_days: [1, 2, 3, 4], frequency: [1, 2, 3, x], monetary: [1, 2, 3, 4]}",
        "f.yaml (r): cut_offs.frequency[3] must be a number",
    ),
    (
        "kind: Rfm\nname: r\ncells: [{name: A, recency: 6, frequency: 1}]",
        "f.yaml (r): cells[0].recency must be a whole number from 1 to 5",
    ),
    (
        "kind: Rfm\nname: r\ncells: [{name: A, recency: [1, 9], frequency: 1}]",
        "f.yaml (r): cells[0].recency[1] must be a whole",
    ),
    ("kind: Rfm\nname: r\ncells: [{name: A, recency: 1}]", "f.yaml (r): cells[0].frequency must be a score"),
    ("kind: Rfm\nname: r\nlookback: 1y", "f.yaml (r): lookback must be a duration"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1][:60] for e in ERRORS])
def test_each_mistake_is_one_sentence_naming_its_yaml_path(text: str, expected: str) -> None:
    assert refusal(text).startswith(expected)


def test_documents_are_numbered_and_a_name_given_twice_is_refused() -> None:
    text = "kind: Source\nname: web\n---\nkind: Segment\nname: s\ncondition: {in_segment: x, gte: 1}\n"
    assert refusal(text).startswith("f.yaml (document 2) (s): condition.gte cannot stand beside it")
    twice = "kind: Tag\nname: t\ncopy_trait: a\n---\nkind: Tag\nname: t\ncopy_trait: b\n"
    assert refusal(twice) == "f.yaml (document 2): name 't' is also used by f.yaml (document 1)"


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("definition.name", "name"),
        (
            "definition.segment.condition.all_of.conditions[1].performed.max_count",
            "condition.all_of[1].performed.max_count",
        ),
        (
            "definition.segment.condition.negated.computed_trait.computed_trait",
            "condition.not.computed_trait",
        ),
        (
            "definition.segment.condition.any_of.conditions[0].trait.predicate.value",
            "condition.any_of[0].value",
        ),
        ("definition.tag.rules[2].when.tag.tag", "rules[2].when.tag"),
        (
            "definition.segment.condition.performed.event.where[0].predicate.op",
            "condition.performed.where[0].op",
        ),
        ("definition.lifecycle.lost_after", "lost_after"),
        ("definition.rfm.cells[1].recency_max", "cells[1].recency_max"),
    ],
)
def test_the_services_field_paths_read_as_yaml_paths(field: str, path: str) -> None:
    assert yaml_path(field) == path


def test_a_misspelt_kind_names_the_segments_kinds_too() -> None:
    with pytest.raises(CliError) as raised:
        parse_source_documents([{"kind": "Segmnet", "name": "s"}], "f.yaml")
    assert "Segment, Tag, ComputedTrait, Lifecycle, Rfm" in raised.value.message
    assert "'Segmnet'" in raised.value.message
    # Its keys are a segment's, not a source's: the kind is what is wrong, and what is said.
    with pytest.raises(CliError) as keyed:
        parse_source_documents([{"kind": "Segmnt", "name": "s", "condition": {"trait": "plan"}}], "f.yaml")
    assert "kind must be" in keyed.value.message and "'Segmnt'" in keyed.value.message


def test_a_document_of_another_kind_is_left_to_its_own_reader() -> None:
    documents: list[Any] = [{"kind": "Source", "name": "web"}, {"kind": "IdentityRules"}]
    assert parse_definition_documents(documents, "f.yaml") == []
