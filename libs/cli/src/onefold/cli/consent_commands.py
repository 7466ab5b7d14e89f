"""`onefold consent …`: what an operator does with the consent service (onefold.consent.v1).

    onefold consent grant SUBJECT --purpose P [--channel C] --notice ID --notice-version V
    onefold consent withdraw SUBJECT --purpose P [--channel C] [--reason TEXT]
    onefold consent check SUBJECT PURPOSE [--channel C] [--at T]      exit 0 allow, 1 deny
    onefold consent requests open TYPE SUBJECT                        access | erasure | rectification
                                                                      | restriction
    onefold consent requests list [--state S] [--overdue]
    onefold consent requests show REQUEST_ID

SUBJECT is a profile id, or TYPE:VALUE of an identifier the identity service resolves (as for
`onefold audit`). Each command takes `--json`. Exit status 2 is a usage, credential or connection
error, said in one sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onefold.cli.options import ConsentTarget, DataDir, Json, Token
from onefold.cli.output import CliError, console, fail, print_json, print_table

if TYPE_CHECKING:
    from onefold.cli.client import Connection
    from onefold.contracts.consent.v1 import consent_pb2 as pb
    from onefold.contracts.identity.v1 import identity_pb2

consent_app = typer.Typer(
    help="Grant, withdraw and check consent; open and follow data-subject requests.", no_args_is_help=True
)
requests_app = typer.Typer(help="Open, list and show data-subject requests.", no_args_is_help=True)
consent_app.add_typer(requests_app, name="requests")

CALL_TIMEOUT_SECONDS = 60.0
EXIT_DENY = 1
REQUEST_TYPES = ("access", "erasure", "rectification", "restriction")
REQUEST_STATES = ("open", "in_progress", "completed", "refused")

Subject = Annotated[
    str, typer.Argument(help="a profile id, or TYPE:VALUE of an identifier (e.g. email:a@example.com)")
]
Purposes = Annotated[list[str], typer.Option("--purpose", "-p", help="a purpose id; repeatable")]
Channels = Annotated[
    list[str] | None, typer.Option("--channel", help="a channel; repeatable (default: every channel)")
]


def _connection(data_dir: Path, target: str | None, token: str | None) -> Connection:
    from onefold.cli.consent import service_connection

    try:
        return service_connection(data_dir, "consent", target, token)
    except CliError as error:
        raise fail(error.message, error.code) from None


def _subject(text: str) -> identity_pb2.ProfileRef:
    from onefold.cli.audit import parse_subject

    try:
        return parse_subject(text)
    except CliError as error:
        raise fail(error.message, error.code) from None


def _call(conn: Connection, method: str, request: Any) -> Any:
    """One ConsentService call; a failure is one sentence on stderr and exit code 2."""
    from onefold.cli.consent import channel_to, run_call
    from onefold.contracts.consent.v1 import consent_pb2_grpc

    async def call() -> Any:
        async with channel_to(conn) as channel:
            stub = consent_pb2_grpc.ConsentServiceStub(channel)
            return await getattr(stub, method)(request, timeout=CALL_TIMEOUT_SECONDS)

    return run_call("consent", conn, call)


def _written(action: str, answer: pb.LedgerWriteResponse, as_json: bool) -> None:
    from onefold.cli.audit import evidence_dict, state_dict, status_name

    if as_json:
        print_json(
            {
                "profile_id": answer.profile_id,
                "recorded": [evidence_dict(evidence) for evidence in answer.recorded],
                "states": [state_dict(state) for state in answer.states],
            }
        )
        return
    console.print(
        f"{action} for profile {answer.profile_id}: {len(answer.recorded)} ledger event(s) recorded",
        highlight=False,
    )
    print_table(
        ("purpose", "channel", "status", "notice", "expires"),
        [
            (
                state.purpose_id,
                state.channel or "all channels",
                status_name(state.status),
                f"{state.notice_id} v{state.notice_version}" if state.notice_id else "",
                state.expires_at.ToJsonString() if state.HasField("expires_at") else "",
            )
            for state in answer.states
        ],
        title="consent now",
    )


@consent_app.command("grant")
def grant(
    subject: Subject,
    purpose: Purposes,
    notice: Annotated[str, typer.Option(help="the id of the notice the subject was shown")],
    notice_version: Annotated[str, typer.Option(help="its version")],
    channel: Channels = None,
    source: Annotated[str, typer.Option(help="where the consent was collected")] = "operator",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """Record that the subject consented to purposes (on channels), having been shown a notice."""
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    request = pb.GrantConsentRequest(
        subject=_subject(subject),
        purpose_ids=purpose,
        channels=channel or [],
        proof=pb.Proof(notice_id=notice, notice_version=notice_version, source=source),
    )
    conn = _connection(data_dir, target, token)
    _written("granted " + ", ".join(purpose), _call(conn, "GrantConsent", request), as_json)


@consent_app.command("withdraw")
def withdraw(
    subject: Subject,
    purpose: Purposes,
    channel: Channels = None,
    reason: Annotated[str, typer.Option(help="why, as the subject said it (optional)")] = "",
    source: Annotated[str, typer.Option(help="where the withdrawal was received")] = "operator",
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """Record that the subject withdrew consent to purposes (on channels)."""
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    request = pb.WithdrawConsentRequest(
        subject=_subject(subject),
        purpose_ids=purpose,
        channels=channel or [],
        proof=pb.Proof(source=source),
        reason=reason,
    )
    conn = _connection(data_dir, target, token)
    _written("withdrew " + ", ".join(purpose), _call(conn, "WithdrawConsent", request), as_json)


@consent_app.command("check")
def check(
    subject: Subject,
    purpose: Annotated[str, typer.Argument(help="the purpose id")],
    channel: Annotated[str, typer.Option(help="the channel (default: the purpose on any channel)")] = "",
    at: Annotated[str | None, typer.Option(help="decide as of this ISO 8601 time (default: now)")] = None,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """May the subject be processed for a purpose (on a channel)? Exit 0 allow, 1 deny."""
    from onefold.cli.audit import evidence_dict, parse_time, to_timestamp
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    try:
        moment = parse_time(at, "--at")
    except CliError as error:
        raise fail(error.message, error.code) from None
    request = pb.CheckConsentRequest(subject=_subject(subject), purpose_id=purpose, channel=channel)
    if moment is not None:
        request.at.CopyFrom(to_timestamp(moment))
    conn = _connection(data_dir, target, token)
    answer: pb.CheckConsentResponse = _call(conn, "CheckConsent", request)
    decision = pb.Decision.Name(answer.decision).removeprefix("DECISION_").lower()
    reason = pb.DecisionReason.Name(answer.reason).removeprefix("DECISION_REASON_").lower()
    if as_json:
        print_json(
            {
                "profile_id": answer.profile_id,
                "purpose_id": purpose,
                "channel": channel,
                "decision": decision,
                "reason": reason,
                "explanation": answer.explanation,
                "evidence": evidence_dict(answer.evidence) if answer.HasField("evidence") else None,
            }
        )
    else:
        console.print(
            f"{decision}: {reason} ({answer.explanation}) for profile {answer.profile_id}", highlight=False
        )
    if answer.decision != pb.DECISION_ALLOW:
        raise typer.Exit(EXIT_DENY)


# --- data-subject requests ------------------------------------------------------------------------


def _request_rows(requests: list[pb.SubjectRequest]) -> list[tuple[str, ...]]:
    from onefold.cli.audit import request_state_name, request_type_name, when

    return [
        (
            request.request_id,
            request_type_name(request.type),
            request_state_name(request.state),
            request.profile_id,
            when(request.received_at),
            when(request.due_at) + (" (extended)" if request.extended else ""),
        )
        for request in requests
    ]


def _print_request(request: pb.SubjectRequest, as_json: bool) -> None:
    from onefold.cli.audit import request_dict, when

    if as_json:
        print_json(request_dict(request))
        return
    print_table(("request", "type", "state", "profile", "received", "due"), _request_rows([request]))
    if request.refusal_reason:
        console.print(f"refused: {request.refusal_reason}", highlight=False)
    if request.steps:
        from onefold.contracts.consent.v1 import consent_pb2 as pb

        print_table(
            ("service", "step", "attempts", "updated", "last error"),
            [
                (
                    step.service,
                    pb.StepState.Name(step.state).removeprefix("STEP_STATE_").lower(),
                    str(step.attempts),
                    when(step.updated_at),
                    step.last_error,
                )
                for step in request.steps
            ],
            title="steps",
        )


@requests_app.command("open")
def open_request(
    kind: Annotated[str, typer.Argument(metavar="TYPE", help=" | ".join(REQUEST_TYPES))],
    subject: Subject,
    rectification: Annotated[
        str, typer.Option(help="rectification: a JSON object of the trait corrections asked for")
    ] = "",
    lift: Annotated[bool, typer.Option("--lift", help="restriction: lift it instead of setting it")] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """Open a data-subject request (access, erasure, rectification, restriction) and run it."""
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    if kind not in REQUEST_TYPES:
        raise fail(f"the request type must be one of {', '.join(REQUEST_TYPES)} (got {kind!r})")
    request = pb.OpenRequestRequest(
        type=pb.RequestType.Value(f"REQUEST_TYPE_{kind.upper()}"),
        subject=_subject(subject),
        rectification=rectification,
        restrict=kind == "restriction" and not lift,
    )
    conn = _connection(data_dir, target, token)
    _print_request(_call(conn, "OpenRequest", request), as_json)


@requests_app.command("list")
def list_requests(
    state: Annotated[str | None, typer.Option(help=" | ".join(REQUEST_STATES))] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="only requests past their due date")] = False,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """List the workspace's data-subject requests."""
    from onefold.cli.audit import request_dict
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    if state is not None and state not in REQUEST_STATES:
        raise fail(f"--state must be one of {', '.join(REQUEST_STATES)} (got {state!r})")
    request = pb.ListRequestsRequest(
        overdue_only=overdue,
        state=pb.RequestState.Value(f"REQUEST_STATE_{state.upper()}")
        if state
        else pb.REQUEST_STATE_UNSPECIFIED,
    )
    conn = _connection(data_dir, target, token)
    answer: pb.ListRequestsResponse = _call(conn, "ListRequests", request)
    if as_json:
        print_json([request_dict(item) for item in answer.requests])
        return
    print_table(
        ("request", "type", "state", "profile", "received", "due"), _request_rows(list(answer.requests))
    )


@requests_app.command("show")
def show_request(
    request_id: Annotated[str, typer.Argument(help="the request id (from `requests open` or `list`)")],
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: ConsentTarget = None,
    token: Token = None,
) -> None:
    """Show a data-subject request: its state, due date and the step of each service."""
    from onefold.contracts.consent.v1 import consent_pb2 as pb

    conn = _connection(data_dir, target, token)
    _print_request(_call(conn, "GetRequest", pb.GetRequestRequest(request_id=request_id)), as_json)
