"""`onefold destinations …` and the destinations of `onefold apply -f` (docs/destinations.md).

Destinations are read from YAML by destinations_yaml.py; this module calls the destinations service
(onefold.destinations.v1.DestinationsService) and prints. A file's destinations go in one
ApplyDestinations request, so they are stored all or none. A new webhook's signing secret is
printed once by `apply`; `onefold destinations secret NAME` shows it again.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onefold.cli.client import Connection, DataDir, Token, connect, fail, run_async, service_stub
from onefold.cli.options import Json
from onefold.cli.output import CliError, console, err_console, print_json, print_table

if TYPE_CHECKING:
    import grpc
    from google.protobuf import timestamp_pb2

    from onefold.contracts.destinations.v1 import destinations_pb2 as pb
    from onefold.contracts.destinations.v1 import destinations_pb2_grpc

SERVICE = "destinations"
EXIT_NOT_FOUND = 1
DEAD_LETTERS_PAGE = 200

destinations_app = typer.Typer(
    help="Destinations: list, get, status, pause, resume, archive; dead letters, replay, signing secrets.",
    no_args_is_help=True,
)

DestinationsTarget = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="ONEFOLD_DESTINATIONS_TARGET",
        help="destinations gRPC host:port (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]
DestinationName = Annotated[str, typer.Argument(help="the destination's name")]


# --- talking to the service ----------------------------------------------------------------------


def destinations_connection(data_dir: Path, target: str | None, token: str | None) -> Connection:
    return connect(data_dir, target, token, service=SERVICE)


def destinations_stub(
    conn: Connection,
) -> AbstractAsyncContextManager[destinations_pb2_grpc.DestinationsServiceStub]:
    from onefold.contracts.destinations.v1 import destinations_pb2_grpc

    return service_stub(conn, destinations_pb2_grpc.DestinationsServiceStub)


def not_found_exit() -> dict[grpc.StatusCode, int]:
    import grpc

    return {grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND}


def _as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def _when(stamp: timestamp_pb2.Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return ""
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _status(status: pb.DestinationStatus.ValueType) -> str:
    from onefold.cli.destinations_yaml import STATUS_NAMES

    return STATUS_NAMES.get(status, "?")


def human_duration(seconds: float) -> str:
    """An age in its two largest units, as people read it: 45s, 4m 05s, 2h 10m, 3d 4h."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def parse_moment(text: str, option: str, now: datetime) -> datetime:
    """`--since`/`--until`: an ISO-8601 time with its offset (2026-12-06T09:00:00Z), or a duration
    ago (2h, 30m, 7d, 1d12h) counted back from `now`."""
    from onefold.cli.segments_yaml import YamlPath, parse_duration

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            ago = parse_duration(text, YamlPath(option))
        except CliError:
            raise typer.BadParameter(
                f"use an ISO-8601 time such as 2026-12-06T09:00:00Z or a duration ago such as 2h, 30m "
                f"or 7d (got {text!r})",
                param_hint=option,
            ) from None
        return now - ago.ToTimedelta()
    if moment.tzinfo is None:
        raise typer.BadParameter(
            f"give the time's offset from UTC, e.g. 2026-12-06T09:00:00Z or +08:00 (got {text!r})",
            param_hint=option,
        )
    return moment.astimezone(UTC)


