"""`onefold profile ...` (the identity service's profile 360, merges and unmerges) and the
`kind: IdentityRules` documents of `onefold apply -f`.

A profile is named by its id or by any identifier, as TYPE:VALUE (`email:ann@example.com`,
`user_id:u1`, `phone:+8613800138000`); values are normalised by the service, so `email:Ann@Example.com`
finds the same profile. Exit status: 0 done, 1 no such profile (or event), 2 a usage, credential or
connection error.

An identity rules document (`onefold apply -f identity-rules.yaml`) is:

    kind: IdentityRules
    identifiers:                      # only the types whose defaults change; the rest keep theirs
      - type: email
        blocked_values: [test@example.com]
      - type: member_card
        priority: 3                   # lower wins when a merge would break a limit
        limit: 1                      # at most this many per profile
        normalise: trim               # email, phone, lower, trim, none
        paths: [traits.member_card]   # where the value is found in an event
    default_phone_region: CN
    trait_source_precedence: [crm, pos]

The document is the workspace's whole rule set: applying it replaces the previous one.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onefold.cli.ingest_client import (
    CHANNEL_OPTIONS,
    CliError,
    Connection,
    DataDir,
    Token,
    connect,
    fail,
    run_async,
    same_apart_from_version,
)
from onefold.contracts.common.v1 import pagination_pb2
from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.platform.client import authenticated_channel

profile_app = typer.Typer(
    help="Look up profiles (by id or TYPE:VALUE), their timeline and merge history; merge and unmerge.",
    no_args_is_help=True,
)
console = Console()

SERVICE = "identity"
EXIT_NOT_FOUND = 1
NOT_FOUND_EXIT = {grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND}
_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
EVENT_TYPES = {
    name.removeprefix("EVENT_TYPE_").lower(): value
    for name, value in ingest_pb2.EventType.items()
    if value != ingest_pb2.EVENT_TYPE_UNSPECIFIED
}

IdentityTarget = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="ONEFOLD_IDENTITY_TARGET",
        help="identity gRPC host:port (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]
Ref = Annotated[str, typer.Argument(help="a profile id, or an identifier as TYPE:VALUE (email:a@b.com)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
Reason = Annotated[str, typer.Option("--reason", help="why (kept in the merge history)")]


# --- talking to the identity service -------------------------------------------------------------


@asynccontextmanager
async def identity_stub(conn: Connection) -> AsyncIterator[identity_pb2_grpc.IdentityServiceStub]:
    channel = authenticated_channel(conn.target, conn.token, options=CHANNEL_OPTIONS)
    try:
        yield identity_pb2_grpc.IdentityServiceStub(channel)
    finally:
        await channel.close()


def identity_connection(data_dir: Path, target: str | None, token: str | None) -> Connection:
    return connect(data_dir, target, token, service=SERVICE)


def parse_identifier(text: str, what: str = "an identifier") -> pb.Identifier:
    type_name, colon, value = text.partition(":")
    if not colon or not _TYPE.match(type_name) or not value.strip():
        raise CliError(f"{what} is written TYPE:VALUE, e.g. email:ann@example.com (got {text!r})")
    return pb.Identifier(type=type_name, value=value)


def parse_ref(text: str) -> pb.ProfileRef:
    """TYPE:VALUE names a profile by identifier; anything without a colon is a profile id."""
    text = text.strip()
    if not text:
        raise CliError("name the profile by its id or by an identifier as TYPE:VALUE")
    if ":" not in text:
        return pb.ProfileRef(profile_id=text)
    return pb.ProfileRef(identifier=parse_identifier(text, "a profile reference"))


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"{option} must be an ISO 8601 time, e.g. 2026-01-01T00:00:00Z (got {text!r})"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # no zone: UTC


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _usage(error: CliError) -> typer.Exit:
    return fail(error.message, error.code)


def _when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _whole_numbers(value: Any) -> Any:
    """JSON numbers come back from a protobuf Value as floats: show 33, not 33.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    return value


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


# --- printing ------------------------------------------------------------------------------------


