"""Predicates, condition trees and their reasons, tags, computed traits, lifecycle stages and RFM."""

from __future__ import annotations

from typing import Any

import pytest
from segments_domain_builders import (
    DAY,
    HOUR,
    T0,
    all_of,
    any_of,
    computed,
    event,
    in_segment,
    lifecycle,
    negated,
    not_after,
    performed,
    rfm,
    segment,
    tag,
    tag_test,
    trait,
)

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain import rfm as rfm_scores
from onefold.segments.domain.definitions import Check, CutOffs, compile_workspace
from onefold.segments.domain.evaluate import Reason, holds, matches, tag_text
from onefold.segments.domain.features import Event
from onefold.segments.domain.fold import ProfileState, Resolved, TraitsSet, advance, apply, recompute

OP = pb.Operator


def check(op: int, value: Any = None, values: tuple[Any, ...] = ()) -> Check:
    return Check(op, value, values)


@pytest.mark.parametrize(
    ("test", "observed", "expected"),
    [
        (check(OP.OPERATOR_EQ, 1.0), 1, True),  # numbers as numbers
        (check(OP.OPERATOR_EQ, 1.0), "1", False),  # a string is not a number
        (check(OP.OPERATOR_EQ, 1.0), True, False),  # nor a boolean
        (check(OP.OPERATOR_EQ, True), True, True),
        (check(OP.OPERATOR_EQ, True), 1.0, False),
        (check(OP.OPERATOR_EQ, "Gold"), "gold", False),  # strings exactly
        (check(OP.OPERATOR_NE, "gold"), "silver", True),
        (check(OP.OPERATOR_NE, "gold"), None, False),  # missing: only NOT_EXISTS holds
        (check(OP.OPERATOR_GT, 3.0), 3.5, True),
        (check(OP.OPERATOR_GT, 3.0), 3.0, False),
        (check(OP.OPERATOR_GE, 3.0), 3.0, True),
        (check(OP.OPERATOR_LT, 3.0), "2", False),  # no coercion
        (check(OP.OPERATOR_LE, "2026-01-01"), "2025-12-31T23:00:00Z", True),  # ISO dates order as text
        (check(OP.OPERATOR_GT, 3.0), None, False),
        (check(OP.OPERATOR_IN, None, ("a", 2.0)), 2, True),
        (check(OP.OPERATOR_IN, None, ("a", 2.0)), "b", False),
        (check(OP.OPERATOR_NOT_IN, None, ("a", 2.0)), "b", True),
        (check(OP.OPERATOR_NOT_IN, None, ("a",)), None, False),
        (check(OP.OPERATOR_CONTAINS, "ld"), "gold", True),
        (check(OP.OPERATOR_CONTAINS, "x"), ["x", "y"], True),
        (check(OP.OPERATOR_CONTAINS, 2.0), [1, 2], True),
        (check(OP.OPERATOR_CONTAINS, "x"), ["xy"], False),
        (check(OP.OPERATOR_CONTAINS, "1"), 12, False),
        (check(OP.OPERATOR_STARTS_WITH, "go"), "gold", True),
        (check(OP.OPERATOR_STARTS_WITH, "go"), ["gold"], False),
        (check(OP.OPERATOR_EXISTS), "", True),
        (check(OP.OPERATOR_EXISTS), None, False),
        (check(OP.OPERATOR_NOT_EXISTS), None, True),
        (check(OP.OPERATOR_NOT_EXISTS), 0, False),
    ],
)
def test_predicates(test: Check, observed: Any, expected: bool) -> None:
    assert holds(test, observed) is expected


