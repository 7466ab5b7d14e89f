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
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onefold.cli.client import (
    CliError,
    Connection,
    DataDir,
    Token,
    connect,
    fail,
    run_async,
    service_stub,
)
from onefold.cli.output import console, print_json, print_table

# gRPC and the generated messages load in the commands that call the service, so that
# `onefold profile --help` stays quick.
if TYPE_CHECKING:
    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    from onefold.contracts.identity.v1 import identity_pb2 as pb
    from onefold.contracts.identity.v1 import identity_pb2_grpc
    from onefold.contracts.ingest.v1 import ingest_pb2

profile_app = typer.Typer(
    help="Look up profiles (by id or TYPE:VALUE), their timeline and merge history; merge and unmerge.",
    no_args_is_help=True,
)

SERVICE = "identity"
EXIT_NOT_FOUND = 1
_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# onefold.ingest.v1.EventType without its prefix (a test keeps the two equal).
EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
# `profile get` with many ids: calls in flight at once on its one channel.
CONCURRENT_LOOKUPS = 16

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


def identity_stub(conn: Connection) -> AbstractAsyncContextManager[identity_pb2_grpc.IdentityServiceStub]:
    from onefold.contracts.identity.v1 import identity_pb2_grpc

    return service_stub(conn, identity_pb2_grpc.IdentityServiceStub)


def identity_connection(data_dir: Path, target: str | None, token: str | None) -> Connection:
    return connect(data_dir, target, token, service=SERVICE)


def not_found_exit() -> dict[grpc.StatusCode, int]:
    import grpc

    return {grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND}


def parse_identifier(text: str, what: str = "an identifier") -> pb.Identifier:
    from onefold.contracts.identity.v1 import identity_pb2 as pb

    type_name, colon, value = text.partition(":")
    if not colon or not _TYPE.match(type_name) or not value.strip():
        raise CliError(f"{what} is written TYPE:VALUE, e.g. email:ann@example.com (got {text!r})")
    return pb.Identifier(type=type_name, value=value)


def parse_ref(text: str) -> pb.ProfileRef:
    """TYPE:VALUE names a profile by identifier; anything without a colon is a profile id."""
    from onefold.contracts.identity.v1 import identity_pb2 as pb

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
    from google.protobuf.timestamp_pb2 import Timestamp

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
    from google.protobuf.json_format import MessageToDict

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
    from google.protobuf.json_format import MessageToDict

    print_table(
        ("type", "value", "linked at", "first on profile"),
        [
            (
                item.identifier.type,
                item.identifier.value,
                _when(item.linked_at),
                "" if item.original_profile_id == profile.profile_id else item.original_profile_id,
            )
            for item in profile.identifiers
        ],
        title="identifiers",
    )
    print_table(
        ("name", "value", "source", "updated at"),
        [
            (
                trait.name,
                json.dumps(_whole_numbers(MessageToDict(trait.value)), ensure_ascii=False),
                trait.source_id,
                _when(trait.updated_at),
            )
            for trait in profile.traits
        ],
        title="traits",
    )


def _event_summary(event: ingest_pb2.TrackingEvent) -> str:
    from onefold.contracts.ingest.v1 import ingest_pb2

    kind = ingest_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_").lower()
    name = event.event or event.name
    return f"{kind} '{name}'" if name else kind


def _history_row(record: pb.MergeRecord) -> tuple[str, ...]:
    from onefold.contracts.identity.v1 import identity_pb2 as pb

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


