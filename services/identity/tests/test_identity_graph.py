"""Properties of the identity graph (pure domain, no storage).

The issue asks for "any order of the same link events gives the same partition". That holds exactly
when no limit, protection or split refuses a link in any order (then the partition is the connected
components of "seen on one event"). With limits, who was seen first decides which link is refused, so
in general we test the weaker property stated in graph.py: every profile respects every limit, each
identifier is on one profile, and the partition refines the connected components.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from onefold.identity.domain.graph import Created, IdentityGraph, Merged, Refused
from onefold.identity.domain.identifiers import Ident, Rules, TypeRule, default_rules

TYPES = ("user_id", "email", "phone", "device_id", "anonymous_id")


def unlimited_rules() -> Rules:
    return Rules(types=tuple(TypeRule(t, rank, 1_000_000, "trim", ()) for rank, t in enumerate(TYPES, 1)))


def ident(type_name: str, value: int) -> Ident:
    return Ident(type_name, str(value), f"{type_name}:{value}")


def ordered(rules: Rules, idents: list[Ident]) -> list[Ident]:
    unique = {i.key: i for i in idents}
    return sorted(unique.values(), key=lambda i: rules.rank(i.type))


identifier_sets = st.lists(
    st.lists(st.tuples(st.sampled_from(TYPES), st.integers(0, 6)), min_size=1, max_size=3),
    min_size=1,
    max_size=25,
)


def run(rules: Rules, events: list[list[tuple[str, int]]]) -> IdentityGraph:
    graph = IdentityGraph(rules)
    counter = itertools.count()
    for number, items in enumerate(events):
        graph.resolve(
            ordered(rules, [ident(t, v) for t, v in items]), f"e{number}", lambda: f"p{next(counter)}"
        )
    return graph


def blocks(graph: IdentityGraph) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for key, owner in graph.owner.items():
        groups[owner].add(key)
    return {frozenset(group) for group in groups.values()}


def components(events: list[list[tuple[str, int]]]) -> set[frozenset[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for items in events:
        keys = [f"{t}:{v}" for t, v in items]
        for key in keys:
            find(key)
        for other in keys[1:]:
            parent[find(other)] = find(keys[0])
    groups: dict[str, set[str]] = defaultdict(set)
    for key in parent:
        groups[find(key)].add(key)
    return {frozenset(group) for group in groups.values()}


@settings(max_examples=150, deadline=None)
@given(identifier_sets, st.randoms(use_true_random=False))
def test_any_order_gives_the_same_partition_without_limits(events, random):
    shuffled = list(events)
    random.shuffle(shuffled)
    first, second = run(unlimited_rules(), events), run(unlimited_rules(), shuffled)
    assert blocks(first) == blocks(second) == components(events)


@settings(max_examples=150, deadline=None)
@given(identifier_sets, st.randoms(use_true_random=False))
def test_with_limits_every_order_respects_limits_and_refines_components(events, random):
    rules = default_rules()
    shuffled = list(events)
    random.shuffle(shuffled)
    reference = components(events)
    for order in (events, shuffled):
        graph = run(rules, order)
        for members in graph.members.values():
            for type_name, keys in members.items():
                assert len(keys) <= rules.limit(type_name)
        seen: set[str] = set()
        for block in blocks(graph):
            assert not (block & seen), "an identifier is on two profiles"
            seen |= block
            assert any(block <= component for component in reference), "a profile spans two components"
        # with no refusal the partition is exactly the components
        refusals = []
        replay = IdentityGraph(rules)
        counter = itertools.count()
        for number, items in enumerate(order):
            resolution = replay.resolve(
                ordered(rules, [ident(t, v) for t, v in items]),
                f"e{number}",
                lambda: f"p{next(counter)}",  # noqa: B023
            )
            refusals += [op for op in resolution.operations if isinstance(op, Refused)]
        if not refusals:
            assert blocks(graph) == reference


def test_a_second_user_id_is_never_merged_and_the_refusal_is_recorded():
    rules = default_rules()
    graph = IdentityGraph(rules)
    ids = iter(["a", "b"])
    graph.resolve([ident("user_id", 1), ident("email", 1)], "e1", lambda: next(ids))
    resolution = graph.resolve([ident("user_id", 2), ident("email", 1)], "e2", lambda: next(ids))
    assert resolution.profile_id == "b"
    assert graph.owner["email:1"] == "a"
    assert [type(op) for op in resolution.operations] == [Created, type(resolution.operations[1]), Refused]
    refused = resolution.operations[-1]
    assert (
        isinstance(refused, Refused) and refused.reason == "merge_limit" and refused.other_profile_id == "a"
    )


def test_new_higher_priority_identifiers_join_the_known_profile_when_limits_allow():
    graph = IdentityGraph(default_rules())
    ids = iter(["a", "b"])
    graph.resolve([ident("anonymous_id", 1)], "e1", lambda: next(ids))
    resolution = graph.resolve([ident("user_id", 1), ident("anonymous_id", 1)], "e2", lambda: next(ids))
    assert resolution.profile_id == "a"
    assert not any(isinstance(op, Created) for op in resolution.operations)


def test_the_older_profile_survives_a_merge():
    graph = IdentityGraph(default_rules())
    ids = iter(["old", "new"])
    graph.resolve([ident("email", 1)], "e1", lambda: next(ids))
    graph.resolve([ident("phone", 1)], "e2", lambda: next(ids))
    resolution = graph.resolve([ident("phone", 1), ident("email", 1)], "e3", lambda: "unused")
    merges = [op for op in resolution.operations if isinstance(op, Merged)]
    assert merges == [Merged("old", "new", "identifier:phone", "e3")] or merges[0].survivor_id == "old"
    assert graph.live("new") == "old"


def test_protected_profiles_are_not_merged_automatically():
    graph = IdentityGraph(default_rules())
    ids = iter(["a", "b"])
    graph.resolve([ident("email", 1)], "e1", lambda: next(ids))
    graph.resolve([ident("phone", 1)], "e2", lambda: next(ids))
    graph.set_protected("a", True)
    resolution = graph.resolve([ident("email", 1), ident("phone", 1)], "e3", lambda: "unused")
    assert any(isinstance(op, Refused) and op.reason == "protected" for op in resolution.operations)
    assert graph.owner["phone:1"] == "b"


def test_unmerge_along_an_event_restores_both_profiles():
    graph = IdentityGraph(default_rules())
    ids = iter(["a", "b"])
    sets = [
        ("e1", [ident("user_id", 1), ident("anonymous_id", 1)]),
        ("e2", [ident("email", 2), ident("anonymous_id", 2)]),
        ("e3", [ident("user_id", 1), ident("email", 2)]),  # the wrong link
        ("e4", [ident("user_id", 1), ident("device_id", 9)]),
    ]
    created = {}
    for evidence, idents in sets:
        resolution = graph.resolve(ordered(graph.rules, idents), evidence, lambda: next(ids))
        created.update(
            {op.evidence: op.profile_id for op in resolution.operations if isinstance(op, Created)}
        )
    assert graph.live("b") == "a"
    parts = graph.plan_unmerge(
        "a",
        [(e, [i.key for i in idents]) for e, idents in sets],
        created,
        split_event="e3",
        new_id=lambda: "x",
    )
    assert [p.profile_id for p in parts] == ["a", "b"]
    assert set(parts[0].keys) == {"user_id:1", "anonymous_id:1", "device_id:9"}
    assert set(parts[1].keys) == {"email:2", "anonymous_id:2"}
    graph.split(parts)
    assert graph.owner["email:2"] == "b" and graph.live("b") == "b"


def test_unmerge_along_an_identifier_keeps_it_from_merging_again():
    graph = IdentityGraph(default_rules())
    ids = iter(["a", "b", "c"])
    sets = [
        ("e1", [ident("email", 1), ident("device_id", 7)]),
        ("e2", [ident("email", 2), ident("device_id", 7)]),  # a shared tablet merged two people
    ]
    created = {}
    for evidence, idents in sets:
        resolution = graph.resolve(ordered(graph.rules, idents), evidence, lambda: next(ids))
        created.update(
            {op.evidence: op.profile_id for op in resolution.operations if isinstance(op, Created)}
        )
    assert len(blocks(graph)) == 1
    parts = graph.plan_unmerge(
        "a",
        [(e, [i.key for i in idents]) for e, idents in sets],
        created,
        split_key="device_id:7",
        new_id=lambda: "n",
    )
    assert len(parts) == 2
    graph.split(parts, "device_id:7")
    resolution = graph.resolve(
        ordered(graph.rules, [ident("email", 2), ident("device_id", 7)]), "e3", lambda: "z"
    )
    assert any(isinstance(op, Refused) and op.reason == "split" for op in resolution.operations)
    assert len(blocks(graph)) == 2
