"""`--workers`: the SERVICE=N list read into a count per service, and the settings checked against it
before anything starts (a worker count the services would read differently, more workers than
partitions). A real data dir, real settings from the environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from onefold.cli.supervisor import MAX_WORKERS, SERVICES, Supervisor, parse_workers
from onefold.platform.config import ConfigError


def test_a_list_of_services_and_counts_is_read() -> None:
    assert parse_workers("identity=2, segments=3") == {"identity": 2, "segments": 3}
    assert parse_workers(f"ingest={MAX_WORKERS}") == {"ingest": MAX_WORKERS}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("billing=2", f"--workers: no service 'billing'; the services are {', '.join(SERVICES)}"),
        ("segments=2.5", "--workers: segments=2.5: give a whole number from 1 to 16"),
        ("segments=-1", "--workers: segments=-1: give a whole number from 1 to 16"),
        ("segments=0", "--workers: segments=0: give a whole number from 1 to 16"),
        ("segments=17", "--workers: segments=17: give a whole number from 1 to 16"),
        ("identity=2,identity=2", "--workers: identity is named twice; give each service once"),
        ("segments:2", "--workers: 'segments:2' is not SERVICE=N (e.g. --workers segments=2)"),
        ("=2", "--workers: '=2' is not SERVICE=N (e.g. --workers segments=2)"),
        ("segments=2,", "--workers: '' is not SERVICE=N (e.g. --workers segments=2)"),
    ],
)
def test_a_bad_list_is_refused_with_its_reason(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_workers(spec)
    assert str(caught.value) == message


def test_more_workers_than_partitions_is_refused(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONEFOLD_EVENTLOG__PARTITIONS", "2")
    with pytest.raises(ConfigError) as caught:
        prepare_supervisor(tmp_path / "data", port_base=0, workers={"segments": 3})
    assert str(caught.value) == (
        "--workers segments=3: more workers than eventlog.partitions (2); each worker needs a partition of its own"
    )


def test_a_worker_count_from_the_settings_alone_is_refused(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process would be told of workers that `onefold up` never starts."""
    monkeypatch.setenv("ONEFOLD_EVENTLOG__WORKERS", "2")
    with pytest.raises(ConfigError) as caught:
        prepare_supervisor(
            tmp_path / "data", port_base=0, workers={name: 2 for name in SERVICES if name != "journeys"}
        )
    assert str(caught.value) == (
        "eventlog.workers is 2 (config file or ONEFOLD_EVENTLOG__WORKERS), but `onefold up` starts one "
        "journeys process; give the number with `onefold up --workers journeys=N` instead"
    )