def test_filters_match_type_name_and_dotted_properties() -> None:
    ws = compile_workspace([segment("s", performed("Order Completed", order__total=("GE", 10)))])
    f = ws.definitions["s"].features[0].filter  # type: ignore[union-attr]
    assert matches(f, event("Order Completed", T0, order={"total": 10}))
    assert not matches(f, event("Order Completed", T0, order={"total": 9}))
    assert not matches(f, event("Order Completed", T0))
    assert not matches(f, event("Order Completed", T0, type="page", order={"total": 10}))
    page = compile_workspace([segment("p", performed(type="page"))]).features[0]
    assert matches(page.filter, Event(T0, "x", "page", "Home"))  # type: ignore[union-attr]


def _run(definitions: list[pb.Definition], *inputs: Any, now: int = T0) -> ProfileState:
    ws = compile_workspace(definitions)
    state = ProfileState("p1")
    for item in inputs:
        apply(ws, state, item, now)
    if not inputs:
        recompute(ws, state, now)
    return state


def _traits(now: int = T0, **traits: Any) -> TraitsSet:
    return TraitsSet(traits, (now, "t"))


def test_reasons_name_the_leaves_that_decided_with_their_observed_values() -> None:
    ws = compile_workspace(
        [
            segment(
                "s",
                all_of(
                    trait("plan", "EQ", "gold"),
                    any_of(
                        trait("age", "GE", 18), performed("Order Completed", min_count=2, within=30 * DAY)
                    ),
                    negated(trait("blocked", "EQ", True)),
                ),
            )
        ]
    )
    state = ProfileState("p1")
    result = apply(ws, state, _traits(plan="gold", age=30), T0)
    (entered,) = result.changes
    assert entered.reasons == (  # type: ignore[union-attr]
        Reason('trait plan EQ "gold"', "gold"),
        Reason("trait age GE 18", 30),
        Reason("not trait blocked EQ true", None),
    )
    state = ProfileState("p2")
    apply(ws, state, _traits(plan="gold", age=12), T0)
    assert state.values() == {}
    result = apply(ws, state, Resolved(event("Order Completed", T0)), T0 + HOUR)
    assert result.changes == []
    result = apply(ws, state, Resolved(event("Order Completed", T0 + HOUR)), T0 + HOUR)
    assert result.changes[0].reasons[1] == Reason(  # type: ignore[union-attr]
        'performed "Order Completed" >= 2 within 30d', 2.0
    )


def test_tags_take_the_first_rule_that_holds() -> None:
    rules = tag(
        "tier",
        (trait("spend", "GE", 1000), "gold"),
        (trait("spend", "GE", 100), "silver"),
        (trait("spend", "EXISTS"), "bronze"),
    )
    assert _run([rules], _traits(spend=5000)).values() == {"tier": "gold"}
    assert _run([rules], _traits(spend=500)).values() == {"tier": "silver"}
    assert _run([rules], _traits(spend=5)).values() == {"tier": "bronze"}
    assert _run([rules], _traits(name="x")).values() == {}
    state = _run([rules], _traits(spend=500))
    assert state.outputs["tier"].reasons == (Reason("trait spend GE 100", 500),)


def test_copy_trait_tags() -> None:
    city = tag("city", copy_trait="address.city")
    assert _run([city], _traits(address={"city": "Lyon"})).values() == {"city": "Lyon"}
    assert _run([city], _traits(address={"city": ""})).values() == {}
    assert _run([city], _traits(address="Lyon")).values() == {}
    assert tag_text(3.0) == "3" and tag_text(2.5) == "2.5" and tag_text(False) == "false"
    assert tag_text({"a": 1}) is None and tag_text([1]) is None


