"""The fold: time-driven changes with an explicit clock, merges, archiving, the stored state, and
batch == incremental for random definitions and histories."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segments_domain_builders import (
    DAY,
    HOUR,
    T0,
    all_of,
    any_of,
    computed,
    computed_test,
    dur,
    event,
    event_filter,
    in_segment,
    negated,
    not_after,
    performed,
    segment,
    tag,
    tag_test,
    trait,
)

from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain.definitions import Workspace, compile_workspace
from onefold.segments.domain.features import Event, to_struct
from onefold.segments.domain.fold import (
    ComputedSet,
    Entered,
    Exited,
    Input,
    Merged,
    ProfileState,
    Resolved,
    TagSet,
    TraitsSet,
    advance,
    apply,
    backfill,
    close,
    recompute,
    resolved,
    traits_set,
)


def _fire(ws: Workspace, state: ProfileState, until: int) -> list[Any]:
    """Fire every timer due up to `until`, in order, as the application's timer loop would."""
    changes: list[Any] = []
    while (moment := state.next_timer()) is not None and moment <= until:
        changes.extend(advance(ws, state, moment).changes)
    return changes


def test_performed_within_enters_on_the_event_and_exits_exactly_when_the_window_passes() -> None:
    ws = compile_workspace([segment("active", performed("a", min_count=2, within=DAY))])
    state = ProfileState("p")
    assert apply(ws, state, Resolved(event("a", T0)), T0).changes == []
    result = apply(ws, state, Resolved(event("a", T0 + HOUR), cause="id1"), T0 + HOUR)
    assert [type(c) for c in result.changes] == [Entered] and result.cause == "id1"
    assert result.next_timer == T0 + DAY  # the 2nd latest leaves the window
    assert advance(ws, state, T0 + DAY - 1).changes == []
    result = advance(ws, state, T0 + DAY)
    assert result.changes == [Exited("active", 1, "timer")]
    assert result.next_timer is None


def test_at_most_enters_by_time_when_the_excess_leaves() -> None:
    ws = compile_workspace([segment("calm", performed("a", min_count=1, max_count=1, within=DAY))])
    state = ProfileState("p")
    apply(ws, state, Resolved(event("a", T0)), T0)
    assert state.values() == {"calm": True}
    apply(ws, state, Resolved(event("a", T0 + HOUR)), T0 + HOUR)
    assert state.values() == {}
    assert state.next_timer() == T0 + DAY  # the 2nd latest (rank M+1) leaving brings it back
    (entered,) = _fire(ws, state, T0 + DAY)
    assert isinstance(entered, Entered) and state.values() == {"calm": True}


def test_a_late_timer_and_a_late_event_give_the_same_answer() -> None:
    ws = compile_workspace([segment("recent", performed("a", within=DAY))])
    state = ProfileState("p")
    apply(ws, state, Resolved(event("a", T0)), T0)
    # The timer at T0 + DAY never fired; an unrelated input at T0 + 2 DAY still sees the exit.
    result = apply(ws, state, Resolved(event("b", T0 + 2 * DAY)), T0 + 2 * DAY)
    assert result.changes == [Exited("recent", 1, "condition")]
    # An event that happened more than a day ago, arriving now, is outside the window already.
    assert apply(ws, state, Resolved(event("a", T0 + DAY)), T0 + 2 * DAY).changes == []
    assert apply(ws, state, Resolved(event("a", T0 + DAY + 1)), T0 + 2 * DAY).changes[0].name == "recent"  # type: ignore[union-attr]


def test_a_new_profile_evaluates_everything_once() -> None:
    ws = compile_workspace([segment("never_bought", negated(performed("Order Completed")))])
    state = ProfileState("p")
    result = apply(ws, state, Resolved(event("Page Viewed", T0, type="page")), T0)
    assert result.changes[0] == Entered("never_bought", 1, result.changes[0].reasons)  # type: ignore[union-attr]
    assert apply(ws, state, Resolved(event("Order Completed", T0 + 1)), T0 + 1).changes == [
        Exited("never_bought", 1, "condition")
    ]


