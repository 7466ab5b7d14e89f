"""`onefold import` of CSV files: how columns become fields (docs/import.md), checked where it matters:
on the profiles a real identity service makes of the imported calls. `onefold import` and
`onefold profile get` run as subprocesses against real ingest and identity service processes and a
real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from onefold.platform.auth import CredentialStore
from onefold.testing.processes import ServiceProcess

ONEFOLD = [sys.executable, "-m", "onefold.cli"]


@dataclass
class Cli:
    data_dir: Path
    token: str

    def run(self, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*ONEFOLD, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "ONEFOLD_TOKEN": self.token, "COLUMNS": "250"},
            timeout=60,
        )
        assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def saved_imports(self) -> list[Path]:
        return sorted((self.data_dir / "imports").glob("*.json"))

    def traits(self, user_id: str) -> tuple[dict[str, Any], int]:
        """The profile's traits and event count, once the identity service has made the profile."""
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                [
                    *ONEFOLD,
                    "profile",
                    "get",
                    f"user_id:{user_id}",
                    "--json",
                    "--data-dir",
                    str(self.data_dir),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "ONEFOLD_TOKEN": self.token},
                timeout=60,
            )
            if done.returncode == 0:
                profile = json.loads(done.stdout)
                return {t["name"]: t["value"] for t in profile["traits"]}, int(profile["event_count"])
            if time.monotonic() > deadline:
                raise AssertionError(f"no profile for {user_id}: {done.stderr}")
            time.sleep(0.05)


@pytest.fixture
def cli(tmp_path: Path, start_service: Callable[..., ServiceProcess]) -> Cli:
    data = tmp_path / "data"
    data.mkdir()
    credentials = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    ingest = start_service("ingest", data_dir=data, onefold_auth__bootstrap_admin="false")
    identity = start_service("identity", data_dir=data, onefold_auth__bootstrap_admin="false")
    # The CLI finds both services in the data dir's run/endpoints.json, as after `onefold up`.
    cli_dir = tmp_path / "cli"
    (cli_dir / "run").mkdir(parents=True)
    endpoints = {"services": {"ingest": ingest.target, "identity": identity.target}}
    (cli_dir / "run" / "endpoints.json").write_text(json.dumps(endpoints))
    return Cli(cli_dir, credentials.issue("acme", ["admin"], "import test").token)


def _source(cli: Cli, name: str) -> str:
    source_id = cli.run("sources", "create", name).stdout.split()[1]
    assert source_id.startswith("src_")
    return source_id


def test_name_email_and_plan_columns_become_traits_on_the_profile_and_a_rerun_sends_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    source = _source(cli, "crm")
    people = tmp_path / "people.csv"
    people.write_text(
        "userId,name,email,plan\nu1,Ann Lee,ann@example.com,pro\nu2,Bob Roe,bob@example.com,free\n"
    )
    first = cli.json("import", str(people), "--source", source)
    assert first["mapping"]["call_type"] == "identify"
    assert [c["field"] for c in first["mapping"]["columns"]] == [
        "userId",
        "traits.name",
        "traits.email",
        "traits.plan",
    ]
    assert (first["this_run"]["sent"], first["this_run"]["accepted"], first["accepted"]) == (2, 2, 2)

    traits, events = cli.traits("u1")
    assert {name: traits.get(name) for name in ("name", "email", "plan")} == {
        "name": "Ann Lee",
        "email": "ann@example.com",
        "plan": "pro",
    }
    assert events == 1

    # The re-run says what it did: nothing; the whole file's counts and the earlier run stay apart.
    again = cli.run("import", str(people), "--source", source).stdout
    assert "this run: 0 sent, 2 already sent earlier" in again and "already imported" in again
    second = cli.json("import", str(people), "--source", source)
    assert (second["this_run"]["sent"], second["this_run"]["done_earlier"]) == (0, 2)
    assert second["accepted"] == 2 and len(second["runs"]) == 3
    assert [run["sent"] for run in second["runs"]] == [2, 0, 0]


def test_unmappable_columns_are_refused_before_anything_is_sent(cli: Cli, tmp_path: Path) -> None:
    source = _source(cli, "crm")
    people = tmp_path / "people.csv"
    people.write_text("userId,email,groupId,shop.region\nu7,sue@example.com,g1,north\n")
    refused = cli.run("import", str(people), "--source", source, status=2)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: 2 columns cannot be mapped"), refused.stderr
    assert "'groupId'" in lines[0] and "'shop.region'" in lines[0] and "--map COLUMN=FIELD" in lines[0]
    assert "sue@example.com" not in refused.stderr and "north" not in refused.stderr  # names, never values
    assert cli.saved_imports() == []  # no progress saved: no batch was sent

    # Mapped: the region is a trait, the group id is left out; the profile holds exactly one event.
    mapped = cli.json(
        "import", str(people), "--source", source, "--map", "shop.region=traits.region", "--map", "groupId=-"
    )
    assert (mapped["this_run"]["sent"], mapped["this_run"]["accepted"]) == (1, 1)
    traits, events = cli.traits("u7")
    assert (traits.get("region"), traits.get("email"), "groupId" in traits, events) == (
        "north",
        "sue@example.com",
        False,
        1,
    )


def test_map_file_and_map_options_rename_columns(cli: Cli, tmp_path: Path) -> None:
    source = _source(cli, "shop")
    export = tmp_path / "export.csv"
    export.write_text("customer,Full Name,tier,internal note\nc-9,Cy Doe,gold,call back\n")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("customer: userId\nFull Name: traits.name\ninternal note: null\n")
    report = cli.json(
        "import", str(export), "--source", source, "--map-file", str(mapping), "--map", "tier=traits.plan"
    )
    assert report["this_run"]["accepted"] == 1
    traits, _ = cli.traits("c-9")
    assert (traits.get("name"), traits.get("plan"), "internal note" in traits) == ("Cy Doe", "gold", False)


def test_dry_run_shows_the_mapping_and_rows_and_sends_nothing(cli: Cli, tmp_path: Path) -> None:
    source = _source(cli, "crm")
    people = tmp_path / "people.csv"
    people.write_text("userId,first_name,email\nu5,Dee,dee@example.com\n")
    shown = cli.run("import", str(people), "--source", source, "--dry-run").stdout
    assert "traits.firstName" in shown and "reserved trait" in shown and "nothing was sent" in shown
    dry = cli.json("import", str(people), "--dry-run")  # no --source: nothing is sent anywhere
    [row] = dry["rows"]
    assert row["call"]["traits"] == {"firstName": "Dee", "email": "dee@example.com"}
    assert cli.saved_imports() == []

    # The real import's first send is accepted, not a duplicate: the dry runs sent nothing.
    sent = cli.json("import", str(people), "--source", source)
    assert (sent["this_run"]["accepted"], sent["this_run"]["duplicates"]) == (1, 0)
    assert sent["this_run"]["sent"] == 1 and row["call"]["messageId"]