def test_tag_and_segment_and_computed_references() -> None:
    definitions = [
        computed("orders", "COUNT", event="Order Completed"),
        tag(
            "buyer",
            (
                pb.Condition(
                    computed_trait=pb.ComputedTraitTest(
                        computed_trait="orders", predicate=pb.Predicate(op=OP.OPERATOR_GE, value=_v(2))
                    )
                ),
                "repeat",
            ),
        ),
        segment("repeat_buyers", tag_test("buyer", "EQ", "repeat")),
        segment("not_repeat", negated(in_segment("repeat_buyers"))),
    ]
    ws = compile_workspace(definitions)
    state = ProfileState("p")
    apply(ws, state, Resolved(event("Order Completed", T0)), T0)
    assert state.values() == {"orders": 1.0, "not_repeat": True}
    result = apply(ws, state, Resolved(event("Order Completed", T0 + 1)), T0 + 1)
    assert state.values() == {"orders": 2.0, "buyer": "repeat", "repeat_buyers": True}
    kinds = [type(c).__name__ for c in result.changes]
    assert kinds == ["ComputedSet", "TagSet", "Entered", "Exited"]  # in topological order


def _v(x: Any) -> Any:
    from segments_domain_builders import value

    return value(x)


@pytest.mark.parametrize(
    ("aggregation", "prop", "expected"),
    [
        ("COUNT", "", 4.0),
        ("SUM", "v", 9.0),
        ("AVG", "v", 3.0),
        ("MIN", "v", 1.0),
        ("MAX", "v", 5.0),
        ("FIRST", "v", 5.0),
        ("LAST", "v", 1.0),
        ("MOST_FREQUENT", "c", "a"),  # 2 each: the one seen first
        ("UNIQUE_COUNT", "c", 2.0),
    ],
)
def test_computed_traits_all_time_and_windowed(aggregation: str, prop: str, expected: Any) -> None:
    history = [
        event("a", T0, v=5, c="a"),
        event("a", T0 + HOUR, v=3, c="b"),
        event("a", T0 + 2 * HOUR, c="b"),
        event("a", T0 + 3 * HOUR, v=1, c="a"),
        event("b", T0 + 3 * HOUR, v=100, c="z"),
    ]
    now = T0 + 3 * HOUR
    for window in (None, 10 * HOUR):
        state = _run([computed("c", aggregation, prop, "a", window=window)], *map(Resolved, history), now=now)
        assert state.values() == {"c": expected}


def test_a_windowed_computed_trait_drops_each_event_at_its_exact_expiry() -> None:
    ws = compile_workspace([computed("spend", "SUM", "v", "a", window=DAY)])
    state = ProfileState("p")
    apply(ws, state, Resolved(event("a", T0, v=5)), T0)
    result = apply(ws, state, Resolved(event("a", T0 + HOUR, v=7)), T0 + HOUR)
    assert result.next_timer == T0 + DAY
    assert advance(ws, state, T0 + DAY - 1).changes == []
    result = advance(ws, state, T0 + DAY)
    assert [(c.name, c.value) for c in result.changes] == [("spend", 7.0)]  # type: ignore[union-attr]
    assert result.next_timer == T0 + HOUR + DAY
    result = advance(ws, state, T0 + HOUR + DAY)
    assert [(c.name, c.value) for c in result.changes] == [("spend", None)]  # type: ignore[union-attr]
    assert result.next_timer is None


# ------------------------------------------------------------------------------------------------
# Lifecycle.


def _purchase(at: int) -> Resolved:
    return Resolved(event("Order Completed", at))


def _stage(state: ProfileState) -> Any:
    return state.values().get("stage")


def test_lifecycle_stages_and_their_exact_edges() -> None:
    ws = compile_workspace([lifecycle()])  # 60 / 120 / 365 days, reactivated for 30
    state = ProfileState("p")
    apply(ws, state, _traits(), T0)
    assert _stage(state) == "registered"
    result = apply(ws, state, _purchase(T0), T0)
    assert _stage(state) == "first_purchase" and result.next_timer == T0 + 60 * DAY
    apply(ws, state, _purchase(T0 + 10 * DAY), T0 + 10 * DAY)
    assert _stage(state) == "active"
    last = T0 + 10 * DAY
    for moment, stage in (
        (last + 60 * DAY - 1, "active"),
        (last + 60 * DAY, "churning"),
        (last + 120 * DAY - 1, "churning"),
        (last + 120 * DAY, "dormant"),
        (last + 365 * DAY - 1, "dormant"),
        (last + 365 * DAY, "lost"),
    ):
        advance(ws, state, moment)
        assert _stage(state) == stage, moment - last
    assert state.next_timer() is None
    back = last + 400 * DAY
    apply(ws, state, _purchase(back), back)
    assert _stage(state) == "reactivated"
    advance(ws, state, back + 30 * DAY - 1)
    assert _stage(state) == "reactivated"
    result = advance(ws, state, back + 30 * DAY)
    assert _stage(state) == "active"
    assert [c.value for c in result.changes] == ["active"]  # type: ignore[union-attr]