def print_profile(profile: pb.Profile, heading: str = "") -> None:
    flags = [flag for flag, on in (("erased", profile.erased), ("merge-protected", profile.protected)) if on]
    title = heading or f"profile {profile.profile_id}"
    if profile.redirected_from:
        title += f" (redirected from merged profile {profile.redirected_from})"
    console.print(
        f"[bold]{title}[/bold]" + (f"  [red]{', '.join(flags)}[/red]" if flags else ""), highlight=False
    )
    console.print(
        f"events: {profile.event_count}   first seen: {_when(profile.first_seen) or '-'}   "
        f"last seen: {_when(profile.last_seen) or '-'}",
        highlight=False,
    )
    if profile.merged_profile_ids:
        console.print(f"merged in: {', '.join(profile.merged_profile_ids)}", highlight=False)
    identifiers = Table(title="identifiers", show_header=True, title_justify="left")
    for column in ("type", "value", "linked at", "first on profile"):
        identifiers.add_column(column)
    for item in profile.identifiers:
        identifiers.add_row(
            escape(item.identifier.type),
            escape(item.identifier.value),  # people's data: never read as rich markup
            _when(item.linked_at),
            "" if item.original_profile_id == profile.profile_id else item.original_profile_id,
        )
    console.print(identifiers)
    traits = Table(title="traits", show_header=True, title_justify="left")
    for column in ("name", "value", "source", "updated at"):
        traits.add_column(column)
    for trait in profile.traits:
        value = json.dumps(_whole_numbers(MessageToDict(trait.value)), ensure_ascii=False)
        traits.add_row(escape(trait.name), escape(value), escape(trait.source_id), _when(trait.updated_at))
    console.print(traits)


def _event_summary(event: ingest_pb2.TrackingEvent) -> str:
    kind = ingest_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_").lower()
    name = event.event or event.name
    return f"{kind} '{name}'" if name else kind


def _history_row(record: pb.MergeRecord) -> tuple[str, ...]:
    kind = pb.MergeRecord.Kind.Name(record.kind).removeprefix("KIND_").lower().replace("_", " ")
    if record.kind == pb.MergeRecord.KIND_MERGED:
        what = f"{record.merged_id} into {record.survivor_id}"
    elif record.kind == pb.MergeRecord.KIND_UNMERGED:
        what = f"{record.survivor_id} into " + ", ".join(p.profile_id for p in record.parts)
    else:
        what = f"on {record.survivor_id}" + (f" (held by {record.merged_id})" if record.merged_id else "")
    return (
        _when(record.recorded_at),
        kind,
        what,
        record.rule,
        record.evidence_event_id,
        record.reason,
        record.actor,
    )


# --- commands ------------------------------------------------------------------------------------


@profile_app.command("get")
def get(
    ref: Ref,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="the profile as of this time (ISO 8601, e.g. 2026-01-01T00:00:00Z)"),
    ] = None,
    axis: Annotated[
        str,
        typer.Option(
            "--axis",
            help="with --as-of: recorded (what the service knew then) or occurred (what had happened)",
        ),
    ] = "recorded",
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: IdentityTarget = None,
    token: Token = None,
) -> None:
    """Show a profile: identifiers, traits, counts (exit 1 when no profile matches)."""
    axes = {"recorded": pb.TIME_AXIS_RECORDED, "occurred": pb.TIME_AXIS_OCCURRED}
    try:
        request = pb.GetProfileRequest(profile=parse_ref(ref))
        if axis.lower() not in axes:
            raise CliError(f"--axis must be recorded or occurred (got {axis!r})")
        moment = _moment(as_of, "--as-of")
    except CliError as error:
        raise _usage(error) from None
    if moment is not None:
        request.as_of.CopyFrom(_timestamp(moment))
        request.axis = axes[axis.lower()]
    conn = identity_connection(data_dir, target, token)

    async def call() -> pb.Profile:
        async with identity_stub(conn) as stub:
            profile: pb.Profile = await stub.GetProfile(request)
            return profile

    profile = run_async(conn, call, NOT_FOUND_EXIT)
    if as_json:
        _print_json(_as_dict(profile))
        return
    heading = f"profile {profile.profile_id}" + (f" as of {as_of} ({axis.lower()})" if moment else "")
    print_profile(profile, heading)


