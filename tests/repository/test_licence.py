"""Onefold is Apache-2.0: the licence text at the root and the licence in every package's metadata."""

from __future__ import annotations

import tomllib
from importlib.metadata import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = sorted([*ROOT.glob("libs/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")])


def test_the_licence_file_is_the_apache_2_0_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_every_package_declares_apache_2_0_in_its_metadata() -> None:
    assert len(MEMBERS) == 12  # five libraries, seven services
    for pyproject in [ROOT / "pyproject.toml", *MEMBERS]:
        project = tomllib.loads(pyproject.read_text())["project"]
        assert project.get("license") == "Apache-2.0", pyproject
        if pyproject != ROOT / "pyproject.toml":
            # What an installed package reports (the editable install reads the same pyproject).
            assert metadata(project["name"])["License-Expression"] == "Apache-2.0", project["name"]