def test_a_purchase_just_before_churning_is_not_a_reactivation() -> None:
    ws = compile_workspace([lifecycle()])
    state = ProfileState("p")
    apply(ws, state, _purchase(T0), T0)
    apply(ws, state, _purchase(T0 + 60 * DAY - 1), T0 + 60 * DAY - 1)
    assert _stage(state) == "active"
    other = ProfileState("q")
    apply(ws, other, _purchase(T0), T0)
    apply(ws, other, _purchase(T0 + 60 * DAY), T0 + 60 * DAY)
    assert _stage(other) == "reactivated"


def test_relative_thresholds_follow_the_customers_rhythm() -> None:
    ws = compile_workspace([lifecycle(relative=1.5)])
    state = ProfileState("p")
    for i in range(4):  # every 90 days: median 90, x1.5 = 135 days > 60
        apply(ws, state, _purchase(T0 + i * 90 * DAY), T0 + i * 90 * DAY)
    last = T0 + 270 * DAY
    assert _stage(state) == "active"
    advance(ws, state, last + 135 * DAY - 1)
    assert _stage(state) == "active"
    advance(ws, state, last + 135 * DAY)
    assert _stage(state) == "churning"
    advance(ws, state, last + 270 * DAY - 1)  # dormant moves by the same factor (120d x 2.25)
    assert _stage(state) == "churning"
    advance(ws, state, last + 270 * DAY)
    assert _stage(state) == "dormant"
    absolute = ProfileState("q")
    abs_ws = compile_workspace([lifecycle()])
    for i in range(4):
        apply(abs_ws, absolute, _purchase(T0 + i * 90 * DAY), T0 + i * 90 * DAY)
    advance(abs_ws, absolute, last + 60 * DAY)
    assert _stage(absolute) == "churning"


# ------------------------------------------------------------------------------------------------
# RFM.

CUTS = rfm(
    recency=[10, 30, 60, 90], frequency=[2, 3, 5, 8], monetary=[50, 100, 500, 1000], lookback=365 * DAY
)


def test_rfm_scores_at_their_edges() -> None:
    bounds = (10.0, 30.0, 60.0, 90.0)
    assert rfm_scores.recency_score(10 * DAY - 1, bounds) == 5
    assert rfm_scores.recency_score(10 * DAY, bounds) == 4  # exactly 10 days old has reached 10
    assert rfm_scores.recency_score(90 * DAY, bounds) == 1
    assert rfm_scores.score(1, (2, 3, 5, 8)) == 1
    assert rfm_scores.score(2, (2, 3, 5, 8)) == 2
    assert rfm_scores.score(8, (2, 3, 5, 8)) == 5


