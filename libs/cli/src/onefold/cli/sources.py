"""`onefold sources ...` and `onefold apply -f source.yaml`: sources, write keys and tracking plans.

A tracking plan file (JSON or YAML) looks like:

    mode: block            # allow | flag | block: what a violation of a planned event does
    unplannedMode: allow   # what a track event missing from the plan does
    events:
      Order Completed: {type: object, required: [orderId], properties: {orderId: {type: string}}}
    identifyTraits: {type: object, properties: {email: {type: string}}}

and a source document (`onefold apply -f`) is:

    kind: Source
    name: web
    rateLimitPerSecond: 200   # optional; only used when the source is created
    trackingPlan: {...}       # optional; as above. Absent: the source's plan is left as it is.

Several documents may be given in one file (`---`). Applying is idempotent: a source is found by name
(created when absent) and its plan is set only when it differs. A `kind: IdentityRules` document in
the same file sets the workspace's identity resolution rules (see profile.py), and a
`kind: ConsentModel` document its consent purposes, channels and notices (see consent.py), and
`kind: Segment`, `Tag`, `ComputedTrait`, `Lifecycle` and `Rfm` documents the segments service's
definitions (segments_yaml.py, docs/segments.md), `kind: Journey` and `Template` documents the
journeys service's journeys and message templates (journeys_yaml.py, docs/journeys.md), and
`kind: Destination` documents the destinations service's destinations (destinations_yaml.py,
docs/destinations.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onefold.cli.client import (
    CliError,
    Connection,
    DataDir,
    Target,
    Token,
    connect,
    fail,
    ingest_stub,
    run_async,
)
from onefold.cli.options import (
    ApplyConsentTarget,
    ApplyDestinationsTarget,
    ApplyJourneysTarget,
    ApplySegmentsTarget,
    Json,
)
from onefold.cli.output import console, print_json, print_table
from onefold.cli.profile import (
    apply_rules,
    identity_connection,
    is_identity_rules,
    parse_rules_documents,
)

# gRPC, the generated messages and YAML load in the commands that use them, not for `--help`.
if TYPE_CHECKING:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb
    from onefold.contracts.ingest.v1 import ingest_pb2_grpc

sources_app = typer.Typer(
    help="Create, list and manage ingest sources and their write keys.", no_args_is_help=True
)

PLAN_MODES = ("allow", "flag", "block")  # onefold.ingest.v1.PlanMode without its prefix
PLAN_KEYS = {
    "mode": "mode",
    "unplannedMode": "unplanned_mode",
    "unplanned_mode": "unplanned_mode",
    "events": "events",
    "eventSchemas": "events",
    "event_schemas": "events",
    "identifyTraits": "identify_traits",
    "identify_traits": "identify_traits",
    "identifyTraitsSchema": "identify_traits",
    "identify_traits_schema": "identify_traits",
}
PLAN_KEY_NAMES = ("mode", "unplannedMode", "events", "identifyTraits")
SOURCE_KEY_NAMES = ("kind", "apiVersion", "name", "rateLimitPerSecond", "trackingPlan")
SOURCE_KEYS = {
    "kind": "kind",
    "apiVersion": "api_version",
    "name": "name",
    "rateLimitPerSecond": "rate",
    "rate_limit_per_second": "rate",
    "rateLimit": "rate",
    "trackingPlan": "plan",
    "tracking_plan": "plan",
}


# --- plan documents ------------------------------------------------------------------------------


def _canonical(schema: Any, where: str) -> str:
    if isinstance(schema, str):  # JSON text given as a string
        try:
            schema = json.loads(schema)
        except ValueError as error:
            raise CliError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(schema, dict | bool):
        raise CliError(f"{where} must be a JSON Schema object")
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _checked_keys(
    document: dict[str, Any], allowed: dict[str, str], names: tuple[str, ...], where: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in document.items():
        name = allowed.get(str(key))
        if name is None:
            raise CliError(f"{where}: unknown key '{key}' (expected one of: {', '.join(names)})")
        if name in out:
            raise CliError(f"{where}: '{key}' is given twice (under different spellings)")
        out[name] = value
    return out


def _mode(value: Any, where: str) -> pb.PlanMode.ValueType:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    name = str(value).lower() if value is not None else "allow"
    if name not in PLAN_MODES:
        raise CliError(f"{where} must be one of allow, flag, block (got {value!r})")
    return pb.PlanMode.Value(f"PLAN_MODE_{name.upper()}")


def plan_from_document(document: Any, where: str) -> pb.TrackingPlan:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    if not isinstance(document, dict):
        raise CliError(f"{where} must be a mapping with mode, unplannedMode, events, identifyTraits")
    fields = _checked_keys(document, PLAN_KEYS, PLAN_KEY_NAMES, where)
    plan = pb.TrackingPlan(
        mode=_mode(fields.get("mode", "allow"), f"{where}: mode"),
        unplanned_mode=_mode(fields.get("unplanned_mode", "allow"), f"{where}: unplannedMode"),
    )
    events = fields.get("events") or {}
    if not isinstance(events, dict):
        raise CliError(f"{where}: events must map event names to JSON Schemas")
    for name, schema in events.items():
        plan.event_schemas[str(name)] = _canonical(schema, f"{where}: the schema of event '{name}'")
    if fields.get("identify_traits") is not None:
        plan.identify_traits_schema = _canonical(fields["identify_traits"], f"{where}: identifyTraits")
    return plan


def load_document(path: Path) -> list[Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        if path.suffix.lower() == ".json":
            return [json.loads(text)]
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except json.JSONDecodeError as error:
        raise CliError(
            f"{path} is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except yaml.MarkedYAMLError as error:
        # The mark says where the parser gave up; 1-based as editors count.
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise CliError(f"{path} is not valid YAML: {error.problem or error.context}{where}") from None
    except (ValueError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CliError(
            f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first}"
        ) from None


def load_plan(path: Path) -> pb.TrackingPlan:
    documents = load_document(path)
    if len(documents) != 1:
        raise CliError(f"{path} must hold exactly one tracking plan")
    return plan_from_document(documents[0], str(path))


def _plan_json(plan: pb.TrackingPlan) -> tuple[int, int, dict[str, Any], Any]:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    def parsed(text: str) -> Any:
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text

    return (
        plan.mode or pb.PLAN_MODE_ALLOW,
        plan.unplanned_mode or pb.PLAN_MODE_ALLOW,
        {name: parsed(text) for name, text in plan.event_schemas.items()},
        parsed(plan.identify_traits_schema),
    )


def plans_equal(current: pb.Source, wanted: pb.TrackingPlan) -> bool:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    have = current.tracking_plan if current.HasField("tracking_plan") else pb.TrackingPlan()
    return _plan_json(have) == _plan_json(wanted)


# --- RPC helpers ---------------------------------------------------------------------------------


async def all_sources(stub: ingest_pb2_grpc.IngestServiceStub) -> AsyncIterator[pb.Source]:
    from onefold.contracts.common.v1 import pagination_pb2
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    token = ""
    while True:
        page = await stub.ListSources(
            pb.ListSourcesRequest(page=pagination_pb2.PageRequest(page_size=200, page_token=token))
        )
        for source in page.sources:
            yield source
        token = page.page.next_page_token
        if not token:
            return


def _duration_seconds(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    if not match:
        raise typer.BadParameter("use a number with s, m, h or d, e.g. 90s, 30m, 24h, 7d")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _plan_summary(source: pb.Source) -> str:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    if not source.HasField("tracking_plan"):
        return "-"
    plan = source.tracking_plan

    def mode_name(mode: int) -> str:
        return pb.PlanMode.Name(mode).removeprefix("PLAN_MODE_").lower().replace("unspecified", "allow")  # type: ignore[arg-type]

    return (
        f"v{plan.version} {mode_name(plan.mode)}/{mode_name(plan.unplanned_mode)} "
        f"({len(plan.event_schemas)} events{', traits' if plan.identify_traits_schema else ''})"
    )


# --- commands ------------------------------------------------------------------------------------


@sources_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="a name for people, unique in the workspace by convention")],
    plan: Annotated[Path | None, typer.Option("--plan", help="tracking plan file (JSON or YAML)")] = None,
    rate: Annotated[int, typer.Option("--rate", min=0, help="events per second (0 = service default)")] = 0,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """Create a source; its write key is printed once (only a hash is stored)."""
    from google.protobuf.json_format import MessageToDict

    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    conn = connect(data_dir, target, token)

    async def call() -> pb.CreateSourceResponse:
        request = pb.CreateSourceRequest(name=name, rate_limit_per_second=rate)
        if plan is not None:
            request.tracking_plan.CopyFrom(load_plan(plan))
        async with ingest_stub(conn) as stub:
            response: pb.CreateSourceResponse = await stub.CreateSource(request)
            return response

    created = run_async(conn, call)
    if as_json:
        print_json({"source": MessageToDict(created.source), "write_key": created.write_key})
        return
    console.print(f"source {created.source.source_id} '{created.source.name}' created", highlight=False)
    console.print("write key (shown once, keep it safe):", highlight=False)
    console.print(created.write_key, highlight=False, soft_wrap=True)


@sources_app.command("list")
def list_sources(
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """List the workspace's sources (never their write keys)."""
    from google.protobuf.json_format import MessageToDict

    conn = connect(data_dir, target, token)

    async def call() -> list[pb.Source]:
        async with ingest_stub(conn) as stub:
            return [source async for source in all_sources(stub)]

    found = run_async(conn, call)
    if as_json:
        print_json([MessageToDict(s) for s in found])
        return
    print_table(
        ("id", "name", "key", "plan", "rate/s", "disabled", "created"),
        [
            (
                source.source_id,
                source.name,
                f"…{source.write_key_hint}",
                _plan_summary(source),
                str(source.rate_limit_per_second or "default"),
                "yes" if source.disabled else "",
                source.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
                if source.HasField("created_at")
                else "",
            )
            for source in found
        ],
    )


