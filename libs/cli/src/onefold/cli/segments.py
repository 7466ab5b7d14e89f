"""`onefold segments ...` and the segments definitions of `onefold apply -f` (docs/segments.md).

Definitions are read from YAML by segments_yaml.py; this module calls the segments service
(onefold.segments.v1.SegmentsService) and prints. Applying a changed definition starts a backfill
on the service; `apply` follows it with a progress bar until it has reached every profile (a profile
is not evaluated on the changed definition before that), unless `--no-wait`.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onefold.cli.client import CliError, Connection, DataDir, Token, connect, fail, run_async, service_stub
from onefold.cli.options import Json
from onefold.cli.output import console, err_console, print_json, print_table

if TYPE_CHECKING:
    import grpc

    from onefold.cli.segments_yaml import DefinitionSpec
    from onefold.contracts.segments.v1 import segments_pb2 as pb
    from onefold.contracts.segments.v1 import segments_pb2_grpc

SERVICE = "segments"
EXIT_NOT_FOUND = 1
BACKFILL_POLL_SECONDS = 0.5
HISTORY_PAGE = 200

segments_app = typer.Typer(
    help="Segments, tags, computed traits, lifecycle and RFM: definitions, members, a profile's and why.",
    no_args_is_help=True,
)

SegmentsTarget = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="ONEFOLD_SEGMENTS_TARGET",
        help="segments gRPC host:port (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]
File = Annotated[Path, typer.Option("--file", "-f", help="a YAML file of segments definitions")]


# --- talking to the service ----------------------------------------------------------------------


def segments_connection(data_dir: Path, target: str | None, token: str | None) -> Connection:
    return connect(data_dir, target, token, service=SERVICE)


def segments_stub(conn: Connection) -> AbstractAsyncContextManager[segments_pb2_grpc.SegmentsServiceStub]:
    from onefold.contracts.segments.v1 import segments_pb2_grpc

    return service_stub(conn, segments_pb2_grpc.SegmentsServiceStub)


def not_found_exit() -> dict[grpc.StatusCode, int]:
    import grpc

    return {grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND}


def _as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def _when(stamp: Any) -> str:
    if not stamp.seconds and not stamp.nanos:
        return ""
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _observed(value: Any) -> str:
    """A Value as JSON, a whole number without ".0" (a count reads 2, not 2.0)."""
    import json

    from google.protobuf.json_format import MessageToDict

    if value.WhichOneof("kind") is None:
        return ""
    plain = MessageToDict(value)
    if isinstance(plain, float) and plain.is_integer():
        plain = int(plain)
    return json.dumps(plain, ensure_ascii=False)


def _why(reasons: Sequence[pb.Reason]) -> str:
    """Each reason as `condition (saw observed)`, joined by "; "."""
    parts = []
    for reason in reasons:
        seen = _observed(reason.observed)
        parts.append(f"{reason.condition} (saw {seen})" if seen else reason.condition)
    return "; ".join(parts)


def _kind(definition: pb.Definition) -> str:
    from onefold.cli.segments_yaml import DOCUMENT_KINDS

    return DOCUMENT_KINDS.get(definition.WhichOneof("kind") or "", "?")


def _label(definition: pb.Definition) -> str:
    """`kind/name` as the apply and archive lines print it: computed_trait/spend_90d."""
    return f"{definition.WhichOneof('kind') or 'definition'}/{definition.name}"


def _yaml(documents: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True, default_flow_style=False)


# --- apply ---------------------------------------------------------------------------------------


class Refused(Exception):
    """The service refused documents: per document, (YAML path, reason) pairs to print one per line."""

    def __init__(self, message: str, problems: list[tuple[DefinitionSpec, list[tuple[str, str]]]]) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems


@asynccontextmanager
async def _refusals(specs: Sequence[DefinitionSpec], batch: bool = False) -> AsyncIterator[None]:
    """Definitions the service refuses (INVALID_ARGUMENT, FAILED_PRECONDITION) as Refused, each
    field violation under its document (`definitions[i].…` in a batch) as a YAML path."""
    import grpc

    from onefold.cli.segments_yaml import yaml_path
    from onefold.platform.errors import details_of

    try:
        yield
    except grpc.aio.AioRpcError as error:
        if error.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            raise
        try:
            _, violations = details_of(error)
        except Exception:  # a status without rich details: the message alone
            violations = []
        by_spec: dict[int, list[tuple[str, str]]] = {}
        for field, text in violations:
            index, path = 0, field
            if batch:
                found = _BATCH_FIELD.match(field)
                if found is None:  # about the request itself (its size)
                    by_spec.setdefault(0, []).append((field, text))
                    continue
                index, path = int(found.group(1)), "definition" + found.group(2)
            by_spec.setdefault(index, []).append((yaml_path(path), text))
        problems = [(specs[i], paths) for i, paths in sorted(by_spec.items())] or [(specs[0], [])]
        raise Refused((error.details() or "refused").rstrip("."), problems) from None


_BATCH_FIELD = re.compile(r"^definitions\[(\d+)\](.*)$")


def _print_refused(refused: Refused) -> typer.Exit:
    for spec, violations in refused.problems:
        if len(refused.problems) > 1:
            err_console.print(f"{spec.where} {_label(spec.definition)}:", highlight=False, markup=False)
        for path, text in violations:
            err_console.print(f"  {path}: {text}", highlight=False, markup=False, soft_wrap=True)
    if len(refused.problems) == 1:
        spec = refused.problems[0][0]
        return fail(
            f"{spec.where} ({spec.definition.name}) was refused: {refused.message}"
            + (" (each field above)" if refused.problems[0][1] else "")
        )
    return fail(f"{len(refused.problems)} documents were refused, nothing was applied: {refused.message}")


async def _unapplied_reads(
    stub: segments_pb2_grpc.SegmentsServiceStub, specs: Sequence[DefinitionSpec]
) -> dict[str, list[str]]:
    """Per definition, the definitions of the same file it reads that are not stored yet. The
    service checks a definition against what is stored, so such a one can be checked (or
    previewed) only once those are applied."""
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    listed = await stub.ListDefinitions(pb.ListDefinitionsRequest())
    stored = {d.name for d in listed.definitions}
    in_file = {spec.definition.name for spec in specs}
    return {
        spec.definition.name: sorted((spec.references() & in_file) - stored)
        for spec in specs
        if (spec.references() & in_file) - stored
    }


async def apply_definitions(
    conn: Connection, specs: Sequence[DefinitionSpec], dry_run: bool
) -> tuple[list[str], list[tuple[str, str]]]:
    """Apply the file's definitions together, all or none (they may read each other in any
    order): the lines to print, and (name, backfill id) to follow."""
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    lines: list[str] = []
    backfills: list[tuple[str, str]] = []
    async with segments_stub(conn) as stub, _refusals(specs, batch=True):
        applied: pb.ApplyDefinitionsResponse = await stub.ApplyDefinitions(
            pb.ApplyDefinitionsRequest(definitions=[spec.definition for spec in specs], dry_run=dry_run)
        )
    for spec, response in zip(specs, applied.results, strict=True):
        label = _label(spec.definition)
        if not response.changed:
            lines.append(f"{label} unchanged (version {response.definition.version})")
        elif dry_run:
            lines.append(f"{label} valid; would hold {response.preview_size} profiles now (dry run)")
        else:
            lines.append(f"{label} set (version {response.definition.version})")
            if response.backfill_id:
                backfills.append((spec.definition.name, response.backfill_id))
    return lines, backfills


async def follow_backfills(conn: Connection, backfills: Sequence[tuple[str, str]]) -> list[pb.Backfill]:
    """Poll GetBackfill for each until it has finished, drawing a progress bar per backfill."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onefold.contracts.segments.v1 import segments_pb2 as pb

    done: dict[str, pb.Backfill] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    async with segments_stub(conn) as stub:
        with Progress(*columns, console=err_console, transient=False) as progress:
            tasks = {
                backfill_id: progress.add_task(f"backfill {name}", total=None)
                for name, backfill_id in backfills
            }
            while len(done) < len(backfills):
                for _, backfill_id in backfills:
                    if backfill_id in done:
                        continue
                    state: pb.Backfill = await stub.GetBackfill(
                        pb.GetBackfillRequest(backfill_id=backfill_id)
                    )
                    total = max(state.events_total, state.events_done) or None
                    progress.update(tasks[backfill_id], completed=state.events_done, total=total)
                    if state.finished:
                        progress.update(tasks[backfill_id], total=total or 1, completed=total or 1)
                        done[backfill_id] = state
                if len(done) < len(backfills):
                    await asyncio.sleep(BACKFILL_POLL_SECONDS)
    return [done[backfill_id] for _, backfill_id in backfills]