def test_traits_later_wins_per_key() -> None:
    ws = compile_workspace([segment("gold", trait("plan", "EQ", "gold"))])
    state = ProfileState("p")
    apply(ws, state, TraitsSet({"plan": "gold"}, (T0 + 10, "b")), T0 + 10)
    assert state.values() == {"gold": True}
    assert apply(ws, state, TraitsSet({"plan": "free"}, (T0, "a")), T0 + 20).changes == []  # older: ignored
    assert apply(ws, state, TraitsSet({"plan": "free"}, (T0 + 30, "c")), T0 + 30).changes == [
        Exited("gold", 1, "condition")
    ]


def test_a_merge_moves_memberships() -> None:
    ws = compile_workspace(
        [
            segment("buyers", performed("Order Completed", min_count=2)),
            segment("gold", trait("plan", "EQ", "gold")),
            computed("orders", "COUNT", event="Order Completed"),
        ]
    )
    survivor, merged = ProfileState("s"), ProfileState("m")
    apply(ws, survivor, Resolved(event("Order Completed", T0)), T0)
    apply(ws, merged, Resolved(event("Order Completed", T0 + 1)), T0 + 1)
    apply(ws, merged, TraitsSet({"plan": "gold"}, (T0 + 2, "t")), T0 + 2)
    assert survivor.values() == {"orders": 1.0}
    assert merged.values() == {"orders": 1.0, "gold": True}
    result = apply(ws, survivor, Merged(merged, cause="merge1"), T0 + 3)
    assert survivor.values() == {"orders": 2.0, "buyers": True, "gold": True}
    assert {type(c) for c in result.changes} == {Entered, ComputedSet}
    closed = close(merged, "merged")
    assert closed.changes == [Exited("gold", 1, "merged"), ComputedSet("orders", 1, None)]
    assert merged.values() == {} and merged.next_timer() is None


def test_an_archived_definition_is_withdrawn() -> None:
    definitions = [segment("gold", trait("plan", "EQ", "gold")), tag("plan", copy_trait="plan")]
    state = ProfileState("p")
    apply(compile_workspace(definitions), state, TraitsSet({"plan": "gold"}, (T0, "t")), T0)
    definitions[0].archived = True
    result = advance(compile_workspace(definitions), state, T0 + 1)
    assert result.changes == [Exited("gold", 1, "archived")]
    del definitions[1]
    assert advance(compile_workspace(definitions), state, T0 + 2).changes == [TagSet("plan", 1, "", ())]


def test_changes_become_the_services_events() -> None:
    ws = compile_workspace([segment("gold", trait("plan", "EQ", "gold")), tag("plan", copy_trait="plan")])
    state = ProfileState("p")
    result = apply(ws, state, TraitsSet({"plan": "gold"}, (T0, "t")), T0)
    entered, tagged = (c.to_event("acme", "p", "ev1") for c in result.changes)
    assert isinstance(entered, pb.SegmentEntered) and entered.segment == "gold"
    assert entered.reasons[0].condition == 'trait plan EQ "gold"'
    assert entered.reasons[0].observed.string_value == "gold"
    assert isinstance(tagged, pb.TagChanged) and tagged.value == "gold" and tagged.cause_event_id == "ev1"


def test_identity_messages_become_inputs() -> None:
    message = identity_pb2.EventResolved(profile_id="p", workspace="acme", event_id="ing1")
    message.event.type = ingest_pb2.EVENT_TYPE_TRACK
    message.event.event = "Order Completed"
    message.event.timestamp.FromMicroseconds(T0)
    message.event.properties.CopyFrom(to_struct({"revenue": 5, "order": {"id": "x"}}))
    item = resolved(message, cause="id9")
    assert item.event == Event(T0, "ing1", "track", "Order Completed", {"revenue": 5.0, "order": {"id": "x"}})
    page = identity_pb2.EventResolved(event_id="ing2")
    page.event.type = ingest_pb2.EVENT_TYPE_PAGE
    page.event.name = "Home"
    page.event.received_at.FromMicroseconds(T0 + 5)
    assert resolved(page).event.at == T0 + 5 and resolved(page).event.name == "Home"
    traits = identity_pb2.TraitsUpdated(evidence_event_id="ing3")
    traits.traits.CopyFrom(to_struct({"plan": "gold"}))
    assert traits_set(traits, T0) == TraitsSet({"plan": "gold"}, (T0, "ing3"))


