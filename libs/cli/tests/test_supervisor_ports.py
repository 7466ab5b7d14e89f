"""Which ports `onefold up` takes: the configured ones, refused before anything starts when one is
taken or two endpoints share one; free ones with base 0. Real sockets, a real data dir."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from onefold.cli.supervisor import Supervisor
from onefold.platform.config import PORT_OFFSETS, ConfigError
from onefold.testing.ports import free_port_range


def test_the_port_base_places_every_endpoint(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor]
) -> None:
    base = free_port_range(len(PORT_OFFSETS))
    supervisor = prepare_supervisor(tmp_path / "data", port_base=base)
    assert supervisor.ports == {key: base + offset for key, offset in PORT_OFFSETS.items()}


def test_base_zero_picks_distinct_free_ports(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor]
) -> None:
    supervisor = prepare_supervisor(tmp_path / "data", port_base=0)
    assert set(supervisor.ports) == set(PORT_OFFSETS)
    assert 0 not in supervisor.ports.values()
    assert len(set(supervisor.ports.values())) == len(PORT_OFFSETS)


def test_an_external_nats_takes_no_port(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor]
) -> None:
    supervisor = prepare_supervisor(tmp_path / "data", port_base=0, nats_url="nats://elsewhere:4222")
    assert "nats" not in supervisor.ports


def test_a_port_in_use_is_refused_before_anything_starts(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor]
) -> None:
    base = free_port_range(len(PORT_OFFSETS))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + PORT_OFFSETS["consent"]))
        busy.listen()
        with pytest.raises(ConfigError) as caught:
            prepare_supervisor(tmp_path / "data", port_base=base)
    assert str(caught.value) == (
        f"port {base + 3} (consent gRPC) is already in use (by another program or another `onefold up`); "
        "choose other ports with `onefold up --port-base N` (moves every endpoint) or the setting "
        "ports.base (ONEFOLD_PORTS__BASE), or move one endpoint with ports.consent (ONEFOLD_PORTS__CONSENT)"
    )
    assert not (tmp_path / "data" / "auth.db").exists()  # no credential was made, nothing started


def test_two_endpoints_on_one_port_are_refused(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = free_port_range(len(PORT_OFFSETS))
    monkeypatch.setenv("ONEFOLD_PORTS__NATS", str(base + PORT_OFFSETS["identity"]))
    with pytest.raises(ConfigError, match=r"ports\.identity and ports\.nats both give port \d+"):
        prepare_supervisor(tmp_path / "data", port_base=base)


def test_a_port_base_without_room_for_every_endpoint_is_refused(
    tmp_path: Path, prepare_supervisor: Callable[..., Supervisor]
) -> None:
    with pytest.raises(ConfigError, match=r"--port-base 65530 leaves no room .*; give at most 65527"):
        prepare_supervisor(tmp_path / "data", port_base=65530)
