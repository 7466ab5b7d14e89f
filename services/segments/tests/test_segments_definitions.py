"""Definitions: every mistake named by its field path, features shared, order and index right."""

from __future__ import annotations

import pytest
from segments_domain_builders import (
    DAY,
    HOUR,
    all_of,
    any_of,
    computed,
    computed_test,
    dur,
    in_segment,
    lifecycle,
    negated,
    not_after,
    performed,
    pred,
    rfm,
    segment,
    tag,
    tag_test,
    trait,
)

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.platform.errors import InvalidArgument
from onefold.segments.domain.definitions import (
    AllTime,
    Check,
    Filter,
    Recent,
    TraitKey,
    Window,
    compile_workspace,
    feature_from_key,
    feature_key,
    validate,
)


def violations(*definitions: pb.Definition) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        compile_workspace(definitions)
    return caught.value.violations


def paths(*definitions: pb.Definition) -> list[str]:
    return [path for path, _ in violations(*definitions)]


def test_a_valid_workspace_compiles_in_topological_order_with_shared_features() -> None:
    ws = compile_workspace(
        [
            segment("loyal", all_of(in_segment("buyers"), computed_test("orders", "GE", 3))),
            segment("buyers", performed("Order Completed", min_count=1, within=30 * DAY)),
            segment("recent_buyers", performed("Order Completed", within=7 * DAY)),
            computed("orders", "COUNT", event="Order Completed"),
            tag("plan", (trait("plan", "EQ", "gold"), "gold"), (trait("plan", "EXISTS"), "other")),
        ]
    )
    order = list(ws.order)
    assert order.index("buyers") < order.index("loyal")
    assert order.index("orders") < order.index("loyal")
    # "at least 1 within 30d" and "at least 1 within 7d" need the same thing: the latest time.
    recent = Recent(Filter("track", "Order Completed"), 1)
    assert ws.definitions["buyers"].features == (recent,)
    assert ws.definitions["recent_buyers"].features == (recent,)
    assert [f for f in ws.features if isinstance(f, Recent)] == [recent]
    # One event of that kind re-evaluates both segments and, downstream, "loyal".
    assert set(ws.index[recent]) == {"buyers", "recent_buyers", "loyal"}
    assert ws.affected([recent]).index("buyers") < ws.affected([recent]).index("loyal")
    counts = AllTime(Filter("track", "Order Completed"), "", False)
    assert ws.index[counts] == ("orders", "loyal")
    assert ws.index[TraitKey("plan")] == ("plan",)
    assert ws.affected([], ["orders"]) == ["orders", "loyal"]


def test_keep_covers_at_least_and_at_most() -> None:
    ws = compile_workspace([segment("s", performed("a", min_count=2, max_count=4, within=DAY))])
    assert ws.features == (Recent(Filter("track", "a"), 5),)


def test_filters_with_the_same_where_in_another_order_are_one_feature() -> None:
    one = performed("a", within=DAY, x=("GE", 1), y=("EQ", "b"))
    two = pb.Condition()
    two.CopyFrom(one)
    two.performed.event.where.reverse()
    ws = compile_workspace([segment("s1", one), segment("s2", two)])
    assert len(ws.features) == 1


def test_feature_keys_round_trip() -> None:
    ws = compile_workspace(
        [
            segment("s", all_of(performed("a", within=DAY, x=("GE", 1)), performed("a"))),
            segment("n", not_after("a", "b", HOUR)),
            computed("w", "SUM", "total", "a", window=DAY),
            computed("u", "UNIQUE_COUNT", "sku", "a"),
            lifecycle(),
            rfm(recency=[1, 2, 3, 4], frequency=[1, 2, 3, 4], monetary=[1, 2, 3, 4]),
        ]
    )
    for feature in ws.features:
        assert feature_from_key(feature_key(feature)) == feature
    assert Window(Filter("track", "a"), "total", DAY) in ws.features


