"""`onefold audit …`: what a compliance officer asks of Onefold.

    onefold audit consent SUBJECT [--as-of T] [--known-at T] [--json]   state per purpose / channel
    onefold audit history SUBJECT [--json]                               every change, with its proof
    onefold audit verify [SERVICE] [--json]                              is each service's log intact,
                                                                         and what its witnesses saw?
    onefold audit report SUBJECT --html out.html                         all of it, for people

SUBJECT is a profile id, or TYPE:VALUE for an identifier the identity service resolves
(`email:a@example.com`, `user_id:42`, `phone:+8613800000000`); `profile:ID` names a profile id
explicitly. `--as-of` is what was true in the world at T (occurred time); `--known-at` is what the
ledger knew at T (recorded time). Times are ISO 8601; without a zone they are UTC.

Exit status: 0 done; 1 `audit verify` found a log that is not intact or disagreeing with its
witnesses (the position and the witness are named); 2 a usage, credential or connection error, or a
log that could not be verified.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from onefold.cli.client import CliError, Connection, DataDir, Token, err_console, fail
from onefold.cli.options import ConsentTarget, ServiceName, ServiceTarget
from onefold.cli.output import console, print_json, print_table
from onefold.cli.supervisor import SERVICES, operator_nats_settings, read_endpoints
from onefold.platform.config_error import ConfigError

# gRPC, NATS, the generated messages and the event log load in the functions that use them, so that
# `onefold audit --help` (and the consent commands borrowing the helpers here) start quickly.
if TYPE_CHECKING:
    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    from onefold.contracts.common.v1 import envelope_pb2
    from onefold.contracts.consent.v1 import consent_pb2 as pb
    from onefold.contracts.eventlog.v1 import eventlog_pb2
    from onefold.contracts.identity.v1 import identity_pb2
    from onefold.contracts.platform.v1 import platform_pb2
    from onefold.eventlog.digests import Witnessed
    from onefold.platform.config import NatsSettings

audit_app = typer.Typer(
    help="Audit consent (as of a time, with proof), verify the logs, and write reports.",
    no_args_is_help=True,
)

EXIT_NOT_INTACT = 1
EXIT_ERROR = 2
HASH_PREFIX = 12
VERIFY_TIMEOUT_SECONDS = 300.0
WITNESS_TIMEOUT_SECONDS = 60.0
MAX_EXPECTED = 100_000  # what EventLogService.Verify accepts per call
CALL_TIMEOUT_SECONDS = 60.0
_IDENTIFIER = re.compile(r"^([a-z][a-z0-9_]{0,63}):(.+)$", re.DOTALL)
_PROFILE_TYPES = {"profile", "profile_id"}

Subject = Annotated[
    str,
    typer.Argument(help="a profile id, or TYPE:VALUE of an identifier (e.g. email:a@example.com)"),
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


# --- arguments ------------------------------------------------------------------------------------


def parse_subject(text: str) -> identity_pb2.ProfileRef:
    from onefold.contracts.identity.v1 import identity_pb2

    text = text.strip()
    if not text:
        raise CliError("name the subject: a profile id, or TYPE:VALUE such as email:a@example.com")
    match = _IDENTIFIER.match(text)
    if match is None:
        return identity_pb2.ProfileRef(profile_id=text)
    kind, value = match.group(1), match.group(2).strip()
    if not value:
        raise CliError(f"the subject {text!r} has no value after '{kind}:'")
    if kind in _PROFILE_TYPES:
        return identity_pb2.ProfileRef(profile_id=value)
    return identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=kind, value=value))


def parse_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CliError(
            f"{option} must be an ISO 8601 time such as 2025-03-01T12:00:00Z or 2025-03-01 (got {text!r})"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def to_timestamp(moment: datetime) -> Timestamp:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# --- formatting -----------------------------------------------------------------------------------


def when(stamp: Timestamp | None, *, seconds: bool = True) -> str:
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return ""
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d")


def iso(stamp: Timestamp | None) -> str | None:
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def status_name(status: int) -> str:
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    return pb.ConsentStatus.Name(status).removeprefix("CONSENT_STATUS_").lower()  # type: ignore[arg-type]


def jurisdiction_name(value: int) -> str:
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    if not value:
        return ""
    return pb.Jurisdiction.Name(value).removeprefix("JURISDICTION_")  # type: ignore[arg-type]


def channel_name(channel: str) -> str:
    return channel or "all channels"


def short_type(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def evidence_dict(evidence: pb.Evidence) -> dict[str, Any]:
    return {
        "event_id": evidence.event_id,
        "position": evidence.position,
        "hash": evidence.hash.hex(),
        "event_type": evidence.event_type,
        "occurred_at": iso(evidence.occurred_at),
        "recorded_at": iso(evidence.recorded_at),
    }


def state_dict(state: pb.ConsentState) -> dict[str, Any]:
    return {
        "purpose_id": state.purpose_id,
        "channel": state.channel,
        "status": status_name(state.status),
        "notice_id": state.notice_id,
        "notice_version": state.notice_version,
        "jurisdiction": jurisdiction_name(state.jurisdiction),
        "guardian_given": state.guardian_given,
        "expires_at": iso(state.expires_at) if state.HasField("expires_at") else None,
        "evidence": evidence_dict(state.evidence),
    }


def event_dict(envelope: envelope_pb2.EventEnvelope) -> dict[str, Any] | None:
    """The ledger event carried by a history entry (decrypted by the service) as JSON, or None."""
    from google.protobuf import symbol_database
    from google.protobuf.json_format import MessageToDict

    try:
        message_class = symbol_database.Default().GetSymbol(envelope.type)
    except KeyError:
        return None
    return MessageToDict(message_class.FromString(envelope.payload), preserving_proto_field_name=True)


# --- calls ----------------------------------------------------------------------------------------


def _consent_connection(data_dir: Path, target: str | None, token: str | None) -> Connection:
    from onefold.cli.consent import service_connection

    try:
        return service_connection(data_dir, "consent", target, token)
    except CliError as error:
        raise fail(error.message, error.code) from None


async def _as_of(
    conn: Connection, subject: identity_pb2.ProfileRef, as_of: datetime | None, known_at: datetime | None
) -> pb.ConsentAsOfResponse:
    from onefold.cli.consent import channel_to
    from onefold.contracts.consent.v1 import consent_pb2 as pb
    from onefold.contracts.consent.v1 import consent_pb2_grpc

    request = pb.ConsentAsOfRequest(subject=subject)
    if as_of is not None:
        request.as_of.CopyFrom(to_timestamp(as_of))
    if known_at is not None:
        request.known_at.CopyFrom(to_timestamp(known_at))
    async with channel_to(conn) as channel:
        answer: pb.ConsentAsOfResponse = await consent_pb2_grpc.AuditServiceStub(channel).ConsentAsOf(
            request, timeout=CALL_TIMEOUT_SECONDS
        )
        return answer


async def _optional_model(channel: grpc.aio.Channel) -> pb.ConsentModel | None:
    """The workspace's model, for purpose names; None when the credential may not read it."""
    import grpc

    from onefold.contracts.consent.v1 import consent_pb2 as pb
    from onefold.contracts.consent.v1 import consent_pb2_grpc

    try:
        model: pb.ConsentModel = await consent_pb2_grpc.ConsentServiceStub(channel).GetModel(
            pb.GetModelRequest(), timeout=CALL_TIMEOUT_SECONDS
        )
        return model
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED):
            return None
        raise


