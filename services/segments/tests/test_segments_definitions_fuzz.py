"""Whatever a client sends as a definition, compiling it answers with violations, never a crash."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.platform.errors import InvalidArgument
from onefold.segments.domain.definitions import compile_workspace, feature_from_key, feature_key

NAMES = st.sampled_from(["a", "b", "c", "Bad", "", "x" * 70])


@st.composite
def json_values(draw: st.DrawFn) -> struct_pb2.Value:
    v = struct_pb2.Value()
    kind = draw(st.sampled_from(["none", "unset", "null", "number", "string", "bool", "list", "struct"]))
    if kind == "null":
        v.null_value = struct_pb2.NULL_VALUE
    elif kind == "number":
        v.number_value = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif kind == "string":
        v.string_value = draw(st.text(max_size=5))
    elif kind == "bool":
        v.bool_value = draw(st.booleans())
    elif kind == "list":
        v.list_value.values.add().number_value = 1
    elif kind == "struct":
        v.struct_value.fields["k"].string_value = "v"
    return v


durations = st.one_of(
    st.none(),
    st.builds(
        lambda s, n: duration_pb2.Duration(seconds=s, nanos=n),
        st.integers(-10, 10**6),
        st.integers(0, 999_999_999),
    ),
)


@st.composite
def predicates(draw: st.DrawFn) -> pb.Predicate:
    p = pb.Predicate(op=draw(st.integers(0, 14)))
    value = draw(json_values())
    if value.WhichOneof("kind"):
        p.value.CopyFrom(value)
    for v in draw(st.lists(json_values(), max_size=2)):
        p.values.append(v)
    return p


@st.composite
def filters(draw: st.DrawFn) -> pb.EventFilter:
    f = pb.EventFilter(
        type=draw(st.sampled_from(["", "track", "page", "identify", "bogus"])), event=draw(NAMES)
    )
    for _ in range(draw(st.integers(0, 2))):
        f.where.add(path=draw(st.sampled_from(["v", "a.b", "", ".x"]))).predicate.CopyFrom(draw(predicates()))
    return f


def _set(message: Any, field: str, duration: duration_pb2.Duration | None) -> None:
    if duration is not None:
        getattr(message, field).CopyFrom(duration)


def conditions(depth: int = 2) -> st.SearchStrategy[pb.Condition]:
    @st.composite
    def build(draw: st.DrawFn) -> pb.Condition:
        c = pb.Condition()
        kind = draw(
            st.sampled_from(
                ["none", "trait", "computed", "tag", "in", "performed", "after", "all", "any", "not"]
            )
        )
        if kind == "trait":
            c.trait.trait = draw(st.sampled_from(["plan", "", "a..b"]))
            c.trait.predicate.CopyFrom(draw(predicates()))
        elif kind == "computed":
            c.computed_trait.computed_trait = draw(NAMES)
            c.computed_trait.predicate.CopyFrom(draw(predicates()))
        elif kind == "tag":
            c.tag.tag = draw(NAMES)
            if draw(st.booleans()):
                c.tag.predicate.CopyFrom(draw(predicates()))
        elif kind == "in":
            c.in_segment = draw(NAMES)
        elif kind == "performed":
            c.performed.event.CopyFrom(draw(filters()))
            c.performed.min_count = draw(st.integers(0, 2000))
            c.performed.max_count = draw(st.integers(0, 2000))
            _set(c.performed, "within", draw(durations))
        elif kind == "after":
            if draw(st.booleans()):
                c.not_performed_after.after.CopyFrom(draw(filters()))
            if draw(st.booleans()):
                c.not_performed_after.then_not.CopyFrom(draw(filters()))
            _set(c.not_performed_after, "within", draw(durations))
        elif kind in ("all", "any") and depth:
            group = c.all_of if kind == "all" else c.any_of
            group.SetInParent()
            group.conditions.extend(draw(st.lists(conditions(depth - 1), max_size=2)))
        elif kind == "not" and depth:
            c.negated.CopyFrom(draw(conditions(depth - 1)))
        return c

    return build()


@st.composite
def definitions(draw: st.DrawFn) -> pb.Definition:
    d = pb.Definition(
        name=draw(NAMES),
        evaluation=draw(st.integers(0, 2)),
        schedule=draw(st.sampled_from(["", "0 3 * * *", "x"])),
    )
    kind = draw(st.sampled_from(["none", "segment", "tag", "computed", "lifecycle", "rfm"]))
    if kind == "segment":
        d.segment.SetInParent()
        if draw(st.booleans()):
            d.segment.condition.CopyFrom(draw(conditions()))
    elif kind == "tag":
        d.tag.copy_trait = draw(st.sampled_from(["", "city", "a..b"]))
        for _ in range(draw(st.integers(0, 2))):
            d.tag.rules.add(value=draw(st.sampled_from(["", "v", "x" * 300]))).when.CopyFrom(
                draw(conditions())
            )
        d.tag.SetInParent()
    elif kind == "computed":
        c = d.computed_trait
        c.event.CopyFrom(draw(filters()))
        c.aggregation = draw(st.integers(0, 11))
        c.property = draw(st.sampled_from(["", "v", "a..b"]))
        _set(c, "window", draw(durations))
    elif kind == "lifecycle":
        lc = d.lifecycle
        lc.SetInParent()
        for name in ("churning_after", "dormant_after", "lost_after", "reactivated_for"):
            _set(lc, name, draw(durations))
        lc.relative = draw(st.floats(allow_nan=True))
        if draw(st.booleans()):
            lc.purchases.event.CopyFrom(draw(filters()))
    elif kind == "rfm":
        r = d.rfm
        r.SetInParent()
        _set(r, "lookback", draw(durations))
        if draw(st.booleans()):
            numbers = st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5)
            r.cut_offs.recency_days.extend(draw(numbers))
            r.cut_offs.frequency.extend(draw(numbers))
            r.cut_offs.monetary.extend(draw(numbers))
            r.cut_offs.SetInParent()
        for _ in range(draw(st.integers(0, 2))):
            r.cells.add(
                name=draw(st.sampled_from(["", "c"])),
                recency_min=draw(st.integers(0, 7)),
                recency_max=draw(st.integers(0, 7)),
                frequency_min=draw(st.integers(0, 7)),
                frequency_max=draw(st.integers(0, 7)),
            )
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(definitions(), min_size=1, max_size=4))
def test_any_definition_compiles_or_is_refused_with_field_paths(workspace: list[pb.Definition]) -> None:
    try:
        compiled = compile_workspace(workspace)
    except InvalidArgument as error:
        assert error.violations
        for path, reason in error.violations:
            assert path.startswith("definitions[") and reason
        return
    for feature in compiled.features:
        assert feature_from_key(feature_key(feature)) == feature