def test_names() -> None:
    assert paths(segment("Bad-Name", performed("a"))) == ["definitions[0].name"]
    assert paths(segment("", performed("a"))) == ["definitions[0].name"]
    assert paths(segment("a" * 64, performed("a"))) == ["definitions[0].name"]
    compile_workspace([segment("a" * 63, performed("a"))])
    assert paths(segment("dup", performed("a")), segment("dup", performed("b"))) == ["definitions[1].name"]


def test_unknown_and_wrong_kind_references() -> None:
    found = violations(
        segment(
            "s",
            all_of(in_segment("nope"), tag_test("ghost"), computed_test("missing", "GT", 1), in_segment("t")),
        ),
        tag("t", (trait("a", "EXISTS"), "x")),
    )
    assert found == [
        (
            "definitions[0].segment.condition.all_of.conditions[0].in_segment",
            "no segment of the workspace has this name",
        ),
        (
            "definitions[0].segment.condition.all_of.conditions[1].tag.tag",
            "no tag of the workspace has this name",
        ),
        (
            "definitions[0].segment.condition.all_of.conditions[2].computed_trait.computed_trait",
            "no computed trait of the workspace has this name",
        ),
        ("definitions[0].segment.condition.all_of.conditions[3].in_segment", "names a tag, not a segment"),
    ]


def test_lifecycle_and_rfm_are_tags() -> None:
    compile_workspace(
        [
            segment("s", all_of(tag_test("stage", "EQ", "active"), tag_test("rfm"))),
            lifecycle("stage"),
            rfm(recency=[1, 2, 3, 4], frequency=[1, 2, 3, 4], monetary=[1, 2, 3, 4]),
        ]
    )


def test_cycles_are_named_on_each_definition_in_them() -> None:
    found = violations(
        segment("a", in_segment("b")),
        segment("b", any_of(trait("x", "EXISTS"), tag_test("c"))),
        tag("c", (in_segment("a"), "yes")),
        segment("d", in_segment("a")),  # reads the cycle, is not in it
    )
    assert found == [
        ("definitions[0].segment.condition.in_segment", "forms a cycle: a -> b -> c -> a"),
        ("definitions[1].segment.condition.any_of.conditions[1].tag.tag", "forms a cycle: b -> c -> a -> b"),
        ("definitions[2].tag.rules[0].when.in_segment", "forms a cycle: c -> a -> b -> c"),
    ]
    assert violations(segment("me", negated(in_segment("me")))) == [
        ("definitions[0].segment.condition.negated.in_segment", "forms a cycle: me -> me")
    ]


def test_windows_must_be_above_zero() -> None:
    zero = performed("a", within=0)
    assert paths(segment("s", zero)) == ["definitions[0].segment.condition.performed.within"]
    negative = performed("a")
    negative.performed.within.seconds = -5
    assert paths(segment("s", negative)) == ["definitions[0].segment.condition.performed.within"]
    assert paths(computed("c", "COUNT", window=0)) == ["definitions[0].computed_trait.window"]
    missing = not_after("a", "b", HOUR)
    missing.not_performed_after.ClearField("within")
    assert paths(segment("s", missing)) == ["definitions[0].segment.condition.not_performed_after.within"]
    compile_workspace([segment("s", performed("a", within=1))])  # one microsecond is a window
    sub_micro = performed("a")
    sub_micro.performed.within.nanos = 999
    assert paths(segment("s", sub_micro)) == ["definitions[0].segment.condition.performed.within"]


def test_aggregations_and_properties() -> None:
    assert violations(computed("c", "SUM")) == [
        ("definitions[0].computed_trait.property", "SUM needs a property")
    ]
    assert paths(computed("c", "MOST_FREQUENT")) == ["definitions[0].computed_trait.property"]
    assert paths(computed("c", "COUNT", "total")) == ["definitions[0].computed_trait.property"]
    assert paths(computed("c", "UNSPECIFIED")) == ["definitions[0].computed_trait.aggregation"]
    compile_workspace([computed("c", "FIRST", "a.b")])
    assert paths(computed("c", "FIRST", "a..b")) == ["definitions[0].computed_trait.property"]


