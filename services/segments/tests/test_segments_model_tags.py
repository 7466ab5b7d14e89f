"""Model tags from the insights service (ProfileModelTagged) recorded as the profile's tags, marked
with the model: shown by GetProfileSegments, tested by definitions (so they can drive journeys),
withdrawn by the model, a merge or an erasure, and overridden by a definition of the same name."""

from __future__ import annotations

import pytest
from segments_domain_builders import segment, tag, tag_test, trait

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.platform.errors import InvalidArgument
from onefold.segments.domain.streams import profile_stream


def tag_changes(segments, profile_id: str) -> list[tuple[str, str, str]]:
    return [(m.tag, m.value, m.model) for m in segments.events(profile_id) if isinstance(m, pb.TagChanged)]


def test_a_model_tag_is_the_profiles_tag_marked_with_its_model(segments) -> None:
    segments.track("p-1", "Page Viewed")
    segments.model_tag("p-1", "churn_risk", "high", score=0.83, model_version="churn_risk@abc123")

    shown = segments.profile("p-1")
    assert [(t.tag, t.value, t.model, t.model_version) for t in shown.tags] == [
        ("churn_risk", "high", "churn_risk", "churn_risk@abc123")
    ]
    assert shown.tags[0].reasons[0].observed.number_value == pytest.approx(0.83)
    changed = [m for m in segments.events("p-1") if isinstance(m, pb.TagChanged)]
    assert [(m.tag, m.value, m.model, m.model_version) for m in changed] == [
        ("churn_risk", "high", "churn_risk", "churn_risk@abc123")
    ]
    as_of = segments.profile(
        "p-1", as_of=segments.store.read_stream(profile_stream("acme", "p-1"))[-1].occurred_at
    )
    assert [(t.tag, t.value, t.model) for t in as_of.tags] == [("churn_risk", "high", "churn_risk")]


def test_a_segment_on_a_model_tag_admits_and_releases_the_profile(segments) -> None:
    segments.apply(segment("at_risk", tag_test("churn_risk", "EQ", "high")))
    segments.run_backfills()
    segments.track("p-1", "Page Viewed")
    segments.track("p-2", "Page Viewed")

    segments.model_tag("p-1", "churn_risk", "high")
    segments.model_tag("p-2", "churn_risk", "low")
    assert segments.members("at_risk") == ["p-1"]

    segments.model_tag("p-1", "churn_risk", "medium")
    assert segments.members("at_risk") == []
    segments.model_tag("p-2", "churn_risk", "high")
    segments.model_tag("p-2", "churn_risk", "")  # the model no longer tags it
    assert segments.members("at_risk") == []
    assert segments.profile("p-2").tags == []
    assert tag_changes(segments, "p-2") == [
        ("churn_risk", "low", "churn_risk"),
        ("churn_risk", "high", "churn_risk"),
        ("churn_risk", "", "churn_risk"),
    ]


def test_only_model_tags_and_definitions_may_be_tested_by_name(segments) -> None:
    with pytest.raises(InvalidArgument) as unknown:
        segments.apply(segment("odd", tag_test("churn_danger", "EQ", "high")))
    assert unknown.value.violations == [
        ("definition.segment.condition.tag.tag", "no tag of the workspace has this name")
    ]


def test_a_definition_of_the_same_name_wins_over_the_model(segments) -> None:
    segments.traits("p-1", plan="gold")
    segments.model_tag("p-1", "churn_risk", "high")
    segments.apply(tag("churn_risk", (trait("plan", "EQ", "gold"), "low")))
    segments.run_backfills()

    assert [(t.tag, t.value, t.model) for t in segments.profile("p-1").tags] == [("churn_risk", "low", "")]
    segments.model_tag("p-1", "churn_risk", "medium")  # ignored: the definition's tag is the profile's
    assert [(t.tag, t.value, t.model) for t in segments.profile("p-1").tags] == [("churn_risk", "low", "")]


def test_archiving_definitions_keeps_model_tags_and_an_erasure_withdraws_them(segments) -> None:
    segments.apply(segment("anyone", trait("plan", "EXISTS")))
    segments.run_backfills()
    segments.traits("p-1", plan="gold")
    segments.model_tag("p-1", "category_affinity", "books", model_version="affinity@v1")
    segments.archive("anyone")
    segments.traits("p-1", plan="silver")  # the profile is folded again without the definition

    assert [(t.tag, t.value) for t in segments.profile("p-1").tags] == [("category_affinity", "books")]

    segments.sync(segments.app.erase_subject("acme", ["p-1"]))
    assert segments.profile("p-1").tags == []
    segments.model_tag("p-1", "category_affinity", "garden", model_version="affinity@v2")  # too late
    assert segments.profile("p-1").tags == []
    assert segments.members("category_affinity") == []


def test_a_merge_withdraws_the_merged_profiles_model_tags_and_an_unmerge_keeps_the_kept_ones(
    segments,
) -> None:
    segments.track("p-1", "Page Viewed", keys=("email:a",))
    segments.track("p-2", "Page Viewed", keys=("email:b",))
    segments.model_tag("p-1", "churn_risk", "high")
    segments.model_tag("p-2", "churn_risk", "low")

    segments.merge("p-1", "p-2")
    assert [(t.tag, t.value) for t in segments.profile("p-1").tags] == [("churn_risk", "high")]
    assert tag_changes(segments, "p-2")[-1] == ("churn_risk", "", "churn_risk")
    segments.model_tag("p-2", "churn_risk", "medium")  # merged away: the model tags the survivor next time
    assert [(t.tag, t.value) for t in segments.profile("p-1").tags] == [("churn_risk", "high")]

    segments.unmerge("p-1", {"p-1": ["email:a"], "p-2": ["email:b"]})
    assert [(t.tag, t.value) for t in segments.profile("p-1").tags] == [("churn_risk", "high")]
    assert segments.profile("p-2").tags == []
