"""`onefold import FILE --source ID`: bulk import of CSV / NDJSON identify and track records (docs/import.md).

Each record becomes a TrackingEvent sent with the gRPC Batch call (a few batches in flight, answers
taken in file order); the service validates, dedupes and quarantines. The client turns lines into
events and reports lines it cannot turn into one (unparseable CSV/JSON, wrong JSON types). A CSV
file's columns are mapped to fields from the header alone (import_mapping.py), and a file with
columns the rules cannot place is refused before anything is sent.

Idempotent: an event without its own messageId gets a deterministic one, a hash of the file's
SHA-256, the line number and (for CSV) the mapping, so sending the same line again is a duplicate
the service drops, while the same file mapped differently is a different import.
Resumable: after every acknowledged batch, a state file in <data-dir>/imports/ records the file's
SHA-256 and the last line whose fate is known; a re-run continues after it (`--restart` re-sends
everything, which the service then answers as duplicates). The state file also keeps every run's
own counts, so a report says what this run did apart from the whole file's totals.

Exit status: 0 when every row was accepted or a duplicate, 1 when any was quarantined or rejected
(after the full report), 2 for usage, configuration and connection errors and refused mappings
(see `import_file`).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
import yaml
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from onefold.cli.client import (
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
from onefold.cli.import_mapping import (
    SKIP,
    CallType,
    ColumnMapping,
    MappingError,
    map_columns,
    parse_map_document,
    parse_map_options,
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
STATE_VERSION = 2
READABLE_STATE_VERSIONS = (1, 2)  # version 1 had no run history
REPORT_PRINT_LIMIT = 50
DRY_RUN_ROWS = 5
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


class Format(StrEnum):
    csv = "csv"
    ndjson = "ndjson"


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


def read_csv_header(path: Path) -> list[str]:
    """The header row's column names (stripped); the mapping is decided from these alone."""
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        try:
            header = next(csv.reader(f), [])
        except csv.Error as error:
            raise CliError(f"{path}: the header row is not valid CSV: {error}") from None
    columns = [column.strip() for column in header]
    if not any(columns):
        raise CliError(f"{path}: the first line must be a header row naming the columns")
    if any(_has_surrogate(column) for column in columns):
        raise CliError(f"{path}: the header row is not valid UTF-8")
    return columns


def read_csv(path: Path, mapping: ColumnMapping) -> Iterator[Record]:
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header_read = False
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield Record(start, error=f"not valid CSV: {error}")
                continue
            if not header_read:
                header_read = True
                continue
            if not row or row == [""]:
                continue
            if any(_has_surrogate(cell) for cell in row):
                yield Record(start, error="the line is not valid UTF-8")
                continue
            if len(row) != len(mapping.columns):
                yield Record(start, error=f"has {len(row)} fields; the header has {len(mapping.columns)}")
                continue
            try:
                yield Record(start, document=mapping.document(row))
            except ValueError as error:
                yield Record(start, error=str(error))


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


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


def default_message_id(file_sha: str, line: int, mapping_fingerprint: str = "") -> str:
    mapped = f":{mapping_fingerprint}" if mapping_fingerprint else ""
    return str(uuid.uuid5(IMPORT_NAMESPACE, f"{file_sha}:{line}{mapped}"))


# --- state and report ----------------------------------------------------------------------------


@dataclass
class RunCounts:
    """What one run of the import did; the file's totals (on ImportState) add up the runs since the
    last --restart."""

    started_at: str
    restart: bool = False
    resumed_after_line: int = 0
    done_earlier: int = 0  # rows whose fate earlier runs already recorded; not sent by this run
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    rejected: int = 0  # bad lines found by this run
    finished: bool = False

    def summary(self) -> str:
        parts = [f"{self.sent} sent"]
        if self.sent:
            parts[0] += (
                f" ({self.accepted} accepted, {self.duplicates} duplicates, {self.quarantined} quarantined)"
            )
        if self.rejected:
            parts.append(f"{self.rejected} bad lines not sent")
        if self.done_earlier:
            parts.append(f"{self.done_earlier} already sent earlier")
        return "this run: " + ", ".join(parts)


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
    runs: list[RunCounts] = field(default_factory=list)  # oldest first; kept across --restart

    @property
    def this_run(self) -> RunCounts:
        return self.runs[-1]

    def start_run(self, *, restart: bool) -> RunCounts:
        run = RunCounts(
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            restart=restart,
            resumed_after_line=0 if self.complete else self.last_line,
            done_earlier=self.accepted + self.duplicates + self.quarantined + self.rejected,
        )
        self.runs.append(run)
        return run

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportState:
        data = {k: v for k, v in data.items() if k != "version"}
        data["runs"] = [RunCounts(**run) for run in data.get("runs", [])]
        return cls(**data)

    def report(self, mapping: ColumnMapping | None) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "source_id": self.source_id,
            "lines": self.lines,
            "complete": self.complete,
            "this_run": asdict(self.this_run),
            # The whole file, every run since the last --restart:
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "rejected": self.rejected,
            "runs": [asdict(run) for run in self.runs],
            "mapping": mapping_report(mapping) if mapping else None,
            "problems": sorted(self.problems, key=lambda p: p["line"]),
        }


