"""`onefold up`: one nats-server and the seven services as separate processes on this machine.

The supervisor owns the children: it starts them in order, waits until every service reports
SERVING, restarts a child that dies (saying so), and on Ctrl-C/SIGTERM stops services first
(they turn NOT_SERVING and finish in-flight calls), then NATS. Children ask the kernel to signal
them if the supervisor itself dies, so no process outlives it. State that a second command needs
(`onefold status`) is written to <data-dir>/run/endpoints.json while it runs.

Every endpoint has a fixed port from the `ports` settings (7460-7468 by default, `--port-base`
moves them all), so clients keep their addresses across restarts. A port already taken stops the
start before any process is started, naming the endpoint and the setting that moves it.

`--workers segments=2` runs a service as several worker processes sharing its subscriptions by
partition (each is told how many there are: eventlog.workers). The first is the service as clients
know it (its fixed port, endpoints.json's `services`, the other services' peer address); the others
("segments-2" ...) listen on free ports, are listed under endpoints.json's `workers` only, and are
started, health-checked, restarted and stopped like every other child.

Everything it and the services create is private to the user (umask 077; the data dir is made
0700/0600 on each start). Each service's key-encryption key lives outside the data dir, in the key
dir (`--key-dir`, ONEFOLD_KEY_DIR, default ~/.config/onefold/keys/<installation id>/), so a copy of
the data dir alone cannot be read; installations whose keys are still under <data-dir>/keys keep
them there, with a warning. The service-to-service credential made at start is revoked at stop (and
at the next start, after a crash).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from onefold.platform.bus_permissions import OPERATOR
from onefold.platform.config_error import ConfigError
from onefold.platform.ports import free_port, port_in_use

# `onefold status` and every client command read endpoints.json through this module; what only
# `onefold up` needs (SQLAlchemy, gRPC, settings models, nats-server) is imported where it is used.
if TYPE_CHECKING:
    from onefold.platform.auth import IssuedCredential
    from onefold.platform.config import NatsSettings, PortsSettings, Settings
    from onefold.platform.nats_server import NatsServerProcess

SERVICES = ("ingest", "identity", "consent", "segments", "journeys", "destinations", "insights")
# The `ports` setting (onefold.platform.config.PORT_OFFSETS) of each service's gRPC listener, and of
# the HTTP listeners (ingest's: the Segment-compatible tracking API).
GRPC_PORT_KEYS = {name: name for name in SERVICES} | {"ingest": "ingest_grpc"}
HTTP_PORT_KEYS = {"ingest": "ingest_http"}
NATS_PORT_KEY = "nats"
ENDPOINTS_FILE = Path("run") / "endpoints.json"
NATS_DIR = Path("nats")  # the embedded server's store, config and credentials
SERVICE_CREDENTIAL_NAME = "onefold up: service-to-service"
# A child that ran this long before dying had been healthy: its restart backoff starts again at 1 s
# (crashes hours apart are not a crash loop), while a child dying right after each start backs off
# 1, 2, 4 ... 30 s.
HEALTHY_RUN_SECONDS = 60.0
MAX_RESTART_BACKOFF_SECONDS = 30
# `--workers`: at most this many processes of one service (eventlog.partitions bounds it further).
MAX_WORKERS = 16
WORKERS_ENV = "ONEFOLD_EVENTLOG__WORKERS"


def parse_workers(spec: str) -> dict[str, int]:
    """`--workers identity=2,segments=2`: the number of worker processes of each service named."""
    workers: dict[str, int] = {}
    for pair in spec.split(","):
        name, equals, count = (part.strip() for part in pair.partition("="))
        if not equals or not name or not count:
            raise ConfigError(f"--workers: '{pair.strip()}' is not SERVICE=N (e.g. --workers segments=2)")
        if name not in SERVICES:
            raise ConfigError(f"--workers: no service '{name}'; the services are {', '.join(SERVICES)}")
        if name in workers:
            raise ConfigError(f"--workers: {name} is named twice; give each service once")
        if not count.isdecimal() or not 1 <= int(count) <= MAX_WORKERS:
            raise ConfigError(f"--workers: {name}={count}: give a whole number from 1 to {MAX_WORKERS}")
        workers[name] = int(count)
    return workers


KEY_DIR_ENV = "ONEFOLD_KEY_DIR"
LEGACY_KEY_DIR = "keys"  # <data-dir>/keys: where keys lived before the key dir existed
INSTALLATION_ID_FILE = "installation-id"
KEY_SUFFIX = ".kek"


def installation_id(data_dir: Path) -> str:
    """A random id of this installation, kept in its data dir (names its key dir)."""
    path = data_dir / INSTALLATION_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    with contextlib.suppress(FileExistsError), path.open("x") as file:
        file.write(uuid.uuid4().hex + "\n")
    return path.read_text().strip()


def default_key_dir(data_dir: Path) -> Path:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "onefold" / "keys" / installation_id(data_dir)


def resolve_key_dir(data_dir: Path, key_dir: Path | None, services: tuple[str, ...] = SERVICES) -> Path:
    """Where the services' key files are; refuses a layout that would make new keys for old data.

    Keys already under <data-dir>/keys stay there unless a key dir is named; naming one while a
    service's key is only in the data dir is an error (move the file first), never a fresh key."""
    legacy = data_dir / LEGACY_KEY_DIR
    legacy_keys = {name for name in services if (legacy / f"{name}{KEY_SUFFIX}").exists()}
    if key_dir is None:
        if legacy_keys:
            return legacy
        key_dir = default_key_dir(data_dir)
    key_dir = key_dir.resolve()
    stranded = sorted(name for name in legacy_keys if not (key_dir / f"{name}{KEY_SUFFIX}").exists())
    if stranded and key_dir != legacy.resolve():
        raise ConfigError(
            f"the key-encryption keys of {', '.join(stranded)} are in {legacy}, not in {key_dir}; "
            f"move the *{KEY_SUFFIX} files there first (without them the data cannot be read)"
        )
    return key_dir