def test_recompute_evaluates_batch_definitions() -> None:
    nightly = segment("nightly", performed("a"))
    nightly.evaluation = pb.EVALUATION_BATCH
    nightly.schedule = "0 3 * * *"
    nightly.segment.condition.performed.within.CopyFrom(dur(DAY))
    ws = compile_workspace([nightly, segment("reader", in_segment("nightly"))])
    state = ProfileState("p")
    assert apply(ws, state, Resolved(event("a", T0)), T0).changes == []
    assert state.next_timer() is None  # no timers for a BATCH definition
    changes = recompute(ws, state, T0 + 1, ["nightly"]).changes
    assert [(type(c), c.name) for c in changes] == [(Entered, "nightly"), (Entered, "reader")]
    assert state.next_timer() is None
    assert advance(ws, state, T0 + 2 * DAY).changes == []  # still a member until the next run
    fresh = ProfileState("q")
    apply(ws, fresh, Resolved(event("a", T0)), T0)
    fresh_changes = recompute(ws, ProfileState.from_proto(fresh.to_proto()), T0 + 2 * DAY).changes
    assert fresh_changes == []  # the event is out of the window by the time of the run
    assert [type(c) for c in recompute(ws, ProfileState("r"), T0).changes] == []


# ------------------------------------------------------------------------------------------------
# Random definitions and histories.

NAMES = ("a", "b", "c")


@st.composite
def workspaces(draw: st.DrawFn) -> list[pb.Definition]:
    definitions: list[pb.Definition] = []
    kinds: dict[str, str] = {}
    windows = st.integers(1, 8).map(lambda h: h * HOUR)

    def leaf() -> st.SearchStrategy[pb.Condition]:
        options: list[st.SearchStrategy[pb.Condition]] = [
            st.builds(
                lambda n, lo, extra, w, v: performed(
                    n,
                    min_count=lo,
                    max_count=(lo + extra - 1) if extra else 0,
                    within=w,
                    **({"v": ("GE", v)} if v is not None else {}),
                ),
                st.sampled_from(NAMES),
                st.integers(1, 3),
                st.integers(0, 2),
                st.one_of(st.none(), windows),
                st.one_of(st.none(), st.integers(0, 10)),
            ),
            st.builds(lambda pair, w: not_after(pair[0], pair[1], w), st.permutations(NAMES), windows),
            st.builds(lambda v: trait("plan", "EQ", v), st.sampled_from(["gold", "free"])),
            st.builds(lambda v: trait("age", "GE", v), st.integers(0, 50)),
        ]
        numeric = [n for n, k in kinds.items() if k == "numeric"]
        if numeric:
            options.append(
                st.builds(
                    lambda n, v: computed_test(n, "GE", v), st.sampled_from(numeric), st.integers(0, 12)
                )
            )
        segments = [n for n, k in kinds.items() if k == "segment"]
        if segments:
            options.append(st.sampled_from(segments).map(in_segment))
        tags = [n for n, k in kinds.items() if k == "tag"]
        if tags:
            options.append(st.sampled_from(tags).map(tag_test))
        return st.one_of(options)

    def tree() -> st.SearchStrategy[pb.Condition]:
        return st.recursive(
            leaf(),
            lambda inner: st.one_of(
                st.lists(inner, min_size=1, max_size=3).map(lambda cs: all_of(*cs)),
                st.lists(inner, min_size=1, max_size=3).map(lambda cs: any_of(*cs)),
                inner.map(negated),
            ),
            max_leaves=4,
        )

    for i in range(draw(st.integers(1, 6))):
        name = f"d{i}"
        kind = draw(st.sampled_from(["segment", "segment", "computed", "tag", "lifecycle", "rfm"]))
        if kind == "segment":
            definitions.append(segment(name, draw(tree())))
            kinds[name] = "segment"
        elif kind == "tag":
            rules = draw(st.lists(st.tuples(tree(), st.sampled_from(["x", "y"])), min_size=1, max_size=2))
            definitions.append(tag(name, *rules))
            kinds[name] = "tag"
        elif kind == "computed":
            aggregation = draw(
                st.sampled_from(
                    ["COUNT", "SUM", "AVG", "MIN", "MAX", "FIRST", "LAST", "MOST_FREQUENT", "UNIQUE_COUNT"]
                )
            )
            prop = "" if aggregation == "COUNT" else draw(st.sampled_from(["v", "c"]))
            window = draw(st.one_of(st.none(), windows))
            definitions.append(computed(name, aggregation, prop, draw(st.sampled_from(NAMES)), window=window))
            numeric = aggregation in ("COUNT", "SUM", "AVG", "MIN", "MAX", "UNIQUE_COUNT")
            kinds[name] = "numeric" if numeric else "computed"
        elif kind == "lifecycle":
            lc = pb.Lifecycle(
                purchases=pb.Purchases(event=event_filter("c")),
                churning_after=dur(3 * HOUR),
                dormant_after=dur(6 * HOUR),
                lost_after=dur(12 * HOUR),
                reactivated_for=dur(2 * HOUR),
                relative=draw(st.sampled_from([0.0, 1.5])),
            )
            definitions.append(pb.Definition(name=name, version=1, lifecycle=lc))
            kinds[name] = "tag"
        else:
            r = pb.Rfm(
                purchases=pb.Purchases(event=event_filter("c"), revenue_property="v"),
                lookback=dur(12 * HOUR),
                cut_offs=pb.Rfm.CutOffs(
                    recency_days=[1 / 24, 2 / 24, 4 / 24, 6 / 24],
                    frequency=[2, 3, 4, 5],
                    monetary=[1, 5, 10, 20],
                ),
            )
            definitions.append(pb.Definition(name=name, version=1, rfm=r))
            kinds[name] = "tag"
    return definitions