def test_operators_against_value_types() -> None:
    def check(predicate: pb.Predicate) -> list[str]:
        condition = pb.Condition(trait=pb.TraitTest(trait="t", predicate=predicate))
        try:
            compile_workspace([segment("s", condition)])
        except InvalidArgument as error:
            return [
                p.removeprefix("definitions[0].segment.condition.trait.predicate.")
                for p, _ in error.violations
            ]
        return []

    assert check(pred("GT", True)) == ["value"]
    assert check(pred("GT", [1])) == ["value"]
    assert check(pred("GT", 3)) == []
    assert check(pred("LE", "2026-01-01")) == []
    assert check(pred("EQ")) == ["value"]
    assert check(pred("EQ", None)) == ["value"]
    assert check(pred("EQ", False)) == []
    assert check(pred("STARTS_WITH", 1)) == ["value"]
    assert check(pred("CONTAINS", "x")) == []
    assert check(pred("IN")) == ["values"]
    assert check(pred("IN", 1, values=[1])) == ["value"]
    assert check(pred("IN", values=[1, "a", True])) == []
    assert check(pred("IN", values=[[1]])) == ["values[0]"]
    assert check(pred("EXISTS", 1)) == ["value"]
    assert check(pred("EXISTS")) == []
    assert check(pred("EQ", 1, values=[2])) == ["values"]
    assert check(pb.Predicate()) == ["op"]
    assert check(pred("GT", float("nan"))) == ["value"]


def test_computed_trait_tests_know_numeric_values() -> None:
    found = paths(computed("orders", "COUNT"), segment("s", computed_test("orders", "GE", "3")))
    assert found == ["definitions[1].segment.condition.computed_trait.predicate.value"]
    compile_workspace([computed("plan", "LAST", "plan"), segment("s", computed_test("plan", "EQ", "gold"))])


def test_empty_conditions() -> None:
    assert paths(segment("s", pb.Condition())) == ["definitions[0].segment.condition"]
    assert paths(segment("s", all_of())) == ["definitions[0].segment.condition.all_of.conditions"]
    assert paths(pb.Definition(name="s", segment=pb.Segment())) == ["definitions[0].segment.condition"]
    assert paths(pb.Definition(name="s")) == ["definitions[0].kind"]


def test_performed_counts() -> None:
    assert paths(segment("s", performed("a", min_count=3, max_count=2))) == [
        "definitions[0].segment.condition.performed.max_count"
    ]
    assert paths(segment("s", performed("a", min_count=5000))) == [
        "definitions[0].segment.condition.performed.min_count"
    ]
    assert paths(segment("s", performed("a", type="nope"))) == [  # type: ignore[arg-type]
        "definitions[0].segment.condition.performed.event.type"
    ]


def test_not_performed_after_needs_two_different_filters() -> None:
    same = not_after("a", "a", HOUR)
    assert paths(segment("s", same)) == ["definitions[0].segment.condition.not_performed_after.then_not"]


def test_tags() -> None:
    assert paths(tag("t")) == ["definitions[0].tag.rules"]
    assert paths(tag("t", (trait("a", "EXISTS"), "x"), copy_trait="city")) == [
        "definitions[0].tag.copy_trait"
    ]
    assert paths(tag("t", (trait("a", "EXISTS"), ""))) == ["definitions[0].tag.rules[0].value"]
    ws = compile_workspace([tag("city", copy_trait="address.city")])
    assert ws.index[TraitKey("address")] == ("city",)