def read_refs(refs: Sequence[str], file: str | None) -> list[str]:
    """The profile references of `profile get`: the arguments, then the lines of --file (`-` is
    stdin); blank lines and lines starting with # are skipped."""
    found = [ref for ref in refs if ref.strip()]
    if file is not None:
        try:
            lines: Iterable[str] = sys.stdin if file == "-" else Path(file).read_text().splitlines()
        except OSError as error:
            raise CliError(f"cannot read --file {file}: {error.strerror}") from None
        found.extend(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not found:
        raise CliError("name at least one profile: an id or TYPE:VALUE, or --file with one per line")
    return found


@dataclass(frozen=True)
class Lookup:
    """One `profile get` reference and what the service answered for it."""

    ref: str
    profile: pb.Profile | None = None
    error: str = ""  # the service's sentence: no such profile, or why this reference was refused
    exit_code: int = 0  # EXIT_NOT_FOUND, or 2 for a reference the service refused

    def to_dict(self) -> dict[str, Any]:
        if self.profile is None:
            return {"ref": self.ref, "error": self.error}
        return {"ref": self.ref, "profile": _as_dict(self.profile)}


async def look_up(conn: Connection, requests: Sequence[tuple[str, pb.GetProfileRequest]]) -> list[Lookup]:
    """GetProfile for each reference, concurrently over one channel (the identity service has no
    batch call). A reference that is unknown or refused is reported in its Lookup; a failure that
    concerns every call (unreachable service, refused credential) is raised."""
    import asyncio

    import grpc

    from onefold.cli.client import describe_rpc_error

    per_reference = {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    limit = asyncio.Semaphore(CONCURRENT_LOOKUPS)
    async with identity_stub(conn) as stub:

        async def one(ref: str, request: pb.GetProfileRequest) -> Lookup:
            async with limit:
                try:
                    return Lookup(ref, profile=await stub.GetProfile(request))
                except grpc.aio.AioRpcError as error:
                    if error.code() not in per_reference:
                        raise
                    code = EXIT_NOT_FOUND if error.code() == grpc.StatusCode.NOT_FOUND else 2
                    return Lookup(ref, error=describe_rpc_error(error, conn.target, SERVICE), exit_code=code)

        return list(await asyncio.gather(*(one(ref, request) for ref, request in requests)))


def print_lookups(lookups: Sequence[Lookup]) -> None:
    """One row per reference, in the order given."""
    rows = []
    for lookup in lookups:
        profile = lookup.profile
        if profile is None:
            rows.append((lookup.ref, "", lookup.error, "", "", ""))
            continue
        flags = [
            flag for flag, on in (("erased", profile.erased), ("merged", bool(profile.redirected_from))) if on
        ]
        rows.append(
            (
                lookup.ref,
                profile.profile_id,
                ", ".join(["found", *flags]),
                str(len(profile.identifiers)),
                str(profile.event_count),
                _when(profile.last_seen),
            )
        )
    print_table(("reference", "profile id", "result", "identifiers", "events", "last seen"), rows)


@profile_app.command("get")
def get(
    refs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="REF...",
            help="profile ids, or identifiers as TYPE:VALUE (email:a@b.com)",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option("--file", "-f", help="read more references from this file, one per line (- for stdin)"),
    ] = None,
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
    """Show profiles: one in full (identifiers, traits, counts), several as one row each.

    Exit 1 when a reference matches no profile (the others are still shown)."""
    from onefold.contracts.identity.v1 import identity_pb2 as pb

    axes = {"recorded": pb.TIME_AXIS_RECORDED, "occurred": pb.TIME_AXIS_OCCURRED}
    try:
        names = read_refs(refs or [], file)
        if axis.lower() not in axes:
            raise CliError(f"--axis must be recorded or occurred (got {axis!r})")
        moment = _moment(as_of, "--as-of")
        requests = [(name, pb.GetProfileRequest(profile=parse_ref(name))) for name in names]
    except CliError as error:
        raise _usage(error) from None
    if moment is not None:
        for _, request in requests:
            request.as_of.CopyFrom(_timestamp(moment))
            request.axis = axes[axis.lower()]
    conn = identity_connection(data_dir, target, token)
    lookups = run_async(conn, lambda: look_up(conn, requests))
    failed = [lookup for lookup in lookups if lookup.profile is None]
    if len(lookups) == 1 and file is None:  # one reference: the profile in full, as before batches
        if failed:
            raise fail(failed[0].error, failed[0].exit_code)
        profile = lookups[0].profile
        assert profile is not None
        if as_json:
            print_json(_as_dict(profile))
        else:
            print_profile(
                profile,
                f"profile {profile.profile_id}" + (f" as of {as_of} ({axis.lower()})" if moment else ""),
            )
        return
    if as_json:
        print_json([lookup.to_dict() for lookup in lookups])
    else:
        print_lookups(lookups)
    if failed:
        raise fail(
            f"{len(failed)} of {len(lookups)} references matched no profile or were refused (see above)",
            max(lookup.exit_code for lookup in failed),
        )


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
    from onefold.contracts.common.v1 import pagination_pb2
    from onefold.contracts.identity.v1 import identity_pb2 as pb
    from onefold.contracts.ingest.v1 import ingest_pb2

    try:
        request = pb.ListTimelineRequest(profile=parse_ref(ref), event_names=event or [])
        for name in kind or []:
            if name.lower() not in EVENT_TYPES:
                raise CliError(f"--type must be one of {', '.join(EVENT_TYPES)} (got {name!r})")
            request.types.append(ingest_pb2.EventType.Value(f"EVENT_TYPE_{name.upper()}"))
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

    entries = run_async(conn, call, not_found_exit())
    if as_json:
        print_json([_as_dict(entry) for entry in entries])
        return
    print_table(
        ("occurred at", "event", "messageId", "event id", "resolved to"),
        [
            (
                _when(entry.occurred_at),
                _event_summary(entry.event),
                entry.event.message_id,
                entry.event_id,
                entry.resolved_profile_id,
            )
            for entry in entries
        ],
        title=f"{len(entries)} event(s), newest first",
    )


@profile_app.command("history")
def history(
    ref: Ref,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: IdentityTarget = None,
    token: Token = None,
) -> None:
    """Merges, unmerges and refused links of the profile, oldest first, with their evidence."""
    from onefold.contracts.identity.v1 import identity_pb2 as pb

    try:
        request = pb.GetMergeHistoryRequest(profile=parse_ref(ref))
    except CliError as error:
        raise _usage(error) from None
    conn = identity_connection(data_dir, target, token)

    async def call() -> list[pb.MergeRecord]:
        async with identity_stub(conn) as stub:
            return list((await stub.GetMergeHistory(request)).records)

    records = run_async(conn, call, not_found_exit())
    if as_json:
        print_json([_as_dict(record) for record in records])
        return
    print_table(
        ("recorded at", "what", "profiles", "rule", "evidence event", "reason", "by"),
        [_history_row(record) for record in records],
        title=f"{len(records)} record(s)",
    )


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
    from onefold.contracts.identity.v1 import identity_pb2 as pb

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

    parts = run_async(conn, call, not_found_exit())
    if as_json:
        print_json([_as_dict(part) for part in parts])
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
    from onefold.contracts.identity.v1 import identity_pb2 as pb

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

    profile = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(profile))
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
    from onefold.contracts.identity.v1 import identity_pb2 as pb

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
    from onefold.contracts.identity.v1 import identity_pb2 as pb

    lines: list[str] = []
    async with identity_stub(conn) as stub:
        for spec in specs:
            before = await stub.GetRules(pb.GetRulesRequest())
            stored = await stub.SetRules(pb.SetRulesRequest(rules=spec.rules))
            if before.version and stored.version == before.version:
                lines.append(f"identity rules unchanged (version {stored.version})")
            else:
                lines.append(f"identity rules set (version {stored.version})")
    return lines
