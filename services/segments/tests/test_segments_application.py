"""The segments application on a real database: identity's events in, change events, memberships,
timers, merges, unmerges, erasure, backfills and replays out — with a controllable clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from segments_domain_builders import (
    DAY,
    HOUR,
    all_of,
    computed,
    computed_test,
    in_segment,
    negated,
    not_after,
    performed,
    rfm,
    segment,
    tag,
    trait,
)

from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.models import from_micros
from onefold.platform.errors import FailedPrecondition, InvalidArgument

WORKSPACE = "acme"


def kinds(messages: list) -> list[tuple[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, pb.SegmentEntered):
            out.append(("entered", m.segment))
        elif isinstance(m, pb.SegmentExited):
            out.append((f"exited:{m.why}", m.segment))
        elif isinstance(m, pb.TagChanged):
            out.append((f"tag:{m.value}", m.tag))
        elif isinstance(m, pb.ComputedTraitChanged):
            out.append(("computed", m.name))
    return out


def test_an_event_enters_a_segment_with_the_reasons_and_the_profile_reads_them_back(segments) -> None:
    segments.apply(segment("buyers", performed("Order Completed", min_count=2, within=30 * DAY)))
    segments.run_backfills()
    segments.track("p-1", "Order Completed", total=10)
    assert segments.members("buyers") == []
    segments.clock.advance(HOUR)
    segments.track("p-1", "Order Completed", total=20)
    assert segments.members("buyers") == ["p-1"]
    entered = [m for m in segments.events("p-1") if isinstance(m, pb.SegmentEntered)]
    assert len(entered) == 1 and entered[0].definition_version == 1 and entered[0].cause_event_id
    assert "Order Completed" in entered[0].reasons[0].condition
    shown = segments.profile("p-1")
    assert [m.segment for m in shown.segments] == ["buyers"]
    assert shown.segments[0].reasons[0].observed.number_value == 2


def test_the_why_shown_now_is_current_while_the_entry_keeps_its_own(segments) -> None:
    segments.apply(computed("spend", "SUM", "total", event="Order Completed"))
    segments.apply(segment("big", computed_test("spend", "GE", 25)))
    segments.run_backfills()
    segments.track("p-1", "Order Completed", total=30)
    segments.clock.advance(HOUR)
    segments.track("p-1", "Order Completed", total=20)
    entered = [m for m in segments.events("p-1") if isinstance(m, pb.SegmentEntered)]
    assert len(entered) == 1 and entered[0].reasons[0].observed.number_value == 30  # not announced again
    assert segments.profile("p-1").segments[0].reasons[0].observed.number_value == 50


def test_a_window_expiring_exits_at_the_timer_with_a_controllable_clock(segments) -> None:
    segments.apply(segment("recent", performed("Viewed", within=HOUR)))
    segments.run_backfills()
    start = segments.clock.now
    segments.track("p-1", "Viewed", at=start)
    assert segments.members("recent") == ["p-1"]
    segments.clock.advance(HOUR - 1)
    assert segments.fire_timers() == 0  # due exactly at start + 1h: not yet
    assert segments.members("recent") == ["p-1"]
    segments.clock.advance(1)
    assert segments.fire_timers() == 1
    assert segments.members("recent") == []
    assert kinds(segments.events("p-1")) == [("entered", "recent"), ("exited:timer", "recent")]


def test_did_not_buy_within_a_day_after_adding_to_cart(segments) -> None:
    segments.apply(segment("abandoned", not_after("Added To Cart", "Order Completed", DAY)))
    segments.run_backfills()
    segments.track("p-1", "Added To Cart")
    segments.track("p-2", "Added To Cart")
    segments.clock.advance(HOUR)
    segments.track("p-2", "Order Completed")
    segments.clock.advance(DAY)
    segments.fire_timers()
    assert segments.members("abandoned") == ["p-1"]


def test_traits_tags_computed_traits_and_segments_reading_them(segments) -> None:
    segments.apply(tag("tier", (trait("plan", "EQ", "gold"), "gold"), (trait("plan", "EXISTS"), "basic")))
    segments.apply(computed("spend", "SUM", "total", event="Order Completed"))
    segments.apply(
        segment("vip", all_of(computed_test("spend", "GE", 100), pb.Condition(tag=pb.TagTest(tag="tier"))))
    )
    segments.run_backfills()
    segments.traits("p-1", plan="gold")
    segments.track("p-1", "Order Completed", total=60)
    assert segments.members("vip") == []
    segments.track("p-1", "Order Completed", total=40)
    assert segments.members("vip") == ["p-1"]
    shown = segments.profile("p-1")
    assert [(t.tag, t.value) for t in shown.tags] == [("tier", "gold")]
    assert shown.computed_traits["spend"].number_value == 100
    segments.clock.advance(1)  # a later setting (at the same moment the event ids would decide)
    segments.traits("p-1", plan="silver")
    assert [(t.tag, t.value) for t in segments.profile("p-1").tags] == [("tier", "basic")]


def test_invalid_definitions_are_refused_with_the_field_named(segments) -> None:
    with pytest.raises(InvalidArgument) as bad:
        segments.apply(segment("Bad Name", performed("X", within=0)))
    paths = [path for path, _ in bad.value.violations]
    assert any("name" in p for p in paths)
    with pytest.raises(InvalidArgument) as unknown:
        segments.apply(segment("reads_nothing", in_segment("missing")))
    assert unknown.value.violations == [
        ("definition.segment.condition.in_segment", "no segment of the workspace has this name")
    ]
    segments.apply(segment("a", trait("plan", "EXISTS")))
    segments.apply(segment("b", in_segment("a")))
    with pytest.raises(InvalidArgument) as cycle:
        segments.apply(segment("a", in_segment("b")))
    assert "cycle" in str(cycle.value.violations)
    with pytest.raises(FailedPrecondition) as still_read:
        segments.archive("a")
    assert still_read.value.violations == [("b.segment.condition.in_segment", "reads 'a'")]


def test_several_definitions_apply_together_all_or_none(segments) -> None:
    def apply_all(*definitions: pb.Definition) -> list[pb.ApplyDefinitionResponse]:
        return segments.sync(segments.app.definitions.apply_all(WORKSPACE, definitions, "cred-test"))

    # Each reads the other: a cycle, named for both; the valid one beside them is not stored.
    with pytest.raises(InvalidArgument) as cycle:
        apply_all(
            segment("ping", in_segment("pong")),
            segment("pong", in_segment("ping")),
            segment("ok", trait("plan", "EXISTS")),
        )
    assert sorted(path for path, _ in cycle.value.violations) == [
        "definitions[0].segment.condition.in_segment",
        "definitions[1].segment.condition.in_segment",
    ]
    with pytest.raises(InvalidArgument) as twice:
        apply_all(segment("ok", trait("plan", "EXISTS")), segment("ok", trait("plan", "EQ", "pro")))
    assert twice.value.violations == [("definitions[1].name", "the request sets this name twice")]
    assert segments.sync(segments.app.definitions.listed(WORKSPACE, include_archived=True)) == []

    # Read before it is defined, in one request: both stored, each with its own backfill.
    first = apply_all(segment("pros", in_segment("plan_set")), segment("plan_set", trait("plan", "EXISTS")))
    assert [(r.definition.name, r.definition.version, r.changed) for r in first] == [
        ("pros", 1, True),
        ("plan_set", 1, True),
    ]
    assert all(r.backfill_id for r in first)
    again = apply_all(segment("plan_set", trait("plan", "EXISTS")), segment("pros", in_segment("plan_set")))
    assert [(r.changed, r.backfill_id) for r in again] == [(False, ""), (False, "")]
    segments.run_backfills()
    segments.traits("p-1", plan="pro")
    assert segments.members("pros") == ["p-1"]


def test_an_unchanged_definition_keeps_its_version_and_a_change_bumps_it(segments) -> None:
    first = segments.apply(segment("a", trait("plan", "EXISTS")))
    again = segments.apply(segment("a", trait("plan", "EXISTS")))
    changed = segments.apply(segment("a", trait("plan", "EQ", "gold")))
    assert (first.definition.version, again.changed, changed.definition.version) == (1, False, 2)
    assert first.backfill_id and changed.backfill_id


def test_a_merge_moves_memberships_and_counts_both_histories(segments) -> None:
    segments.apply(segment("twice", performed("Order Completed", min_count=2)))
    segments.run_backfills()
    segments.track("p-1", "Order Completed")
    segments.track("p-2", "Order Completed")
    assert segments.members("twice") == []
    segments.merge("p-1", "p-2")
    assert segments.members("twice") == ["p-1"]
    segments.track("p-2", "Page Viewed")  # late event for the merged id: follows to the survivor
    assert segments.profile("p-2").profile_id == "p-1"


def test_an_unmerge_rebuilds_each_part_from_its_own_history(segments) -> None:
    segments.apply(segment("twice", performed("Order Completed", min_count=2)))
    segments.apply(segment("once", performed("Order Completed")))
    segments.run_backfills()
    segments.track("p-1", "Order Completed", keys=("k-a",))
    segments.track("p-2", "Order Completed", keys=("k-b",))
    segments.merge("p-1", "p-2")
    assert segments.members("twice") == ["p-1"]
    segments.deliver(
        identity_pb2.ProfileUnmerged(
            profile_id="p-1",
            workspace=WORKSPACE,
            parts=[
                identity_pb2.ProfileUnmerged.Part(profile_id="p-1", keys=["k-a"]),
                identity_pb2.ProfileUnmerged.Part(profile_id="p-2", keys=["k-b"]),
            ],
        )
    )
    assert segments.members("twice") == []
    assert segments.members("once") == ["p-1", "p-2"]
    assert ("exited:unmerged", "twice") in kinds(segments.events("p-1"))


def test_erasure_withdraws_everything_and_shreds_the_key(segments) -> None:
    segments.apply(tag("city", copy_trait="city"))
    segments.run_backfills()
    segments.traits("p-1", city="Hangzhou")
    assert [t.value for t in segments.profile("p-1").tags] == ["Hangzhou"]
    counts = segments.sync(segments.app.export_subject(WORKSPACE, ["p-1"]))
    assert counts["tags"] == 1 and counts["profile_states"] == 1 and counts["history_records"] == 1
    segments.deliver(identity_pb2.ProfileErased(profile_id="p-1", workspace=WORKSPACE))
    assert segments.members("city") == []
    assert segments.profile("p-1") == pb.ProfileSegments(profile_id="p-1")
    after = segments.sync(segments.app.export_subject(WORKSPACE, ["p-1"]))
    assert after == {
        "segments": 0,
        "tags": 0,
        "computed_traits": 0,
        "profile_states": 0,
        "history_records": 0,
    }
    # The tag's value in the log is unreadable now: its key is gone.
    changed = [m for m in segments.events("p-1") if isinstance(m, pb.TagChanged)]
    assert [m.value for m in changed] == ["⟨erased⟩", ""]  # set, then withdrawn
    raw = Path(segments.store.engine.url.database).read_bytes()
    assert b"Hangzhou" not in raw


def test_a_data_subject_erasure_from_consent_does_the_same(segments) -> None:
    segments.apply(segment("any", performed("X")))
    segments.run_backfills()
    segments.track("p-1", "X")
    erased = segments.sync(segments.app.erase_subject(WORKSPACE, ["p-1"]))
    assert erased["outputs_withdrawn"] == 1
    assert segments.members("any") == []


def test_a_new_definition_is_backfilled_from_history(segments) -> None:
    for i in range(5):
        segments.track(f"p-{i}", "Order Completed", total=10 * i)
    response = segments.apply(computed("spend", "SUM", "total", event="Order Completed"))
    # Until the backfill reaches them, profiles do not evaluate it on part of their history.
    segments.track("p-4", "Order Completed", total=1)
    assert segments.members("spend") == []
    segments.run_backfills()
    values = {p: segments.profile(p).computed_traits["spend"].number_value for p in ("p-1", "p-4")}
    assert values == {"p-1": 10, "p-4": 41}
    done = segments.sync(segments.app.queries.backfill(WORKSPACE, response.backfill_id))
    assert done.finished and done.events_done == 6


def test_a_restart_mid_backfill_resumes_from_its_cursor(tmp_path: Path, make_segments: Callable) -> None:
    from onefold.segments.application import profiles

    url = f"sqlite:///{tmp_path / 'segments.db'}"
    first = make_segments(url)
    for i in range(450):
        first.track(f"p-{i:04d}", "Viewed")
    response = first.apply(segment("viewers", performed("Viewed")))
    assert first.run_backfills(pages=1) == 1
    assert len(first.members("viewers")) == profiles.BACKFILL_PAGE
    first.close()
    second = make_segments(url)  # the service restarted
    assert second.run_backfills() == 2
    assert len(second.members("viewers")) == 450
    entered = sum(isinstance(m, pb.SegmentEntered) for i in range(450) for m in second.events(f"p-{i:04d}"))
    assert entered == 450  # nobody entered twice
    assert second.sync(second.app.queries.backfill(WORKSPACE, response.backfill_id)).finished


def test_archiving_withdraws_every_output(segments) -> None:
    segments.apply(segment("viewers", performed("Viewed")))
    segments.run_backfills()
    segments.track("p-1", "Viewed")
    segments.archive("viewers")
    segments.run_backfills()
    assert segments.members("viewers") == []
    assert kinds(segments.events("p-1"))[-1] == ("exited:archived", "viewers")


def test_replay_equals_live_and_memberships_as_of_a_moment(segments) -> None:
    segments.apply(segment("recent", performed("Viewed", within=HOUR)))
    segments.run_backfills()
    start = segments.clock.now
    for p in ("p-1", "p-2", "p-3"):
        segments.track(p, "Viewed")
    segments.clock.advance(2 * HOUR)
    segments.fire_timers()
    segments.track("p-2", "Viewed")
    live = segments.member_rows()
    segments.rebuild()
    assert segments.member_rows() == live == [("acme", "recent", "p-2")]
    then = segments.profile("p-1", as_of=from_micros(start + HOUR // 2))
    assert [m.segment for m in then.segments] == ["recent"]
    now = segments.profile("p-1", as_of=from_micros(segments.clock.now))
    assert list(now.segments) == []


def test_members_page_and_preview(segments) -> None:
    for i in range(7):
        segments.traits(f"p-{i}", plan="gold" if i % 2 else "free")
    preview = segments.apply(segment("gold", trait("plan", "EQ", "gold")), dry_run=True)
    assert preview.preview_size == 3 and segments.members("gold") == []
    segments.apply(segment("gold", trait("plan", "EQ", "gold")))
    segments.run_backfills()
    page = segments.sync(
        segments.app.queries.members(WORKSPACE, "gold", pb.ListMembersRequest().page.__class__(page_size=2))
    )
    assert list(page.profile_ids) == ["p-1", "p-3"] and page.page.total_size == 3
    rest = segments.sync(
        segments.app.queries.members(
            WORKSPACE,
            "gold",
            pb.ListMembersRequest().page.__class__(page_size=2, page_token=page.page.next_page_token),
        )
    )
    assert list(rest.profile_ids) == ["p-5"] and not rest.page.next_page_token


def test_a_batch_definition_changes_only_on_its_schedule(segments) -> None:
    batch = segment("buyers", performed("Order Completed"))
    batch.evaluation, batch.schedule, batch.time_zone = pb.EVALUATION_BATCH, "0 3 * * *", "Asia/Shanghai"
    segments.apply(batch)
    segments.run_backfills()
    segments.run_schedules()  # its first run: at once
    segments.run_backfills()
    segments.track("p-1", "Order Completed")
    assert segments.members("buyers") == []  # not per event
    upcoming = segments.run_schedules()
    assert upcoming is not None and upcoming > segments.clock.now
    segments.clock.now = upcoming
    segments.run_schedules()
    segments.run_backfills()
    assert segments.members("buyers") == ["p-1"]
    # 03:00 in Shanghai is 19:00 UTC.
    assert from_micros(upcoming).hour == 19


def test_rfm_by_quintiles_scores_the_workspace_on_its_schedule(segments) -> None:
    segments.apply(rfm("rfm"))
    segments.run_backfills()
    for i in range(10):  # p-9: the most recent, most frequent, biggest spender
        segments.clock.advance(DAY)
        for _ in range(i + 1):
            segments.track(f"p-{i}", "Order Completed", revenue=10.0 * (i + 1))
    segments.run_schedules()
    segments.run_backfills()
    cells = {t.value for p in ("p-0", "p-9") for t in segments.profile(p).tags}
    assert cells and all(cells)
    top = [t.value for t in segments.profile("p-9").tags]
    bottom = [t.value for t in segments.profile("p-0").tags]
    assert top != bottom and top == ["Champions"]


def test_a_bad_schedule_or_time_zone_is_refused(segments) -> None:
    batch = segment("buyers", performed("Order Completed"))
    batch.evaluation, batch.schedule, batch.time_zone = pb.EVALUATION_BATCH, "61 * * * *", "Mars/Olympus"
    with pytest.raises(InvalidArgument) as bad:
        segments.apply(batch)
    assert {path for path, _ in bad.value.violations} == {"definition.schedule", "definition.time_zone"}


def test_the_same_definition_live_and_backfilled_agree_on_both_databases(segments_on_both_databases) -> None:
    harness = segments_on_both_databases
    window = all_of(
        performed("Viewed", min_count=2, within=DAY), negated(performed("Order Completed", within=DAY))
    )
    harness.apply(segment("live", window))
    harness.apply(computed("views_live", "COUNT", event="Viewed", window=2 * DAY))
    harness.run_backfills()
    for step in range(40):
        harness.clock.advance(HOUR * (step % 7 + 1))
        profile = f"p-{step % 5}"
        harness.track(profile, "Order Completed" if step % 6 == 0 else "Viewed")
        if step % 9 == 0:
            harness.fire_timers()
    harness.apply(segment("backfilled", window))
    harness.apply(computed("views_backfilled", "COUNT", event="Viewed", window=2 * DAY))
    harness.run_backfills()
    harness.fire_timers()
    assert harness.members("live") == harness.members("backfilled")
    for i in range(5):
        values = harness.profile(f"p-{i}").computed_traits
        assert values.get("views_live") == values.get("views_backfilled")