@profile_app.command("timeline")
def timeline(
    ref: Ref,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many events")] = 50,
    event: Annotated[
        list[str] | None, typer.Option("--event", help="only track events / pages of this name (repeatable)")
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--type", help=f"only this kind: {', '.join(EVENT_TYPES)} (repeatable)"),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="occurred at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="occurred at or before (ISO 8601)")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: IdentityTarget = None,
    token: Token = None,
) -> None:
    """The profile's events, newest first (everything merged into it included)."""
    try:
        request = pb.ListTimelineRequest(profile=parse_ref(ref), event_names=event or [])
        for name in kind or []:
            value = EVENT_TYPES.get(name.lower())
            if value is None:
                raise CliError(f"--type must be one of {', '.join(EVENT_TYPES)} (got {name!r})")
            request.types.append(value)
        for option, text, field in (("--since", since, "since"), ("--until", until, "until")):
            moment = _moment(text, option)
            if moment is not None:
                getattr(request, field).CopyFrom(_timestamp(moment))
    except CliError as error:
        raise _usage(error) from None
    conn = identity_connection(data_dir, target, token)

    async def call() -> list[pb.TimelineEntry]:
        entries: list[pb.TimelineEntry] = []
        token = ""
        async with identity_stub(conn) as stub:
            while len(entries) < limit:
                request.page.CopyFrom(
                    pagination_pb2.PageRequest(page_size=min(500, limit - len(entries)), page_token=token)
                )
                page = await stub.ListTimeline(request)
                entries.extend(page.entries)
                token = page.page.next_page_token
                if not token:
                    break
        return entries[:limit]

    entries = run_async(conn, call, NOT_FOUND_EXIT)
    if as_json:
        _print_json([_as_dict(entry) for entry in entries])
        return
    table = Table(show_header=True, title=f"{len(entries)} event(s), newest first", title_justify="left")
    for column in ("occurred at", "event", "messageId", "event id", "resolved to"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            _when(entry.occurred_at),
            escape(_event_summary(entry.event)),
            escape(entry.event.message_id),
            entry.event_id,
            entry.resolved_profile_id,
        )
    console.print(table)


@profile_app.command("history")
def history(
    ref: Ref,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: IdentityTarget = None,
    token: Token = None,
) -> None:
    """Merges, unmerges and refused links of the profile, oldest first, with their evidence."""
    try:
        request = pb.GetMergeHistoryRequest(profile=parse_ref(ref))
    except CliError as error:
        raise _usage(error) from None
    conn = identity_connection(data_dir, target, token)

    async def call() -> list[pb.MergeRecord]:
        async with identity_stub(conn) as stub:
            return list((await stub.GetMergeHistory(request)).records)

    records = run_async(conn, call, NOT_FOUND_EXIT)
    if as_json:
        _print_json([_as_dict(record) for record in records])
        return
    table = Table(show_header=True, title=f"{len(records)} record(s)", title_justify="left")
    for column in ("recorded at", "what", "profiles", "rule", "evidence event", "reason", "by"):
        table.add_column(column)
    for record in records:
        table.add_row(*(escape(cell) for cell in _history_row(record)))
    console.print(table)


@profile_app.command("unmerge")
def unmerge(
    ref: Ref,
    reason: Reason,
    identifier: Annotated[
        str | None, typer.Option("--identifier", help="split along the links this TYPE:VALUE made")
    ] = None,
    event_id: Annotated[
        str | None, typer.Option("--event", help="split along the links this ingest event id made")
    ] = None,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: IdentityTarget = None,
    token: Token = None,
) -> None:
    """Split a wrongly merged profile back into its parts (by identifier or by event)."""
    try:
        if (identifier is None) == (event_id is None):
            raise CliError("name what to split along: --identifier TYPE:VALUE or --event ID (one of them)")
        if not reason.strip():
            raise CliError("--reason must say why")
        request = pb.UnmergeProfileRequest(profile=parse_ref(ref), reason=reason)
        if identifier is not None:
            request.identifier.CopyFrom(parse_identifier(identifier, "--identifier"))
        else:
            request.event_id = (event_id or "").strip()
    except CliError as error:
        raise _usage(error) from None
    conn = identity_connection(data_dir, target, token)

    async def call() -> list[pb.Profile]:
        async with identity_stub(conn) as stub:
            return list((await stub.UnmergeProfile(request)).profiles)

    parts = run_async(conn, call, NOT_FOUND_EXIT)
    if as_json:
        _print_json([_as_dict(part) for part in parts])
        return
    console.print(
        f"unmerged into {len(parts)} profiles: {', '.join(p.profile_id for p in parts)}", highlight=False
    )
    for part in parts:
        print_profile(part)


@profile_app.command("merge")
def merge(
    survivor: Annotated[str, typer.Argument(help="the profile that lives on (id or TYPE:VALUE)")],
    merged: Annotated[str, typer.Argument(help="the profile merged into it (id or TYPE:VALUE)")],
    reason: Reason,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: IdentityTarget = None,
    token: Token = None,
) -> None:
    """Merge two profiles by hand; the merged id redirects to the survivor (undo with unmerge)."""
    try:
        if not reason.strip():
            raise CliError("--reason must say why")
        request = pb.MergeProfilesRequest(
            survivor=parse_ref(survivor), merged=parse_ref(merged), reason=reason
        )
    except CliError as error:
        raise _usage(error) from None
    conn = identity_connection(data_dir, target, token)

    async def call() -> pb.Profile:
        async with identity_stub(conn) as stub:
            return (await stub.MergeProfiles(request)).profile

    profile = run_async(conn, call, NOT_FOUND_EXIT)
    if as_json:
        _print_json(_as_dict(profile))
        return
    console.print(f"merged into {profile.profile_id}", highlight=False)
    print_profile(profile)


