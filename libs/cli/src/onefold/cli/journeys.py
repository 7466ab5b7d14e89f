"""`onefold journeys …` and the journeys and templates of `onefold apply -f` (docs/journeys.md).

Journeys and templates are read from YAML by journeys_yaml.py; this module calls the journeys
service (onefold.journeys.v1.JourneysService) and prints. A file's journeys and templates go in one
ApplyJourneys request, so they are stored all or none, and a journey may send a template of the same
file.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onefold.cli.client import Connection, DataDir, Token, connect, fail, run_async, service_stub
from onefold.cli.options import Json
from onefold.cli.output import console, err_console, print_json, print_table

if TYPE_CHECKING:
    import grpc

    from onefold.cli.journeys_yaml import JourneyDocuments
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb
    from onefold.contracts.journeys.v1 import journeys_pb2_grpc

SERVICE = "journeys"
EXIT_NOT_FOUND = 1
EXIT_NOT_ENTERED = 1

journeys_app = typer.Typer(
    help="Journeys: list, get, publish, pause, archive; enter a person, follow an instance and why; stats.",
    no_args_is_help=True,
)

JourneysTarget = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="ONEFOLD_JOURNEYS_TARGET",
        help="journeys gRPC host:port (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]
JourneyName = Annotated[str, typer.Argument(help="the journey's name")]
ProfileId = Annotated[str, typer.Argument(help="the profile's id")]
EntityKey = Annotated[
    str, typer.Option("--key", help="the entity key of the instance (e.g. the cart id); none: per profile")
]
Version = Annotated[int, typer.Option("--version", min=0, help="this version (default: the latest)")]


# --- talking to the service ----------------------------------------------------------------------


def journeys_connection(data_dir: Path, target: str | None, token: str | None) -> Connection:
    return connect(data_dir, target, token, service=SERVICE)


def journeys_stub(conn: Connection) -> AbstractAsyncContextManager[journeys_pb2_grpc.JourneysServiceStub]:
    from onefold.contracts.journeys.v1 import journeys_pb2_grpc

    return service_stub(conn, journeys_pb2_grpc.JourneysServiceStub)


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


def _status(journey: pb.Journey) -> str:
    from onefold.cli.journeys_yaml import STATUS_NAMES

    return STATUS_NAMES.get(journey.status, "?")


def _channel(channel: pb.Channel.ValueType) -> str:
    from onefold.cli.journeys_yaml import CHANNEL_NAMES

    return CHANNEL_NAMES.get(channel, "?")


def _trigger(journey: pb.Journey) -> str:
    """The entry trigger in a few words: `event Product Added by cart_id`, `segment vip (exit)`."""
    entry = journey.entry
    kind = entry.WhichOneof("trigger")
    if kind == "event":
        named = entry.event.event.event or entry.event.event.type or "any event"
        return f"event {named}" + (f" by {entry.event.entity_key}" if entry.event.entity_key else "")
    if kind == "segment":
        return f"segment {entry.segment.segment}" + (" (exit)" if entry.segment.on_exit else "")
    if kind == "schedule":
        when = entry.schedule.cron or _when(entry.schedule.once_at)
        return f"schedule {when}" + (f" of {entry.schedule.segment}" if entry.schedule.segment else "")
    return kind or ""


def dump_documents(documents: list[dict[str, Any]]) -> str:
    import yaml

    class BlockDumper(yaml.SafeDumper):
        """Writes text of several lines (a template's body) as a `|` block, as people write it."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    BlockDumper.add_representer(str, text)
    return yaml.dump_all(
        documents, Dumper=BlockDumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


# --- apply ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentProblems:
    """What the service said about one document of the file: (YAML path, reason) pairs."""

    where: str
    label: str
    violations: list[tuple[str, str]]


class Refused(Exception):
    """The service refused the file's journeys and templates (all of them: nothing was stored)."""

    def __init__(self, message: str, problems: list[DocumentProblems]) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems


_REQUEST_FIELD = re.compile(r"^(journeys|templates)\[(\d+)\](?:\.(.*))?$")


def problems_by_document(
    documents: JourneyDocuments, violations: Sequence[tuple[str, str]]
) -> list[DocumentProblems]:
    """The request's field violations (`journeys[i].steps[2].send.next`, `templates[j].subject`)
    under the document each is about, as YAML paths, journeys first, then templates; a violation
    about the request itself stays under the first document with its field as given."""
    from onefold.cli.journeys_yaml import yaml_path

    specs = [(s.where, s.label) for s in documents.journeys] + [
        (s.where, s.label) for s in documents.templates
    ]
    first_template = len(documents.journeys)
    found: dict[int, list[tuple[str, str]]] = {}
    for field, text in violations:
        matched = _REQUEST_FIELD.match(field)
        index = int(matched.group(2)) if matched else -1
        if matched and matched.group(1) == "templates":
            index += first_template
        if not matched or not 0 <= index < len(specs):
            found.setdefault(0, []).append((field, text))
            continue
        found.setdefault(index, []).append((yaml_path(matched.group(3) or ""), text))
    return [DocumentProblems(specs[i][0], specs[i][1], paths) for i, paths in sorted(found.items())] or [
        DocumentProblems(specs[0][0], specs[0][1], [])
    ]


@asynccontextmanager
async def _refusals(documents: JourneyDocuments) -> AsyncIterator[None]:
    """What the service refuses (INVALID_ARGUMENT, FAILED_PRECONDITION) as Refused, per document."""
    import grpc

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
        message = (error.details() or "refused").rstrip(".")
        raise Refused(message, problems_by_document(documents, violations)) from None


def _print_refused(refused: Refused) -> typer.Exit:
    for problems in refused.problems:
        if len(refused.problems) > 1:
            err_console.print(f"{problems.where} {problems.label}:", highlight=False, markup=False)
        for path, text in problems.violations:
            err_console.print(
                f"  {path or '(the document)'}: {text}", highlight=False, markup=False, soft_wrap=True
            )
    if len(refused.problems) == 1:
        only = refused.problems[0]
        return fail(
            f"{only.where} ({only.label}) was refused, nothing was applied: {refused.message}"
            + (" (each field above)" if only.violations else "")
        )
    return fail(f"{len(refused.problems)} documents were refused, nothing was applied: {refused.message}")


async def apply_documents(
    conn: Connection, documents: JourneyDocuments, *, dry_run: bool, publish: bool
) -> list[str]:
    """Apply the file's journeys and templates in one request, all or none: the lines to print."""
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    request = pb.ApplyJourneysRequest(
        journeys=[spec.journey for spec in documents.journeys],
        templates=[spec.template for spec in documents.templates],
        publish=publish,
        dry_run=dry_run,
    )
    async with journeys_stub(conn) as stub, _refusals(documents):
        applied: pb.ApplyJourneysResponse = await stub.ApplyJourneys(request)
    lines = []
    # Templates first: the journeys of the file send them.
    for template_spec, stored_template in zip(documents.templates, applied.templates, strict=True):
        version = stored_template.template.version
        lines.append(
            _applied_line(template_spec.label, stored_template.changed, dry_run, f"version {version}")
        )
    for journey_spec, stored_journey in zip(documents.journeys, applied.journeys, strict=True):
        facts = f"version {stored_journey.journey.version}, {_status(stored_journey.journey)}"
        lines.append(_applied_line(journey_spec.label, stored_journey.changed, dry_run, facts))
    return lines


def _applied_line(label: str, changed: bool, dry_run: bool, facts: str) -> str:
    if not changed:
        return f"{label} unchanged ({facts})"
    return f"{label} valid (dry run)" if dry_run else f"{label} set ({facts})"


def apply_journeys(
    documents: JourneyDocuments,
    data_dir: Path,
    target: str | None,
    token: str | None,
    *,
    dry_run: bool,
    publish: bool,
) -> None:
    """`onefold apply -f` for the file's journeys and templates."""
    conn = journeys_connection(data_dir, target, token)

    async def call() -> list[str]:
        return await apply_documents(conn, documents, dry_run=dry_run, publish=publish)

    try:
        lines = run_async(conn, call)
    except Refused as refused:
        raise _print_refused(refused) from None
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


# --- definitions ---------------------------------------------------------------------------------


@journeys_app.command("list")
def list_journeys(
    archived: Annotated[bool, typer.Option("--archived", help="include archived journeys")] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """List the workspace's journeys: the latest version of each and its status."""
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.ListJourneysResponse:
        async with journeys_stub(conn) as stub:
            found: pb.ListJourneysResponse = await stub.ListJourneys(
                pb.ListJourneysRequest(include_archived=archived)
            )
            return found

    found = run_async(conn, call)
    if as_json:
        print_json([_as_dict(j) for j in found.journeys])
        return
    print_table(
        ("name", "version", "status", "entry", "steps", "updated", "description"),
        [
            (
                j.name,
                str(j.version),
                _status(j),
                _trigger(j),
                str(len(j.steps)),
                _when(j.updated_at),
                j.description,
            )
            for j in found.journeys
        ],
    )


@journeys_app.command("get")
def get(
    name: JourneyName,
    version: Version = 0,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """Print a journey as the YAML that `onefold apply -f` reads.

    Its version, status, when and by whom it was saved come first, as a comment. Exit 1 when there
    is no such journey or version."""
    from onefold.cli.journeys_yaml import journey_document
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.Journey:
        async with journeys_stub(conn) as stub:
            found: pb.Journey = await stub.GetJourney(pb.GetJourneyRequest(name=name, version=version))
            return found

    journey = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(journey))
        return
    sys.stdout.write(
        f"# version {journey.version} ({_status(journey)}, saved {_when(journey.updated_at)} "
        f"by {journey.updated_by or '?'})\n" + dump_documents([journey_document(journey)])
    )


def _change_status(
    action: str, name: str, version: int, as_json: bool, data_dir: Path, target: str | None, token: str | None
) -> None:
    """Publish, pause or archive `name`, and print what the journey is now."""
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.Journey:
        async with journeys_stub(conn) as stub:
            changed: pb.Journey
            if action == "publish":
                changed = await stub.PublishJourney(pb.PublishJourneyRequest(name=name, version=version))
            elif action == "pause":
                changed = await stub.PauseJourney(pb.PauseJourneyRequest(name=name))
            else:
                changed = await stub.ArchiveJourney(pb.ArchiveJourneyRequest(name=name))
            return changed

    journey = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(journey))
        return
    console.print(f"journey/{journey.name} {_status(journey)} (version {journey.version})", highlight=False)


@journeys_app.command("publish")
def publish(
    name: JourneyName,
    version: Version = 0,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """Publish a saved version: people enter it from now on (a paused journey resumes).

    Instances in flight keep the version they entered with. Exit 1 when there is no such journey."""
    _change_status("publish", name, version, as_json, data_dir, target, token)


@journeys_app.command("pause")
def pause(
    name: JourneyName,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """Pause a journey: nobody enters and no instance advances until it is published again."""
    _change_status("pause", name, 0, as_json, data_dir, target, token)


@journeys_app.command("archive")
def archive(
    name: JourneyName,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """Archive a journey, for good: its instances in flight exit ("archived")."""
    _change_status("archive", name, 0, as_json, data_dir, target, token)


@journeys_app.command("templates")
def templates(
    as_yaml: Annotated[bool, typer.Option("--yaml", help="print them as YAML that `apply -f` reads")] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """List the workspace's message templates (the latest version of each)."""
    from onefold.cli.journeys_yaml import template_document
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.ListTemplatesResponse:
        async with journeys_stub(conn) as stub:
            found: pb.ListTemplatesResponse = await stub.ListTemplates(pb.ListTemplatesRequest())
            return found

    found = run_async(conn, call)
    if as_json:
        print_json([_as_dict(t) for t in found.templates])
        return
    if as_yaml:
        sys.stdout.write(dump_documents([template_document(t) for t in found.templates]))
        return
    print_table(
        ("name", "channel", "version", "subject", "updated", "by"),
        [
            (t.name, _channel(t.channel), str(t.version), t.subject, _when(t.updated_at), t.updated_by)
            for t in found.templates
        ],
    )


# --- instances -----------------------------------------------------------------------------------


def _property(text: str) -> tuple[str, Any]:
    """`k=v` of --property: v as JSON when it reads as JSON (42, true, "x", [1]), else as text."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise typer.BadParameter(f"write a property as key=value (got {text!r})", param_hint="--property")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


@journeys_app.command("enter")
def enter(
    name: JourneyName,
    profile_id: ProfileId,
    key: EntityKey = "",
    properties: Annotated[
        list[str] | None,
        typer.Option(
            "--property",
            help="an entry property key=value (repeatable; the value read as JSON when it is JSON)",
        ),
    ] = None,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """Enter a person into a published journey now (its API trigger, or any other: a test).

    Exit 1 when the journey does not take them (reentry, cooldown, not published) or does not exist."""
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    given = dict(_property(text) for text in properties or [])
    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.EnterJourneyResponse:
        request = pb.EnterJourneyRequest(journey=name, profile_id=profile_id, entity_key=key)
        request.properties.update(given)
        async with journeys_stub(conn) as stub:
            answer: pb.EnterJourneyResponse = await stub.EnterJourney(request)
            return answer

    answer = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(answer))
    elif answer.entered:
        ref = answer.instance.ref
        console.print(
            f"entered {name} (version {ref.version}, entry {ref.entry_seq}); now at step {answer.instance.step}",
            highlight=False,
        )
    else:
        err_console.print(f"not entered: {answer.refused}", highlight=False)
    if not answer.entered:
        raise typer.Exit(EXIT_NOT_ENTERED)


@journeys_app.command("instance")
def instance(
    name: JourneyName,
    profile_id: ProfileId,
    key: EntityKey = "",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """A person's instance of a journey: where it is, what it waits for, its messages and goals.

    Exit 1 when they never entered it."""
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.Instance:
        async with journeys_stub(conn) as stub:
            found: pb.Instance = await stub.GetInstance(
                pb.GetInstanceRequest(journey=name, profile_id=profile_id, entity_key=key)
            )
            return found

    found = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(found))
        return
    exited = found.status == pb.INSTANCE_STATUS_EXITED
    facts = [
        ("status", "exited" if exited else "active"),
        ("version", str(found.ref.version)),
        ("entry", str(found.ref.entry_seq)),
        ("step", found.step),
        ("waits until", _when(found.fires_at)),
        ("entered", _when(found.entered_at)),
        ("exited", f"{_when(found.exited_at)} ({found.exit_reason})" if exited else ""),
        ("split arm", found.arm + (" (control)" if found.control else "")),
        ("goals reached", ", ".join(found.goals)),
    ]
    title = f"{name} for {found.ref.profile_id}" + (f" ({key})" if key else "")
    print_table(("", "value"), [(fact, value) for fact, value in facts if value], title=title)
    if found.messages:
        print_table(
            ("message", "step", "channel", "template", "status"),
            [(m.message_id, m.step, _channel(m.channel), m.template, m.status) for m in found.messages],
            title="messages",
        )


@journeys_app.command("history")
def history(
    name: JourneyName,
    profile_id: ProfileId,
    key: EntityKey = "",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """Why a person did or did not get a message: each event of their instances, with its consent evidence.

    Every event of each entry into the journey, oldest first; a send or a suppression names the
    consent ledger event it rests on (look it up with `onefold audit history`)."""
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.InstanceHistoryResponse:
        async with journeys_stub(conn) as stub:
            found: pb.InstanceHistoryResponse = await stub.InstanceHistory(
                pb.InstanceHistoryRequest(journey=name, profile_id=profile_id, entity_key=key)
            )
            return found

    found = run_async(conn, call, not_found_exit())
    if as_json:
        print_json([_as_dict(entry) for entry in found.entries])
        return
    print_table(
        ("at", "entry", "event", "step", "message", "detail", "consent evidence"),
        [
            (
                _when(e.at),
                str(e.entry_seq),
                e.event,
                e.step,
                e.message_id,
                e.detail,
                e.consent_evidence_id,
            )
            for e in found.entries
        ],
        title=f"{name} for {profile_id}" + (f" ({key})" if key else ""),
    )


# --- stats ---------------------------------------------------------------------------------------


@journeys_app.command("stats")
def stats(
    name: JourneyName,
    version: Annotated[
        int, typer.Option("--version", min=0, help="this version only (default: every one)")
    ] = 0,
    html: Annotated[
        Path | None, typer.Option("--html", help="also write a self-contained HTML report to this file")
    ] = None,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: JourneysTarget = None,
    token: Token = None,
) -> None:
    """How a journey does: entered, active, exited by reason; per step the messages sent,
    suppressed, delivered and failed; conversions, revenue and the uplift over the control group."""
    from onefold.cli.journeys_report import (
        STEP_COLUMNS,
        exit_rows,
        stats_html,
        step_rows,
        summary_rows,
        uplift_sentence,
    )
    from onefold.contracts.journeys.v1 import journeys_pb2 as pb

    conn = journeys_connection(data_dir, target, token)

    async def call() -> pb.JourneyStatsResponse:
        async with journeys_stub(conn) as stub:
            found: pb.JourneyStatsResponse = await stub.JourneyStats(
                pb.JourneyStatsRequest(journey=name, version=version)
            )
            return found

    found = run_async(conn, call, not_found_exit())
    if html is not None:
        try:
            html.write_text(stats_html(found, version), encoding="utf-8")
        except OSError as error:
            raise fail(f"cannot write {html}: {error.strerror or error}") from None
    if as_json:
        print_json(_as_dict(found))
        return
    scope = f"version {version}" if version else "every version"
    print_table(("", "count"), summary_rows(found), title=f"{found.journey or name} ({scope})")
    if found.exits_by_reason:
        print_table(("exit reason", "exited", "share"), exit_rows(found), title="exits")
    if found.steps:
        print_table(STEP_COLUMNS, step_rows(found), title="steps")
    console.print(uplift_sentence(found), highlight=False, soft_wrap=True)
    if html is not None:
        err_console.print(f"report written to {html}", highlight=False)
