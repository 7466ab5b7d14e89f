"""Profile states kept in memory between batches (ProfileStates): served only for the exact bytes
they were saved as, once, so a state changed and not saved, or saved by a transaction that rolled
back, is read from its row again. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from onefold.segments.adapters.profile_states import ProfileStates
from onefold.segments.domain.fold import ProfileState

WORKSPACE = "acme"


def plan_of(states: ProfileStates, harness: Any) -> object:
    with harness.store.transaction() as conn:
        return states.load(conn, WORKSPACE, ["p-1"])["p-1"].traits["plan"]


def test_a_kept_state_is_served_only_for_the_bytes_it_was_saved_as(segments_on_both_databases) -> None:
    harness = segments_on_both_databases
    states = ProfileStates(harness.store)
    with harness.store.transaction() as conn:
        states.save(conn, WORKSPACE, [ProfileState("p-1", traits={"plan": "free"})])

    with harness.store.transaction() as conn:
        changed = states.load(conn, WORKSPACE, ["p-1"])["p-1"]
    changed.traits["plan"] = "changed and never saved"
    assert plan_of(states, harness) == "free"

    with pytest.raises(RuntimeError), harness.store.transaction() as conn:
        state = states.load(conn, WORKSPACE, ["p-1"])["p-1"]
        state.traits["plan"] = "saved, then rolled back"
        states.save(conn, WORKSPACE, [state])
        raise RuntimeError("the batch fails after saving")
    assert plan_of(states, harness) == "free"

    with harness.store.transaction() as conn:
        state = states.load(conn, WORKSPACE, ["p-1"])["p-1"]
        state.traits["plan"] = "pro"
        states.save(conn, WORKSPACE, [state])
    assert plan_of(states, harness) == "pro"
    assert plan_of(ProfileStates(harness.store), harness) == "pro"  # another process reads the row

    with harness.store.transaction() as conn:
        states.delete(conn, WORKSPACE, ["p-1"])
        assert states.load(conn, WORKSPACE, ["p-1"]) == {}