def test_rfm_cut_offs_and_cells() -> None:
    assert paths(rfm(recency=[1, 2, 3], frequency=[1, 2, 3, 4], monetary=[1, 2, 3, 4])) == [
        "definitions[0].rfm.cut_offs.recency_days"
    ]
    assert paths(rfm(recency=[1, 2, 3, 4], frequency=[1, 3, 2, 4], monetary=[1, 2, 2, 4])) == [
        "definitions[0].rfm.cut_offs.frequency",
        "definitions[0].rfm.cut_offs.monetary",
    ]
    good = [1.0, 2.0, 3.0, 4.0]
    cells = [
        pb.Rfm.Cell(name="top", recency_min=5, recency_max=5, frequency_min=4, frequency_max=5),
        pb.Rfm.Cell(name="zero", recency_min=0, recency_max=2, frequency_min=1, frequency_max=6),
        pb.Rfm.Cell(name="upside", recency_min=4, recency_max=2, frequency_min=1, frequency_max=1),
        pb.Rfm.Cell(name="top", recency_min=1, recency_max=1, frequency_min=1, frequency_max=1),
    ]
    assert paths(rfm(recency=good, frequency=good, monetary=good, cells=cells)) == [
        "definitions[0].rfm.cells[1].recency_min",
        "definitions[0].rfm.cells[1].frequency_max",
        "definitions[0].rfm.cells[2].recency_max",
        "definitions[0].rfm.cells[3].name",
    ]
    assert paths(rfm(lookback=0)) == ["definitions[0].rfm.lookback"]
    compile_workspace([rfm()])  # quintiles, default cells


def test_lifecycle_thresholds_ascend() -> None:
    assert paths(lifecycle(churning_after=130 * DAY)) == ["definitions[0].lifecycle.dormant_after"]
    assert paths(lifecycle(dormant_after=400 * DAY)) == ["definitions[0].lifecycle.lost_after"]
    assert paths(lifecycle(churning_after=10 * DAY, dormant_after=10 * DAY, lost_after=20 * DAY)) == [
        "definitions[0].lifecycle.dormant_after"
    ]
    assert paths(lifecycle(relative=-1)) == ["definitions[0].lifecycle.relative"]
    assert paths(lifecycle(reactivated_for=0)) == ["definitions[0].lifecycle.reactivated_for"]
    compile_workspace(
        [lifecycle(churning_after=DAY, dormant_after=2 * DAY, lost_after=3 * DAY, relative=1.5)]
    )


def test_batch_definitions_need_a_schedule_and_are_not_in_the_realtime_index() -> None:
    batch = segment("s", performed("a"))
    batch.evaluation = pb.EVALUATION_BATCH
    assert paths(batch) == ["definitions[0].schedule"]
    batch.schedule = "0 3 * * *"
    ws = compile_workspace([batch, segment("r", in_segment("s"))])
    assert not ws.definitions["s"].realtime
    assert ws.index[ws.features[0]] == ("r",)


def test_validate_one_definition_against_the_workspace() -> None:
    others = [segment("buyers", performed("Order Completed")), segment("old", performed("x"))]
    others[1].archived = True
    validate(segment("s", in_segment("buyers")), others)
    with pytest.raises(InvalidArgument) as caught:
        validate(segment("s", all_of(in_segment("old"), trait("plan", "GT", True))), others)
    assert caught.value.violations == [
        (
            "definition.segment.condition.all_of.conditions[0].in_segment",
            "no segment of the workspace has this name",
        ),
        (
            "definition.segment.condition.all_of.conditions[1].trait.predicate.value",
            "GT, GE, LT, LE compare numbers or strings",
        ),
    ]
    # A broken peer is not this definition's problem; a cycle through it is.
    with pytest.raises(InvalidArgument) as caught:
        validate(segment("buyers", in_segment("s")), [segment("s", in_segment("buyers"))])
    assert caught.value.violations == [
        ("definition.segment.condition.in_segment", "forms a cycle: buyers -> s -> buyers")
    ]


def test_violations_never_quote_the_definitions_values() -> None:
    secret = "ann@example.com"
    with pytest.raises(InvalidArgument) as caught:
        compile_workspace(
            [segment("s", trait("email", "GT", [secret])), segment("t", trait("email", "STARTS_WITH", 5))]
        )
    text = caught.value.message + repr(caught.value.violations)
    assert secret not in text


def test_compiled_tests_are_hashable() -> None:
    assert hash(Check(1, "a")) == hash(Check(1, "a"))
    ws = compile_workspace([segment("s", trait("t", "IN", values=["a", 1]))])
    assert ws.definitions["s"].traits == ("t",)
    assert dur(DAY).seconds == 86400