def apply_segments(
    specs: Sequence[DefinitionSpec],
    data_dir: Path,
    target: str | None,
    token: str | None,
    *,
    dry_run: bool,
    wait: bool,
) -> None:
    """`onefold apply -f` for the file's segments definitions."""
    conn = segments_connection(data_dir, target, token)

    async def call() -> tuple[list[str], list[tuple[str, str]]]:
        return await apply_definitions(conn, specs, dry_run)

    try:
        lines, backfills = run_async(conn, call)
    except Refused as refused:
        raise _print_refused(refused) from None
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    if not backfills:
        return
    if not wait:
        for name, backfill_id in backfills:
            console.print(
                f"backfill of {name}: {backfill_id} (follow with `onefold segments backfill {backfill_id}`)",
                highlight=False,
            )
        return
    for state in run_async(conn, lambda: follow_backfills(conn, backfills)):
        console.print(
            f"backfill of {state.definition} (version {state.definition_version}) finished: "
            + (f"{state.events_done:,} history records read" if state.events_total else "no history to read"),
            highlight=False,
        )


# --- commands ------------------------------------------------------------------------------------


@segments_app.command("list")
def list_definitions(
    archived: Annotated[bool, typer.Option("--archived", help="include archived definitions")] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """List the workspace's definitions (segments, tags, computed traits, lifecycle, RFM)."""
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    conn = segments_connection(data_dir, target, token)

    async def call() -> pb.ListDefinitionsResponse:
        async with segments_stub(conn) as stub:
            found: pb.ListDefinitionsResponse = await stub.ListDefinitions(
                pb.ListDefinitionsRequest(include_archived=archived)
            )
            return found

    found = run_async(conn, call)
    if as_json:
        print_json([_as_dict(d) for d in found.definitions])
        return
    print_table(
        ("name", "kind", "version", "evaluation", "archived", "updated", "description"),
        [
            (
                d.name,
                _kind(d),
                str(d.version),
                "batch" if d.evaluation == pb.EVALUATION_BATCH else "realtime",
                "yes" if d.archived else "",
                _when(d.updated_at),
                d.description,
            )
            for d in found.definitions
        ],
    )


@segments_app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="the definition's name")],
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """Print a definition as the YAML that `onefold apply -f` reads.

    Its version, when and by whom it was set come first, as a comment. Exit 1 when no definition
    has that name."""
    from onefold.cli.segments_yaml import definition_document
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    conn = segments_connection(data_dir, target, token)

    async def call() -> pb.Definition:
        async with segments_stub(conn) as stub:
            found: pb.Definition = await stub.GetDefinition(pb.GetDefinitionRequest(name=name))
            return found

    definition = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(definition))
        return
    status = "archived, " if definition.archived else ""
    sys.stdout.write(
        f"# version {definition.version} ({status}updated {_when(definition.updated_at)} "
        f"by {definition.updated_by or '?'})\n" + _yaml([definition_document(definition)])
    )


