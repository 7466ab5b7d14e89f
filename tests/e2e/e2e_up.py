"""What end-to-end tests of the CLI share: `onefold up` started in a fresh data dir with the admin
credential it prints (`running_up`, the `up` fixture of conftest.py) and the CLI run against it
(`Cli`), and `wait_for` a condition."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ONEFOLD = [sys.executable, "-m", "onefold.cli"]
TOKEN = re.compile(r"ofk_[0-9a-f]{16}_[A-Za-z0-9_-]+")
T = TypeVar("T")


@dataclass
class Cli:
    data_dir: Path
    token: str

    def run(self, *args: str, status: int = 0, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*ONEFOLD, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "ONEFOLD_TOKEN": self.token, "COLUMNS": "250"},
            timeout=timeout,
        )
        assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def profile_id(self, user_id: str) -> str:
        """The profile identity made of `user_id`, or "" while it has none yet."""
        done = subprocess.run(
            [*ONEFOLD, "profile", "get", f"user_id:{user_id}", "--json", "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "ONEFOLD_TOKEN": self.token},
            timeout=60,
        )
        return str(json.loads(done.stdout)["profile_id"]) if done.returncode == 0 else ""


@contextlib.contextmanager
def running_up(tmp_path: Path, *options: str) -> Iterator[tuple[Cli, subprocess.Popen[bytes]]]:
    """`onefold up [options]` in tmp_path/data, its output in tmp_path/up.out."""
    data_dir = tmp_path / "data"
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*ONEFOLD, "up", "--data-dir", str(data_dir), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        # Bounds a hang only: seven services (and any --workers) start in turn on a busy machine.
        text = wait_for(
            lambda: printed(output, process, "Ctrl-C stops everything"), "onefold up", timeout=300
        )
        yield Cli(data_dir, TOKEN.findall(text)[0]), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def printed(output: Path, process: subprocess.Popen[bytes], needle: str) -> str:
    text = output.read_text()
    if process.poll() is not None:
        raise AssertionError(f"onefold up exited early:\n{text}")
    # A long data dir path makes the terminal text wrap: compare the words, not the line breaks.
    return text if needle in " ".join(text.split()) else ""


def wait_for(probe: Callable[[], T], what: str, timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return found
