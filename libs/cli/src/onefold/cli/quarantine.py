"""`onefold quarantine list|replay`: events the ingest service kept aside, with their reasons."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onefold.cli.client import DataDir, Target, Token, connect, fail, ingest_stub, run_async
from onefold.cli.options import Json
from onefold.cli.output import console, print_json, print_table

# gRPC and the generated messages load when a command calls the service, not for `--help`.
if TYPE_CHECKING:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

quarantine_app = typer.Typer(help="List and replay quarantined events.", no_args_is_help=True)

# onefold.ingest.v1.FailureKind without its prefix (a test keeps the two equal).
KINDS = (
    "schema_violation",
    "size_violation",
    "protocol_violation",
    "timestamp_violation",
    "unplanned_event",
    "subject_erased",
)


def _kind(value: str | None) -> int:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    if not value:
        return 0
    name = value.lower().replace("-", "_")
    if name not in KINDS:
        raise fail(f"--kind must be one of {', '.join(KINDS)} (got {value!r})")
    return pb.FailureKind.Value(f"FAILURE_KIND_{name.upper()}")


Kind = Annotated[str | None, typer.Option("--kind", help=f"only this failure kind: {', '.join(KINDS)}")]
SourceId = Annotated[str | None, typer.Option("--source", "-s", help="only this source (src_…)")]


def _reasons(reasons: Sequence[pb.Violation]) -> str:
    return "; ".join(f"{r.path}: {r.message}" if r.path else r.message for r in reasons)


def _describe(record: pb.EventQuarantined) -> tuple[str, str]:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    if record.HasField("event"):
        event = record.event
        call = pb.EventType.Name(event.type).removeprefix("EVENT_TYPE_").lower()
        return call + (f" '{event.event}'" if event.event else ""), event.message_id
    return "(raw JSON)", ""


@quarantine_app.command("list")
def list_quarantined(
    source: SourceId = None,
    kind: Kind = None,
    include_replayed: Annotated[
        bool, typer.Option("--include-replayed", help="also replayed events")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 1000,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """List quarantined events and why (needs the audit:read scope)."""
    from google.protobuf.json_format import MessageToDict

    from onefold.cli.importer import kind_name
    from onefold.contracts.common.v1 import pagination_pb2
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    kind_value = _kind(kind)
    conn = connect(data_dir, target, token)

    async def call() -> list[pb.QuarantinedEvent]:
        found: list[pb.QuarantinedEvent] = []
        page_token = ""
        async with ingest_stub(conn) as stub:
            while len(found) < limit:
                page = await stub.ListQuarantined(
                    pb.ListQuarantinedRequest(
                        source_id=source or "",
                        kind=kind_value,  # type: ignore[arg-type]
                        include_replayed=include_replayed,
                        page=pagination_pb2.PageRequest(page_size=min(200, limit), page_token=page_token),
                    )
                )
                found.extend(page.events)
                page_token = page.page.next_page_token
                if not page_token:
                    break
        return found[:limit]

    events = run_async(conn, call)
    if as_json:
        out: list[dict[str, Any]] = []
        for item in events:
            entry = MessageToDict(item, preserving_proto_field_name=True)
            entry["kind"] = kind_name(item.record.kind)
            out.append(entry)
        print_json(out)
        return
    rows = []
    for item in events:
        call_text, message_id = _describe(item.record)
        rows.append(
            (
                item.quarantine_id,
                item.record.source_id,
                kind_name(item.record.kind),
                call_text,
                message_id,
                _reasons(item.record.reasons),
                item.quarantined_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                "yes" if item.replayed else "",
            )
        )
    print_table(
        ("id", "source", "kind", "call", "messageId", "reasons", "quarantined at", "replayed"),
        rows,
        title=f"{len(events)} quarantined event(s)",
    )


@quarantine_app.command("replay")
def replay(
    ids: Annotated[list[str] | None, typer.Option("--id", help="a quarantine id (repeatable)")] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="every unreplayed event matching the filters")
    ] = False,
    source: SourceId = None,
    kind: Kind = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would happen; change nothing")] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """Re-submit quarantined events through the source's current checks (after fixing the plan)."""
    from google.protobuf.json_format import MessageToDict

    from onefold.cli.importer import STATUS, kind_name
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    if not ids and not replay_all:
        raise fail("name events with --id (repeatable) or pass --all (with --source / --kind to narrow)")
    if ids and replay_all:
        raise fail("use --id or --all, not both")
    kind_value = _kind(kind)
    conn = connect(data_dir, target, token)

    async def call() -> pb.ReplayQuarantinedResponse:
        async with ingest_stub(conn) as stub:
            response: pb.ReplayQuarantinedResponse = await stub.ReplayQuarantined(
                pb.ReplayQuarantinedRequest(
                    quarantine_ids=ids or [],
                    source_id=source or "",
                    kind=kind_value,  # type: ignore[arg-type]
                    dry_run=dry_run,
                )
            )
            return response

    results = list(run_async(conn, call).results)
    counts = {name: 0 for name in STATUS.values()}
    for answer in results:
        counts[STATUS.get(answer.status, "quarantined")] += 1
    if as_json:
        document = {
            "dry_run": dry_run,
            **counts,
            "results": [MessageToDict(r, preserving_proto_field_name=True) for r in results],
        }
        print_json(document)
        return
    print_table(
        ("messageId", "outcome", "kind", "reasons"),
        [
            (
                answer.message_id,
                STATUS.get(answer.status, "?"),
                kind_name(answer.kind) if answer.kind else "",
                _reasons(answer.reasons),
            )
            for answer in results
        ],
        title="replay (dry run: nothing changed)" if dry_run else "replay",
    )
    verb = "would be" if dry_run else "were"
    console.print(
        f"{len(results)} event(s): {counts['accepted']} {verb} accepted, {counts['duplicate']} duplicate(s), "
        f"{counts['quarantined']} still quarantined",
        highlight=False,
    )
