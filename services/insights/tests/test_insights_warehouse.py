"""The analytical store: its tables are made once, and an erasure removes a profile from all of them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from onefold.insights.adapters.warehouse import TABLES, erase_profiles, open_warehouse


def test_tables_are_made_once_and_an_erasure_leaves_nothing_of_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "insights.duckdb"
    warehouse = open_warehouse(path)
    at = datetime(2026, 3, 1, 12)
    for profile in ("ann", "bob"):
        warehouse.execute(
            "INSERT INTO events (workspace, event_id, profile_id, ts, type, event) VALUES ('acme', ?, ?, ?, 'track', 'Order Completed')",
            [f"e-{profile}", profile, at],
        )
        warehouse.execute(
            "INSERT INTO sends VALUES ('acme', ?, ?, ?, 'welcome', 'send', 'email', false)",
            [f"m-{profile}", profile, at],
        )
        warehouse.execute("INSERT INTO memberships VALUES ('acme', ?, 'vip', ?, NULL)", [profile, at])
        warehouse.execute(
            "INSERT INTO profile_tags VALUES ('acme', ?, 'lifecycle_stage', 'active', ?, NULL)", [profile, at]
        )
    warehouse.close()

    reopened = open_warehouse(path)  # the tables exist already: nothing is made again or lost
    assert erase_profiles(reopened, "acme", ["ann"]) == {
        "events": 1,
        "sends": 1,
        "memberships": 1,
        "profile_tags": 1,
    }
    assert set(erase_profiles(reopened, "other", ["bob"]).values()) == {0}  # another workspace's: untouched
    for table in TABLES:
        rows = reopened.execute(f"SELECT profile_id FROM {table}").fetchall() if table != "costs" else []
        assert ("ann",) not in rows
    assert reopened.execute("SELECT count(*) FROM events").fetchone() == (1,)
