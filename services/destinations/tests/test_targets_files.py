"""The files target in CSV and Parquet, on this machine's disk and in an S3-compatible bucket (a real
S3 server, moto's, on a free port): part files read back with pyarrow, a batch delivered again
replacing its parts, an erasure rewriting the parts holding the person, a place that cannot be
written retried with the reason and nothing of the path or the rows."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import DELIVERED, Delivery, Outcome
from onefold.destinations.adapters.targets.files import SCHEMA, FilesTarget

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FORMATS = [("csv", pb.FILE_FORMAT_CSV), ("parquet", pb.FILE_FORMAT_PARQUET)]
# The S3 server takes any credentials; they are given as the service's environment would give them.
S3_ENVIRON = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_REGION": "us-east-1",
}


@dataclass
class Place:
    """Where a files destination writes (`directory`, `endpoint`, `environ` as its definition and
    the service give them) and a reader's view of it (`fs`, `base`)."""

    directory: str
    fs: pa_fs.FileSystem
    base: str
    endpoint: str = ""
    environ: dict[str, str] = field(default_factory=dict)

    def target(self, destination: str = "lake", **config: Any) -> FilesTarget:
        files = pb.Files(directory=self.directory, endpoint=self.endpoint, **config)
        return FilesTarget(files, destination, self.environ)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "local":
        return Place(str(tmp_path), pa_fs.LocalFileSystem(), tmp_path.as_posix())
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lake-{request.node.name.replace('_', '-').replace('[', '-').replace(']', '')[-40:]}".lower()
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_ENVIRON["AWS_REGION"],
        aws_access_key_id=S3_ENVIRON["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENVIRON["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=bucket)
    reader = pa_fs.S3FileSystem(
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
        access_key=S3_ENVIRON["AWS_ACCESS_KEY_ID"],
        secret_key=S3_ENVIRON["AWS_SECRET_ACCESS_KEY"],
        region=S3_ENVIRON["AWS_REGION"],
    )
    return Place(f"s3://{bucket}/exports", reader, f"{bucket}/exports", endpoint, dict(S3_ENVIRON))


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


def read(place: Place, path: str) -> pa.Table:
    if path.endswith(".parquet"):
        return pq.read_table(path, filesystem=place.fs)
    with place.fs.open_input_stream(path) as stream:
        return pa_csv.read_csv(stream, convert_options=pa_csv.ConvertOptions(column_types=SCHEMA))


def listing(place: Place, *directories: str) -> list[pa_fs.FileInfo]:
    selector = pa_fs.FileSelector(posixpath.join(place.base, *directories), allow_not_found=True)
    return sorted(place.fs.get_file_info(selector), key=lambda info: info.path)


def parts(place: Place, destination: str = "lake") -> dict[str, list[str]]:
    """Each kind's part files (names), as a reader lists them."""
    return {
        kind.base_name: [
            info.base_name
            for info in listing(place, destination, kind.base_name)
            if info.type == pa_fs.FileType.File and not info.base_name.startswith(".")
        ]
        for kind in listing(place, destination)
        if kind.type == pa_fs.FileType.Directory
    }


def ids(place: Place, kind: str) -> list[str]:
    return [
        row_id
        for name in parts(place)[kind]
        for row_id in read(place, posixpath.join(place.base, "lake", kind, name))["id"].to_pylist()
    ]