@sources_app.command("rotate-key")
def rotate_key(
    source_id: Annotated[str, typer.Argument(help="the source's id (src_…)")],
    grace: Annotated[str, typer.Option("--grace", help="how long the old key keeps working, e.g. 24h")] = "0",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """Issue a new write key; the old one keeps working for the grace period."""
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    seconds = _duration_seconds(grace)
    conn = connect(data_dir, target, token)

    async def call() -> pb.RotateWriteKeyResponse:
        async with ingest_stub(conn) as stub:
            response: pb.RotateWriteKeyResponse = await stub.RotateWriteKey(
                pb.RotateWriteKeyRequest(source_id=source_id, grace_seconds=seconds)
            )
            return response

    rotated = run_async(conn, call)
    if as_json:
        print_json({"source_id": source_id, "write_key": rotated.write_key, "grace_seconds": seconds})
        return
    console.print(
        f"new write key for {source_id} (shown once; the old one works for {seconds} s more):",
        highlight=False,
    )
    console.print(rotated.write_key, highlight=False, soft_wrap=True)


@sources_app.command("disable")
def disable(
    source_id: Annotated[str, typer.Argument(help="the source's id (src_…)")],
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
) -> None:
    """Stop collecting from a source: its write key stops working. Idempotent."""
    from google.protobuf.json_format import MessageToDict

    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    conn = connect(data_dir, target, token)

    async def call() -> pb.Source:
        async with ingest_stub(conn) as stub:
            source: pb.Source = await stub.DisableSource(pb.DisableSourceRequest(source_id=source_id))
            return source

    source = run_async(conn, call)
    if as_json:
        print_json(MessageToDict(source))
        return
    console.print(f"source {source.source_id} '{source.name}' is disabled", highlight=False)


# --- apply ---------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    name: str
    rate: int
    plan: pb.TrackingPlan | None


def parse_source_documents(documents: list[Any], where: str) -> list[SourceSpec]:
    from onefold.cli.consent import is_consent_model
    from onefold.cli.destinations_yaml import KINDS as DESTINATION_KINDS
    from onefold.cli.destinations_yaml import is_destination_document
    from onefold.cli.journeys_yaml import KINDS as JOURNEY_KINDS
    from onefold.cli.journeys_yaml import is_journey_document
    from onefold.cli.segments_yaml import KINDS, is_definition

    specs: list[SourceSpec] = []
    for number, document in enumerate(documents, start=1):
        at = where if len(documents) == 1 else f"{where} (document {number})"
        if is_identity_rules(document):
            continue  # for the identity service
        if is_consent_model(document):
            continue  # for the consent service (consent.py)
        if is_definition(document):
            continue  # for the segments service (segments.py)
        if is_journey_document(document):
            continue  # for the journeys service (journeys.py)
        if is_destination_document(document):
            continue  # for the destinations service (destinations.py)
        if not isinstance(document, dict):
            raise CliError(f"{at} must be a mapping with kind: Source")
        # The kind first: a misspelt one must not be read as a Source and refused for its keys.
        if document.get("kind") != "Source":
            raise CliError(
                f"{at}: kind must be 'Source', 'IdentityRules', 'ConsentModel', a segments kind "
                f"({', '.join(KINDS)}), a journeys kind ({', '.join(JOURNEY_KINDS)}) or a destinations "
                f"kind ({', '.join(DESTINATION_KINDS)}) "
                f"(got {document.get('kind')!r})"
            )
        fields = _checked_keys(document, SOURCE_KEYS, SOURCE_KEY_NAMES, at)
        name = fields.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CliError(f"{at}: name is required")
        rate = fields.get("rate", 0)
        if not isinstance(rate, int) or isinstance(rate, bool) or rate < 0:
            raise CliError(f"{at}: rateLimitPerSecond must be a whole number ≥ 0")
        plan = (
            plan_from_document(fields["plan"], f"{at}: trackingPlan")
            if fields.get("plan") is not None
            else None
        )
        specs.append(SourceSpec(name=name.strip(), rate=rate, plan=plan))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise CliError(f"{where} names a source twice")
    return specs


async def apply_specs(conn: Connection, specs: list[SourceSpec]) -> list[str]:
    from onefold.contracts.ingest.v1 import ingest_pb2 as pb

    lines: list[str] = []
    async with ingest_stub(conn) as stub:
        existing: dict[str, pb.Source] = {}
        async for source in all_sources(stub):
            if not source.disabled:
                existing.setdefault(source.name, source)
        for spec in specs:
            current = existing.get(spec.name)
            if current is None:
                request = pb.CreateSourceRequest(name=spec.name, rate_limit_per_second=spec.rate)
                if spec.plan is not None:
                    request.tracking_plan.CopyFrom(spec.plan)
                created = await stub.CreateSource(request)
                lines.append(
                    f"source/{spec.name} created: {created.source.source_id}\n"
                    f"  write key (shown once, keep it safe): {created.write_key}"
                )
                continue
            changes: list[str] = []
            if spec.plan is not None and not plans_equal(current, spec.plan):
                updated = await stub.SetTrackingPlan(
                    pb.SetTrackingPlanRequest(source_id=current.source_id, tracking_plan=spec.plan)
                )
                changes.append(f"tracking plan set (version {updated.tracking_plan.version})")
            if spec.rate and spec.rate != current.rate_limit_per_second:
                changes.append(
                    f"note: rateLimitPerSecond is {current.rate_limit_per_second or 'the default'}; "
                    "it is only set when a source is created"
                )
            lines.append(f"source/{spec.name} ({current.source_id}) " + ("; ".join(changes) or "unchanged"))
    return lines


def apply(
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            help="a YAML or JSON file of kind: Source / IdentityRules / ConsentModel / Segment / Tag / "
            "ComputedTrait / Lifecycle / Rfm / Journey / Template / Destination documents",
        ),
    ],
    data_dir: DataDir = Path(".onefold"),
    target: Target = None,
    token: Token = None,
    identity_target: Annotated[
        str | None,
        typer.Option(
            "--identity-target",
            envvar="ONEFOLD_IDENTITY_TARGET",
            help="identity gRPC host:port for IdentityRules (default: from <data-dir>/run/endpoints.json)",
            show_default=False,
        ),
    ] = None,
    consent_target: ApplyConsentTarget = None,
    segments_target: ApplySegmentsTarget = None,
    journeys_target: ApplyJourneysTarget = None,
    destinations_target: ApplyDestinationsTarget = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="segments definitions, journeys, templates and destinations only: check them and "
            "store nothing (definitions: print how many profiles each would hold now)",
        ),
    ] = False,
    publish: Annotated[
        bool,
        typer.Option("--publish", help="journeys: publish each saved version (else it is saved as a draft)"),
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="do not follow the segments definitions' backfills")
    ] = False,
) -> None:
    """Declare sources (create those absent by name, set tracking plans that changed), the
    workspace's identity rules, its consent model (purposes, channels, notices) and segments
    definitions (applied in the order they read each other; changed ones are backfilled), journeys
    and message templates (together, all or none), and destinations (together, all or none; a new
    webhook's signing secret is printed once)."""
    from onefold.cli.consent import apply_consent, consent_documents, parse_consent_documents
    from onefold.cli.destinations import apply_destinations
    from onefold.cli.destinations_yaml import parse_destination_documents
    from onefold.cli.journeys import apply_journeys
    from onefold.cli.journeys_yaml import parse_journey_documents
    from onefold.cli.segments import apply_segments
    from onefold.cli.segments_yaml import parse_definition_documents

    try:
        documents = load_document(file)
        where = str(file)
        rules = parse_rules_documents(
            [
                (where if len(documents) == 1 else f"{where} (document {number})", document)
                for number, document in enumerate(documents, start=1)
                if is_identity_rules(document)
            ]
        )
        consent_models = parse_consent_documents(consent_documents(documents, where), file.parent)
        specs = parse_source_documents(documents, where)
        definitions = parse_definition_documents(documents, where)
        journeys = parse_journey_documents(documents, where)
        destinations = parse_destination_documents(documents, where)
        if dry_run and (specs or rules or consent_models):
            raise CliError(
                "--dry-run checks segments definitions, journeys, templates and destinations only; "
                f"{where} also holds sources, identity rules or a consent model"
            )
        if publish and not journeys.journeys:
            raise CliError(f"--publish publishes journeys; {where} holds none")
    except CliError as error:
        raise fail(error.message, error.code) from None
    if specs or not (rules or consent_models or definitions or journeys or destinations):
        conn = connect(data_dir, target, token)
        for line in run_async(conn, lambda: apply_specs(conn, specs)):
            console.print(line, highlight=False, soft_wrap=True)
    if rules:
        identity = identity_connection(data_dir, identity_target, token)
        for line in run_async(identity, lambda: apply_rules(identity, rules)):
            console.print(line, highlight=False, soft_wrap=True)
    if consent_models:
        apply_consent(consent_models, data_dir, consent_target, token)
    if definitions:
        apply_segments(definitions, data_dir, segments_target, token, dry_run=dry_run, wait=not no_wait)
    if journeys:
        apply_journeys(journeys, data_dir, journeys_target, token, dry_run=dry_run, publish=publish)
    if destinations:
        apply_destinations(destinations, data_dir, destinations_target, token, dry_run=dry_run)
