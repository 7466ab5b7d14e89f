"""The `up` fixture: `onefold up` in a fresh data dir, stopped at the end (e2e_up.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_up import Cli, running_up


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[Cli, subprocess.Popen[bytes]]]:
    with running_up(tmp_path) as started:
        yield started
