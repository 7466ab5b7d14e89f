"""Configuration: defaults, then an optional YAML file, then environment variables.

Environment variables are `ONEFOLD_<SECTION>__<KEY>` (e.g. `ONEFOLD_GRPC__PORT=50051`); a few
top-level ones (`ONEFOLD_DATA_DIR`, `ONEFOLD_CONFIG`) have no section. Unknown keys are errors: a
typo in a config file must never be silently ignored.

The sections every service reads are declared here. A service's own section (ingest's collection
tuning, say) is declared by the service as a `ServiceSection` and read with
`settings.section(TheClass)`; its `ServiceSpec` names it, so `load_settings` validates it before the
service starts. One onefold.yaml serves every service: a section named after a service is kept
as it is by the others (only its owner knows its keys).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from onefold.platform.config_error import ConfigError as ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrpcSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    grace_seconds: float = Field(default=5.0, ge=0)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_concurrent_rpcs: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="calls in progress at once; one more is answered RESOURCE_EXHAUSTED at once "
        "(retry with backoff) rather than queued behind the others",
    )


class HttpSettings(_Section):
    """An HTTP listener, for services that serve one (ingest: the Segment-compatible tracking API)."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")


class NatsSettings(_Section):
    """The bus. Every client needs a credential: the server refuses anonymous ones (docs/security.md)."""

    url: str = Field(default="nats://127.0.0.1:4222", description="nats:// or tls:// (server TLS)")
    user: str = Field(
        default="", description="this service's NATS user (set by `onefold up`; in Kubernetes its name)"
    )
    password: str = Field(default="", repr=False, description="its password; prefer password_file")
    password_file: str = Field(
        default="",
        description="file holding the password (`onefold up` writes it; in Kubernetes a mounted Secret)",
    )
    tls_ca_file: str = Field(default="", description="CA certificate of the server's TLS; empty = system CAs")
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    reconnect_wait_seconds: float = Field(default=1.0, gt=0)


class DatabaseSettings(_Section):
    url: str = Field(default="", description="SQLAlchemy URL; empty = sqlite file <data_dir>/<service>.db")


class AuthSettings(_Section):
    database_url: str = Field(default="", description="credential store; empty = <data_dir>/auth.db")
    cache_seconds: float = Field(default=5.0, ge=0, description="how long a verified credential is cached")
    bootstrap_admin: bool = Field(default=True, description="create an admin credential on first start")
    service_token: str = Field(
        default="", repr=False, description="this service's credential for calling other services (a Secret)"
    )


class EventLogSettings(_Section):
    key_encryption_key: str = Field(
        default="",
        repr=False,
        description="base64 of 32 random bytes (a Kubernetes Secret); wraps the per-subject data keys",
    )
    key_file: str = Field(
        default="",
        description="file holding the key instead (for local use `onefold up` creates it in the key dir, "
        "outside the data dir)",
    )
    partitions: int = Field(default=16, ge=1, le=1024, description="NATS subject partitions per workspace")
    bus_max_age_hours: float = Field(default=168.0, gt=0, description="how long the bus keeps events")
    bus_replicas: int = Field(default=1, ge=1, le=5, description="JetStream replicas (3 in a cluster)")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="worker processes (replicas) of this service sharing its subscriptions by partition; "
        "the same value in every one of them (onefold up --workers, a Deployment's replicas)",
    )

    @model_validator(mode="after")
    def _workers_fit_partitions(self) -> EventLogSettings:
        if self.workers > self.partitions:
            raise ValueError(
                f"eventlog.workers ({self.workers}) cannot exceed eventlog.partitions ({self.partitions}): "
                "each worker needs a partition of its own"
            )
        return self


class ServiceSection(_Section):
    """Settings one service owns, under the top-level key `section` (`ONEFOLD_<SECTION>__<KEY>`).

    Declared by the service (e.g. `onefold.ingest.settings.IngestSettings`), named in its
    `ServiceSpec.sections`, read with `Settings.section`. Unknown keys are errors, as everywhere."""

    section: ClassVar[str]


SectionT = TypeVar("SectionT", bound=ServiceSection)


class PeersSettings(_Section):
    """gRPC addresses (host:port) of the other services, for the calls a service makes to them
    (consent resolves subjects through identity and runs data-subject requests on every service).
    Empty = not reachable from here: a request step for it stays pending."""

    ingest: str = ""
    identity: str = ""
    consent: str = ""
    segments: str = ""
    journeys: str = ""
    destinations: str = ""
    insights: str = ""


# Where `onefold up` puts each endpoint on this machine: the port `base` plus this offset, unless
# the endpoint's own key is set. Fixed (not random) so an SDK or script keeps its URL across restarts.
PORT_OFFSETS: dict[str, int] = {
    "ingest_http": 0,
    "ingest_grpc": 1,
    "identity": 2,
    "consent": 3,
    "segments": 4,
    "journeys": 5,
    "nats": 6,
    # After nats, not before it: an installation's existing ports must not move when a service is added.
    "destinations": 7,
    "insights": 8,
}
DEFAULT_PORT_BASE = 7460
MAX_PORT_BASE = 65535 - max(PORT_OFFSETS.values())


