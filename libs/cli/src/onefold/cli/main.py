"""The `onefold` command. Thin: each command parses, calls a library or a service, and prints.

Start-up is kept short (`onefold --help` and `onefold status` answer in well under a second): the
command groups are listed from LAZY_COMMANDS, with their help, and a group's module (with gRPC, the
generated messages, SQLAlchemy ...) is imported only when that group runs. Commands import what
only they need inside their functions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from onefold.cli.options import DataDir, Json, KeyDir
from onefold.cli.output import console, fail, print_json, print_table
from onefold.platform.config_error import ConfigError

if TYPE_CHECKING:
    # typer carries its own copy of click; these are the types its groups are written against.
    from typer import _click as click

    from onefold.cli.supervisor import Supervisor


@dataclass(frozen=True)
class LazyCommand:
    """A command or command group imported when it runs: `attribute` of `module` is a typer.Typer
    (a group) or a function (one command)."""

    module: str
    attribute: str
    help: str
    context_settings: dict[str, Any] = field(default_factory=dict)


LAZY_COMMANDS = {
    "apply": LazyCommand(
        "onefold.cli.sources",
        "apply",
        "Declare sources, identity rules, the consent model, segments definitions, journeys, templates "
        "and destinations from YAML files.",
    ),
    "import": LazyCommand(
        "onefold.cli.importer",
        "import_file",
        "Import identify/track records; resumable, and re-running imports nothing twice.",
    ),
    "bench": LazyCommand(
        "onefold.cli.bench",
        "bench",
        "Run a benchmark from bench/ (e.g. `onefold bench eventlog --json`).",
        {"allow_extra_args": True, "ignore_unknown_options": True},
    ),
    "credentials": LazyCommand(
        "onefold.cli.credentials", "credentials_app", "Create, list and revoke API credentials."
    ),
    "sources": LazyCommand(
        "onefold.cli.sources", "sources_app", "Create, list and manage ingest sources and their write keys."
    ),
    "quarantine": LazyCommand(
        "onefold.cli.quarantine", "quarantine_app", "List and replay quarantined events."
    ),
    "audit": LazyCommand(
        "onefold.cli.audit",
        "audit_app",
        "Audit consent (as of a time, with proof), verify the logs, and write reports.",
    ),
    "profile": LazyCommand(
        "onefold.cli.profile",
        "profile_app",
        "Look up profiles (by id or TYPE:VALUE), their timeline and merge history; merge and unmerge.",
    ),
    "consent": LazyCommand(
        "onefold.cli.consent_commands",
        "consent_app",
        "Grant, withdraw and check consent; open and follow data-subject requests.",
    ),
    "segments": LazyCommand(
        "onefold.cli.segments",
        "segments_app",
        "Segments, tags, computed traits, lifecycle and RFM: definitions, members, a profile's and why.",
    ),
    "journeys": LazyCommand(
        "onefold.cli.journeys",
        "journeys_app",
        "Journeys: list, get, publish, pause, archive; enter a person, follow an instance and why; stats.",
    ),
    "destinations": LazyCommand(
        "onefold.cli.destinations",
        "destinations_app",
        "Destinations: list, get, status, pause, resume, archive; dead letters, replay, signing secrets.",
    ),
    "insights": LazyCommand(
        "onefold.cli.insights",
        "insights_app",
        "Insights: funnels, attribution, cohorts and campaign ROI over the analytical copy of the history.",
    ),
    "keys": LazyCommand("onefold.cli.keys", "keys_app", "Manage the services' key-encryption keys."),
    "lag": LazyCommand(
        "onefold.cli.lag",
        "lag",
        "Show each service's backlog in events: not yet relayed, and each upstream's not yet applied.",
    ),
}

_LISTING = "onefold.listing"  # set in ctx.meta while help lists the commands


class LazyGroup(TyperGroup):
    """The root group: lists LAZY_COMMANDS without importing them; imports one when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *LAZY_COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if (command := super().get_command(ctx, cmd_name)) is not None:
            return command
        lazy = LAZY_COMMANDS.get(cmd_name)
        if lazy is None:
            return None
        if ctx.meta.get(_LISTING):
            return typer.main.TyperCommand(name=cmd_name, help=lazy.help)  # a name and a line of help
        command = load(cmd_name, lazy)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ctx.meta[_LISTING] = True
        try:
            super().format_help(ctx, formatter)
        finally:
            ctx.meta[_LISTING] = False


def load(name: str, lazy: LazyCommand) -> click.Command:
    """The click command of a LAZY_COMMANDS entry, importing its module."""
    target = getattr(importlib.import_module(lazy.module), lazy.attribute)
    command: click.Command
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(name, context_settings=lazy.context_settings or None)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


app = typer.Typer(
    name="onefold",
    cls=LazyGroup,
    help="Onefold: an event-sourced Customer Data Platform.",
    no_args_is_help=True,
    add_completion=False,
)


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
    workers: Annotated[
        str | None,
        typer.Option(
            metavar="SERVICE=N,...",
            help="run services as several worker processes sharing their subscriptions by partition, "
            "e.g. identity=2,segments=2 (1 to 16 each; the first keeps the service's port)",
        ),
    ] = None,
) -> None:
    """Start nats-server (JetStream) and the seven services; Ctrl-C stops everything."""
    import signal
    import threading

    from onefold.cli.supervisor import Supervisor, parse_workers

    try:
        workers_per_service = parse_workers(workers) if workers is not None else {}
    except ConfigError as error:
        raise fail(str(error)) from None
    supervisor = Supervisor(
        data_dir=data_dir.resolve(),
        nats_url=nats_url,
        config_file=config.resolve() if config else None,
        key_dir=key_dir.resolve() if key_dir else None,
        report=_report,
        port_base=port_base,
        workers=workers_per_service,
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
    from onefold.platform.health import health_status

    rows = [
        (name, child.target, health_status(child.target), child.http_url)
        for name, child in supervisor.children.items()
    ]
    rows.append(("nats", nats_url, "started here" if supervisor.nats else "external", ""))
    print_table(("service", "gRPC endpoint", "health", "HTTP"), rows, title="Onefold is up")
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
def status(data_dir: DataDir = Path(".onefold"), as_json: Json = False) -> None:
    """Show every endpoint and its health; exit 0 only when every one is SERVING."""
    from onefold.cli.supervisor import endpoint_statuses, read_endpoints

    try:
        state = read_endpoints(data_dir.resolve())
    except ConfigError as error:
        raise fail(str(error), code=1) from None
    endpoints = endpoint_statuses(state)
    all_serving = all(endpoint.health == "SERVING" for endpoint in endpoints)
    if as_json:
        listed = {
            endpoint.name: {
                "label": endpoint.label,
                "address": endpoint.address,
                "health": endpoint.health,
                "nats_connection": endpoint.nats_connection,
            }
            for endpoint in endpoints
        }
        print_json({"all_serving": all_serving, "endpoints": listed})
    else:
        rows = []
        for endpoint in endpoints:
            colour = "green" if endpoint.health == "SERVING" else "red"
            health = f"[{colour}]{endpoint.health}[/{colour}]"
            rows.append(
                (
                    endpoint.label,
                    escape(endpoint.address),
                    health,
                    endpoint.nats_connection,
                    endpoint.port_setting,
                )
            )
        print_table(("endpoint", "address", "health", "NATS connection", "port setting"), rows, markup=True)
    raise typer.Exit(0 if all_serving else 1)
