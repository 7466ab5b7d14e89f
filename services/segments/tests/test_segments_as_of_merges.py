"""As of a moment and history across merges, as an auditor reads them: as of T an id answers as the
profile it stood for at T (a later merge or unmerge leaves the answer at T as it was), and a
profile's history holds the changes recorded under every profile merged into it."""

from __future__ import annotations

import pytest
from segments_domain_builders import HOUR, performed, segment

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.models import from_micros


@pytest.fixture
def merged_at(segments) -> dict[str, int]:
    """p-2 enters `once` on its own; an hour later p-1 is merged with it (p-1 survives) and, on both
    histories, enters `twice`. The moments: `before` the merge, `merge`, `after` it."""
    segments.apply(segment("once", performed("Order Completed")))
    segments.apply(segment("twice", performed("Order Completed", min_count=2)))
    segments.apply(segment("viewer", performed("Page Viewed")))
    segments.run_backfills()
    segments.track("p-1", "Order Completed", keys=("k-a",))
    segments.track("p-1", "Page Viewed", keys=("k-a",))
    segments.track("p-2", "Order Completed", keys=("k-b",))
    before = segments.clock.advance(HOUR // 2)
    merge = segments.clock.advance(HOUR // 2)
    segments.merge("p-1", "p-2")
    after = segments.clock.advance(HOUR)
    return {"before": before, "merge": merge, "after": after}


def held(answer: pb.ProfileSegments) -> tuple[str, list[str]]:
    return answer.profile_id, [m.segment for m in answer.segments]


def changes(history: pb.GetMembershipHistoryResponse) -> list[tuple[str, str, str, str]]:
    return [(c.profile_id, c.change, c.segment, c.value) for c in history.changes]


def test_a_merge_after_the_moment_leaves_the_answer_as_of_it_unchanged(segments, merged_at) -> None:
    before = from_micros(merged_at["before"])
    assert held(segments.profile("p-2", as_of=before)) == ("p-2", ["once"])
    assert held(segments.profile("p-1", as_of=before)) == ("p-1", ["once", "viewer"])


def test_after_the_merge_the_merged_id_answers_as_the_survivor(segments, merged_at) -> None:
    for moment in (merged_at["merge"], merged_at["after"]):
        answer = segments.profile("p-2", as_of=from_micros(moment))
        assert answer == segments.profile("p-1", as_of=from_micros(moment))
        assert held(answer) == ("p-1", ["once", "twice", "viewer"])
    assert held(segments.profile("p-2")) == held(
        segments.profile("p-2", as_of=from_micros(merged_at["after"]))
    )


def test_the_survivors_history_holds_the_merged_profiles_changes(segments, merged_at) -> None:
    history = segments.history("p-1")
    assert history.profile_id == "p-1"
    assert changes(history) == [
        ("p-1", "entered", "once", ""),
        ("p-1", "entered", "viewer", ""),
        ("p-2", "entered", "once", ""),
        ("p-2", "exited", "once", "merged"),
        ("p-1", "entered", "twice", ""),
    ]
    assert [c.at.ToMicroseconds() for c in history.changes][-2:] == [merged_at["merge"]] * 2
    assert segments.history("p-2") == history  # the merged id's history is the survivor's
    assert changes(segments.history("p-1", "once")) == [
        ("p-1", "entered", "once", ""),
        ("p-2", "entered", "once", ""),
        ("p-2", "exited", "once", "merged"),
    ]


def test_an_unmerge_is_honoured_from_its_moment_on(segments, merged_at) -> None:
    during = from_micros(merged_at["after"])
    was = segments.profile("p-2", as_of=during)
    unmerge = segments.clock.advance(HOUR)
    segments.unmerge("p-1", {"p-1": ["k-a"], "p-2": ["k-b"]})
    segments.clock.advance(HOUR)
    assert segments.profile("p-2", as_of=during) == was  # the merge, as it stood then
    assert held(segments.profile("p-2", as_of=from_micros(unmerge))) == ("p-2", ["once"])
    assert held(segments.profile("p-1", as_of=from_micros(unmerge))) == ("p-1", ["once", "viewer"])
    assert held(segments.profile("p-2")) == ("p-2", ["once"])
    assert {c.profile_id for c in segments.history("p-1").changes} == {"p-1"}
    assert changes(segments.history("p-2")) == [
        ("p-2", "entered", "once", ""),
        ("p-2", "exited", "once", "merged"),
        ("p-2", "entered", "once", ""),
    ]


def test_a_merge_of_a_merged_profile_is_followed_through_both(segments, merged_at) -> None:
    segments.track("p-3", "Page Viewed")
    segments.clock.advance(HOUR)
    segments.merge("p-3", "p-1")  # p-1, holding p-2, merged into p-3
    later = segments.clock.advance(HOUR)
    assert held(segments.profile("p-2", as_of=from_micros(merged_at["after"])))[0] == "p-1"
    assert held(segments.profile("p-2", as_of=from_micros(later))) == ("p-3", ["once", "twice", "viewer"])
    assert {c.profile_id for c in segments.history("p-2").changes} == {"p-1", "p-2", "p-3"}


def test_a_rebuilt_read_model_answers_as_of_the_same(segments, merged_at) -> None:
    moments = [from_micros(merged_at[k]) for k in ("before", "merge", "after")]
    answers = [segments.profile("p-2", as_of=m) for m in moments]
    segments.rebuild()
    assert [segments.profile("p-2", as_of=m) for m in moments] == answers
