"""What the CLI's tests share: a Supervisor prepared on a data dir, stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from onefold.cli.supervisor import Supervisor


@pytest.fixture
def prepare_supervisor() -> Iterator[Callable[..., Supervisor]]:
    """`prepare_supervisor(data_dir, **options)`: a Supervisor whose `prepare()` ran (or raised)."""
    made: list[Supervisor] = []

    def prepare(data: Path, **options: Any) -> Supervisor:
        supervisor = Supervisor(data_dir=data, report=lambda _: None, **options)
        made.append(supervisor)
        supervisor.prepare()
        return supervisor

    yield prepare
    for supervisor in made:
        supervisor.stop()  # as `onefold up` does after a refused start: releases the data dir's lock
