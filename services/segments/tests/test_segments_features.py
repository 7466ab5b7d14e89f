"""Accumulators: exact window edges, the next change by time, merge == folding both histories."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from segments_domain_builders import DAY, HOUR, T0, event

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain.definitions import After, AllTime, Filter, Purchases, Recent, Window
from onefold.segments.domain.features import (
    Accumulator,
    AfterAcc,
    AllTimeAcc,
    Event,
    PurchasesAcc,
    RecentAcc,
    WindowAcc,
    canonical,
    load_accumulator,
    merge,
    new_accumulator,
    read_path,
)

A = Filter("track", "a")
B = Filter("track", "b")
W = 10 * HOUR


def test_read_path() -> None:
    data = {"order": {"total": 5.0, "items": [1]}, "plan": None}
    assert read_path(data, "order.total") == 5.0
    assert read_path(data, "order.items") == [1]
    assert read_path(data, "order.total.x") is None
    assert read_path(data, "plan") is None
    assert read_path(data, "nope.x") is None
    assert canonical(1) == canonical(1.0)
    assert canonical(True) != canonical(1)


def test_recent_window_edge_an_event_exactly_w_old_is_out() -> None:
    acc = RecentAcc(Recent(A, 2))
    acc.observe(event("a", T0))
    assert acc.count(T0 + W - 1, W) == 1
    assert acc.count(T0 + W, W) == 0  # exactly W old: out
    assert acc.count(T0 + 100 * W, 0) == 1  # no window: ever
    assert acc.next_change(T0, W) == T0 + W
    assert acc.next_change(T0 + W - 1, W) == T0 + W
    assert acc.next_change(T0 + W, W) is None
    assert acc.count(T0 - 5, W) == 1  # dated after now (skew): counts


def test_recent_keeps_the_latest_and_names_the_flip_of_the_nth() -> None:
    acc = RecentAcc(Recent(A, 2))
    for at in (T0, T0 + HOUR, T0 + 2 * HOUR):
        acc.observe(event("a", at))
    assert [at for at, _ in acc.latest] == [T0 + 2 * HOUR, T0 + HOUR]
    assert acc.count(T0 + 2 * HOUR, W) == 2
    # "at least 2 within W" flips when the 2nd latest leaves; the 1st leaving flips nothing.
    assert acc.next_change(T0 + 2 * HOUR, W, ranks=(2,)) == T0 + HOUR + W
    assert acc.next_change(T0 + 2 * HOUR, W, ranks=(3,)) is None


def test_window_edges_and_expiry() -> None:
    acc = WindowAcc(Window(A, "v", W))
    acc.observe(event("a", T0, v=1))
    acc.observe(event("a", T0 + HOUR, v=2))
    acc.observe(event("a", T0 + HOUR, v=None))  # no value: not kept
    assert acc.aggregate(pb.AGGREGATION_SUM, T0 + W - 1) == 3
    assert acc.aggregate(pb.AGGREGATION_SUM, T0 + W) == 2  # the first is exactly W old: out
    assert acc.next_change(T0 + HOUR) == T0 + W
    acc.expire(T0 + W - 1)
    assert len(acc.entries) == 2
    acc.expire(T0 + W)
    assert len(acc.entries) == 1
    assert acc.next_change(T0 + W) == T0 + HOUR + W
    acc.expire(T0 + HOUR + W)
    assert acc.entries == []
    assert acc.aggregate(pb.AGGREGATION_SUM, T0 + HOUR + W) is None
    assert acc.next_change(T0 + HOUR + W) is None


def test_window_count_keeps_every_matching_event() -> None:
    acc = WindowAcc(Window(A, "", W))
    acc.observe(event("a", T0))
    acc.observe(event("a", T0 + 1))
    assert acc.aggregate(pb.AGGREGATION_COUNT, T0 + W) == 1.0


def test_after_edges() -> None:
    acc = AfterAcc(After(A, B))
    assert not acc.holds(T0, W) and acc.next_change(T0, W) is None
    acc.observe_after(event("a", T0))
    assert not acc.holds(T0 + W - 1, W)
    assert acc.holds(T0 + W, W)  # W has passed at exactly T0 + W
    assert acc.next_change(T0, W) == T0 + W
    assert acc.next_change(T0 + W, W) is None
    acc.observe_then_not(event("b", T0 + 2 * W))  # F after: false again
    assert not acc.holds(T0 + 3 * W, W)
    acc.observe_after(event("a", T0 + 4 * W))  # a new E: pending again
    assert acc.next_change(T0 + 4 * W, W) == T0 + 5 * W
    same = AfterAcc(After(A, B))
    same.observe_after(event("a", T0))
    same.observe_then_not(event("b", T0))  # F at the same moment answers E
    assert same.pending() is None
    late = AfterAcc(After(A, B))
    late.observe_then_not(event("b", T0 - HOUR))  # an F before E does not answer it
    late.observe_after(event("a", T0))
    assert late.pending() == T0


def test_purchases_lookback_edges() -> None:
    acc = PurchasesAcc(Purchases(Filter("track", "Order Completed"), ("revenue", "total"), 30 * DAY))
    acc.observe(event("Order Completed", T0, revenue=10))
    acc.observe(event("Order Completed", T0 + DAY, total=5, revenue="n/a"))
    acc.observe(event("Order Completed", T0 + 2 * DAY))
    assert [r for _, r in acc.inside(T0 + 2 * DAY)] == [10.0, 5.0, 0.0]
    assert len(acc.inside(T0 + 30 * DAY - 1)) == 3
    assert len(acc.inside(T0 + 30 * DAY)) == 2  # exactly the lookback old: out
    assert acc.next_change(T0 + 2 * DAY) == T0 + 30 * DAY
    acc.expire(T0 + 30 * DAY)
    assert acc.count == 3 and acc.first == (T0, acc.first[1]) and len(acc.latest) == 3


def test_all_time_aggregations() -> None:
    acc = AllTimeAcc(AllTime(A, "sku", True))
    for at, sku in ((3, "x"), (1, "y"), (2, "x"), (4, "y"), (5, 7), (6, True)):
        acc.observe(event("a", T0 + at, sku=sku))
    acc.observe(event("a", T0 + 9))  # no property: not counted
    assert acc.aggregate(pb.AGGREGATION_FIRST) == "y"
    assert acc.aggregate(pb.AGGREGATION_LAST) is True
    assert acc.aggregate(pb.AGGREGATION_MOST_FREQUENT) == "y"  # 2 each; y seen first
    assert acc.aggregate(pb.AGGREGATION_UNIQUE_COUNT) == 4
    assert acc.aggregate(pb.AGGREGATION_SUM) == 7
    assert acc.aggregate(pb.AGGREGATION_AVG) == 7
    assert acc.aggregate(pb.AGGREGATION_MIN) == 7
    empty = AllTimeAcc(AllTime(A, "", False))
    assert empty.aggregate(pb.AGGREGATION_COUNT) is None
    assert empty.aggregate(pb.AGGREGATION_SUM) is None


def test_sums_are_exact_whatever_the_order() -> None:
    values = [0.1, 0.2, 0.3, 1e16, -1e16]
    forward, backward = AllTimeAcc(AllTime(A, "v", False)), AllTimeAcc(AllTime(A, "v", False))
    for i, v in enumerate(values):
        forward.observe(event("a", T0 + i, v=v))
    for i, v in reversed(list(enumerate(values))):
        backward.observe(event("a", T0 + i, v=v))
    assert forward.aggregate(pb.AGGREGATION_SUM) == backward.aggregate(pb.AGGREGATION_SUM) == 0.6


# ------------------------------------------------------------------------------------------------
# merge == fold of both event sets (property).

FEATURES = [
    Recent(A, 3),
    Window(A, "v", W),
    Window(A, "", W),
    AllTime(A, "v", True),
    AllTime(A, "", False),
    After(A, B),
    Purchases(A, ("v",), W),
    Purchases(A),
]

values = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["x", "y", "z"]),
    st.booleans(),
)
events = st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["a", "b"]), values), max_size=25)


def _events(raw: list[tuple[int, str, Any]], tag: str) -> list[Event]:
    return [
        Event(T0 + at * HOUR, f"{tag}{i:03d}", "track", name, {} if v is None else {"v": v})
        for i, (at, name, v) in enumerate(raw)
    ]


def _fold(feature: Any, history: list[Event], now: int) -> Accumulator:
    acc = new_accumulator(feature)
    for e in history:
        if isinstance(acc, AfterAcc):
            if e.name == "a":
                acc.observe_after(e)
            else:
                acc.observe_then_not(e)
        elif e.name == "a":
            acc.observe(e)
    acc.expire(now)
    return acc


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FEATURES), events, events, st.integers(0, 60), st.randoms(use_true_random=False))
def test_merge_equals_folding_both_histories(
    feature: Any, left: list, right: list, now_h: int, rnd: Any
) -> None:
    now = T0 + now_h * HOUR
    a, b = _events(left, "L"), _events(right, "R")
    together = a + b
    rnd.shuffle(together)  # arrival order does not matter either
    expected = _fold(feature, together, now)
    merged = _fold(feature, a, now)
    merge(merged, _fold(feature, b, now))
    merged.expire(now)
    assert merged == expected
    # ... and the state survives its proto.
    assert (
        load_accumulator(feature, pb.FeatureState.FromString(merged.to_proto().SerializeToString()))
        == expected
    )