def purpose_names(model: pb.ConsentModel | None) -> dict[str, str]:
    return {p.purpose_id: p.name for p in model.purposes if p.name} if model is not None else {}


# --- consent --------------------------------------------------------------------------------------


@audit_app.command("consent")
def consent(
    subject: Subject,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="what was true in the world at this time (occurred)")
    ] = None,
    known_at: Annotated[
        str | None, typer.Option("--known-at", help="what the ledger knew at this time (recorded)")
    ] = None,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """A subject's consent per purpose and channel, now or as of a time, with the evidence."""
    from onefold.cli.consent import channel_to, run_call

    try:
        ref = parse_subject(subject)
        moment = parse_time(as_of, "--as-of")
        knew = parse_time(known_at, "--known-at")
    except CliError as error:
        raise fail(error.message, error.code) from None
    conn = _consent_connection(data_dir, target, token)

    async def call() -> tuple[pb.ConsentAsOfResponse, pb.ConsentModel | None]:
        answer = await _as_of(conn, ref, moment, knew)
        async with channel_to(conn) as channel:
            return answer, await _optional_model(channel)

    answer, model = run_call("consent", conn, call)
    if as_json:
        document = {
            "profile_id": answer.profile_id,
            "as_of": moment.isoformat().replace("+00:00", "Z") if moment else None,
            "known_at": knew.isoformat().replace("+00:00", "Z") if knew else None,
            "events_replayed": answer.events_replayed,
            "restricted": answer.restricted,
            "objections": list(answer.objections),
            "states": [state_dict(s) for s in answer.states],
        }
        print_json(document)
        return
    names = purpose_names(model)
    title = f"consent of profile {answer.profile_id}"
    if moment is not None:
        title += f" as of {moment:%Y-%m-%d %H:%M:%S} UTC"
    if knew is not None:
        title += f", as the ledger knew it at {knew:%Y-%m-%d %H:%M:%S} UTC"
    rows = []
    colours = {"granted": "green", "withdrawn": "red", "expired": "yellow"}
    for state in answer.states:
        status = status_name(state.status)
        colour = colours.get(status, "white")
        purpose = state.purpose_id + (f" ({names[state.purpose_id]})" if state.purpose_id in names else "")
        rows.append(
            (
                escape(purpose),
                escape(channel_name(state.channel)),
                f"[{colour}]{status}[/{colour}]",
                escape(f"{state.notice_id} v{state.notice_version}") if state.notice_id else "",
                jurisdiction_name(state.jurisdiction),
                "yes" if state.guardian_given else "",
                when(state.expires_at, seconds=False) if state.HasField("expires_at") else "",
                when(state.evidence.occurred_at),
                f"#{state.evidence.position} {short_type(state.evidence.event_type)}",
                state.evidence.hash.hex()[:HASH_PREFIX],
            )
        )
    print_table(
        ("purpose", "channel", "status", "notice", "law", "guardian", "expires", "since", "evidence", "hash"),
        rows,
        title=escape(title),
        markup=True,
    )
    notes = [f"{answer.events_replayed} ledger event(s) replayed"]  # printed without markup
    if not answer.states:
        notes.append("no consent recorded")
    if answer.objections:
        notes.append("objections stand to: " + ", ".join(answer.objections))
    if answer.restricted:
        notes.append("processing is restricted (GDPR Art. 18, PIPL Art. 44)")
    console.print("; ".join(notes), highlight=False, markup=False)