def test_rfm_cells_by_time() -> None:
    ws = compile_workspace([CUTS])
    state = ProfileState("p")
    for i in range(8):
        apply(ws, state, Resolved(event("Order Completed", T0 + i * HOUR, revenue=200)), T0 + i * HOUR)
    last = T0 + 7 * HOUR
    assert state.values() == {"rfm": "Champions"}  # R5 F5
    (reason,) = state.outputs["rfm"].reasons
    # Champions since the fifth purchase (F4, announced then); the reasons kept are the latest.
    assert reason.condition == "rfm R5 F5 M5 (frequency 8, monetary 1600)"
    assert state.next_timer() == last + 10 * DAY
    advance(ws, state, last + 10 * DAY - 1)
    assert state.values() == {"rfm": "Champions"}
    advance(ws, state, last + 10 * DAY)
    assert state.values() == {"rfm": "Loyal"}  # R4 F5
    advance(ws, state, last + 60 * DAY)
    assert state.values() == {"rfm": "Can't Lose"}  # R2 F5
    advance(ws, state, T0 + 365 * DAY)  # the first purchase leaves the lookback: F4
    assert state.values() == {"rfm": "At Risk"}
    advance(ws, state, last + 365 * DAY)
    assert state.values() == {} and state.next_timer() is None


def test_default_cells_cover_every_r_and_f() -> None:
    from onefold.segments.domain.definitions import DEFAULT_CELLS

    for r in range(1, 6):
        for f in range(1, 6):
            assert rfm_scores.cell(DEFAULT_CELLS, r, f) is not None
    assert rfm_scores.cell(DEFAULT_CELLS, 5, 1) == "New"
    assert rfm_scores.cell(DEFAULT_CELLS, 3, 3) == "Need Attention"
    assert rfm_scores.cell(DEFAULT_CELLS, 1, 1) == "Hibernating"


def test_quintiles_break_ties_by_first_occurrence_and_reverse_recency() -> None:
    frequency = [1, 1, 1, 1, 1, 2, 2, 3, 5, 9]
    assert rfm_scores.population_scores(frequency) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rfm_scores.quintile_boundaries(frequency) == (1, 1, 2, 5)
    recency_days = [1.0, 50.0, 3.0, 400.0, 20.0]
    assert rfm_scores.population_scores(recency_days, reverse=True) == [5, 2, 4, 1, 3]
    assert rfm_scores.quintile_boundaries(recency_days) == (3.0, 20.0, 50.0, 400.0)
    assert rfm_scores.quintile_boundaries([7.0]) == (float("inf"),) * 4
    population = [
        rfm_scores.Measures(int(d * DAY), f, 10.0 * f)
        for d, f in zip(recency_days, [1, 2, 3, 4, 5], strict=True)
    ]
    cut = rfm_scores.population_boundaries(population)
    assert cut == CutOffs((3.0, 20.0, 50.0, 400.0), (2.0, 3.0, 4.0, 5.0), (20.0, 30.0, 40.0, 50.0))
    assert rfm_scores.population_boundaries([]) is None


def test_rfm_quintiles_use_the_workspaces_last_boundaries() -> None:
    definition = rfm()
    state = ProfileState("p")
    apply(compile_workspace([definition]), state, _purchase(T0), T0)
    assert state.values() == {}  # no quintiles computed yet: no score
    cut = CutOffs((1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0))
    ws = compile_workspace([definition], rfm_boundaries={"rfm": cut})
    recompute(ws, state, T0)
    assert state.values() == {"rfm": "Potential Loyalists"}  # R5 F2


def test_not_performed_after_enters_at_the_exact_moment() -> None:
    ws = compile_workspace([segment("abandoned", not_after("Cart Viewed", "Order Completed", HOUR))])
    state = ProfileState("p")
    result = apply(ws, state, Resolved(event("Cart Viewed", T0)), T0)
    assert result.changes == [] and result.next_timer == T0 + HOUR
    assert advance(ws, state, T0 + HOUR - 1).changes == []
    (entered,) = advance(ws, state, T0 + HOUR).changes
    assert entered.reasons == (  # type: ignore[union-attr]
        Reason('did "Cart Viewed" then not "Order Completed" within 1h', "2026-05-28T20:26:40Z"),
    )
    (exited,) = apply(ws, state, Resolved(event("Order Completed", T0 + 2 * HOUR)), T0 + 2 * HOUR).changes
    assert exited.why == "condition"  # type: ignore[union-attr]