def replay_window(
    since: str | None, until: str | None, dead_letters: bool, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """The (since, until) a replay asks for: a time range, or none with --dead-letters."""
    if dead_letters:
        if since is not None or until is not None:
            raise typer.BadParameter(
                "replay either the dead letters or a time range, not both", param_hint="--dead-letters"
            )
        return None, None
    if since is None:
        raise typer.BadParameter(
            "give --since (a time, or a duration ago such as 2h) or --dead-letters", param_hint="--since"
        )
    start = parse_moment(since, "--since", now)
    end = parse_moment(until, "--until", now) if until is not None else None
    if end is not None and end <= start:
        raise typer.BadParameter("must be after --since", param_hint="--until")
    return start, end


# --- apply ---------------------------------------------------------------------------------------


class Refused(Exception):
    """The service refused the file's destinations (all of them: nothing was stored)."""

    def __init__(self, message: str, violations: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations


_REQUEST_FIELD = re.compile(r"^destinations\[(\d+)\](?:\.(.*))?$")


def violations_by_destination(
    destinations: Sequence[pb.Destination], violations: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The request's field violations (`destinations[1].webhook.timeout_seconds`) as the
    destination and its YAML path (`destination/crm: webhook.timeout`); a violation about the
    request itself keeps its field as given."""
    from onefold.cli.destinations_yaml import yaml_path

    located = []
    for field, text in violations:
        matched = _REQUEST_FIELD.match(field)
        if matched and int(matched.group(1)) < len(destinations):
            label = f"destination/{destinations[int(matched.group(1))].name}"
            path = yaml_path(matched.group(2) or "")
            located.append((f"{label}: {path}" if path else label, text))
        else:
            located.append((field, text))
    return located


@asynccontextmanager
async def _refusals(destinations: Sequence[pb.Destination]) -> AsyncIterator[None]:
    """What the service refuses (INVALID_ARGUMENT, FAILED_PRECONDITION) as Refused."""
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
        raise Refused(message, violations_by_destination(destinations, violations)) from None


def applied_lines(response: pb.ApplyDestinationsResponse, *, dry_run: bool) -> list[str]:
    """What `apply` prints of each destination: set, unchanged or valid, and a new webhook's
    signing secret (the only time apply shows it)."""
    lines = []
    for applied in response.applied:
        label = f"destination/{applied.name}"
        if not applied.changed:
            lines.append(f"{label} unchanged (version {applied.version})")
        elif dry_run:
            lines.append(f"{label} valid (dry run)")
        else:
            lines.append(f"{label} set (version {applied.version})")
        if applied.signing_secret:
            lines.append(
                f"  signing secret (keep it safe; `onefold destinations secret {applied.name}` shows it "
                f"again): {applied.signing_secret}"
            )
    return lines


def apply_destinations(
    destinations: list[pb.Destination],
    data_dir: Path,
    target: str | None,
    token: str | None,
    *,
    dry_run: bool,
) -> None:
    """`onefold apply -f` for the file's destinations: one request, all or none."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    conn = destinations_connection(data_dir, target, token)

    async def call() -> pb.ApplyDestinationsResponse:
        request = pb.ApplyDestinationsRequest(destinations=destinations, dry_run=dry_run)
        async with destinations_stub(conn) as stub, _refusals(destinations):
            applied: pb.ApplyDestinationsResponse = await stub.ApplyDestinations(request)
            return applied

    try:
        response = run_async(conn, call)
    except Refused as refused:
        for where, text in refused.violations:
            err_console.print(f"  {where}: {text}", highlight=False, markup=False, soft_wrap=True)
        # The service's own message lists the same fields by their API paths: the YAML paths are above.
        raise fail(
            "the destinations were refused, nothing was applied (each field above)"
            if refused.violations
            else f"the destinations were refused: {refused.message}"
        ) from None
    for line in applied_lines(response, dry_run=dry_run):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


# --- definitions ---------------------------------------------------------------------------------


def _sends(destination: pb.Destination) -> str:
    """What flows to a destination, in a few words: `2 events; segments vip; traits email, plan`."""
    parts = []
    if destination.events:
        parts.append(f"{len(destination.events)} event{'s' if len(destination.events) > 1 else ''}")
    if destination.segments:
        parts.append("segments " + ", ".join(destination.segments))
    if destination.traits:
        parts.append("traits " + ", ".join(destination.traits))
    return "; ".join(parts)


@destinations_app.command("list")
def list_destinations(
    archived: Annotated[bool, typer.Option("--archived", help="include archived destinations")] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """List the workspace's destinations: the latest version of each and its status."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    conn = destinations_connection(data_dir, target, token)

    async def call() -> pb.ListDestinationsResponse:
        async with destinations_stub(conn) as stub:
            found: pb.ListDestinationsResponse = await stub.ListDestinations(
                pb.ListDestinationsRequest(include_archived=archived)
            )
            return found

    found = run_async(conn, call)
    if as_json:
        print_json([_as_dict(d) for d in found.destinations])
        return
    print_table(
        ("name", "kind", "status", "version", "purpose", "sends", "updated", "description"),
        [
            (
                d.name,
                d.WhichOneof("target") or "",
                _status(d.status),
                str(d.version),
                d.purpose,
                _sends(d),
                _when(d.updated_at),
                d.description,
            )
            for d in found.destinations
        ],
    )


@destinations_app.command("get")
def get(
    name: DestinationName,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """Print a destination as the YAML that `onefold apply -f` reads (or --json).

    Its version, status and when it was saved come first, as a comment. Exit 1 when there is no such
    destination."""
    from onefold.cli.destinations_yaml import destination_document
    from onefold.cli.journeys import dump_documents
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    conn = destinations_connection(data_dir, target, token)

    async def call() -> pb.Destination:
        async with destinations_stub(conn) as stub:
            found: pb.Destination = await stub.GetDestination(pb.GetDestinationRequest(name=name))
            return found

    destination = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(destination))
        return
    sys.stdout.write(
        f"# version {destination.version} ({_status(destination.status)}, saved "
        f"{_when(destination.updated_at) or '?'})\n" + dump_documents([destination_document(destination)])
    )


def _set_status(
    name: str,
    status: pb.DestinationStatus.ValueType,
    as_json: bool,
    data_dir: Path,
    target: str | None,
    token: str | None,
) -> None:
    """Pause, resume or archive `name`, and print what the destination is now."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    conn = destinations_connection(data_dir, target, token)

    async def call() -> pb.Destination:
        async with destinations_stub(conn) as stub:
            changed: pb.Destination = await stub.SetDestinationStatus(
                pb.SetDestinationStatusRequest(name=name, status=status)
            )
            return changed

    destination = run_async(conn, call, not_found_exit())
    if as_json:
        print_json(_as_dict(destination))
        return
    console.print(
        f"destination/{destination.name} {_status(destination.status)} (version {destination.version})",
        highlight=False,
        markup=False,
    )


@destinations_app.command("pause")
def pause(
    name: DestinationName,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """Pause a destination: deliveries are still queued, none is delivered until it is resumed."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    _set_status(name, pb.DESTINATION_STATUS_PAUSED, as_json, data_dir, target, token)


@destinations_app.command("resume")
def resume(
    name: DestinationName,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """Resume a paused destination: what was queued meanwhile is delivered, in order."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    _set_status(name, pb.DESTINATION_STATUS_ACTIVE, as_json, data_dir, target, token)


@destinations_app.command("archive")
def archive(
    name: DestinationName,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """Archive a destination, for good: nothing more is queued and what was queued is dropped."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    _set_status(name, pb.DESTINATION_STATUS_ARCHIVED, as_json, data_dir, target, token)


# --- health --------------------------------------------------------------------------------------


def status_rows(health: Sequence[pb.DestinationHealth]) -> list[tuple[str, ...]]:
    """One row of `destinations status` per destination: counts, lag, circuit, last error."""
    rows: list[tuple[str, ...]] = []
    for h in health:
        lag = human_duration(h.lag_seconds) if h.lag_seconds > 0 else "-"
        last_error = f"{h.last_error} ({_when(h.last_error_at)})" if h.last_error else ""
        rows.append(
            (
                h.name,
                h.kind,
                _status(h.status),
                str(h.queued),
                str(h.retrying),
                str(h.delivered),
                str(h.suppressed),
                str(h.dead_letters),
                lag,
                h.circuit + (f", backfilling {', '.join(h.backfilling)}" if h.backfilling else ""),
                last_error,
            )
        )
    return rows


STATUS_COLUMNS = (
    "name",
    "kind",
    "status",
    "queued",
    "retrying",
    "delivered",
    "suppressed",
    "dead letters",
    "lag",
    "circuit",
    "last error",
)


@destinations_app.command("status")
def status(
    name: Annotated[str, typer.Argument(help="one destination (default: every one)")] = "",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """How deliveries go, per destination: counts, lag, circuit and the last error.

    Queued, retrying, delivered, suppressed and dead-lettered deliveries; the lag (the age of the
    oldest delivery not yet delivered); the circuit (closed, open, half-open). Exit 1 when the named destination does not exist."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    conn = destinations_connection(data_dir, target, token)

    async def call() -> pb.DestinationsStatusResponse:
        async with destinations_stub(conn) as stub:
            found: pb.DestinationsStatusResponse = await stub.DestinationsStatus(
                pb.DestinationsStatusRequest(name=name)
            )
            return found

    found = run_async(conn, call, not_found_exit())
    if as_json:
        print_json([health_json(h) for h in found.destinations])
        return
    print_table(STATUS_COLUMNS, status_rows(found.destinations))


def health_json(h: pb.DestinationHealth) -> dict[str, Any]:
    """A destination's health for scripts: every field, counts as numbers, status as in the table."""
    return {
        "name": h.name,
        "kind": h.kind,
        "status": _status(h.status),
        "queued": h.queued,
        "retrying": h.retrying,
        "delivered": h.delivered,
        "suppressed": h.suppressed,
        "dead_letters": h.dead_letters,
        "lag_seconds": round(h.lag_seconds, 3),
        "circuit": h.circuit,
        "backfilling": list(h.backfilling),
        "last_error": h.last_error,
        "last_error_at": _iso(h.last_error_at) if h.HasField("last_error_at") else None,
        "last_delivered_at": _iso(h.last_delivered_at) if h.HasField("last_delivered_at") else None,
    }


def _iso(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


@destinations_app.command("dead-letters")
def dead_letters(
    name: DestinationName,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 100,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """List a destination's dead letters, each with its error.

    Dead letters ran out of attempts or were refused by the receiver;
    `onefold destinations replay NAME --dead-letters` queues them again."""
    from onefold.cli.destinations_yaml import DELIVERY_KIND_NAMES
    from onefold.contracts.common.v1 import pagination_pb2
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    conn = destinations_connection(data_dir, target, token)

    async def call() -> list[pb.DeadLetter]:
        found: list[pb.DeadLetter] = []
        page_token = ""
        async with destinations_stub(conn) as stub:
            while len(found) < limit:
                page: pb.ListDeadLettersResponse = await stub.ListDeadLetters(
                    pb.ListDeadLettersRequest(
                        name=name,
                        page=pagination_pb2.PageRequest(
                            page_size=min(DEAD_LETTERS_PAGE, limit - len(found)), page_token=page_token
                        ),
                    )
                )
                found.extend(page.dead_letters)
                page_token = page.page.next_page_token
                if not page_token:
                    break
        return found[:limit]

    found = run_async(conn, call, not_found_exit())
    if as_json:
        print_json([_as_dict(letter) for letter in found])
        return
    print_table(
        ("delivery", "profile", "kind", "name", "attempts", "error", "queued at"),
        [
            (
                letter.delivery_id,
                letter.profile_id,
                DELIVERY_KIND_NAMES.get(letter.kind, "?"),
                letter.name,
                str(letter.attempts),
                letter.error,
                _when(letter.queued_at),
            )
            for letter in found
        ],
        title=f"{len(found)} dead letter(s) of {name}",
    )


@destinations_app.command("replay")
def replay(
    name: DestinationName,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="deliveries queued from this time: ISO 8601 (2026-12-06T09:00:00Z) or a duration ago (2h, 7d)",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="… and before this time (default: now); as --since", show_default=False),
    ] = None,
    dead: Annotated[
        bool, typer.Option("--dead-letters", help="queue the destination's dead letters again instead")
    ] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """Deliver again, from the log: the deliveries queued in a time range (those delivered or
    dead-lettered; never one consent refused), or the dead letters.

    Each is queued again under its own id, so a receiver that already has it sees the same
    idempotency key. Consent is checked again at delivery."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    start, end = replay_window(since, until, dead, datetime.now(UTC))
    conn = destinations_connection(data_dir, target, token)

    async def call() -> pb.ReplayResponse:
        request = pb.ReplayRequest(name=name, dead_letters=dead)
        if start is not None:
            request.since.FromDatetime(start)
        if end is not None:
            request.until.FromDatetime(end)
        async with destinations_stub(conn) as stub:
            replayed: pb.ReplayResponse = await stub.Replay(request)
            return replayed

    replayed = run_async(conn, call, not_found_exit())
    if as_json:
        print_json({"name": name, "queued": replayed.queued})
        return
    if dead:
        said = f"{name}: {replayed.queued} dead letters to deliver again"
    else:
        window = f"from {start:%Y-%m-%dT%H:%M:%S}Z" + (
            f" to {end:%Y-%m-%dT%H:%M:%S}Z" if end is not None else " on"
        )
        said = f"{name}: {replayed.queued} deliveries to deliver again (those queued {window})"
    console.print(said, highlight=False, markup=False)


@destinations_app.command("secret")
def secret(
    name: DestinationName,
    rotate: Annotated[
        bool,
        typer.Option("--rotate", help="issue a new secret; the old one stops signing at once"),
    ] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: DestinationsTarget = None,
    token: Token = None,
) -> None:
    """Show a webhook destination's signing secret (whsec_…); --rotate replaces it.

    The receiver verifies each request's webhook-signature with it (docs/destinations.md)."""
    from onefold.contracts.destinations.v1 import destinations_pb2 as pb

    conn = destinations_connection(data_dir, target, token)

    async def call() -> pb.SigningSecretResponse:
        async with destinations_stub(conn) as stub:
            answer: pb.SigningSecretResponse = await stub.SigningSecret(
                pb.SigningSecretRequest(name=name, rotate=rotate)
            )
            return answer

    answer = run_async(conn, call, not_found_exit())
    if as_json:
        print_json({"name": name, "secret": answer.secret, "rotated": rotate})
        return
    if rotate:
        err_console.print(
            f"new signing secret for {name}: requests are signed with it from now on; give it to the "
            "receiver (the previous one no longer signs)",
            highlight=False,
            markup=False,
        )
    console.print(answer.secret, highlight=False, soft_wrap=True, markup=False)
