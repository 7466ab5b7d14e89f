"""The table target on a SQLite file and on a real PostgreSQL (the `database_url` fixture runs each
test on both): idempotent events, memberships entered and exited, traits upserted, an erasure
deleting the person everywhere, refused rows and a database that is down."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import BEHIND_A_FAILURE, DELIVERED, Delivery, Outcome
from onefold.destinations.adapters.targets.table import TableTarget
from onefold.platform.database import normalise_url
from onefold.platform.ports import free_port

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_numbers = iter(range(1, 1_000_000))


def make(kind: str, profile_id: str = "p-1", name: str = "", data: dict[str, Any] | None = None) -> Delivery:
    number = next(_numbers)
    return Delivery(
        delivery_id=f"d-{number:06d}",
        workspace="acme",
        destination="erp",
        profile_id=profile_id,
        kind=kind,
        name=name,
        occurred_at=AT + timedelta(minutes=number),
        position=number,
        data=data or {},
    )


def rows(url: str, table: str, order_by: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as connection:
            result = connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order_by}"))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


def moment(value: datetime | str) -> datetime:
    """A time read back: SQLite's is text in UTC without its zone; PostgreSQL's is aware."""
    read = datetime.fromisoformat(value) if isinstance(value, str) else value
    return read if read.tzinfo else read.replace(tzinfo=UTC)


def target(url: str) -> TableTarget:
    return TableTarget(pb.SqlTable(url_env="ERP_DATABASE_URL", table="crm"), {"ERP_DATABASE_URL": url})


async def test_events_are_inserted_once_however_often_delivered(database_url: str) -> None:
    table = target(database_url)
    batch = [
        make("event", "p-1", "Order Completed", {"total": 42, "items": ["a", "b"]}),
        make("event", "p-2", "Signed Up", {"plan": "pro"}),
    ]
    assert await table.deliver(batch) == [DELIVERED, DELIVERED]
    assert await table.deliver(batch) == [DELIVERED, DELIVERED]
    await table.aclose()
    events = rows(database_url, "crm_events", "delivery_id")
    assert [(row["delivery_id"], row["profile_id"], row["name"]) for row in events] == [
        (batch[0].delivery_id, "p-1", "Order Completed"),
        (batch[1].delivery_id, "p-2", "Signed Up"),
    ]
    assert json.loads(events[0]["data"]) == {"total": 42, "items": ["a", "b"]}
    assert moment(events[0]["occurred_at"]) == batch[0].occurred_at


async def test_memberships_are_upserted_on_entry_and_deleted_on_exit(database_url: str) -> None:
    table = target(database_url)
    batch = [
        make("segment_entered", "p-1", "vip"),
        make("segment_entered", "p-2", "vip"),
        make("segment_entered", "p-1", "churn-risk"),
        make("segment_exited", "p-1", "churn-risk"),
        make("segment_exited", "p-2", "vip"),
        make("segment_entered", "p-2", "vip"),  # re-entered in the same batch: kept
        make("segment_exited", "p-3", "vip"),  # never entered: nothing to delete
    ]
    assert await table.deliver(batch) == [DELIVERED] * len(batch)
    assert await table.deliver(batch[:1]) == [DELIVERED]  # a redelivered entry
    await table.aclose()
    memberships = rows(database_url, "crm_memberships", "profile_id, segment")
    assert [(row["profile_id"], row["segment"]) for row in memberships] == [("p-1", "vip"), ("p-2", "vip")]
    assert moment(memberships[1]["entered_at"]) == batch[5].occurred_at


async def test_traits_are_upserted_one_row_per_trait(database_url: str) -> None:
    table = target(database_url)
    first = make("traits", "p-1", data={"plan": "free", "seats": 3})
    second = make("traits", "p-1", data={"plan": "pro"})
    other = make("traits", "p-2", data={"address": {"city": "Lyon"}})
    assert await table.deliver([first, second, other]) == [DELIVERED] * 3
    third = make("traits", "p-1", data={"seats": None})
    assert await table.deliver([third]) == [DELIVERED]
    await table.aclose()
    traits = rows(database_url, "crm_traits", "profile_id, trait")
    assert [(row["profile_id"], row["trait"], json.loads(row["value"])) for row in traits] == [
        ("p-1", "plan", "pro"),
        ("p-1", "seats", None),
        ("p-2", "address", {"city": "Lyon"}),
    ]
    assert moment(traits[0]["updated_at"]) == second.occurred_at


async def test_a_deletion_removes_the_person_from_every_table_in_order(database_url: str) -> None:
    table = target(database_url)
    batch = [
        make("event", "p-1", "Order Completed", {"total": 1}),
        make("event", "p-2", "Order Completed", {"total": 2}),
        make("segment_entered", "p-1", "vip"),
        make("segment_entered", "p-2", "vip"),
        make("traits", "p-1", data={"plan": "pro"}),
        make("traits", "p-2", data={"plan": "free"}),
        make("deletion", "p-1"),
        make("event", "p-1", "Came Back", {}),  # after the erasure, in the same batch: kept
    ]
    assert await table.deliver(batch) == [DELIVERED] * len(batch)
    await table.aclose()
    assert [(r["profile_id"], r["name"]) for r in rows(database_url, "crm_events", "delivery_id")] == [
        ("p-2", "Order Completed"),
        ("p-1", "Came Back"),
    ]
    assert [r["profile_id"] for r in rows(database_url, "crm_memberships", "profile_id")] == ["p-2"]
    assert [r["profile_id"] for r in rows(database_url, "crm_traits", "profile_id")] == ["p-2"]


async def test_a_refused_row_holds_back_only_its_person(database_url: str) -> None:
    table = target(database_url)
    too_long_segment = "s" * 500  # longer than the column: PostgreSQL refuses it (a DataError)
    bad_kind = make("no-such-kind", "p-bad")
    batch = [
        make("event", "p-ok", "A", {}),
        make("event", "p-bad", "B", {}),
        bad_kind if "sqlite" in database_url else make("segment_entered", "p-bad", too_long_segment),
        make("event", "p-bad", "C", {}),
        make("event", "p-ok", "D", {}),
    ]
    results = await table.deliver(batch)
    await table.aclose()
    assert results[:2] == [DELIVERED, DELIVERED]
    assert results[2].outcome is Outcome.REJECTED
    assert too_long_segment not in results[2].error
    assert results[3:] == [BEHIND_A_FAILURE, DELIVERED]
    assert [r["name"] for r in rows(database_url, "crm_events", "delivery_id")] == ["A", "B", "D"]


async def test_a_database_that_is_down_retries_the_whole_batch_without_its_url() -> None:
    url = f"postgresql://erp:s3cret-pw@127.0.0.1:{free_port()}/erp"
    table = target(url)
    results = await table.deliver([make("event", "p-1", "A", {}), make("traits", "p-2", data={"a": 1})])
    await table.aclose()
    assert [result.outcome for result in results] == [Outcome.RETRY, Outcome.RETRY]
    assert results[0].error.startswith("OperationalError")
    assert "s3cret-pw" not in results[0].error


def test_a_missing_url_is_a_clear_error_that_never_shows_a_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set ERP_DATABASE_URL"):
        TableTarget(pb.SqlTable(url_env="ERP_DATABASE_URL", table="crm"), {})
    with pytest.raises(ValueError, match="url_env"):
        TableTarget(pb.SqlTable(table="crm"), {})
    with pytest.raises(ValueError, match="table"):
        TableTarget(pb.SqlTable(url=f"sqlite:///{tmp_path / 'x.db'}", table="Robert'); DROP"), {})
    with pytest.raises(ValueError) as malformed:
        TableTarget(
            pb.SqlTable(url_env="U", table="crm"), {"U": "postgresql://erp:s3cret-pw@host:notaport/x"}
        )
    assert "s3cret-pw" not in str(malformed.value)
    with pytest.raises(ValueError) as unsupported:
        TableTarget(pb.SqlTable(url_env="U", table="crm"), {"U": "mysql://erp:s3cret-pw@host/x"})
    assert "s3cret-pw" not in str(unsupported.value)
