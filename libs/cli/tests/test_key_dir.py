"""Where `onefold up` keeps key-encryption keys: outside the data dir, without stranding old keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onefold.cli.supervisor import Supervisor, default_key_dir, resolve_key_dir
from onefold.platform.config import ConfigError


def test_a_new_installation_gets_its_own_key_dir_outside_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    key_dir = resolve_key_dir(data, None)
    assert key_dir == default_key_dir(data) and not key_dir.is_relative_to(data)
    assert key_dir.parent == Path(os.environ["XDG_CONFIG_HOME"]) / "onefold" / "keys"
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_key_dir(other, None) != key_dir  # one installation id per data dir
    assert resolve_key_dir(data, None) == key_dir  # and stable


def test_keys_already_in_the_data_dir_stay_used_with_a_warning_and_are_never_stranded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "ingest.kek").write_text("old key\n")
    assert resolve_key_dir(data, None) == data / "keys"
    elsewhere = tmp_path / "keys"
    with pytest.raises(ConfigError, match=r"ingest are in .*move the \*\.kek files there first"):
        resolve_key_dir(data, elsewhere)
    elsewhere.mkdir()
    (data / "keys" / "ingest.kek").rename(elsewhere / "ingest.kek")
    assert resolve_key_dir(data, elsewhere) == elsewhere.resolve()

    reports: list[str] = []
    supervisor = Supervisor(data_dir=data, report=reports.append, services=("ingest",))
    (data / "keys" / "ingest.kek").write_text("old key\n")
    supervisor._prepare_keys()
    assert supervisor.key_dir == data / "keys"
    assert any("inside the data dir" in line for line in reports)


def test_data_without_its_key_is_refused_rather_than_given_a_new_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "consent.db").write_bytes(b"")
    supervisor = Supervisor(
        data_dir=data, key_dir=tmp_path / "empty", report=lambda _: None, services=("consent",)
    )
    with pytest.raises(ConfigError, match=r"consent\.db exists but its key-encryption key .* does not"):
        supervisor._prepare_keys()