properties = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.integers(0, 10), st.sampled_from(["s", "t"])),
        "c": st.sampled_from(["x", "y", "z"]),
    },
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("event"),
            st.integers(0, 3),  # hours since the previous step (processing time)
            st.integers(-1, 6),  # how late the event arrives, hours (-1: dated an hour ahead)
            st.sampled_from(NAMES),
            properties,
        ),
        st.tuples(
            st.just("traits"),
            st.integers(0, 3),
            st.integers(0, 2),
            st.fixed_dictionaries(
                {}, optional={"plan": st.sampled_from(["gold", "free"]), "age": st.integers(0, 60)}
            ),
            st.none(),
        ),
    ),
    min_size=1,
    max_size=14,
)


def _inputs(raw: list[tuple[Any, ...]], tag_: str) -> list[tuple[int, Input]]:
    now, out = T0, []
    for i, (kind, gap, lag, what, props) in enumerate(raw):
        now += gap * HOUR
        at = now - lag * HOUR
        if kind == "event":
            out.append((now, Resolved(Event(at, f"{tag_}{i:03d}", "track", what, props))))
        else:
            out.append((now, TraitsSet(what, (at, f"{tag_}{i:03d}"))))
    return out


def _incremental(ws: Workspace, inputs: list[tuple[int, Input]], until: int) -> ProfileState:
    state = ProfileState("p")
    for now, item in inputs:
        _fire(ws, state, now)
        apply(ws, state, item, now)
        # The state survives its proto at any point.
        state = ProfileState.from_proto(pb.ProfileState.FromString(state.to_proto().SerializeToString()))
    _fire(ws, state, until)
    return state


def _batch(ws: Workspace, inputs: list[tuple[int, Input]], now: int) -> ProfileState:
    state = ProfileState("p")
    for _, item in inputs:
        apply(ws, state, item, now)
    return state


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(SETTINGS, max_examples=300)
@given(workspaces(), steps, st.integers(0, 30))
def test_batch_equals_incremental(
    definitions: list[pb.Definition], raw: list[tuple[Any, ...]], extra_h: int
) -> None:
    ws = compile_workspace(definitions)
    inputs = _inputs(raw, "e")
    now = inputs[-1][0] + extra_h * HOUR
    incremental = _incremental(ws, inputs, now)
    batch = _batch(ws, inputs, now)
    assert incremental.values() == batch.values()
    assert incremental.next_timer() == batch.next_timer()


