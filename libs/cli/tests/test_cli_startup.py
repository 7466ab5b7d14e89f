"""The structure that keeps `onefold` quick to start (bench/cli.py measures the time itself): help lists
every command group without importing it, and the heavy libraries load only in the commands that
call services or databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer

from onefold.cli.main import LAZY_COMMANDS, app, load

SERVICE_LIBRARIES = ("grpc", "sqlalchemy", "nats", "google.protobuf")


def _modules_after(code: str) -> set[str]:
    """The top-level names of the modules a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.splitlines()[-1]))


def _loaded(modules: set[str], libraries: tuple[str, ...] = SERVICE_LIBRARIES) -> list[str]:
    return sorted(
        name for name in modules if any(name == lib or name.startswith(lib + ".") for lib in libraries)
    )


def test_importing_the_entrypoint_imports_no_service_library() -> None:
    # Nor pydantic (the settings models): typer loads it only once it parses an option's value.
    assert _loaded(_modules_after("import onefold.cli.main"), (*SERVICE_LIBRARIES, "pydantic")) == []


# Every group and command but `import`, whose module (importer.py) still loads gRPC when imported.
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status", "--help"],
        *([group, "--help"] for group in LAZY_COMMANDS if group != "import"),
    ],
)
def test_help_imports_no_service_library(argv: list[str]) -> None:
    run = f"from onefold.cli.main import app\ntry:\n    app({argv!r})\nexcept SystemExit:\n    pass"
    assert _loaded(_modules_after(run)) == []


def test_root_help_lists_every_command_group() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "onefold.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {
        line.strip("│ ").split(" ", 1)[0] for line in result.stdout.splitlines() if line.startswith("│ ")
    }
    assert {*LAZY_COMMANDS, "up", "status"} <= listed
    for lazy in LAZY_COMMANDS.values():
        assert lazy.help in " ".join(result.stdout.replace("│", " ").split())


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_each_listed_command_loads_with_the_help_the_listing_shows(name: str) -> None:
    lazy = LAZY_COMMANDS[name]
    command = load(name, lazy)
    assert command.name == name
    if isinstance(getattr(__import__(lazy.module, fromlist=["_"]), lazy.attribute), typer.Typer):
        assert command.help == lazy.help  # a group's help is written twice: here and in its module


def test_a_lazy_group_runs_through_the_root_command() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["credentials", "--help"])
    assert result.exit_code == 0, result.output
    assert "revoke" in result.output


def test_the_event_types_profile_timeline_names_are_those_of_the_contract() -> None:
    from onefold.cli.profile import EVENT_TYPES
    from onefold.contracts.ingest.v1 import ingest_pb2

    contract = {name.removeprefix("EVENT_TYPE_").lower() for name, _ in ingest_pb2.EventType.items()}
    assert set(EVENT_TYPES) == contract - {"unspecified"}


def test_the_failure_kinds_quarantine_names_are_those_of_the_contract() -> None:
    from onefold.cli.quarantine import KINDS
    from onefold.contracts.ingest.v1 import ingest_pb2

    contract = {name.removeprefix("FAILURE_KIND_").lower() for name, _ in ingest_pb2.FailureKind.items()}
    assert set(KINDS) == contract - {"unspecified"}


def test_the_plan_modes_sources_names_are_those_of_the_contract() -> None:
    from onefold.cli.sources import PLAN_MODES
    from onefold.contracts.ingest.v1 import ingest_pb2

    contract = {name.removeprefix("PLAN_MODE_").lower() for name, _ in ingest_pb2.PlanMode.items()}
    assert set(PLAN_MODES) == contract - {"unspecified"}