def key_file(key_dir: Path, service: str) -> Path:
    return key_dir / f"{service}{KEY_SUFFIX}"


@dataclass
class Child:
    service: str
    port: int
    worker: int = 1  # which of the service's worker processes (1: the one clients and peers call)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0  # restarts since it last ran HEALTHY_RUN_SECONDS: the backoff's exponent
    next_restart_at: float = 0.0
    started_at: float | None = None  # supervisor clock; None until the watch first sees it alive
    nats_connected: bool | None = None
    http_port: int = 0

    @property
    def name(self) -> str:
        """How messages, logs and endpoints.json name it: `segments`, `segments-2` ..."""
        return self.service if self.worker == 1 else f"{self.service}-{self.worker}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}" if self.http_port else ""


@dataclass
class Supervisor:
    data_dir: Path
    nats_url: str | None = None
    config_file: Path | None = None
    key_dir: Path | None = None
    report: Callable[[str], None] = print
    services: tuple[str, ...] = SERVICES
    port_base: int | None = None  # `--port-base`: beats ports.base of the config file and environment
    workers: dict[str, int] = field(default_factory=dict)  # `--workers`: processes per service (else 1)
    ports: dict[str, int] = field(default_factory=dict)  # each endpoint's port, settled by prepare()
    children: dict[str, Child] = field(default_factory=dict)
    nats: NatsServerProcess | None = None
    admin: IssuedCredential | None = None
    _lock: IO[str] | None = None
    _service_token: str = field(default="", repr=False)
    _service_credential_id: str = ""
    _auth_url: str = ""
    _partitions: int = 16  # eventlog.partitions, settled by prepare()
    _stopping: bool = False
    clock: Callable[[], float] = time.monotonic  # for the restart backoff

    # -- start ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        # Validate the configuration the services will read before starting anything, so a typo is
        # one sentence here rather than seven crashed processes.
        from onefold.platform.auth import ANY_WORKSPACE, CredentialStore
        from onefold.platform.config import MAX_PORT_BASE, PORT_OFFSETS, load_settings, prepare_data_dir
        from onefold.platform.service import PRIVATE_UMASK, ensure_bootstrap_admin

        if self.port_base is not None and self.port_base > MAX_PORT_BASE:
            raise ConfigError(
                f"--port-base {self.port_base} leaves no room for the {len(PORT_OFFSETS)} consecutive ports "
                f"of the endpoints; give at most {MAX_PORT_BASE}"
            )
        overrides: dict[str, Any] = {"ports": {"base": self.port_base}} if self.port_base is not None else {}
        settings = [load_settings(name, self.config_file, **overrides) for name in self.services]
        for service_settings in settings:
            self._check_workers(service_settings)
        os.umask(PRIVATE_UMASK)  # what this process and its children create is the user's alone
        prepare_data_dir(self.data_dir)
        (self.data_dir / "run").mkdir(exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        lock = (self.data_dir / "run" / "up.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()  # not ours: stop() must leave the running instance's files alone
            raise ConfigError(f"another `onefold up` is already running on {self.data_dir}") from None
        self._lock = lock
        self.ports = self._assign_ports(settings[0].ports)
        self._partitions = settings[0].eventlog.partitions  # the bus users may use their groups' consumers
        self._prepare_keys()
        # The store the services will read: the configured one, else the data dir's.
        self._auth_url = settings[0].auth.database_url or f"sqlite:///{self.data_dir / 'auth.db'}"
        store = CredentialStore(self._auth_url)
        store.create_schema()
        self.admin = ensure_bootstrap_admin(store)
        # A fresh service credential each start, for services calling each other. Stop revokes it;
        # after a crash (no stop) the one left active is revoked here.
        for row in store.list(ANY_WORKSPACE):
            if row["name"] == SERVICE_CREDENTIAL_NAME and row["revoked_at"] is None:
                store.revoke(str(row["id"]))
        issued = store.issue(ANY_WORKSPACE, ["service"], name=SERVICE_CREDENTIAL_NAME)
        self._service_token, self._service_credential_id = issued.token, issued.id
        store.engine.dispose()

    def _check_workers(self, settings: Settings) -> None:
        """`--workers` decides how many processes of a service run; a config file or environment
        saying otherwise would have each process deal the partitions among workers never started."""
        name, count = settings.service, self.workers.get(settings.service, 1)
        if count > settings.eventlog.partitions:
            raise ConfigError(
                f"--workers {name}={count}: more workers than eventlog.partitions "
                f"({settings.eventlog.partitions}); each worker needs a partition of its own"
            )
        if name not in self.workers and settings.eventlog.workers != 1:
            raise ConfigError(
                f"eventlog.workers is {settings.eventlog.workers} (config file or {WORKERS_ENV}), but `onefold up` "
                f"starts one {name} process; give the number with `onefold up --workers {name}=N` instead"
            )

    def _prepare_keys(self) -> None:
        """Settle the key dir; refuse to start a service whose data exists but whose key does not."""
        self.key_dir = resolve_key_dir(self.data_dir, self.key_dir, self.services)
        if self.key_dir.resolve().is_relative_to(self.data_dir.resolve()):
            self.report(
                f"the key-encryption keys are in {self.key_dir}, inside the data dir: a copy of it holds the "
                "keys too; move them out (e.g. to ~/.config/onefold/keys/) and pass --key-dir"
            )
        for name in self.services:
            database = self.data_dir / f"{name}.db"
            if database.exists() and not key_file(self.key_dir, name).exists():
                raise ConfigError(
                    f"{database} exists but its key-encryption key {key_file(self.key_dir, name)} does not; "
                    "pass the --key-dir that holds it (a new key could not read the data)"
                )
        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _assign_ports(self, settings: PortsSettings) -> dict[str, int]:
        """The port of every endpoint this run listens on: the configured ones, each checked free
        now (before anything starts), and free ports where the setting says 0."""
        keys = [GRPC_PORT_KEYS[name] for name in self.services]
        keys += [HTTP_PORT_KEYS[name] for name in self.services if name in HTTP_PORT_KEYS]
        if not self.nats_url:
            keys.append(NATS_PORT_KEY)
        configured = settings.chosen()
        ports = {key: configured[key] for key in keys}
        by_port: dict[int, list[str]] = {}
        for key, port in ports.items():
            if port:
                by_port.setdefault(port, []).append(key)
        shared = {port: sharing for port, sharing in by_port.items() if len(sharing) > 1}
        if shared:
            port, sharing = next(iter(shared.items()))
            raise ConfigError(
                f"the settings {' and '.join(f'ports.{key}' for key in sharing)} both give port {port}; "
                "give each endpoint its own port"
            )
        busy = [key for key, port in ports.items() if port and port_in_use(port)]
        if busy:
            raise ConfigError(_ports_in_use_message(busy, ports))
        taken = set(by_port)
        for key in [key for key, port in ports.items() if not port]:
            ports[key] = _distinct_free_port(taken)
        return ports

    def start_nats(self) -> str:
        if self.nats_url:
            return self.nats_url
        from onefold.platform.nats_server import NatsServerProcess

        self.nats = NatsServerProcess(
            self.data_dir / NATS_DIR,
            port=self.ports[NATS_PORT_KEY],
            workers=self.workers,
            partitions=self._partitions,
        )
        self.nats.start()
        return self.nats.url

    def _spawn(self, child: Child, nats_url: str) -> None:
        from onefold.platform.nats_server import tied_to_parent

        env = dict(os.environ)
        env.update(
            {
                "ONEFOLD_DATA_DIR": str(self.data_dir),
                "ONEFOLD_GRPC__PORT": str(child.port),
                "ONEFOLD_NATS__URL": nats_url,
                "ONEFOLD_AUTH__BOOTSTRAP_ADMIN": "false",
                "ONEFOLD_AUTH__SERVICE_TOKEN": self._service_token,
                # Local use only: each service's key-encryption key in a 0600 file in the key dir.
                # In Kubernetes it comes from a Secret (ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY).
                "ONEFOLD_EVENTLOG__KEY_FILE": str(key_file(self.key_dir or self.data_dir, child.service)),
            }
        )
        # Every service can reach the others (consent resolves subjects and runs data-subject requests),
        # each at its first worker: the one with the fixed port.
        for peer in self.children.values():
            if peer.worker == 1:
                env[f"ONEFOLD_PEERS__{peer.service.upper()}"] = f"127.0.0.1:{peer.port}"
        if self.nats:
            # Its own NATS user and password file (<data-dir>/nats/credentials, 0600), made on first start.
            env.update(self.nats.client_environment(child.service))
        if child.service in HTTP_PORT_KEYS:
            # Ingest always serves HTTP: a further worker gets 0 (the process binds a free port), so
            # only the first one holds the fixed, advertised port.
            env["ONEFOLD_HTTP__PORT"] = str(child.http_port)
        if child.service in self.workers:
            env[WORKERS_ENV] = str(self.workers[child.service])
        if self.config_file:
            env["ONEFOLD_CONFIG"] = str(self.config_file)
        log = (self.data_dir / "logs" / f"{child.name}.log").open("ab")
        child.process = subprocess.Popen(
            tied_to_parent([sys.executable, "-m", f"onefold.{child.service}"]),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def start_services(self, nats_url: str) -> None:
        """Start each service's first worker; the further ones wait for `start_further_workers`."""
        taken = set(self.ports.values())
        for name in self.services:
            first = Child(name, self.ports[GRPC_PORT_KEYS[name]])
            if name in HTTP_PORT_KEYS:
                first.http_port = self.ports[HTTP_PORT_KEYS[name]]
            self.children[first.name] = first
            for worker in range(2, self.workers.get(name, 1) + 1):
                child = Child(name, _distinct_free_port(taken), worker=worker)
                self.children[child.name] = child
        for child in list(self.children.values()):  # every port is known first: each child gets its peers'
            if child.worker == 1:
                self._spawn(child, nats_url)

    def start_further_workers(self, nats_url: str) -> None:
        """Workers 2..N of each service, once its first is SERVING: that one has created the
        service's database schema, which processes creating it at once would race on."""
        for child in self.children.values():
            if child.process is None:
                self._spawn(child, nats_url)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        from onefold.platform.health import health_status

        deadline = time.monotonic() + timeout
        pending = {name for name, child in self.children.items() if child.process}
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                child = self.children[name]
                if child.process and child.process.poll() is not None:
                    log = self.data_dir / "logs" / f"{name}.log"
                    raise ConfigError(
                        f"the {name} service exited during start (code {child.process.returncode}): "
                        f"{_last_line(log)} (log: {log})"
                    )
                if health_status(child.target, timeout=0.5) == "SERVING":
                    pending.discard(name)
            time.sleep(0.1)
        if pending:
            raise ConfigError(f"not SERVING after {timeout:.0f}s: {', '.join(sorted(pending))}")

    def write_endpoints(self, nats_url: str) -> None:
        """The run's state for other commands: `services` and `http` are what clients call (a service's
        first worker); `workers` the further workers' gRPC addresses; `pids` every child's process
        (rewritten when one restarts), for tools measuring them."""
        services: dict[str, str] = {}
        workers: dict[str, list[str]] = {}
        pids: dict[str, int] = {}
        for child in self.children.values():
            if child.worker == 1:
                services[child.service] = child.target
            else:
                workers.setdefault(child.service, []).append(child.target)
            if child.process:
                pids[child.name] = child.process.pid
        if self.nats:
            services["nats"] = f"127.0.0.1:{self.nats.port}"
            if self.nats.process:
                pids["nats"] = self.nats.process.pid
        http = {child.service: child.http_url for child in self.children.values() if child.http_url}
        state = {
            "pid": os.getpid(),
            "nats_url": nats_url,
            "services": services,
            "http": http,
            "workers": workers,
            "pids": pids,
        }
        # Replaced whole, never rewritten in place: `onefold status` may be reading it meanwhile.
        path = self.data_dir / ENDPOINTS_FILE
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(path)

    def start(self) -> str:
        self.prepare()
        nats_url = self.start_nats()
        self.start_services(nats_url)
        self.wait_healthy()
        if any(child.worker > 1 for child in self.children.values()):
            self.start_further_workers(nats_url)
            self.wait_healthy()
        self.write_endpoints(nats_url)
        return nats_url

    # -- watch ----------------------------------------------------------------------------------

    def watch_once(self, nats_url: str) -> None:
        """Restart what died and report NATS connectivity changes; called about twice a second."""
        from onefold.platform.health import DEFINITE, NATS_HEALTH_NAME, health_status

        now = self.clock()
        if self.nats and not self.nats.running() and not self._stopping:
            code = self.nats.process.returncode if self.nats.process else None
            self.report(f"nats-server exited unexpectedly (code {code}); restarting it on the same port")
            try:
                self.nats.start()
                self.report(f"nats-server is back on {self.nats.url}")
                self._record_restart(nats_url)
            except ConfigError as error:
                self.report(f"nats-server could not restart: {error}; retrying")
        for child in self.children.values():
            if child.process and child.process.poll() is not None and not self._stopping:
                if child.next_restart_at == 0.0:
                    if child.started_at is not None and now - child.started_at >= HEALTHY_RUN_SECONDS:
                        child.restarts = 0
                    backoff = min(2**child.restarts, MAX_RESTART_BACKOFF_SECONDS)
                    child.next_restart_at = now + backoff
                    self.report(
                        f"{child.name} exited unexpectedly (code {child.process.returncode}); "
                        f"restarting in {backoff}s"
                    )
                elif now >= child.next_restart_at:
                    child.restarts += 1
                    child.next_restart_at = 0.0
                    self._spawn(child, nats_url)
                    child.started_at = now
                    self._record_restart(nats_url)
                continue
            if child.started_at is None:
                child.started_at = now
            answer = health_status(child.target, NATS_HEALTH_NAME, timeout=0.5)
            if answer not in DEFINITE:
                continue  # no answer in time (a busy machine) says nothing about its NATS connection
            connected = answer == "SERVING"
            if child.nats_connected is not None and connected != child.nats_connected:
                state = "reconnected to NATS" if connected else "lost its NATS connection"
                self.report(f"{child.name} {state}")
            child.nats_connected = connected

    def _record_restart(self, nats_url: str) -> None:
        """A restarted child has a new pid: endpoints.json says so (once the run has written it)."""
        if self._lock:
            self.write_endpoints(nats_url)

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, grace: float = 15.0) -> None:
        self._stopping = True
        running = [c for c in self.children.values() if c.process and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
        if self.nats:
            self.nats.stop()
        if self._lock:
            self._revoke_service_credential()
            with contextlib.suppress(OSError):
                (self.data_dir / ENDPOINTS_FILE).unlink()
            self._lock.close()
            self._lock = None

    def _revoke_service_credential(self) -> None:
        if not self._service_credential_id:
            return
        import sqlalchemy as sa

        from onefold.platform.auth import CredentialStore
        from onefold.platform.errors import NotFound

        store = CredentialStore(self._auth_url)
        try:
            store.revoke(self._service_credential_id)
        except NotFound:
            pass  # revoked by hand meanwhile
        except sa.exc.SQLAlchemyError:
            self.report("could not revoke the service credential now; the next start revokes it")
        finally:
            store.engine.dispose()
        self._service_credential_id, self._service_token = "", ""


# How messages and `onefold status` name each endpoint (by its `ports` setting) for people.
ENDPOINT_LABELS = {
    "ingest_http": "ingest HTTP",
    "ingest_grpc": "ingest gRPC",
    "identity": "identity gRPC",
    "consent": "consent gRPC",
    "segments": "segments gRPC",
    "journeys": "journeys gRPC",
    "destinations": "destinations gRPC",
    "insights": "insights gRPC",
    "nats": "NATS",
}


def _setting_and_variable(key: str) -> str:
    return f"ports.{key} (ONEFOLD_PORTS__{key.upper()})"


def _ports_in_use_message(busy: list[str], ports: dict[str, int]) -> str:
    taken = ", ".join(f"{ports[key]} ({ENDPOINT_LABELS[key]})" for key in busy)
    what = f"port {taken} is" if len(busy) == 1 else f"ports {taken} are"
    settings = _setting_and_variable(busy[0]) if len(busy) == 1 else "ports.<endpoint>"
    return (
        f"{what} already in use (by another program or another `onefold up`); "
        f"choose other ports with `onefold up --port-base N` (moves every endpoint) "
        f"or the setting ports.base (ONEFOLD_PORTS__BASE), or move one endpoint with {settings}"
    )


def _distinct_free_port(taken: set[int]) -> int:
    """A free port not in `taken`, added to it. Each free port is bound only when its child starts:
    never hand the same one to two endpoints (the OS may offer a just-released port again)."""
    port = free_port()
    while port in taken:
        port = free_port()
    taken.add(port)
    return port


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "no output"


@dataclass(frozen=True)
class EndpointStatus:
    """One endpoint of a running `onefold up`, as `onefold status` shows it."""

    key: str  # its `ports` setting
    address: str
    health: str  # SERVING, NOT_SERVING, UNREACHABLE … or NOT STARTED
    nats_connection: str = "-"  # a service's connection to the bus (gRPC endpoints only)
    worker: int = 1  # `onefold up --workers`: the second and later processes take free ports

    @property
    def label(self) -> str:
        label = ENDPOINT_LABELS[self.key]
        return label if self.worker == 1 else f"{label}, worker {self.worker}"

    @property
    def name(self) -> str:
        """Unique among a run's endpoints: the port setting, with the worker after the first."""
        return self.key if self.worker == 1 else f"{self.key}#{self.worker}"

    @property
    def port_setting(self) -> str:
        return f"ports.{self.key}" if self.worker == 1 else "- (a free port)"


def endpoint_statuses(state: dict[str, Any]) -> list[EndpointStatus]:
    """Every endpoint listed in a run's endpoints.json (each worker process of a service too), each
    asked for its health now (all at once: a person waits for the slowest answer, not for the sum)."""
    from concurrent.futures import ThreadPoolExecutor

    from onefold.platform.health import NATS_HEALTH_NAME, health_statuses

    def grpc_endpoint(name: str, target: str | None, worker: int = 1) -> EndpointStatus:
        health, nats = health_statuses(target, ["", NATS_HEALTH_NAME]) if target else ("NOT STARTED", "-")
        return EndpointStatus(
            GRPC_PORT_KEYS[name], target or "-", health, nats if health == "SERVING" else "-", worker
        )

    def http_endpoint(name: str) -> EndpointStatus:
        url = state.get("http", {}).get(name)
        return EndpointStatus(HTTP_PORT_KEYS[name], url or "-", _http_health(url) if url else "NOT STARTED")

    nats_url = str(state.get("nats_url") or "")
    with ThreadPoolExecutor(max_workers=8) as pool:
        pending = []
        for name in SERVICES:
            if name in HTTP_PORT_KEYS:
                pending.append(pool.submit(http_endpoint, name))
            pending.append(pool.submit(grpc_endpoint, name, state["services"].get(name)))
            for worker, target in enumerate(state.get("workers", {}).get(name, []), start=2):
                pending.append(pool.submit(grpc_endpoint, name, target, worker))
        nats = pool.submit(lambda: EndpointStatus(NATS_PORT_KEY, nats_url or "-", _nats_health(nats_url)))
        return [future.result() for future in [*pending, nats]]


def _http_health(url: str) -> str:
    # The standard library's client, not httpx: importing httpx would double `onefold status`'s time.
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=1.0)
    try:
        connection.request("GET", "/health")
        code = connection.getresponse().status
    except OSError:
        return "UNREACHABLE"
    finally:
        connection.close()
    return "SERVING" if code == 200 else f"HTTP {code}"


def _nats_health(url: str) -> str:
    """SERVING when the server accepts connections (its protocol needs a credential to say more)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "NOT STARTED"
    try:
        with socket.create_connection((parts.hostname, parts.port or 4222), timeout=1.0):
            return "SERVING"
    except OSError:
        return "UNREACHABLE"


def read_endpoints(data_dir: Path) -> dict[str, Any]:
    path = data_dir / ENDPOINTS_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"nothing is running on {data_dir}: {path} is missing; start it with `onefold up`"
        ) from None
    return state


def operator_nats_settings(data_dir: Path) -> NatsSettings:
    """How a CLI command reads the bus of a running `onefold up`: as `operator`, which may only read
    chain digests (onefold.platform.bus_permissions)."""
    from onefold.platform.nats_server import BusCredentials

    nats_url = str(read_endpoints(data_dir)["nats_url"])
    return BusCredentials.of_server(data_dir / NATS_DIR).settings(OPERATOR, nats_url)