def mapping_report(mapping: ColumnMapping) -> dict[str, Any]:
    return {
        "call_type": mapping.call_type.value,
        "columns": [asdict(column) for column in mapping.columns],
        "refused": [asdict(refused) for refused in mapping.refused],
        "missing": list(mapping.missing),
    }


def mapping_fingerprint(mapping: ColumnMapping | None) -> str:
    """Part of a CSV import's identity: the same file mapped differently is a different import (its
    rows become different events), so it gets its own message ids and its own saved progress."""
    if mapping is None:
        return ""
    chosen = [mapping.call_type.value, *(f"{c.column}={c.field or SKIP}" for c in mapping.columns)]
    return hashlib.sha256("\n".join(chosen).encode()).hexdigest()[:16]


def state_path(data_dir: Path, sha256: str, source_id: str, fingerprint: str) -> Path:
    mapped = f"-{fingerprint}" if fingerprint else ""
    return data_dir / "imports" / f"{sha256[:32]}{mapped}-{source_id}.json"


def load_import_state(path: Path) -> ImportState | None:
    try:
        data = json.loads(path.read_text())
        if data.get("version") not in READABLE_STATE_VERSIONS:
            return None
        return ImportState.from_json(data)
    except (OSError, ValueError, TypeError):
        return None


def save_import_state(path: Path, state: ImportState) -> None:
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
    records: Iterator[Record],
    *,
    message_id: Callable[[int], str],
    default_type: CallType | None,
    after: int,
    batch: int,
) -> Iterator[Chunk]:
    current = Chunk(end_line=after)
    for record in records:
        if record.line <= after:
            continue
        event: pb.TrackingEvent | None = None
        if record.error is None and record.document is not None:
            try:
                event = to_event(record.document, default_type, message_id(record.line))
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
    run = state.this_run
    state.problems.extend(chunk.rejects)
    state.rejected += len(chunk.rejects)
    run.rejected += len(chunk.rejects)
    run.sent += len(chunk.events)
    for position, answer in enumerate(response.results):
        line = chunk.lines[answer.index if answer.index < len(chunk.lines) else position]
        status = STATUS.get(answer.status, "unknown")
        if answer.status == pb.ACK_STATUS_ACCEPTED:
            state.accepted += 1
            run.accepted += 1
        elif answer.status == pb.ACK_STATUS_DUPLICATE:
            state.duplicates += 1
            run.duplicates += 1
        else:
            state.quarantined += 1
            run.quarantined += 1
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
    message_id: Callable[[int], str],
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
            save_import_state(state_file, state)
            progress.update(task, completed=state.last_line)
            if stop_after is not None and state.accepted + state.duplicates + state.quarantined >= stop_after:
                progress.stop()
                err_console.print(f"stopping after line {state.last_line} (--stop-after)")
                os._exit(3)  # as abrupt as a crash: the state file is all that is left

        for chunk in chunks(
            records, message_id=message_id, default_type=default_type, after=state.last_line, batch=batch
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
    state.this_run.finished = True
    save_import_state(state_file, state)
    progress.update(task, completed=state.lines)


async def _empty() -> pb.BatchResponse:
    return pb.BatchResponse()


def print_report(state: ImportState) -> None:
    run = state.this_run
    console.print(run.summary(), highlight=False)
    if run.resumed_after_line:
        console.print(f"(this run resumed after line {run.resumed_after_line})", highlight=False)
    table = Table(
        title=f"the whole file {state.file} in {state.source_id}, {len(state.runs)} run(s) so far",
        show_header=True,
    )
    for column in ("accepted", "duplicates", "quarantined", "rejected (bad lines)"):
        table.add_column(column, justify="right")
    table.add_row(str(state.accepted), str(state.duplicates), str(state.quarantined), str(state.rejected))
    console.print(table)
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


def print_mapping(mapping: ColumnMapping, out: Console) -> None:
    table = Table(title=f"columns -> {mapping.call_type.value} fields", show_header=True)
    for column in ("column", "field", "rule"):
        table.add_column(column)
    reasons = {refused.column: refused.reason for refused in mapping.refused}
    for mapped in mapping.columns:
        # Column names are the file's text: never read as rich markup.
        if mapped.column in reasons:
            table.add_row(escape(mapped.column), "[red]refused[/red]", escape(reasons[mapped.column]))
        else:
            table.add_row(escape(mapped.column), escape(mapped.field or "(not sent)"), mapped.rule)
    out.print(table)


def dry_run(
    records: Iterator[Record],
    mapping: ColumnMapping | None,
    message_id: Callable[[int], str],
    *,
    default_type: CallType | None,
    as_json: bool,
) -> None:
    """The mapping and the first rows as they would be sent (as Segment JSON, message ids included);
    nothing is sent and no service is needed."""
    rows: list[dict[str, Any]] = []
    for record in records:
        if len(rows) >= DRY_RUN_ROWS:
            break
        if record.document is None:
            rows.append({"line": record.line, "rejected": record.error})
            continue
        try:
            event = to_event(record.document, default_type, message_id(record.line))
        except BadRecord as error:
            rows.append({"line": record.line, "rejected": str(error)})
            continue
        rows.append({"line": record.line, "call": {**record.document, "messageId": event.message_id}})
    if as_json:
        document = {"mapping": mapping_report(mapping) if mapping else None, "rows": rows}
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return
    if mapping is not None:
        print_mapping(mapping, console)
    console.print(f"the first {len(rows)} row(s) as they would be sent (dry run: nothing was sent):")
    for row in rows:
        console.print_json(json.dumps(row, ensure_ascii=False))


def load_explicit_mapping(map_options: list[str], map_file: Path | None) -> dict[str, str]:
    """--map-file's mapping, overridden column by column by --map options."""
    explicit: dict[str, str] = {}
    try:
        if map_file is not None:
            try:
                document = yaml.safe_load(map_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
                raise MappingError(f"cannot read --map-file {map_file}: {type(error).__name__}") from None
            explicit.update(parse_map_document(document, str(map_file)))
        explicit.update(parse_map_options(map_options))
    except MappingError as error:
        raise fail(str(error)) from None
    return explicit


def import_file(
    file: Annotated[
        Path, typer.Argument(help="a CSV (with a header row) or NDJSON file", exists=True, dir_okay=False)
    ],
    source: Annotated[
        str | None,
        typer.Option(
            "--source", "-s", help="the source id (src_…) to import into; not needed with --dry-run"
        ),
    ] = None,
    fmt: Annotated[
        Format | None, typer.Option("--format", help="csv or ndjson (default: from the file name)")
    ] = None,
    call_type: Annotated[
        CallType | None,
        typer.Option(
            "--type",
            help="the call type of the rows (CSV default: track if a column gives the event name, else identify)",
        ),
    ] = None,
    map_options: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="COLUMN=FIELD",
            help="CSV: send COLUMN as FIELD (userId, traits.plan, properties.sku, context.ip …; - skips it); "
            "repeatable",
        ),
    ] = None,
    map_file: Annotated[
        Path | None,
        typer.Option(
            "--map-file", exists=True, dir_okay=False, help="CSV: a YAML mapping of column to field, as --map"
        ),
    ] = None,
    dry_run_only: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help=f"show the mapping and the first {DRY_RUN_ROWS} rows as they would be sent; send nothing",
        ),
    ] = False,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=MAX_BATCH_EVENTS, help="events per Batch call")
    ] = 500,
    report: Annotated[
        Path | None, typer.Option("--report", help="also write the report as JSON here")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report as JSON instead of tables")
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="ignore the saved progress; send every line again")
    ] = False,
    stop_after: Annotated[int | None, typer.Option("--stop-after", hidden=True)] = None,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """Import identify/track records; resumable, and re-running imports nothing twice.

    CSV columns become fields as follows (details: docs/import.md):
    userId, anonymousId, messageId, timestamp, type, event (track): top-level;
    traits.*, properties.*, context.* columns: into those objects;
    other columns: traits of identify calls (name, first_name, email … are
    Segment's reserved traits), properties of track calls;
    groupId, receivedAt, foo.bar …: refused before anything is sent.
    --map COLUMN=FIELD and --map-file rename, --map COLUMN=- skips a column;
    --dry-run shows the mapping and the first rows. NDJSON lines are Segment
    calls as they are.

    The report says what this run did, then the whole file's counts.
    Exit status (of the whole file, lines sent by earlier runs included):
    0: every row was accepted or was a duplicate;
    1: some rows were quarantined or rejected: the report lists them by line;
    re-running sends nothing twice;
    2: a usage, configuration, credential or connection error, or a refused
    mapping; re-run to resume after the last saved line.
    """
    if fmt is None:
        suffix = file.suffix.lower()
        if suffix == ".csv":
            fmt = Format.csv
        elif suffix in (".ndjson", ".jsonl", ".json"):
            fmt = Format.ndjson
        else:
            raise fail(f"cannot tell the format of {file.name}; pass --format csv or --format ndjson")
    mapping: ColumnMapping | None = None
    if fmt is Format.csv:
        try:
            header = read_csv_header(file)
        except CliError as error:
            raise fail(error.message, error.code) from None
        mapping = map_columns(header, call_type, load_explicit_mapping(map_options or [], map_file))
        call_type = mapping.call_type
    elif map_options or map_file:
        raise fail("--map and --map-file apply to CSV files; NDJSON lines are Segment calls already")
    if mapping is not None and not mapping.ok:
        if dry_run_only and not as_json:
            print_mapping(mapping, console)
        raise fail(mapping.problem())

    sha, lines = file_digest(file)
    fingerprint = mapping_fingerprint(mapping)

    def message_id(line: int) -> str:
        return default_message_id(sha, line, fingerprint)

    def records() -> Iterator[Record]:
        return read_ndjson(file) if mapping is None else read_csv(file, mapping)

    if dry_run_only:
        dry_run(records(), mapping, message_id, default_type=call_type, as_json=as_json)
        return
    if source is None:
        raise fail("--source is required (the source id to import into)")
    conn = connect(data_dir, target, token)

    async def check_source() -> pb.Source:
        async with ingest_stub(conn) as stub:
            found: pb.Source = await stub.GetSource(pb.GetSourceRequest(source_id=source))
            return found

    if run_async(conn, check_source).disabled:
        raise fail(f"source {source} is disabled; it accepts no events")
    state_file = state_path(data_dir.resolve(), sha, source, fingerprint)
    saved = load_import_state(state_file)
    state = None if restart else saved
    if state is None:
        state = ImportState(file=str(file), sha256=sha, source_id=source, lines=lines)
        state.runs = saved.runs if saved else []  # the run history outlives --restart
    run = state.start_run(restart=restart)
    info = err_console if as_json else console
    if state.complete:
        info.print(
            f"{file} (sha256 {sha[:12]}…) was already imported into {source}; nothing to send "
            "(--restart sends it again, answered as duplicates)",
            highlight=False,
        )
        run.finished = True
        save_import_state(state_file, state)
    else:
        if run.resumed_after_line:
            info.print(f"resuming {file} after line {run.resumed_after_line}", highlight=False)
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
                        records(),
                        state,
                        state_file,
                        message_id=message_id,
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
    if as_json:
        sys.stdout.write(json.dumps(state.report(mapping), indent=2, ensure_ascii=False) + "\n")
    else:
        print_report(state)
    if report is not None:
        report.write_text(json.dumps(state.report(mapping), indent=2))
        info.print(f"report written to {report}", highlight=False)
    if state.quarantined or state.rejected:
        err_console.print(
            f"not every row was imported: {state.quarantined} quarantined, {state.rejected} rejected "
            "(bad lines); the report lists them by line",
            highlight=False,
        )
        raise typer.Exit(EXIT_NOT_ALL_IMPORTED)
