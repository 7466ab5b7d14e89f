"""Files written incrementally with pyarrow, to a local directory or S3 (an s3:// URI, with an
S3-compatible endpoint when given): each delivered batch becomes part files under
`<directory>/<destination>/<kind>/` (events, memberships, traits), named by their first and last
position (`part-<first:012d>-<last:012d>.csv|parquet`, at most batch_size rows each), with the
columns id, profile_id, type, name, occurred_at and data (JSON text).

A part is written under a hidden temporary name and then moved into place, so a reader never sees
half a part and a batch delivered again replaces its parts instead of adding rows. A deletion (an
erasure) rewrites every part of the destination holding the person without their rows, and
removes a part left empty. Deliveries after a deletion in the same batch are written after it.

A batch is delivered whole or retried whole; the error is the kind of I/O failure, never a row.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import posixpath
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# pyarrow ships no type information: its objects are Any here.
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
import pyarrow.fs as pa_fs  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import DELIVERED, Delivery, Result

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 100_000
DIRECTORY_OF_KIND = {
    "event": "events",
    "segment_entered": "memberships",
    "segment_exited": "memberships",
    "traits": "traits",
}
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("profile_id", pa.string()),
        ("type", pa.string()),
        ("name", pa.string()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("data", pa.string()),
    ]
)
PART_SUFFIXES = (".csv", ".parquet")
AWS_ERROR = re.compile(r"AWS Error [A-Z_]+")


def filesystem(directory: str, endpoint: str, environ: Mapping[str, str]) -> tuple[pa_fs.FileSystem, str]:
    """The file system of a Files destination's directory and the path within it. For s3://, the
    credentials and region come from `environ` (the service's environment) when set there, and
    otherwise from the AWS SDK's own chain (a role of the machine or the pod)."""
    if not directory.startswith("s3://"):
        return pa_fs.LocalFileSystem(), Path(directory).resolve().as_posix()
    location = urlsplit(directory)
    options: dict[str, Any] = {}
    if endpoint:
        endpoint_parts = urlsplit(endpoint)
        options["endpoint_override"] = endpoint_parts.netloc or endpoint
        options["scheme"] = endpoint_parts.scheme or "https"
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        options["access_key"] = environ["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = environ["AWS_SECRET_ACCESS_KEY"]
        options["session_token"] = environ.get("AWS_SESSION_TOKEN") or None
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    elif not endpoint:
        # AWS itself answers only in the bucket's own region.
        options["region"] = pa_fs.resolve_s3_region(location.netloc)
    return pa_fs.S3FileSystem(**options), (location.netloc + location.path).rstrip("/")


class FilesTarget:
    kind = "files"

    def __init__(self, config: pb.Files, destination: str, environ: Mapping[str, str]) -> None:
        if not config.directory:
            raise ValueError("a files destination needs a directory (a local path or an s3:// URI)")
        self._config = config
        self._destination = destination
        self._environ = environ
        # Opened by the first delivery, in its worker thread: for s3:// that may ask the network.
        self._opened: tuple[pa_fs.FileSystem, str] | None = None
        self._parquet = config.format == pb.FILE_FORMAT_PARQUET
        self._rows_per_part = min(max(config.batch_size or DEFAULT_BATCH_SIZE, 1), MAX_BATCH_SIZE)

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        known = [d for d in deliveries if d.kind in DIRECTORY_OF_KIND or d.kind == "deletion"]
        if known:
            try:
                await asyncio.to_thread(self._deliver, known)
            except (OSError, pa.ArrowException) as exc:
                return [Result.retry(_describe(exc))] * len(deliveries)
        unknown = Result.rejected("unknown delivery kind")
        return [
            DELIVERED if d.kind in DIRECTORY_OF_KIND or d.kind == "deletion" else unknown for d in deliveries
        ]

    async def aclose(self) -> None:
        return None

    # ------------------------------------------------------------------------------- writing

    def _deliver(self, deliveries: Sequence[Delivery]) -> None:
        # Runs split at deletions: what came before an erasure is written, then erased with it.
        for is_deletion, run in itertools.groupby(deliveries, key=lambda d: d.kind == "deletion"):
            batch = list(run)
            if is_deletion:
                self._erase({delivery.profile_id for delivery in batch})
            else:
                self._write_parts(batch)

    def _write_parts(self, deliveries: list[Delivery]) -> None:
        by_directory: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_directory.setdefault(DIRECTORY_OF_KIND[delivery.kind], []).append(delivery)
        for directory, rows in by_directory.items():
            for start in range(0, len(rows), self._rows_per_part):
                part = rows[start : start + self._rows_per_part]
                name = f"part-{part[0].position:012d}-{part[-1].position:012d}{self._suffix}"
                self._write(posixpath.join(self._root, directory, name), _table(part))

    def _erase(self, persons: set[str]) -> None:
        """Rewrite every part holding one of `persons` without their rows (remove it if emptied)."""
        selector = pa_fs.FileSelector(self._root, recursive=True, allow_not_found=True)
        for info in self._fs.get_file_info(selector):
            if info.type != pa_fs.FileType.File or not _is_part(info.base_name):
                continue
            table = self._read(info.path)
            kept = table.filter(pc.invert(pc.is_in(table["profile_id"], pa.array(persons))))
            if kept.num_rows == table.num_rows:
                continue
            if kept.num_rows == 0:
                self._fs.delete_file(info.path)
            else:
                self._write(info.path, kept)

    def _open(self) -> tuple[pa_fs.FileSystem, str]:
        if self._opened is None:
            fs, base = filesystem(self._config.directory, self._config.endpoint, self._environ)
            self._opened = fs, posixpath.join(base, self._destination)
        return self._opened

    @property
    def _fs(self) -> pa_fs.FileSystem:
        return self._open()[0]

    @property
    def _root(self) -> str:
        return self._open()[1]

    @property
    def _suffix(self) -> str:
        return ".parquet" if self._parquet else ".csv"

    def _write(self, path: str, table: pa.Table) -> None:
        directory, name = posixpath.split(path)
        if isinstance(self._fs, pa_fs.LocalFileSystem):
            self._fs.create_dir(directory, recursive=True)
        # Hidden while written (readers skip names starting with "."), then moved over the part.
        temporary = posixpath.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        with self._fs.open_output_stream(temporary) as stream:
            if path.endswith(".parquet"):
                pq.write_table(table, stream)
            else:
                pa_csv.write_csv(table, stream)
        self._fs.move(temporary, path)

    def _read(self, path: str) -> pa.Table:
        if path.endswith(".parquet"):
            return pq.read_table(path, filesystem=self._fs, schema=SCHEMA)
        with self._fs.open_input_stream(path) as stream:
            return pa_csv.read_csv(
                stream,
                convert_options=pa_csv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=False),
            ).select(SCHEMA.names)


def _table(deliveries: list[Delivery]) -> pa.Table:
    return pa.table(
        {
            "id": [delivery.delivery_id for delivery in deliveries],
            "profile_id": [delivery.profile_id for delivery in deliveries],
            "type": [delivery.kind for delivery in deliveries],
            "name": [delivery.name for delivery in deliveries],
            "occurred_at": [delivery.occurred_at for delivery in deliveries],
            "data": [
                json.dumps(delivery.data, ensure_ascii=False, sort_keys=True) for delivery in deliveries
            ],
        },
        schema=SCHEMA,
    )


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(PART_SUFFIXES)


def _describe(error: Exception) -> str:
    """The kind of failure with the OS's reason ("No space left on device") or the store's error
    code ("AWS Error NO_SUCH_BUCKET"), never a path, a bucket or a row."""
    # pyarrow's own message quotes the path and the bucket: only its errno or AWS error code is kept.
    errno = getattr(error, "errno", None)
    if isinstance(errno, int):
        return f"{type(error).__name__}: {os.strerror(errno)}"
    aws_code = AWS_ERROR.search(str(error))
    return f"{type(error).__name__}: {aws_code.group(0)}" if aws_code else type(error).__name__
