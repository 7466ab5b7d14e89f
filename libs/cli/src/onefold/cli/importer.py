"""`onefold import FILE --source ID`: bulk import of CSV / NDJSON identify and track records.

Each record becomes a TrackingEvent sent with the gRPC Batch call (a few batches in flight, answers
taken in file order); the service validates, dedupes and quarantines. The client only turns lines
into events and reports lines it cannot turn into one (unparseable CSV/JSON, wrong JSON types).

Idempotent: an event without its own messageId gets a deterministic one, a hash of the file's
SHA-256 and the line number, so sending the same line again is a duplicate the service drops.
Resumable: after every acknowledged batch, a state file in <data-dir>/imports/ records the file's
SHA-256 and the last line whose fate is known; a re-run continues after it (`--restart` re-sends
everything, which the service then answers as duplicates).

Exit status: 0 when every row was accepted or a duplicate, 1 when any was quarantined or rejected
(after the full report), 2 for usage, configuration and connection errors (see `import_file`).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from onefold.cli.ingest_client import (
    CliError,
    Connection,
    DataDir,
    Target,
    Token,
    connect,
    describe_rpc_error,
    fail,
    ingest_stub,
    run_async,
)
from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc

console = Console()
err_console = Console(stderr=True)

# Deterministic message ids of imported lines live in their own UUID namespace.
IMPORT_NAMESPACE = uuid.UUID("0e7a1c55-3b0f-5d8e-9c1a-6f2d4b8e0a01")
MAX_BATCH_BYTES = 400 * 1024  # below the service's 500 KB per batch, leaving room for framing
MAX_BATCH_EVENTS = 2500
IN_FLIGHT = 3  # batches awaiting an answer at once
RETRY_SECONDS = 60.0  # how long an unavailable or rate-limited service is retried
MAX_SAFE_INTEGER = 2**53
STATE_VERSION = 1
REPORT_PRINT_LIMIT = 50
EXIT_NOT_ALL_IMPORTED = 1  # some rows quarantined or rejected; 2 (usage, config, connection) is fail()'s

TYPES = {
    "track": pb.EVENT_TYPE_TRACK,
    "identify": pb.EVENT_TYPE_IDENTIFY,
    "page": pb.EVENT_TYPE_PAGE,
    "screen": pb.EVENT_TYPE_SCREEN,
    "group": pb.EVENT_TYPE_GROUP,
    "alias": pb.EVENT_TYPE_ALIAS,
}
STRING_FIELDS = {
    "messageId": "message_id",
    "anonymousId": "anonymous_id",
    "userId": "user_id",
    "previousId": "previous_id",
    "groupId": "group_id",
    "event": "event",
    "name": "name",
    "category": "category",
}
ID_FIELDS = {"anonymousId", "userId", "previousId", "groupId"}  # numbers are accepted and stringified
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
TIME_FIELDS = {"timestamp": "timestamp", "originalTimestamp": "original_timestamp", "sentAt": "sent_at"}
SERVER_FIELDS = {"receivedAt", "writeKey"}  # the server's to set; dropped
# CSV headers that name top-level fields, matched ignoring case, '_' and '-'.
CSV_TOP_LEVEL = {key.lower(): key for key in (*STRING_FIELDS, *TIME_FIELDS, "type")}


class Format(StrEnum):
    csv = "csv"
    ndjson = "ndjson"


class CallType(StrEnum):
    identify = "identify"
    track = "track"


class BadRecord(Exception):
    """A line that cannot become an event; reported with its line number, never fatal."""


# --- reading -------------------------------------------------------------------------------------


@dataclass
class Record:
    line: int
    document: dict[str, Any] | None = None
    error: str | None = None


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 of the file and its number of lines."""
    digest = hashlib.sha256()
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return digest.hexdigest(), lines + (0 if last == b"\n" else 1)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def read_ndjson(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Record(number, error="the line is not valid UTF-8")
                continue
            try:
                document = json.loads(text, parse_constant=_reject_constant)
            except ValueError as error:
                yield Record(number, error=f"not valid JSON: {str(error).split(':')[0]}")
                continue
            if not isinstance(document, dict):
                yield Record(number, error=f"a line must hold a JSON object, not {type(document).__name__}")
                continue
            yield Record(number, document=document)


def _set_path(target: dict[str, Any], dotted: str, value: str) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _csv_header_key(column: str) -> str:
    return column.strip().lower().replace("_", "").replace("-", "")


def read_csv(path: Path, default_type: CallType | None) -> Iterator[Record]:
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield Record(start, error=f"not valid CSV: {error}")
                continue
            if header is None:
                header = [column.strip() for column in row]
                if not any(header):
                    raise CliError(f"{path}: the first line must be a header row naming the columns")
                continue
            if not row or row == [""]:
                continue
            if any(_has_surrogate(cell) for cell in row):
                yield Record(start, error="the line is not valid UTF-8")
                continue
            if len(row) != len(header):
                yield Record(start, error=f"has {len(row)} fields; the header has {len(header)}")
                continue
            yield Record(start, document=csv_row_document(header, row, default_type))


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def csv_row_document(header: list[str], row: list[str], default_type: CallType | None) -> dict[str, Any]:
    top: dict[str, Any] = {}
    nested: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    for column, value in zip(header, row, strict=True):
        if value == "" or not column:
            continue  # an empty cell is an absent field
        key = CSV_TOP_LEVEL.get(_csv_header_key(column))
        if key is not None:
            top[key] = value.strip()
        elif column.split(".", 1)[0] in OBJECT_FIELDS and "." in column:
            nested.append((column, value))
        else:
            rest.append((column, value))
    call = str(
        top.get("type")
        or (default_type.value if default_type else ("track" if "event" in top else "identify"))
    ).lower()
    top["type"] = call
    document: dict[str, Any] = dict(top)
    for column, value in nested:
        _set_path(document, column, value)
    bucket = "properties" if call == "track" else "traits"
    for column, value in rest:
        document.setdefault(bucket, {})[column] = value
    return document


# --- documents -> TrackingEvents -----------------------------------------------------------------


def _check_numbers(value: Any, at: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
        raise BadRecord(f"{at} is an integer beyond 2^53, which loses precision; send it as a string")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRecord(f"{at} must be a finite number")
    if isinstance(value, dict):
        for key, inner in value.items():
            _check_numbers(inner, f"{at}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _check_numbers(inner, f"{at}[{i}]")


def _timestamp(text: Any, key: str) -> timestamp_pb2.Timestamp:
    if not isinstance(text, str):
        raise BadRecord(f"{key} must be an ISO-8601 date-time string")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRecord(f"{key} is not an ISO-8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a bare date-time in a file is taken as UTC
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def to_event(document: dict[str, Any], default_type: CallType | None, message_id: str) -> pb.TrackingEvent:
    """One Segment call (as JSON) as a TrackingEvent; the service does every semantic check."""
    event = pb.TrackingEvent()
    call = document.get("type") or (default_type.value if default_type else None)
    if call is None:
        call = "track" if "event" in document else "identify" if "traits" in document else None
    if call is None:
        raise BadRecord("the call type is unknown: give a type field or --type")
    if not isinstance(call, str) or call.lower() not in TYPES:
        raise BadRecord(f"type must be one of {', '.join(TYPES)}")
    event.type = TYPES[call.lower()]
    extra: dict[str, Any] = {}
    for key, value in document.items():
        if key == "type" or key in SERVER_FIELDS or value is None:
            continue
        if key in STRING_FIELDS:
            if key in ID_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
                value = str(int(value)) if float(value).is_integer() else str(value)
            if not isinstance(value, str):
                raise BadRecord(f"{key} must be a string")
            setattr(event, STRING_FIELDS[key], value)
        elif key in OBJECT_FIELDS:
            if not isinstance(value, dict):
                raise BadRecord(f"{key} must be a JSON object")
            _check_numbers(value, key)
            getattr(event, key).update(value)
        elif key in TIME_FIELDS:
            getattr(event, TIME_FIELDS[key]).CopyFrom(_timestamp(value, key))
        else:
            _check_numbers(value, key)
            extra[key] = value
    if extra:
        event.extra.update(extra)
    if not event.message_id:
        event.message_id = message_id
    return event


def default_message_id(file_sha: str, line: int) -> str:
    return str(uuid.uuid5(IMPORT_NAMESPACE, f"{file_sha}:{line}"))


# --- state and report ----------------------------------------------------------------------------


@dataclass
class ImportState:
    file: str
    sha256: str
    source_id: str
    lines: int
    last_line: int = 0
    complete: bool = False
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    rejected: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportState:
        data = {k: v for k, v in data.items() if k != "version"}
        return cls(**data)

    def report(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "source_id": self.source_id,
            "lines": self.lines,
            "complete": self.complete,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "rejected": self.rejected,
            "problems": sorted(self.problems, key=lambda p: p["line"]),
        }


def state_path(data_dir: Path, sha256: str, source_id: str) -> Path:
    return data_dir / "imports" / f"{sha256[:32]}-{source_id}.json"


def load_state(path: Path) -> ImportState | None:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != STATE_VERSION:
            return None
        return ImportState.from_json(data)
    except (OSError, ValueError, TypeError):
        return None


def save_state(path: Path, state: ImportState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("w") as f:
        json.dump(state.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(path)


STATUS = {
    pb.ACK_STATUS_ACCEPTED: "accepted",
    pb.ACK_STATUS_DUPLICATE: "duplicate",
    pb.ACK_STATUS_QUARANTINED: "quarantined",
}


def kind_name(kind: int) -> str:
    try:
        return pb.FailureKind.Name(kind).removeprefix("FAILURE_KIND_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(kind)


# --- sending -------------------------------------------------------------------------------------


def _rejected(line: int, reason: str) -> dict[str, Any]:
    return {
        "line": line,
        "status": "rejected",
        "kind": "bad_line",
        "reasons": [{"path": "", "message": reason, "rule": "parse"}],
        "message_id": "",
        "quarantine_id": "",
    }


@dataclass
class Chunk:
    events: list[pb.TrackingEvent] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    end_line: int = 0
    size: int = 0


def chunks(
    records: Iterator[Record], *, sha: str, default_type: CallType | None, after: int, batch: int
) -> Iterator[Chunk]:
    current = Chunk(end_line=after)
    for record in records:
        if record.line <= after:
            continue
        event: pb.TrackingEvent | None = None
        if record.error is None and record.document is not None:
            try:
                event = to_event(record.document, default_type, default_message_id(sha, record.line))
            except BadRecord as error:
                record.error = str(error)
        if event is None:
            current.rejects.append(_rejected(record.line, record.error or "empty record"))
            current.end_line = record.line
            continue
        size = event.ByteSize() + 8
        if current.events and (len(current.events) >= batch or current.size + size > MAX_BATCH_BYTES):
            yield current
            current = Chunk(end_line=current.end_line)
        current.events.append(event)
        current.lines.append(record.line)
        current.size += size
        current.end_line = record.line
    if current.events or current.rejects or current.end_line > after:
        yield current


async def send_batch(
    stub: ingest_pb2_grpc.IngestServiceStub,
    source_id: str,
    chunk: Chunk,
    on_wait: Callable[[str], None] = lambda _: None,
) -> pb.BatchResponse:
    """Batch, retried while the service is unavailable or rate-limits (deterministic message ids make
    a retry after an unanswered call safe: the service answers duplicates)."""
    request = pb.BatchRequest(events=chunk.events, source_id=source_id)
    waited = 0.0
    delay = 0.2
    while True:
        try:
            response: pb.BatchResponse = await stub.Batch(request, timeout=60)
            if waited:
                on_wait("importing")
            return response
        except grpc.aio.AioRpcError as error:
            retryable = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
            if not retryable or waited + delay > RETRY_SECONDS:
                raise
            limited = error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            on_wait(
                "importing (rate-limited by the source)" if limited else "importing (service unavailable)"
            )
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)


def record_answer(state: ImportState, chunk: Chunk, response: pb.BatchResponse) -> None:
    state.problems.extend(chunk.rejects)
    state.rejected += len(chunk.rejects)
    for position, answer in enumerate(response.results):
        line = chunk.lines[answer.index if answer.index < len(chunk.lines) else position]
        status = STATUS.get(answer.status, "unknown")
        if answer.status == pb.ACK_STATUS_ACCEPTED:
            state.accepted += 1
        elif answer.status == pb.ACK_STATUS_DUPLICATE:
            state.duplicates += 1
        else:
            state.quarantined += 1
        if answer.status == pb.ACK_STATUS_QUARANTINED or answer.reasons:
            state.problems.append(
                {
                    "line": line,
                    "status": status if answer.status != pb.ACK_STATUS_ACCEPTED else "flagged",
                    "kind": kind_name(answer.kind) if answer.kind else "",
                    "reasons": [
                        {"path": r.path, "message": r.message, "rule": r.rule} for r in answer.reasons
                    ],
                    "message_id": answer.message_id,
                    "quarantine_id": answer.quarantine_id,
                }
            )
    state.last_line = max(state.last_line, chunk.end_line)


async def run_import(
    conn: Connection,
    records: Iterator[Record],
    state: ImportState,
    state_file: Path,
    *,
    default_type: CallType | None,
    batch: int,
    stop_after: int | None,
    progress: Progress,
) -> None:
    task = progress.add_task("importing", total=max(state.lines, 1), completed=state.last_line)
    pending: list[tuple[Chunk, asyncio.Future[pb.BatchResponse]]] = []

    def describe(text: str) -> None:
        progress.update(task, description=text)

    async with ingest_stub(conn) as stub:

        async def settle_oldest() -> None:
            chunk, call = pending.pop(0)
            try:
                response = await call
            except BaseException:
                for _, other in pending:
                    other.cancel()
                raise
            record_answer(state, chunk, response)
            save_state(state_file, state)
            progress.update(task, completed=state.last_line)
            if stop_after is not None and state.accepted + state.duplicates + state.quarantined >= stop_after:
                progress.stop()
                err_console.print(f"stopping after line {state.last_line} (--stop-after)")
                os._exit(3)  # as abrupt as a crash: the state file is all that is left

        for chunk in chunks(
            records, sha=state.sha256, default_type=default_type, after=state.last_line, batch=batch
        ):
            if not chunk.events:
                pending.append((chunk, asyncio.ensure_future(_empty())))
            else:
                pending.append(
                    (chunk, asyncio.ensure_future(send_batch(stub, state.source_id, chunk, describe)))
                )
            if len(pending) >= IN_FLIGHT:
                await settle_oldest()
        while pending:
            await settle_oldest()
    state.complete = True
    state.last_line = state.lines
    save_state(state_file, state)
    progress.update(task, completed=state.lines)


async def _empty() -> pb.BatchResponse:
    return pb.BatchResponse()


def print_report(state: ImportState, *, resumed_from: int) -> None:
    table = Table(title=f"import of {state.file} into {state.source_id}", show_header=True)
    for column in ("accepted", "duplicates", "quarantined", "rejected (bad lines)"):
        table.add_column(column, justify="right")
    table.add_row(str(state.accepted), str(state.duplicates), str(state.quarantined), str(state.rejected))
    console.print(table)
    if resumed_from:
        console.print(f"(resumed after line {resumed_from}; counts cover the whole file)", highlight=False)
    problems = sorted(state.problems, key=lambda p: p["line"])
    if not problems:
        return
    rows = Table(show_header=True, title="rows not simply accepted")
    for column in ("line", "status", "kind", "reasons"):
        rows.add_column(column)
    for problem in problems[:REPORT_PRINT_LIMIT]:
        reasons = "; ".join(
            f"{r['path']}: {r['message']}" if r.get("path") else r["message"] for r in problem["reasons"]
        )
        rows.add_row(str(problem["line"]), problem["status"], problem["kind"], reasons)
    console.print(rows)
    if len(problems) > REPORT_PRINT_LIMIT:
        console.print(f"… and {len(problems) - REPORT_PRINT_LIMIT} more (see --report)", highlight=False)


def import_file(
    file: Annotated[
        Path, typer.Argument(help="a CSV (with a header row) or NDJSON file", exists=True, dir_okay=False)
    ],
    source: Annotated[str, typer.Option("--source", "-s", help="the source id (src_…) to import into")],
    fmt: Annotated[
        Format | None, typer.Option("--format", help="csv or ndjson (default: from the file name)")
    ] = None,
    call_type: Annotated[
        CallType | None,
        typer.Option(
            "--type", help="the call type of records that do not say (default: track if they name an event)"
        ),
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=MAX_BATCH_EVENTS, help="events per Batch call")
    ] = 500,
    report: Annotated[
        Path | None, typer.Option("--report", help="also write the report as JSON here")
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="ignore the saved progress; send every line again")
    ] = False,
    stop_after: Annotated[int | None, typer.Option("--stop-after", hidden=True)] = None,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """Import identify/track records; resumable, and re-running imports nothing twice.

    Exit status (of the whole file, lines sent by earlier runs included):
    0: every row was accepted or was a duplicate;
    1: some rows were quarantined or rejected: the report lists them by line; re-running sends nothing twice;
    2: a usage, configuration, credential or connection error; re-run to resume after the last saved line.
    """
    conn = connect(data_dir, target, token)
    if fmt is None:
        suffix = file.suffix.lower()
        if suffix == ".csv":
            fmt = Format.csv
        elif suffix in (".ndjson", ".jsonl", ".json"):
            fmt = Format.ndjson
        else:
            raise fail(f"cannot tell the format of {file.name}; pass --format csv or --format ndjson")

    async def check_source() -> pb.Source:
        async with ingest_stub(conn) as stub:
            found: pb.Source = await stub.GetSource(pb.GetSourceRequest(source_id=source))
            return found

    if run_async(conn, check_source).disabled:
        raise fail(f"source {source} is disabled; it accepts no events")
    sha, lines = file_digest(file)
    state_file = state_path(data_dir.resolve(), sha, source)
    state = None if restart else load_state(state_file)
    if state is None:
        state = ImportState(file=str(file), sha256=sha, source_id=source, lines=lines)
    resumed_from = 0 if state.complete else state.last_line
    if state.complete:
        console.print(
            f"{file} (sha256 {sha[:12]}…) was already imported into {source}; nothing to send "
            "(--restart sends it again, answered as duplicates)",
            highlight=False,
        )
    else:
        if resumed_from:
            console.print(f"resuming {file} after line {resumed_from}", highlight=False)
        records = read_ndjson(file) if fmt is Format.ndjson else read_csv(file, call_type)
        progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("lines"),
            TimeRemainingColumn(),
            console=err_console,
        )
        try:
            with progress:
                asyncio.run(
                    run_import(
                        conn,
                        records,
                        state,
                        state_file,
                        default_type=call_type,
                        batch=batch,
                        stop_after=stop_after,
                        progress=progress,
                    )
                )
        except CliError as error:
            raise fail(error.message, error.code) from None
        except grpc.RpcError as error:
            done = f" (lines up to {state.last_line} are done; re-run to resume)" if state.last_line else ""
            raise fail(describe_rpc_error(error, conn.target).rstrip(".") + done + ".") from None
    print_report(state, resumed_from=resumed_from)
    if report is not None:
        report.write_text(json.dumps(state.report(), indent=2))
        console.print(f"report written to {report}", highlight=False)
    if state.quarantined or state.rejected:
        err_console.print(
            f"not every row was imported: {state.quarantined} quarantined, {state.rejected} rejected "
            "(bad lines); the report lists them by line",
            highlight=False,
        )
        raise typer.Exit(EXIT_NOT_ALL_IMPORTED)
