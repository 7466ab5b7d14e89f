"""Start Onefold services as real subprocesses and wait until they report SERVING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from onefold.platform.auth import ANY_WORKSPACE, CredentialStore
from onefold.platform.health import wait_for_health
from onefold.platform.nats_server import NatsServerProcess, tied_to_parent
from onefold.platform.ports import free_port


@dataclass
class ServiceProcess:
    """One service (`python -m onefold.<name>`) on a free port with its own data dir, connecting to
    `nats` as its own NATS user (`nats_user`, by default the service's name)."""

    name: str
    data_dir: Path
    nats: NatsServerProcess
    port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    nats_user: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ONEFOLD_DATA_DIR": str(self.data_dir),
                "ONEFOLD_GRPC__PORT": str(self.port),
                "ONEFOLD_AUTH__CACHE_SECONDS": "0",
                "ONEFOLD_EVENTLOG__KEY_FILE": str(self.data_dir / "keys" / f"{self.name}.kek"),
                **self.nats.client_environment(self.nats_user or self.name),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> None:
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                tied_to_parent([sys.executable, "-m", f"onefold.{self.name}"]),
                env=self.env(),
                stdout=log,
                stderr=log,
            )
        if not wait_for_health(self.target, timeout=timeout):
            self.stop()
            raise RuntimeError(
                f"{self.name} did not become SERVING; log:\n{self.log_path.read_text()[-3000:]}"
            )

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def peer_env(data_dir: Path, peers: Iterable[ServiceProcess]) -> dict[str, str]:
    """The settings a service needs to call `peers` (already started) as `onefold up` gives them: their
    addresses and a service credential from the data dir's credential store. Consumers need this to
    ask their upstream for subject keys (events travel sealed on the bus)."""
    credentials = CredentialStore(f"sqlite:///{data_dir / 'auth.db'}", cache_seconds=0)
    try:
        credentials.create_schema()
        token = credentials.issue(ANY_WORKSPACE, ["service"], name="tests: service-to-service").token
    finally:
        credentials.engine.dispose()
    env = {"ONEFOLD_AUTH__SERVICE_TOKEN": token}
    for peer in peers:
        env[f"ONEFOLD_PEERS__{peer.name.upper()}"] = peer.target
    return env
