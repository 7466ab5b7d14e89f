"""The `onefold` command. Thin: each command parses, calls a library or a service, and prints."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from onefold.cli import bench as bench_command
from onefold.cli.audit import audit_app
from onefold.cli.importer import import_file
from onefold.cli.ingest_client import DataDir, fail
from onefold.cli.keys import KeyDir, keys_app
from onefold.cli.profile import profile_app
from onefold.cli.quarantine import quarantine_app
from onefold.cli.sources import apply, sources_app
from onefold.cli.supervisor import Supervisor, read_endpoints
from onefold.platform.auth import SCOPES, CredentialStore
from onefold.platform.config import ConfigError
from onefold.platform.errors import OnefoldError
from onefold.platform.health import health_status

app = typer.Typer(
    name="onefold",
    help="Onefold: an event-sourced Customer Data Platform.",
    no_args_is_help=True,
    add_completion=False,
)
credentials_app = typer.Typer(help="Create, list and revoke API credentials.", no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")
app.add_typer(sources_app, name="sources")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(audit_app, name="audit")
app.add_typer(profile_app, name="profile")
app.add_typer(keys_app, name="keys")
app.command("apply")(apply)
app.command("import")(import_file)
app.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Run a benchmark from bench/ (e.g. `onefold bench eventlog --json`).",
)(bench_command.bench)

console = Console()


@app.command()
def up(
    data_dir: DataDir = Path(".onefold"),
    nats_url: Annotated[str | None, typer.Option(help="use this NATS server instead of starting one")] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="ONEFOLD_CONFIG", help="YAML settings for the services"),
    ] = None,
    key_dir: KeyDir = None,
    port_base: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="first of the endpoints' consecutive ports (default 7460, setting ports.base); "
            "0 = free ports",
        ),
    ] = None,
) -> None:
    """Start nats-server (JetStream) and the five services; Ctrl-C stops everything."""
    supervisor = Supervisor(
        data_dir=data_dir.resolve(),
        nats_url=nats_url,
        config_file=config.resolve() if config else None,
        key_dir=key_dir.resolve() if key_dir else None,
        report=_report,
        port_base=port_base,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with console.status("starting nats-server and the services …"):
            url = supervisor.start()
    except ConfigError as error:
        supervisor.stop()
        raise fail(str(error)) from None
    _print_endpoints(supervisor, url)
    try:
        while not stop.wait(0.5):
            supervisor.watch_once(url)
    finally:
        console.print("stopping …")
        supervisor.stop()
        console.print("stopped.")


def _report(message: str) -> None:
    console.print(f"[yellow]•[/yellow] {message}", highlight=False)


def _print_endpoints(supervisor: Supervisor, nats_url: str) -> None:
    table = Table(title="Onefold is up", show_header=True)
    table.add_column("service")
    table.add_column("gRPC endpoint")
    table.add_column("health")
    table.add_column("HTTP")
    for name, child in supervisor.children.items():
        table.add_row(name, child.target, health_status(child.target), child.http_url)
    table.add_row("nats", nats_url, "started here" if supervisor.nats else "external", "")
    console.print(table)
    if supervisor.admin:
        console.print(
            f"Admin credential for workspace '{supervisor.admin.workspace}' (shown once, keep it safe):\n"
            f"  [bold]{supervisor.admin.token}[/bold]",
            highlight=False,
        )
    else:
        console.print(
            "Admin credential: created on the first start (see that output), or make one with "
            "`onefold credentials create --workspace default --scope admin`."
        )
    console.print(f"Keys: {supervisor.key_dir} (back them up apart from the data dir).", highlight=False)
    console.print(
        f"Call with metadata 'authorization: Bearer <credential>'. Logs: {supervisor.data_dir / 'logs'}. "
        "Check with `onefold status`. Ctrl-C stops everything.",
        highlight=False,
    )


@app.command()
def status(
    data_dir: DataDir = Path(".onefold"),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
) -> None:
    """Show every endpoint and its health; exit 0 only when every one is SERVING."""
    import json

    from onefold.cli.supervisor import endpoint_statuses

    try:
        state = read_endpoints(data_dir.resolve())
    except ConfigError as error:
        raise fail(str(error), code=1) from None
    endpoints = endpoint_statuses(state)
    all_serving = all(endpoint.health == "SERVING" for endpoint in endpoints)
    if as_json:
        listed = {
            endpoint.key: {
                "label": endpoint.label,
                "address": endpoint.address,
                "health": endpoint.health,
                "nats_connection": endpoint.nats_connection,
            }
            for endpoint in endpoints
        }
        typer.echo(json.dumps({"all_serving": all_serving, "endpoints": listed}, indent=2))
        raise typer.Exit(0 if all_serving else 1)
    table = Table(show_header=True)
    for column in ("endpoint", "address", "health", "NATS connection", "port setting"):
        table.add_column(column)
    for endpoint in endpoints:
        colour = "green" if endpoint.health == "SERVING" else "red"
        table.add_row(
            endpoint.label,
            endpoint.address,
            f"[{colour}]{endpoint.health}[/{colour}]",
            endpoint.nats_connection,
            f"ports.{endpoint.key}",
        )
    console.print(table)
    raise typer.Exit(0 if all_serving else 1)


def _store(data_dir: Path, auth_db: str | None) -> CredentialStore:
    store = CredentialStore(auth_db or f"sqlite:///{data_dir.resolve() / 'auth.db'}")
    store.create_schema()
    return store


AuthDb = Annotated[
    str | None,
    typer.Option(envvar="ONEFOLD_AUTH__DATABASE_URL", help="credential store URL (default: in the data dir)"),
]


@credentials_app.command("create")
def credentials_create(
    workspace: Annotated[str, typer.Option(help="the workspace the credential belongs to")],
    scope: Annotated[list[str], typer.Option(help=f"repeatable; one of: {', '.join(sorted(SCOPES))}")],
    name: Annotated[str, typer.Option(help="a label for people")] = "",
    data_dir: DataDir = Path(".onefold"),
    auth_db: AuthDb = None,
) -> None:
    """Create a credential; its secret is printed once and only its hash is stored."""
    try:
        issued = _store(data_dir, auth_db).issue(workspace, scope, name)
    except (OnefoldError, ConfigError) as error:
        raise fail(str(error)) from None
    console.print(
        f"credential {issued.id} for workspace '{issued.workspace}' with scopes {', '.join(issued.scopes)}"
    )
    console.print(issued.token, highlight=False, soft_wrap=True)


@credentials_app.command("list")
def credentials_list(
    workspace: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDir = Path(".onefold"),
    auth_db: AuthDb = None,
) -> None:
    """List credentials (never their secrets)."""
    table = Table(show_header=True)
    for column in ("id", "workspace", "name", "scopes", "created", "revoked"):
        table.add_column(column)
    try:
        rows = _store(data_dir, auth_db).list(workspace)
    except (OnefoldError, ConfigError) as error:
        raise fail(str(error)) from None
    for row in rows:
        table.add_row(
            *(str(row[k] or "") for k in ("id", "workspace", "name", "scopes", "created_at", "revoked_at"))
        )
    console.print(table)


@credentials_app.command("revoke")
def credentials_revoke(
    credential_id: str,
    data_dir: DataDir = Path(".onefold"),
    auth_db: AuthDb = None,
) -> None:
    """Revoke a credential; services stop accepting it within their cache time (5 s by default)."""
    try:
        _store(data_dir, auth_db).revoke(credential_id)
    except (OnefoldError, ConfigError) as error:
        raise fail(str(error)) from None
    console.print(f"revoked {credential_id}")


def run() -> None:  # pragma: no cover - console script shim
    sys.exit(app())
