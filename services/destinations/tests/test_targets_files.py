"""The files target on this machine's disk, in CSV and Parquet: part files read back with pyarrow,
a batch delivered again replacing its parts, an erasure rewriting the parts holding the person."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import DELIVERED, Delivery, Outcome
from onefold.destinations.adapters.targets.files import SCHEMA, FilesTarget

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FORMATS = [("csv", pb.FILE_FORMAT_CSV), ("parquet", pb.FILE_FORMAT_PARQUET)]


def make(
    position: int, kind: str, profile_id: str, name: str = "", data: dict[str, Any] | None = None
) -> Delivery:
    return Delivery(
        delivery_id=f"d-{position:04d}",
        workspace="acme",
        destination="lake",
        profile_id=profile_id,
        kind=kind,
        name=name,
        occurred_at=AT + timedelta(minutes=position),
        position=position,
        data=data or {},
    )


def read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=SCHEMA))


def parts(root: Path) -> dict[str, list[str]]:
    """Each kind's part files (names), as a reader lists them."""
    return {
        kind.name: sorted(part.name for part in kind.iterdir() if not part.name.startswith("."))
        for kind in sorted((root / "lake").iterdir())
    }


def ids(root: Path, kind: str) -> list[str]:
    return [
        row_id
        for part in sorted((root / "lake" / kind).glob("part-*"))
        for row_id in read(part)["id"].to_pylist()
    ]


@pytest.mark.parametrize(("suffix", "file_format"), FORMATS)
async def test_each_kind_gets_a_part_named_by_positions_readable_with_pyarrow(
    tmp_path: Path, suffix: str, file_format: int
) -> None:
    target = FilesTarget(pb.Files(directory=str(tmp_path), format=file_format), "lake")  # type: ignore[arg-type]
    batch = [
        make(10, "event", "p-1", "Order Completed", {"total": 42, "note": "café"}),
        make(11, "segment_entered", "p-1", "vip"),
        make(12, "traits", "p-2", data={"plan": "pro"}),
        make(13, "event", "p-2", "Signed Up"),
        make(14, "segment_exited", "p-1", "vip"),
    ]
    assert await target.deliver(batch) == [DELIVERED] * 5
    await target.aclose()
    assert parts(tmp_path) == {
        "events": [f"part-000000000010-000000000013.{suffix}"],
        "memberships": [f"part-000000000011-000000000014.{suffix}"],
        "traits": [f"part-000000000012-000000000012.{suffix}"],
    }
    events = read(tmp_path / "lake" / "events" / f"part-000000000010-000000000013.{suffix}")
    assert events.column_names == ["id", "profile_id", "type", "name", "occurred_at", "data"]
    rows = events.to_pylist()
    assert [(r["id"], r["profile_id"], r["type"], r["name"]) for r in rows] == [
        ("d-0010", "p-1", "event", "Order Completed"),
        ("d-0013", "p-2", "event", "Signed Up"),
    ]
    assert rows[0]["occurred_at"] == AT + timedelta(minutes=10)
    assert json.loads(rows[0]["data"]) == {"total": 42, "note": "café"}
    memberships = read(
        tmp_path / "lake" / "memberships" / f"part-000000000011-000000000014.{suffix}"
    ).to_pylist()
    assert [(r["type"], r["name"]) for r in memberships] == [
        ("segment_entered", "vip"),
        ("segment_exited", "vip"),
    ]


@pytest.mark.parametrize(("suffix", "file_format"), FORMATS)
async def test_a_batch_delivered_again_replaces_its_part(
    tmp_path: Path, suffix: str, file_format: int
) -> None:
    target = FilesTarget(pb.Files(directory=str(tmp_path), format=file_format), "lake")  # type: ignore[arg-type]
    batch = [make(position, "event", f"p-{position % 2}", "Viewed") for position in range(1, 6)]
    assert await target.deliver(batch) == [DELIVERED] * 5
    assert await target.deliver(batch) == [DELIVERED] * 5
    assert await target.deliver([make(6, "event", "p-0", "Viewed")]) == [DELIVERED]
    assert parts(tmp_path) == {
        "events": [f"part-000000000001-000000000005.{suffix}", f"part-000000000006-000000000006.{suffix}"]
    }
    assert ids(tmp_path, "events") == ["d-0001", "d-0002", "d-0003", "d-0004", "d-0005", "d-0006"]


async def test_a_batch_larger_than_batch_size_is_split_into_parts(tmp_path: Path) -> None:
    target = FilesTarget(pb.Files(directory=str(tmp_path), batch_size=2), "lake")
    assert (
        await target.deliver([make(position, "event", "p-1", "Viewed") for position in range(1, 6)])
        == [DELIVERED] * 5
    )
    assert parts(tmp_path)["events"] == [
        "part-000000000001-000000000002.csv",
        "part-000000000003-000000000004.csv",
        "part-000000000005-000000000005.csv",
    ]


@pytest.mark.parametrize(("suffix", "file_format"), FORMATS)
async def test_a_deletion_rewrites_the_parts_holding_the_person(
    tmp_path: Path, suffix: str, file_format: int
) -> None:
    target = FilesTarget(pb.Files(directory=str(tmp_path), format=file_format), "lake")  # type: ignore[arg-type]
    other = FilesTarget(pb.Files(directory=str(tmp_path), format=file_format), "other-destination")  # type: ignore[arg-type]
    assert (
        await target.deliver([make(1, "event", "p-1", "A"), make(2, "event", "p-2", "B")]) == [DELIVERED] * 2
    )
    assert await target.deliver([make(3, "traits", "p-1", data={"plan": "pro"})]) == [DELIVERED]
    assert await other.deliver([make(4, "event", "p-1", "C")]) == [DELIVERED]
    batch = [
        make(5, "event", "p-1", "D"),
        make(6, "deletion", "p-1"),
        make(7, "event", "p-1", "After"),  # after the erasure: kept
    ]
    assert await target.deliver(batch) == [DELIVERED] * 3
    assert parts(tmp_path) == {
        "events": [f"part-000000000001-000000000002.{suffix}", f"part-000000000007-000000000007.{suffix}"],
        "traits": [],  # its only part held nothing else
    }
    assert ids(tmp_path, "events") == ["d-0002", "d-0007"]
    # Another destination's files are its own: its erasure comes as its own deletion.
    assert [p.name for p in (tmp_path / "other-destination" / "events").iterdir()] == [
        f"part-000000000004-000000000004.{suffix}"
    ]


async def test_a_directory_that_cannot_be_written_is_retried(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    target = FilesTarget(pb.Files(directory=str(blocker)), "lake")
    results = await target.deliver([make(1, "event", "p-1", "A", {"email": "ann@example.com"})])
    assert [result.outcome for result in results] == [Outcome.RETRY]
    assert "ann@example.com" not in results[0].error
    assert "not-a-directory" not in results[0].error