# --- onefold apply: kind: IdentityRules ----------------------------------------------------------

RULES_KEYS = {
    "kind": "kind",
    "apiVersion": "api_version",
    "identifiers": "identifiers",
    "default_phone_region": "default_phone_region",
    "defaultPhoneRegion": "default_phone_region",
    "trait_source_precedence": "trait_source_precedence",
    "traitSourcePrecedence": "trait_source_precedence",
}
RULES_KEY_NAMES = ("kind", "apiVersion", "identifiers", "default_phone_region", "trait_source_precedence")
IDENTIFIER_KEYS = {
    "type": "type",
    "priority": "priority",
    "limit": "limit",
    "normalise": "normalise",
    "normalize": "normalise",
    "blocked_values": "blocked_values",
    "blockedValues": "blocked_values",
    "paths": "paths",
}
IDENTIFIER_KEY_NAMES = ("type", "priority", "limit", "normalise", "blocked_values", "paths")


def _checked(
    document: dict[Any, Any], allowed: dict[str, str], names: Sequence[str], where: str
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


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else None
    if items is None or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in items):
        raise CliError(f"{where} must be a list of strings")
    return [str(v) for v in items]


def _whole(value: Any, where: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CliError(f"{where} must be a whole number ≥ 1")
    return value


def is_identity_rules(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") == "IdentityRules"


def rules_from_document(document: dict[Any, Any], where: str) -> pb.IdentityRules:
    """An IdentityRules message from a `kind: IdentityRules` document (the service validates the rest)."""
    fields = _checked(document, RULES_KEYS, RULES_KEY_NAMES, where)
    rules = pb.IdentityRules(
        trait_source_precedence=_strings(
            fields.get("trait_source_precedence"), f"{where}: trait_source_precedence"
        )
    )
    region = fields.get("default_phone_region")
    if region is not None:
        if not isinstance(region, str):
            raise CliError(f"{where}: default_phone_region must be a region code such as CN")
        rules.default_phone_region = region
    items = fields.get("identifiers") or []
    if not isinstance(items, list):
        raise CliError(f"{where}: identifiers must be a list of {{type, priority, limit, ...}} mappings")
    for index, item in enumerate(items):
        at = f"{where}: identifiers[{index}]"
        if not isinstance(item, dict):
            raise CliError(
                f"{at} must be a mapping with type, priority, limit, normalise, blocked_values, paths"
            )
        spec = _checked(item, IDENTIFIER_KEYS, IDENTIFIER_KEY_NAMES, at)
        type_name = spec.get("type")
        if not isinstance(type_name, str) or not type_name.strip():
            raise CliError(f"{at}: type is required")
        normalise = spec.get("normalise") or ""
        if not isinstance(normalise, str):
            raise CliError(f"{at}: normalise must be one of email, phone, lower, trim, none")
        rules.identifiers.add(
            type=type_name.strip(),
            priority=_whole(spec.get("priority"), f"{at}.priority"),
            limit=_whole(spec.get("limit"), f"{at}.limit"),
            normalise=normalise,
            blocked_values=_strings(spec.get("blocked_values"), f"{at}.blocked_values"),
            paths=_strings(spec.get("paths"), f"{at}.paths"),
        )
    return rules


@dataclass(frozen=True)
class RulesSpec:
    where: str
    rules: pb.IdentityRules


def parse_rules_documents(documents: Sequence[tuple[str, Any]]) -> list[RulesSpec]:
    """`documents`: (where, document) of each `kind: IdentityRules` document of the file."""
    specs = [RulesSpec(where, rules_from_document(document, where)) for where, document in documents]
    if len(specs) > 1:
        raise CliError(
            f"{specs[1].where}: a workspace has one set of identity rules; put them in one document"
        )
    return specs


async def apply_rules(conn: Connection, specs: Sequence[RulesSpec]) -> list[str]:
    lines: list[str] = []
    async with identity_stub(conn) as stub:
        for spec in specs:
            before = await stub.GetRules(pb.GetRulesRequest())
            stored = await stub.SetRules(pb.SetRulesRequest(rules=spec.rules))
            if before.version and same_apart_from_version(before, stored):
                lines.append(f"identity rules unchanged (applied again as version {stored.version})")
            else:
                lines.append(f"identity rules set (version {stored.version})")
    return lines