class PortsSettings(_Section):
    """The ports of `onefold up` (a service started on its own uses grpc.port and http.port).

    base 0 picks free ports at each start (for test suites running beside a developer's instance)."""

    base: int = Field(
        default=DEFAULT_PORT_BASE,
        ge=0,
        le=MAX_PORT_BASE,
        description="first of the consecutive ports below; 0 = free ports chosen at each start",
    )
    ingest_http: int | None = Field(default=None, ge=1, le=65535, description="default base+0")
    ingest_grpc: int | None = Field(default=None, ge=1, le=65535, description="default base+1")
    identity: int | None = Field(default=None, ge=1, le=65535, description="default base+2")
    consent: int | None = Field(default=None, ge=1, le=65535, description="default base+3")
    segments: int | None = Field(default=None, ge=1, le=65535, description="default base+4")
    journeys: int | None = Field(default=None, ge=1, le=65535, description="default base+5")
    nats: int | None = Field(default=None, ge=1, le=65535, description="default base+6 (the embedded server)")
    destinations: int | None = Field(default=None, ge=1, le=65535, description="default base+7")
    insights: int | None = Field(default=None, ge=1, le=65535, description="default base+8")

    def chosen(self) -> dict[str, int]:
        """Each endpoint's port: its own key, else base + offset; 0 where a free port is to be picked."""
        ports: dict[str, int] = {}
        for name, offset in PORT_OFFSETS.items():
            own: int | None = getattr(self, name)
            ports[name] = own if own is not None else (self.base + offset if self.base else 0)
        return ports


class TelemetrySettings(_Section):
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|console)$")
    otlp_endpoint: str = Field(default="", description="OTLP/gRPC collector; empty = traces stay in-process")
    console_traces: bool = False
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics; 0 = off")


class Settings(_Section):
    service: str = "onefold"
    data_dir: Path = Path(".onefold")
    grpc: GrpcSettings = GrpcSettings()
    http: HttpSettings = HttpSettings()
    nats: NatsSettings = NatsSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    eventlog: EventLogSettings = EventLogSettings()
    peers: PeersSettings = PeersSettings()
    ports: PortsSettings = PortsSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    # Service-owned sections as loaded (name -> mapping), and where they came from, for `section`.
    _service_sections: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)
    _origin: str = PrivateAttr(default="defaults and environment")

    def section(self, section_class: type[SectionT]) -> SectionT:
        """The service's own section (see ServiceSection); raises ConfigError like load_settings."""
        name = section_class.section
        try:
            return section_class.model_validate(self._service_sections.get(name, {}))
        except ValidationError as exc:
            raise ConfigError(_explain(exc, self._origin, name)) from None

    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / (self.service + '.db')}"

    def auth_database_url(self) -> str:
        return self.auth.database_url or f"sqlite:///{self.data_dir / 'auth.db'}"


# The service name is the caller's, never the environment's: one stray variable must not make seven
# services share one database.
_TOP_LEVEL_ENV = {"ONEFOLD_DATA_DIR": "data_dir"}


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if name in _TOP_LEVEL_ENV:
            out[_TOP_LEVEL_ENV[name]] = value
        elif name.startswith("ONEFOLD_") and "__" in name:
            section, _, key = name.removeprefix("ONEFOLD_").lower().partition("__")
            out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _explain(error: ValidationError, origin: str, section: str = "") -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in ((section,) if section else ()) + tuple(first["loc"]))
    where = where or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown configuration key '{where}' in {origin}"
    return f"invalid configuration value for '{where}' in {origin}: {first['msg']}"


def load_settings(
    service: str,
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    sections: Sequence[type[ServiceSection]] = (),
    **overrides: Any,
) -> Settings:
    """Build the settings of one service; raises ConfigError with a one-sentence reason.

    `sections`: the service's own sections, validated here too. Sections named after a service
    (`PeersSettings`' names) are kept for their owner, whichever service loads the file."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {"service": service}
    config_file = config_file or env.get("ONEFOLD_CONFIG") or None
    origin = "defaults and environment"
    if config_file:
        path = Path(config_file)
        origin = f"{path} (or ONEFOLD_* environment)"
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {path} must hold a mapping of settings")
        data = _merge(data, loaded)
    data = _merge(data, _env_overrides(env))
    data = _merge(data, overrides)
    owned = {*PeersSettings.model_fields, *(section.section for section in sections)}
    service_sections: dict[str, dict[str, Any]] = {}
    for name in owned & data.keys():
        value = data.pop(name)
        if not isinstance(value, Mapping):
            raise ConfigError(f"configuration section '{name}' in {origin} must hold a mapping of settings")
        service_sections[name] = dict(value)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin)) from None
    settings._service_sections = service_sections
    settings._origin = origin
    for section in sections:
        settings.section(section)
    return settings


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory (0700) and prove it is writable, or say why not in one sentence.

    What an older version left readable to others (0644 databases, 0755 directories) is made private
    here: every directory 0700, every file 0600. Entries owned by another user are left alone."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        make_private(path)
        # A file of this process's own (several services start at once in one data dir).
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"ok")
    except OSError as exc:
        raise ConfigError(f"data directory {path} is not usable: {exc.strerror or exc}") from None
    return path


def make_private(root: Path) -> None:
    """chmod `root` and everything under it to owner-only (dirs 0700, files 0600), without
    following symbolic links; entries removed meanwhile (a concurrent writer) are skipped."""
    me = os.geteuid()
    _chmod_private(root, me)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            _chmod_private(Path(directory) / name, me)


def _chmod_private(path: Path, owner: int) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if info.st_uid != owner or not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        return
    mode = PRIVATE_DIR_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
    if stat.S_IMODE(info.st_mode) != mode:
        try:
            path.chmod(mode)
        except FileNotFoundError:
            return