@segments_app.command("archive")
def archive(
    name: Annotated[str, typer.Argument(help="the definition's name")],
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """Archive a definition that no other definition reads.

    Every profile's membership or value of it is withdrawn (recorded with why "archived").
    Exit 1 when no definition has that name."""
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    conn = segments_connection(data_dir, target, token)

    async def call() -> pb.Definition:
        async with segments_stub(conn) as stub:
            found: pb.Definition = await stub.ArchiveDefinition(pb.ArchiveDefinitionRequest(name=name))
            return found

    definition = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(definition))
        return
    console.print(f"{_label(definition)} archived (version {definition.version})", highlight=False)


def _load_specs(file: Path) -> list[DefinitionSpec]:
    from onefold.cli.segments_yaml import is_definition, parse_definition_documents
    from onefold.cli.sources import load_document

    documents = load_document(file)
    if not documents or not all(is_definition(document) for document in documents):
        raise CliError(f"{file} must hold segments definitions only (kind: Segment, Tag, ComputedTrait, …)")
    return parse_definition_documents(documents, str(file))


@segments_app.command("preview")
def preview(
    file: File,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """How many profiles each definition of the file would hold now (nothing is stored).

    A sample of their ids is shown beside each count."""
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    try:
        specs = _load_specs(file)
    except CliError as error:
        raise fail(error.message, error.code) from None
    conn = segments_connection(data_dir, target, token)

    async def call() -> list[pb.PreviewResponse | None]:
        answers: list[pb.PreviewResponse | None] = []
        async with segments_stub(conn) as stub:
            unapplied = await _unapplied_reads(stub, specs)
            for spec in specs:
                if spec.definition.name in unapplied:
                    answers.append(None)
                    continue
                async with _refusals([spec]):
                    answers.append(await stub.Preview(pb.PreviewRequest(definition=spec.definition)))
        return answers

    try:
        previews = run_async(conn, call)
    except Refused as refused:
        raise _print_refused(refused) from None
    if as_json:
        print_json(
            {
                spec.definition.name: {
                    "size": answer.size,
                    "sample_profile_ids": list(answer.sample_profile_ids),
                }
                if answer is not None
                else None
                for spec, answer in zip(specs, previews, strict=True)
            }
        )
        return
    print_table(
        ("name", "profiles", "sample"),
        [
            (spec.definition.name, str(answer.size), " ".join(answer.sample_profile_ids))
            if answer is not None
            else (
                spec.definition.name,
                "-",
                "not previewed: it reads definitions of this file not applied yet",
            )
            for spec, answer in zip(specs, previews, strict=True)
        ],
    )


@segments_app.command("members")
def members(
    name: Annotated[str, typer.Argument(help="a segment's (or tag's) name")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="at most this many ids")] = 100,
    page_token: Annotated[
        str, typer.Option("--page-token", help="continue after the previous page (its next page token)")
    ] = "",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """The profile ids holding a definition now, in id order, a page at a time."""
    from onefold.contracts.common.v1 import pagination_pb2
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    conn = segments_connection(data_dir, target, token)

    async def call() -> pb.ListMembersResponse:
        async with segments_stub(conn) as stub:
            page = pagination_pb2.PageRequest(page_size=limit, page_token=page_token)
            found: pb.ListMembersResponse = await stub.ListMembers(
                pb.ListMembersRequest(segment=name, page=page)
            )
            return found

    found = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(
            {
                "profile_ids": list(found.profile_ids),
                "total": found.page.total_size,
                "next_page_token": found.page.next_page_token,
            }
        )
        return
    print_table(
        ("profile id",),
        [(profile_id,) for profile_id in found.profile_ids],
        title=f"{name}: {found.page.total_size} members",
    )
    if found.page.next_page_token:
        err_console.print(f"more: --page-token {found.page.next_page_token}", highlight=False)


def _moment(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"--as-of must be an ISO 8601 time, e.g. 2026-01-01T00:00:00Z (got {text!r})"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@segments_app.command("profile")
def profile(
    profile_id: Annotated[str, typer.Argument(help="the profile's id")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="as of this time (ISO 8601), replayed from the log")
    ] = None,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """A profile's segments, tags and computed traits, each with why.

    Why: the conditions that held and the values they saw."""
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    try:
        moment = _moment(as_of)
    except CliError as error:
        raise fail(error.message, error.code) from None
    conn = segments_connection(data_dir, target, token)

    async def call() -> pb.ProfileSegments:
        request = pb.GetProfileSegmentsRequest(profile_id=profile_id)
        if moment is not None:
            request.as_of.FromDatetime(moment)
        async with segments_stub(conn) as stub:
            found: pb.ProfileSegments = await stub.GetProfileSegments(request)
            return found

    found = run_async(conn, call)
    if as_json:
        print_json(_as_dict(found))
        return
    rows = [("segment", m.segment, f"since {_when(m.since)}", _why(m.reasons)) for m in found.segments]
    rows += [("tag", t.tag, t.value, _why(t.reasons)) for t in found.tags]
    rows += [
        ("computed trait", name, _observed(value), "")
        for name, value in sorted(found.computed_traits.items())
    ]
    title = f"profile {found.profile_id}" + (f" as of {as_of}" if moment else "")
    if found.profile_id != profile_id:
        title += f" (merged into it: {profile_id})"
    print_table(("kind", "name", "value", "why"), rows, title=title)


@segments_app.command("history")
def history(
    profile_id: Annotated[str, typer.Argument(help="the profile's id")],
    segment: Annotated[str, typer.Option("--segment", help="only this segment, tag or computed trait")] = "",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """Every change of a profile's segments, tags and computed traits, oldest first, with why."""
    from onefold.contracts.common.v1 import pagination_pb2
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    conn = segments_connection(data_dir, target, token)

    async def call() -> tuple[str, list[pb.MembershipChange]]:
        changes: list[pb.MembershipChange] = []
        page_token = ""
        async with segments_stub(conn) as stub:
            while True:
                page = pagination_pb2.PageRequest(page_size=HISTORY_PAGE, page_token=page_token)
                found: pb.GetMembershipHistoryResponse = await stub.GetMembershipHistory(
                    pb.GetMembershipHistoryRequest(profile_id=profile_id, segment=segment, page=page)
                )
                changes.extend(found.changes)
                page_token = found.page.next_page_token
                if not page_token:
                    return found.profile_id, changes

    answered_for, changes = run_async(conn, call)
    if as_json:
        print_json([_as_dict(change) for change in changes])
        return
    title = f"history of profile {answered_for}"
    if answered_for != profile_id:
        title += f" (merged into it: {profile_id})"
    print_table(
        ("at", "profile", "name", "change", "value", "version", "why"),
        [
            (
                _when(c.at),
                c.profile_id,
                c.segment,
                c.change,
                c.value,
                str(c.definition_version),
                _why(c.reasons),
            )
            for c in changes
        ],
        title=title,
    )


@segments_app.command("backfill")
def backfill(
    backfill_id: Annotated[str, typer.Argument(help="the backfill's id (printed by `onefold apply`)")],
    wait: Annotated[
        bool, typer.Option("--wait", help="follow it with a progress bar until it has finished")
    ] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: SegmentsTarget = None,
    token: Token = None,
) -> None:
    """How far a definition's backfill has come. Exit 1 when there is no backfill with that id."""
    from onefold.contracts.segments.v1 import segments_pb2 as pb

    conn = segments_connection(data_dir, target, token)

    async def call() -> pb.Backfill:
        async with segments_stub(conn) as stub:
            found: pb.Backfill = await stub.GetBackfill(pb.GetBackfillRequest(backfill_id=backfill_id))
        if wait and not found.finished:
            return (await follow_backfills(conn, [(found.definition, backfill_id)]))[0]
        return found

    state = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(state))
        return
    print_table(
        ("backfill", "definition", "version", "events done", "events total", "finished"),
        [
            (
                state.backfill_id,
                state.definition,
                str(state.definition_version),
                str(state.events_done),
                str(state.events_total),
                "yes" if state.finished else "no",
            )
        ],
    )
