"""A hand-made history for the analyses' tests: rows written straight into the analytical store, at
minutes (or days) after T0, a Monday, so each test states its facts and computes what to expect."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb

T0 = datetime(2026, 3, 2)  # a Monday: the first day of an ISO week
WORKSPACE = "acme"


def at(minutes: float = 0, *, days: float = 0) -> datetime:
    return T0 + timedelta(days=days, minutes=minutes)


class History:
    def __init__(self, connection: duckdb.DuckDBPyConnection, workspace: str = WORKSPACE) -> None:
        self.connection = connection
        self.workspace = workspace
        self.written = 0

    def event(self, profile: str, when: datetime, name: str, **columns: Any) -> str:
        """One event; its id sorts in the order events were written (ties in time keep that order)."""
        self.written += 1
        event_id = f"e{self.written:05d}"
        names = ["workspace", "event_id", "profile_id", "ts", "type", "event", *columns]
        self.connection.execute(
            f"INSERT INTO events ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [self.workspace, event_id, profile, when, "track", name, *columns.values()],
        )
        return event_id

    def send(
        self, profile: str, when: datetime, journey: str, *, control: bool = False, channel: str = "email"
    ) -> None:
        self.written += 1
        self.connection.execute(
            "INSERT INTO sends VALUES (?, ?, ?, ?, ?, 'send', ?, ?)",
            [self.workspace, f"m{self.written:05d}", profile, when, journey, channel, control],
        )

    def member(self, profile: str, segment: str, entered: datetime, exited: datetime | None = None) -> None:
        self.connection.execute(
            "INSERT INTO memberships VALUES (?, ?, ?, ?, ?)",
            [self.workspace, profile, segment, entered, exited],
        )

    def tag(self, profile: str, value: str, since: datetime, until: datetime | None = None) -> None:
        self.connection.execute(
            "INSERT INTO profile_tags VALUES (?, ?, 'lifecycle_stage', ?, ?, ?)",
            [self.workspace, profile, value, since, until],
        )

    def cost(self, campaign: str, start: datetime, end: datetime, amount: float) -> None:
        self.connection.execute(
            "INSERT INTO costs VALUES (?, ?, 'cpc', ?, ?, ?, 'USD')",
            [self.workspace, campaign, start, end, amount],
        )