# --- history --------------------------------------------------------------------------------------


def history_entry_dict(entry: pb.HistoryEntry) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return {
        **evidence_dict(entry.evidence),
        "type": entry.type,
        "summary": entry.summary,
        "proof": entry.proof,
        "actor": MessageToDict(entry.event.actor, preserving_proto_field_name=True),
        "event": event_dict(entry.event),
    }


def request_dict(request: pb.SubjectRequest) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    document = MessageToDict(request, preserving_proto_field_name=True)
    document.pop("export", None)  # the export itself is the subject's data, not the audit trail's
    return document


async def _history(conn: Connection, ref: identity_pb2.ProfileRef) -> pb.HistoryResponse | None:
    """The subject's history; None when nothing was ever recorded for it."""
    import grpc

    from onefold.cli.consent import channel_to
    from onefold.contracts.consent.v1 import consent_pb2 as pb
    from onefold.contracts.consent.v1 import consent_pb2_grpc

    async with channel_to(conn) as channel:
        try:
            answer: pb.HistoryResponse = await consent_pb2_grpc.AuditServiceStub(channel).History(
                pb.HistoryRequest(subject=ref), timeout=CALL_TIMEOUT_SECONDS
            )
            return answer
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND and ref.WhichOneof("ref") == "profile_id":
                return None
            raise


@audit_app.command("history")
def history(
    subject: Subject,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """Every change to a subject's consent, in the order recorded, with its proof."""
    from onefold.cli.consent import run_call

    try:
        ref = parse_subject(subject)
    except CliError as error:
        raise fail(error.message, error.code) from None
    conn = _consent_connection(data_dir, target, token)
    answer = run_call("consent", conn, lambda: _history(conn, ref))
    if answer is None:
        raise fail(f"no consent was ever recorded for profile {ref.profile_id}", EXIT_ERROR)
    if as_json:
        document = {
            "profile_id": answer.profile_id,
            "entries": [history_entry_dict(entry) for entry in answer.entries],
            "requests": [request_dict(r) for r in answer.requests],
        }
        print_json(document)
        return
    print_table(
        ("position", "occurred", "recorded", "what happened", "proof", "hash"),
        [
            (
                str(entry.evidence.position),
                when(entry.evidence.occurred_at),
                when(entry.evidence.recorded_at),
                entry.summary,
                entry.proof,
                entry.evidence.hash.hex()[:HASH_PREFIX],
            )
            for entry in answer.entries
        ],
        title=f"consent history of profile {answer.profile_id}",
    )
    console.print(f"{len(answer.entries)} change(s)", highlight=False)


# --- verify ---------------------------------------------------------------------------------------


@dataclass
class Verified:
    service: str
    target: str
    answer: eventlog_pb2.VerifyResponse | None = None
    error: str = ""
    witness_conflicts: list[str] = field(default_factory=list)  # records in the witness stream that disagree
    witnessed: int = 0  # hashes the witnesses vouch for, checked against the log
    from_file: bool = False  # the service was not running: its database file was read instead

    @property
    def ok(self) -> bool:
        return self.answer is not None and self.answer.ok and not self.witness_conflicts

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "service": self.service,
            "target": self.target,
            "witness_conflicts": self.witness_conflicts,
            "witnessed": self.witnessed,
            "from_file": self.from_file,
        }
        if self.answer is None:
            return {**document, "ok": None, "error": self.error}
        answer = self.answer
        return {
            **document,
            "ok": self.ok,
            "events_checked": answer.events_checked,
            "head_position": answer.head_position,
            "head_hash": answer.head_hash.hex(),
            "first_bad_position": answer.first_bad_position or None,
            "problem": answer.problem,
            "digests_checked": answer.digests_checked,
            "witness": answer.witness or None,
            "verified_at": iso(answer.verified_at),
        }