@SETTINGS
@given(workspaces(), steps, steps, st.integers(0, 30))
def test_a_merge_equals_one_profile_with_both_histories(
    definitions: list[pb.Definition], left: list[tuple[Any, ...]], right: list[tuple[Any, ...]], extra_h: int
) -> None:
    ws = compile_workspace(definitions)
    a, b = _inputs(left, "L"), _inputs(right, "R")
    now = max(a[-1][0], b[-1][0]) + extra_h * HOUR
    survivor = _incremental(ws, a, now)
    other = _incremental(ws, b, now)
    apply(ws, survivor, Merged(other), now)
    together = sorted(a + b, key=lambda step: step[0])
    assert survivor.values() == _batch(ws, together, now).values()


def test_an_event_re_evaluates_only_what_it_can_affect(monkeypatch: Any) -> None:
    from onefold.segments.domain import fold

    ws = compile_workspace(
        [
            segment("a_buyers", performed("a")),
            segment("b_buyers", performed("b")),
            segment("both", all_of(in_segment("a_buyers"), trait("plan", "EXISTS"))),
            computed("b_count", "COUNT", event="b"),
            tag("plan", copy_trait="plan"),
        ]
    )
    state = ProfileState("p")
    apply(ws, state, Resolved(event("x", T0)), T0)  # the first input evaluates everything
    seen: list[str] = []
    real = fold.evaluate

    def spy(compiled: Any, view: Any) -> Any:
        seen.append(compiled.name)
        return real(compiled, view)

    monkeypatch.setattr(fold, "evaluate", spy)
    apply(ws, state, Resolved(event("a", T0)), T0)
    assert seen == ["a_buyers", "both"]
    seen.clear()
    apply(ws, state, Resolved(event("b", T0)), T0)
    assert sorted(seen) == ["b_buyers", "b_count"]
    seen.clear()
    apply(ws, state, TraitsSet({"plan": "gold"}, (T0, "t")), T0)
    assert sorted(seen) == ["both", "plan"]
    seen.clear()
    apply(ws, state, TraitsSet({"plan": "gold"}, (T0 + 1, "u")), T0 + 1)  # the same value: nothing
    assert seen == []
    apply(ws, state, Resolved(event("c", T0)), T0 + 1)
    assert seen == []


def test_the_stored_states_personal_fields_are_marked() -> None:
    """Everything holding a trait, a property value or an observed value is personal."""
    from onefold.contracts.options.v1 import options_pb2

    def personal(message: Any) -> set[str]:
        return {
            f"{message.DESCRIPTOR.name}.{f.name}"
            for f in message.DESCRIPTOR.fields
            if f.GetOptions().Extensions[options_pb2.pii]
        }

    marked = set().union(
        *(
            personal(m)
            for m in (
                pb.ProfileState,
                pb.WindowState,
                pb.AllTimeState,
                pb.PurchasesState,
                pb.OutputState,
                pb.Reason,
            )
        )
    )
    assert marked == {
        "ProfileState.traits",
        "WindowState.values",
        "AllTimeState.sum",
        "AllTimeState.min",
        "AllTimeState.max",
        "AllTimeState.first",
        "AllTimeState.last",
        "AllTimeState.distinct",
        "PurchasesState.revenues",
        "OutputState.value",
        "Reason.observed",
    }


def test_a_new_definition_is_backfilled_from_history_once() -> None:
    before = [segment("buyers", performed("a"))]
    after = [
        *before,
        segment("twice", performed("a", min_count=2, within=DAY)),
        computed("n", "COUNT", event="a"),
    ]
    history = [event("a", T0), event("a", T0 + HOUR), event("b", T0 + HOUR)]
    old, new = compile_workspace(before), compile_workspace(after)
    state = ProfileState("p")
    apply(old, state, Resolved(history[0]), T0)
    for e in history[1:]:  # live under the new definitions, before the backfill reached the profile
        apply(new, state, Resolved(e), e.at)
    added = set(new.features) - set(old.features)
    for _ in range(2):  # resumed: the same answer
        result = backfill(new, state, history, added, T0 + 2 * HOUR)
    assert state.values() == {"buyers": True, "twice": True, "n": 2.0}
    assert result.changes == []  # the second run changes nothing
    expected = _batch(new, [(e.at, Resolved(e)) for e in history], T0 + 2 * HOUR)
    assert state.values() == expected.values()
    assert state.next_timer() == expected.next_timer() == T0 + DAY