@pytest.mark.parametrize(("suffix", "file_format"), FORMATS)
async def test_each_kind_gets_a_part_named_by_positions_readable_with_pyarrow(
    place: Place, suffix: str, file_format: int
) -> None:
    target = place.target(format=file_format)
    batch = [
        make(10, "event", "p-1", "Order Completed", {"total": 42, "note": "café"}),
        make(11, "segment_entered", "p-1", "vip"),
        make(12, "traits", "p-2", data={"plan": "pro"}),
        make(13, "event", "p-2", "Signed Up"),
        make(14, "segment_exited", "p-1", "vip"),
    ]
    assert await target.deliver(batch) == [DELIVERED] * 5
    await target.aclose()
    assert parts(place) == {
        "events": [f"part-000000000010-000000000013.{suffix}"],
        "memberships": [f"part-000000000011-000000000014.{suffix}"],
        "traits": [f"part-000000000012-000000000012.{suffix}"],
    }
    events = read(place, f"{place.base}/lake/events/part-000000000010-000000000013.{suffix}")
    assert events.column_names == ["id", "profile_id", "type", "name", "occurred_at", "data"]
    rows = events.to_pylist()
    assert [(r["id"], r["profile_id"], r["type"], r["name"]) for r in rows] == [
        ("d-0010", "p-1", "event", "Order Completed"),
        ("d-0013", "p-2", "event", "Signed Up"),
    ]
    assert rows[0]["occurred_at"] == AT + timedelta(minutes=10)
    assert json.loads(rows[0]["data"]) == {"total": 42, "note": "café"}
    memberships = read(place, f"{place.base}/lake/memberships/part-000000000011-000000000014.{suffix}")
    memberships = memberships.to_pylist()
    assert [(r["type"], r["name"]) for r in memberships] == [
        ("segment_entered", "vip"),
        ("segment_exited", "vip"),
    ]


@pytest.mark.parametrize(("suffix", "file_format"), FORMATS)
async def test_a_batch_delivered_again_replaces_its_part(place: Place, suffix: str, file_format: int) -> None:
    target = place.target(format=file_format)
    batch = [make(position, "event", f"p-{position % 2}", "Viewed") for position in range(1, 6)]
    assert await target.deliver(batch) == [DELIVERED] * 5
    assert await target.deliver(batch) == [DELIVERED] * 5
    assert await target.deliver([make(6, "event", "p-0", "Viewed")]) == [DELIVERED]
    assert parts(place) == {
        "events": [f"part-000000000001-000000000005.{suffix}", f"part-000000000006-000000000006.{suffix}"]
    }
    assert ids(place, "events") == ["d-0001", "d-0002", "d-0003", "d-0004", "d-0005", "d-0006"]


async def test_a_batch_larger_than_batch_size_is_split_into_parts(place: Place) -> None:
    target = place.target(batch_size=2)
    assert (
        await target.deliver([make(position, "event", "p-1", "Viewed") for position in range(1, 6)])
        == [DELIVERED] * 5
    )
    assert parts(place)["events"] == [
        "part-000000000001-000000000002.csv",
        "part-000000000003-000000000004.csv",
        "part-000000000005-000000000005.csv",
    ]


@pytest.mark.parametrize(("suffix", "file_format"), FORMATS)
async def test_a_deletion_rewrites_the_parts_holding_the_person(
    place: Place, suffix: str, file_format: int
) -> None:
    target = place.target(format=file_format)
    other = place.target("other-destination", format=file_format)
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
    # The traits' only part held nothing else (S3 has no empty directories to list).
    assert {kind: names for kind, names in parts(place).items() if names} == {
        "events": [f"part-000000000001-000000000002.{suffix}", f"part-000000000007-000000000007.{suffix}"],
    }
    assert ids(place, "events") == ["d-0002", "d-0007"]
    # Another destination's files are its own: its erasure comes as its own deletion.
    assert parts(place, "other-destination") == {"events": [f"part-000000000004-000000000004.{suffix}"]}


async def test_a_directory_that_cannot_be_written_is_retried(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    target = FilesTarget(pb.Files(directory=str(blocker)), "lake", {})
    results = await target.deliver([make(1, "event", "p-1", "A", {"email": "ann@example.com"})])
    assert [result.outcome for result in results] == [Outcome.RETRY]
    assert "ann@example.com" not in results[0].error
    assert "not-a-directory" not in results[0].error


async def test_a_bucket_that_does_not_exist_is_retried_with_the_stores_error_code(s3_endpoint: str) -> None:
    files = pb.Files(directory="s3://no-such-bucket-here/exports", endpoint=s3_endpoint)
    target = FilesTarget(files, "lake", S3_ENVIRON)
    results = await target.deliver([make(1, "event", "p-1", "A", {"email": "ann@example.com"})])
    assert [(result.outcome, result.error) for result in results] == [
        (Outcome.RETRY, "OSError: AWS Error NO_SUCH_BUCKET")
    ]