def verify_targets(data_dir: Path, service: str | None, target: str | None) -> list[tuple[str, str]]:
    """(service, host:port) of the logs to verify: `--target`, ONEFOLD_<SERVICE>_TARGET, else
    endpoints.json. A service that is not listed anywhere gets an empty address (not verifiable)."""
    if service is not None and service not in SERVICES:
        raise CliError(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    if target and service is None:
        raise CliError("--target names one service's address: give the SERVICE too (e.g. consent)")
    names = [service] if service is not None else list(SERVICES)
    listed: dict[str, str] = {}
    if not target:
        try:
            listed = dict(read_endpoints(data_dir.resolve()).get("services", {}))
        except ConfigError as error:
            from_env = {n: os.environ.get(f"ONEFOLD_{n.upper()}_TARGET", "") for n in names}
            if not all(from_env.values()):
                raise CliError(f"{error}, or pass --target host:port") from None
    out = []
    for name in names:
        address = (target if name == service else None) or os.environ.get(f"ONEFOLD_{name.upper()}_TARGET")
        out.append((name, address or listed.get(name, "")))
    return out


def nats_settings(data_dir: Path, url: str | None) -> NatsSettings:
    """How the CLI reads the witness stream: `--nats` or the ONEFOLD_NATS__* settings (URL, user,
    password file, CA) when given, else `onefold up`'s bus as its `operator` user (digests only)."""
    from onefold.platform.config import NatsSettings

    url = url or os.environ.get("ONEFOLD_NATS__URL")
    if url:
        try:
            return NatsSettings(
                url=url,
                user=os.environ.get("ONEFOLD_NATS__USER", ""),
                password_file=os.environ.get("ONEFOLD_NATS__PASSWORD_FILE", ""),
                tls_ca_file=os.environ.get("ONEFOLD_NATS__TLS_CA_FILE", ""),
            )
        except ValueError as error:
            raise CliError(f"the NATS settings are not usable: {error}") from None
    try:
        return operator_nats_settings(data_dir.resolve())
    except (ConfigError, KeyError):
        raise CliError(
            "cannot find NATS to read the witnesses: pass --nats nats://host:port (with ONEFOLD_NATS__USER "
            "and ONEFOLD_NATS__PASSWORD_FILE for its operator credential) or run `onefold up`"
        ) from None


async def read_witnesses(settings: NatsSettings, services: Sequence[str]) -> dict[str, Witnessed]:
    """Every service's witness records (its own signed digests; the heads others consumed of it)."""
    import nats

    from onefold.eventlog.digests import read_witness
    from onefold.platform.nats import connect_options

    async with asyncio.timeout(WITNESS_TIMEOUT_SECONDS):
        # One attempt, no reconnects, nothing logged: the CLI's output is its table or its JSON.
        client = await nats.connect(
            settings.url,
            name="onefold-cli-audit",
            connect_timeout=settings.connect_timeout_seconds,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            **connect_options(settings),
        )
        try:
            return await read_witness(client.jetstream(), services)
        finally:
            await client.close()


def expected_hashes(service: str, witnesses: dict[str, Witnessed]) -> list[eventlog_pb2.WitnessedHash]:
    """What the witnesses vouch for in `service`'s log; over the limit, the newest positions (a
    rewrite always reaches the head)."""
    from onefold.contracts.eventlog.v1 import eventlog_pb2
    from onefold.eventlog.digests import witnessed_hashes

    chosen = witnessed_hashes(service, witnesses)[-MAX_EXPECTED:]
    return [eventlog_pb2.WitnessedHash(position=d.position, hash=d.hash, witness=d.witness) for d in chosen]


def verify_file(service: str, database: Path, expected: Sequence[eventlog_pb2.WitnessedHash]) -> Verified:
    """Verify a stopped service's SQLite log from its file (read only: no schema, no keys needed)."""
    from onefold.eventlog.audit import verify_response
    from onefold.eventlog.models import ChainDigest
    from onefold.eventlog.registry import EventRegistry
    from onefold.eventlog.store import EventStore

    store = EventStore(f"sqlite:///{database}", service=service, registry=EventRegistry())
    try:
        result = store.verify(
            expected=[
                *(ChainDigest(w.position, w.hash, w.witness) for w in expected),
                *store.recorded_digests(),
            ]
        )
    finally:
        store.close()
    answer = verify_response(service, result, digests_checked=len(expected))
    return Verified(service, str(database), answer, from_file=True)


async def verify_all(
    targets: Sequence[tuple[str, str]],
    token: str,
    witnesses: dict[str, Witnessed] | None = None,
    data_dir: Path | None = None,
) -> list[Verified]:
    """Verify each log (through its service, or from its file in `data_dir` when it is not running)
    against the witnesses' hashes; `witnesses` None = only against itself (NATS was unreachable)."""
    import grpc

    from onefold.cli.consent import channel_to, describe_service_error
    from onefold.contracts.eventlog.v1 import eventlog_pb2, eventlog_pb2_grpc

    async def one(name: str, address: str) -> Verified:
        expected = expected_hashes(name, witnesses) if witnesses is not None else []
        conflicts = list(witnesses[name].conflicts) if witnesses is not None and name in witnesses else []
        database = data_dir / f"{name}.db" if data_dir is not None else None
        verified: Verified
        if not address and database is not None and database.exists():
            verified = await asyncio.to_thread(verify_file, name, database, expected)
        elif not address:
            verified = Verified(name, "", error="not running (not listed in endpoints.json)")
        else:
            conn = Connection(target=address, token=token)
            try:
                async with channel_to(conn) as channel:
                    answer = await eventlog_pb2_grpc.EventLogServiceStub(channel).Verify(
                        eventlog_pb2.VerifyRequest(expected=expected), timeout=VERIFY_TIMEOUT_SECONDS
                    )
                verified = Verified(name, address, answer)
            except grpc.RpcError as error:
                unavailable = error.code() == grpc.StatusCode.UNAVAILABLE
                if unavailable and database is not None and database.exists():
                    verified = await asyncio.to_thread(verify_file, name, database, expected)
                else:
                    verified = Verified(name, address, error=describe_service_error(error, name, address))
        verified.witness_conflicts = conflicts
        verified.witnessed = len(expected)
        return verified

    return list(await asyncio.gather(*(one(name, address) for name, address in targets)))


def verdict(results: Sequence[Verified], witness_error: str = "") -> tuple[int, list[str]]:
    """The exit status and one sentence per log that is not intact, disagrees with its witnesses or
    could not be verified (against its witnesses too: `witness_error`)."""
    broken = [r for r in results if r.answer is not None and not r.answer.ok]
    unverified = [r for r in results if r.answer is None]
    sentences = []
    for r in broken:
        if r.answer is not None:
            witness = f" (the witness that disagrees: {r.answer.witness})" if r.answer.witness else ""
            sentences.append(
                f"the {r.service} log is not intact at position {r.answer.first_bad_position}: "
                f"{r.answer.problem}{witness}"
            )
    conflicted = [r for r in results if r.witness_conflicts]
    for r in conflicted:
        sentences += [
            f"the witness stream holds a conflicting digest of {r.service}: {c}" for c in r.witness_conflicts
        ]
    sentences += [f"the {r.service} log could not be verified: {r.error}" for r in unverified]
    if witness_error:
        sentences.append(f"the logs could not be checked against their witnesses: {witness_error}")
    failing = broken or conflicted
    return (EXIT_NOT_INTACT if failing else EXIT_ERROR if unverified or witness_error else 0), sentences


@audit_app.command("verify")
def verify(
    service: ServiceName = None,
    as_json: AsJson = False,
    data_dir: DataDir = Path(".onefold"),
    target: ServiceTarget = None,
    token: Token = None,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="the NATS URL holding the witness stream (default: ONEFOLD_NATS__URL or endpoints.json)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Re-hash each service's log, check it against its witnesses (its signed digests on the witness
    stream, the heads other services consumed of it) and name the first position altered, removed,
    reordered or disagreeing, and the witness that disagrees. A service that is not running (it
    refuses to start on a log that diverges) is read from its database file in the data dir.

    Exit 1 when a log is not intact, 2 when one could not be verified, 0 when all are intact."""
    from onefold.platform.nats import safe_url

    if not token:
        raise fail("no credential: pass --token or set ONEFOLD_TOKEN (see `onefold credentials create`)")
    try:
        targets = verify_targets(data_dir, service, target)
        bus = nats_settings(data_dir, nats_url)
    except CliError as error:
        raise fail(error.message, error.code) from None

    async def run() -> tuple[list[Verified], str]:
        witnesses: dict[str, Witnessed] | None = None
        witness_error = ""
        try:
            witnesses = await read_witnesses(bus, SERVICES)
        except Exception as error:  # NATS down or refusing: still verify each log on its own
            witness_error = f"NATS at {safe_url(bus.url)} answered {type(error).__name__}: {str(error)[:200]}"
        return await verify_all(targets, token, witnesses, data_dir), witness_error

    results, witness_error = asyncio.run(run())
    status, sentences = verdict(results, witness_error)
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        rows = []
        for result in results:
            answer = result.answer
            if answer is None:
                rows.append((result.service, "[yellow]?[/yellow]", "", "", "", "", escape(result.error)))
                continue
            problem = answer.problem or "; ".join(result.witness_conflicts)
            rows.append(
                (
                    result.service,
                    "[green]ok[/green]" if result.ok else "[red]NOT OK[/red]",
                    f"{answer.events_checked:,}" + (" (from its file)" if result.from_file else ""),
                    f"{result.witnessed:,}",
                    f"#{answer.head_position} {answer.head_hash.hex()[:HASH_PREFIX]}"
                    + ("" if answer.ok else " (last intact)"),
                    str(answer.first_bad_position) if answer.first_bad_position else "",
                    escape(problem),
                )
            )
        print_table(
            ("service", "ok", "events checked", "witnessed", "head", "first bad position", "problem"),
            rows,
            title="event log verification",
            markup=True,
        )
    for sentence in sentences:
        err_console.print(f"[red]error:[/red] {escape(sentence)}", highlight=False, soft_wrap=True)
    raise typer.Exit(status)


# --- report ---------------------------------------------------------------------------------------


@dataclass
class ReportData:
    subject: str
    generated_at: datetime
    profile_id: str
    current: pb.ConsentAsOfResponse
    history: pb.HistoryResponse | None
    model: pb.ConsentModel | None
    requests: list[pb.SubjectRequest] | None
    requests_note: str
    verified: list[Verified]
    caller: platform_pb2.WhoAmIResponse | None = None
    purposes: dict[str, str] = field(default_factory=dict)


async def _requests_of(
    channel: grpc.aio.Channel, profile_id: str, from_history: Sequence[pb.SubjectRequest]
) -> tuple[list[pb.SubjectRequest] | None, str]:
    """The subject's data-subject requests, or None and why they could not be listed."""
    import grpc

    from onefold.contracts.consent.v1 import consent_pb2 as pb
    from onefold.contracts.consent.v1 import consent_pb2_grpc

    try:
        answer: pb.ListRequestsResponse = await consent_pb2_grpc.ConsentServiceStub(channel).ListRequests(
            pb.ListRequestsRequest(), timeout=CALL_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            reason = "the consent service does not list requests yet"
        elif error.code() == grpc.StatusCode.PERMISSION_DENIED:
            reason = "the credential used may not list requests (it needs the dsr:write scope)"
        else:
            raise
        if from_history:
            return list(from_history), f"only those recorded in the history are shown: {reason}"
        return None, f"Requests unavailable: {reason}."
    found = {r.request_id: r for r in from_history}
    found.update({r.request_id: r for r in answer.requests if r.profile_id == profile_id})
    return sorted(found.values(), key=lambda r: r.received_at.ToDatetime()), ""


async def gather_report(
    conn: Connection, subject: str, ref: identity_pb2.ProfileRef, data_dir: Path
) -> ReportData:
    import grpc

    from onefold.cli.consent import channel_to
    from onefold.contracts.identity.v1 import identity_pb2
    from onefold.contracts.platform.v1 import platform_pb2, platform_pb2_grpc

    generated = datetime.now(UTC)
    current = await _as_of(conn, ref, None, None)
    history_answer = await _history(conn, identity_pb2.ProfileRef(profile_id=current.profile_id))
    async with channel_to(conn) as channel:
        model = await _optional_model(channel)
        requests, note = await _requests_of(
            channel, current.profile_id, history_answer.requests if history_answer else []
        )
        try:
            caller: platform_pb2.WhoAmIResponse | None = await platform_pb2_grpc.PlatformServiceStub(
                channel
            ).WhoAmI(platform_pb2.WhoAmIRequest(), timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError:
            caller = None
    try:
        targets = [(name, address or "") for name, address in verify_targets(data_dir, None, None)]
    except CliError:
        targets = [("consent", conn.target)]  # no endpoints.json (e.g. --target): the consent log only
    else:
        targets = [(name, conn.target if name == "consent" else address) for name, address in targets]
    verified = await verify_all(targets, conn.token)
    return ReportData(
        subject=subject,
        generated_at=generated,
        profile_id=current.profile_id,
        current=current,
        history=history_answer,
        model=model,
        requests=requests,
        requests_note=note,
        verified=verified,
        caller=caller,
        purposes=purpose_names(model),
    )


@audit_app.command("report")
def report(
    subject: Subject,
    html_path: Annotated[Path, typer.Option("--html", help="write the report to this HTML file")],
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """A self-contained HTML report for people: consent over time, every change with its proof, the
    subject's requests and whether each service's log is intact."""
    from onefold.cli.consent import run_call

    try:
        ref = parse_subject(subject)
    except CliError as error:
        raise fail(error.message, error.code) from None
    conn = _consent_connection(data_dir, target, token)
    data = run_call("consent", conn, lambda: gather_report(conn, subject, ref, data_dir))
    try:
        html_path.write_text(render_report(data), encoding="utf-8")
    except OSError as error:
        raise fail(f"cannot write {html_path}: {error.strerror or error}") from None
    console.print(f"report for profile {data.profile_id} written to {html_path}", highlight=False)
    _, sentences = verdict(data.verified)
    for sentence in sentences:
        err_console.print(f"[yellow]warning:[/yellow] {escape(sentence)}", highlight=False, soft_wrap=True)


# --- the HTML -------------------------------------------------------------------------------------

COLOURS = {
    "granted": "#2e7d32",
    "withdrawn": "#c62828",
    "expired": "#f9a825",
    "none": "#d9d9d9",
    "objection": "#6a1b9a",
    "restricted": "#ef6c00",
    "erased": "#424242",
}
WORDS = {
    "granted": "consent given",
    "withdrawn": "consent withdrawn",
    "expired": "consent expired",
    "none": "no answer",
    "objection": "objection stands",
    "restricted": "processing restricted",
    "erased": "personal data erased",
}


@dataclass
class Change:
    at: datetime
    position: int
    status: str
    expires: datetime | None = None


@dataclass
class Row:
    label: str
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    status: str


def _dt(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def timeline_rows(history_answer: pb.HistoryResponse | None) -> dict[str, Row]:
    """Per purpose and channel (and objections, restriction, erasure) the status changes, as the
    service's fold rendered them (HistoryResponse.timeline)."""
    if history_answer is None:
        return {}
    return {
        row.key: Row(
            row.label,
            [
                Change(
                    _dt(change.at),
                    change.position,
                    change.status,
                    _dt(change.expires_at) if change.HasField("expires_at") else None,
                )
                for change in row.changes
            ],
        )
        for row in history_answer.timeline
    }


def periods(row: Row, start: datetime, end: datetime) -> list[Period]:
    """The row's periods from `start` to `end`: no answer until the first change, then each status
    until the next change; a grant past its expiry becomes an expired period."""
    out: list[Period] = []
    changes = row.changes
    if changes and changes[0].at > start:
        out.append(Period(start, changes[0].at, "none"))
    for index, item in enumerate(changes):
        until = changes[index + 1].at if index + 1 < len(changes) else end
        begin = max(item.at, start)
        if until <= begin and index + 1 < len(changes):
            continue
        until = max(until, begin)
        if item.status == "granted" and item.expires is not None and item.expires < until:
            if item.expires > begin:
                out.append(Period(begin, item.expires, "granted"))
            out.append(Period(max(item.expires, begin), until, "expired"))
        else:
            out.append(Period(begin, until, item.status))
    return out


def _fmt_day(moment: datetime, span: timedelta) -> str:
    if span < timedelta(hours=2):
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M" if span < timedelta(days=3) else "%Y-%m-%d")


def _short(text: str, limit: int = 58) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def timeline_svg(rows: dict[str, Row], end: datetime) -> str:
    if not rows:
        return '<p class="muted">No consent has been recorded for this person, so there is no timeline.</p>'
    e = html.escape
    start = min(change.at for row in rows.values() for change in row.changes)
    end = max(end, start + timedelta(minutes=1))
    span = end - start
    pad = span * 0.02
    start, end = start - pad, end
    span = end - start
    longest = max(len(_short(row.label)) for row in rows.values())
    label_w = min(430, max(160, 7 * longest + 16))
    width, row_h, top = 980, 26, 28
    chart_w = width - label_w - 20
    height = top + row_h * len(rows) + 34

    def x(moment: datetime) -> float:
        return label_w + chart_w * ((moment - start) / span)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="Consent timeline per purpose and channel">'
    ]
    ticks = 5
    for i in range(ticks + 1):
        moment = start + span * (i / ticks)
        px = x(moment)
        parts.append(f'<line x1="{px:.1f}" y1="{top - 6}" x2="{px:.1f}" y2="{height - 30}" class="grid"/>')
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        parts.append(
            f'<text x="{px:.1f}" y="{top - 10}" text-anchor="{anchor}" class="tick">{e(_fmt_day(moment, span))}</text>'
        )
    for index, row in enumerate(rows.values()):
        y = top + index * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="label">{e(_short(row.label))}'
            f"<title>{e(row.label)}</title></text>"
        )
        for period in periods(row, start, end):
            x0, x1 = x(period.start), x(period.end)
            title = (
                f"{row.label}: {WORDS.get(period.status, period.status)} from "
                f"{period.start:%Y-%m-%d %H:%M} to {period.end:%Y-%m-%d %H:%M} UTC"
            )
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1.5):.1f}" height="{row_h - 8}" '
                f'fill="{COLOURS.get(period.status, "#999999")}"><title>{e(title)}</title></rect>'
            )
    now_x = x(end)
    parts.append(f'<line x1="{now_x:.1f}" y1="{top - 4}" x2="{now_x:.1f}" y2="{height - 30}" class="now"/>')
    legend_y = height - 12
    lx = 10
    shown = {period.status for row in rows.values() for period in periods(row, start, end)}
    for status in [s for s in COLOURS if s in shown or s in ("granted", "withdrawn", "expired", "none")]:
        parts.append(f'<rect x="{lx}" y="{legend_y - 10}" width="12" height="12" fill="{COLOURS[status]}"/>')
        parts.append(f'<text x="{lx + 16}" y="{legend_y}" class="tick">{e(WORDS[status])}</text>')
        lx += 16 + 7 * len(WORDS[status]) + 14
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'Noto Sans','Noto Sans CJK SC',Arial,sans-serif;
color:#1f2328;max-width:1100px;margin:2rem auto;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;
padding-bottom:.3rem}.muted{color:#57606a}.small{font-size:.85rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin-top:.6rem}
th,td{border:1px solid #d0d7de;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;
word-break:break-all}.badge{display:inline-block;padding:.05rem .45rem;border-radius:.7rem;color:#fff;
font-size:.8rem;white-space:nowrap}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.warn{color:#9a6700;font-weight:600}.box{border:1px solid #d0d7de;border-radius:6px;padding:.8rem 1rem;
background:#f6f8fa}.alert{border-color:#cf222e;background:#ffebe9}
svg .grid{stroke:#d0d7de;stroke-width:1}svg .now{stroke:#1f2328;stroke-dasharray:3 3}
svg .tick{font-size:11px;fill:#57606a}svg .label{font-size:12px;fill:#1f2328}
@media print{body{margin:0}h2{page-break-after:avoid}tr{page-break-inside:avoid}}
"""


def _badge(status: str) -> str:
    colour = COLOURS.get(status, "#6e7781")
    text = "#1f2328" if status in ("none", "expired") else "#ffffff"
    return (
        f'<span class="badge" style="background:{colour};color:{text}">'
        f"{html.escape(WORDS.get(status, status))}</span>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; the cells are HTML already escaped by the caller."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def request_type_name(value: int) -> str:
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    return pb.RequestType.Name(value).removeprefix("REQUEST_TYPE_").lower()  # type: ignore[arg-type]


def request_state_name(value: int) -> str:
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    return pb.RequestState.Name(value).removeprefix("REQUEST_STATE_").lower().replace("_", " ")  # type: ignore[arg-type]


def render_report(data: ReportData) -> str:
    """The report as one HTML document: inline CSS and SVG, no scripts, no external resources;
    every value from the services is escaped."""
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    e = html.escape
    names = data.purposes

    def purpose(purpose_id: str) -> str:
        name = names.get(purpose_id)
        return f"{e(name)} <span class='muted'>({e(purpose_id)})</span>" if name else e(purpose_id)

    sections: list[str] = []
    asked = f" (looked up as <code>{e(data.subject)}</code>)" if data.subject != data.profile_id else ""
    who = ""
    if data.caller is not None:
        who = (
            f" by credential <code>{e(data.caller.credential_id)}</code> of workspace "
            f"<code>{e(data.caller.workspace)}</code>"
        )
    sections.append(
        f"<h1>Consent report</h1><p class='muted'>Person: profile <code>{e(data.profile_id)}</code>{asked}. "
        f"Generated {e(data.generated_at.strftime('%Y-%m-%d %H:%M:%S'))} UTC{who}.</p>"
        "<div class='box small'>This report shows what this person allowed Onefold to do with their "
        "personal data, when each answer was given or withdrawn, and the proof recorded with it: which "
        "notice text they were shown, how and where the answer was collected, and under which law. "
        "Every change is an entry in an append-only log in which each entry's fingerprint (a SHA-256 "
        "hash) also covers the entry before it, so changing or deleting any entry afterwards is detected "
        "by the verification at the end of this report.</div>"
    )

    # -- the answer now
    current = data.current
    state_rows = []
    for state in current.states:
        status = status_name(state.status)
        expiry = ""
        if state.HasField("expires_at"):
            expiry = e(when(state.expires_at, seconds=False))
            if status == "granted" and _dt(state.expires_at) <= data.generated_at:
                status = "expired"
        state_rows.append(
            [
                purpose(state.purpose_id),
                e(channel_name(state.channel)),
                _badge(status),
                e(f"{state.notice_id} version {state.notice_version}") if state.notice_id else "",
                e(jurisdiction_name(state.jurisdiction)),
                "yes" if state.guardian_given else "",
                e(when(state.evidence.occurred_at)),
                expiry,
                f"event {state.evidence.position}, <code>{e(state.evidence.hash.hex()[:16])}</code>",
            ]
        )
    notes = []
    if current.objections:
        notes.append(
            "The person objected to: "
            + ", ".join(purpose(p) for p in current.objections)
            + ". An objection overrides any consent for that purpose (GDPR Art. 21, PIPL Art. 24)."
        )
    if current.restricted:
        notes.append("Processing of this person's data is restricted (GDPR Art. 18, PIPL Art. 44).")
    sections.append("<h2>Consent now</h2>")
    if state_rows:
        sections.append(
            _table(
                (
                    "purpose",
                    "channel",
                    "status",
                    "notice shown",
                    "law",
                    "guardian",
                    "since",
                    "valid until",
                    "evidence",
                ),
                state_rows,
            )
        )
    else:
        sections.append("<p>No consent has been recorded for this person.</p>")
    sections.extend(f"<p>{note}</p>" for note in notes)
    sections.append(f"<p class='muted small'>Replayed from {current.events_replayed} ledger event(s).</p>")

    # -- over time
    rows = timeline_rows(data.history)
    sections.append(
        "<h2>Consent over time</h2><p class='small muted'>One line per purpose and channel, from the first "
        "recorded answer until now (the dashed line). Times are when the answer was given (UTC); hover a "
        "bar for its dates.</p>"
    )
    sections.append(timeline_svg(rows, data.generated_at))

    # -- every change with proof
    sections.append("<h2>Every change, with its proof</h2>")
    if data.history is None or not data.history.entries:
        sections.append("<p>No change has been recorded.</p>")
    else:
        history_rows = []
        for entry in data.history.entries:
            history_rows.append(
                [
                    e(str(entry.evidence.position)),
                    e(when(entry.evidence.occurred_at)),
                    e(when(entry.evidence.recorded_at)),
                    e(entry.summary),
                    e(entry.proof),
                    f"<code>{e(entry.evidence.hash.hex())}</code>",
                ]
            )
        sections.append(
            "<p class='small muted'>“Happened” is when the person gave the answer; “recorded” is when the "
            "log learned of it. The fingerprint identifies the entry in the tamper-evident log.</p>"
        )
        sections.append(
            _table(
                ("entry", "happened", "recorded", "what happened", "proof", "fingerprint (SHA-256)"),
                history_rows,
            )
        )

    # -- data-subject requests
    sections.append("<h2>Requests from the person</h2>")
    if data.requests is None:
        sections.append(f"<p class='warn'>{e(data.requests_note)}</p>")
    else:
        if data.requests_note:
            sections.append(f"<p class='warn'>{e(data.requests_note)}</p>")
        if not data.requests:
            sections.append(
                "<p>The person has made no access, erasure, rectification or restriction request.</p>"
            )
        else:
            request_rows = []
            for request in data.requests:
                outcome = ""
                if request.refusal_reason:
                    outcome = "refused: " + request.refusal_reason
                elif request.completion_signature:
                    outcome = "completed; signed completion record " + request.completion_signature[:16] + "…"
                steps = ", ".join(
                    f"{s.service}: {pb.StepState.Name(s.state).removeprefix('STEP_STATE_').lower().replace('_', ' ')}"
                    for s in request.steps
                )
                request_rows.append(
                    [
                        f"<code>{e(request.request_id)}</code>",
                        e(request_type_name(request.type)),
                        e(request_state_name(request.state)),
                        e(when(request.received_at)),
                        e(when(request.due_at, seconds=False))
                        + (" (extended: " + e(request.extension_reason) + ")" if request.extended else ""),
                        e(when(request.completed_at)),
                        e(outcome),
                        e(steps),
                    ]
                )
            sections.append(
                _table(
                    ("request", "type", "state", "received", "due", "completed", "outcome", "steps"),
                    request_rows,
                )
            )

    # -- verification
    verdict_status, sentences = verdict(data.verified)
    sections.append("<h2>Is the record intact?</h2>")
    if verdict_status == 0:
        sections.append(
            f"<div class='box'><span class='ok'>Yes.</span> The logs of all {len(data.verified)} services "
            "were re-checked entry by entry and no entry was altered, removed or reordered.</div>"
        )
    else:
        sections.append(
            "<div class='box alert'>"
            + "<br>".join(f"<span class='bad'>{e(s[0].upper() + s[1:])}.</span>" for s in sentences)
            + "</div>"
        )
    verify_rows = []
    for result in data.verified:
        answer = result.answer
        if answer is None:
            verify_rows.append(
                [e(result.service), "<span class='warn'>not checked</span>", "", "", e(result.error), ""]
            )
            continue
        verify_rows.append(
            [
                e(result.service),
                "<span class='ok'>intact</span>"
                if answer.ok
                else f"<span class='bad'>NOT intact at entry {answer.first_bad_position}</span>",
                e(f"{answer.events_checked:,}"),
                f"entry {answer.head_position}, <code>{e(answer.head_hash.hex()[:16])}</code>",
                e(answer.problem),
                e(when(answer.verified_at)),
            ]
        )
    sections.append(
        _table(("service", "result", "entries checked", "latest entry", "problem", "checked at"), verify_rows)
    )
    sections.append(
        "<p class='muted small'>Produced by <code>onefold audit report</code>. This file is self-contained: "
        "it loads nothing from elsewhere and runs no scripts.</p>"
    )
    title = f"Consent report — {data.profile_id}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
