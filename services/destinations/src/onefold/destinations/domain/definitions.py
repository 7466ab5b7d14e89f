"""A destination as code: its checks (every problem named by its path), its defaults, and its
versions and lifecycle folded from its definition stream, with the decisions on them.

Each applied change is a new version (`DestinationSet`); an identical one is no change. The
lifecycle is active ⇄ paused (deliveries wait) → archived (final: nothing more is queued, what was
queued is dropped, and the name cannot be applied again).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from google.protobuf.message import Message

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
TABLE_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
FIELD_PATH = re.compile(r"^[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@ -]+)*$")
EVENT_TYPES = ("track", "identify", "page", "screen")
MAX_FLOWS = 50
MAX_FILTERS = 20
MAX_MAPPED_FIELDS = 100
MAX_SEGMENTS = 100
MAX_TRAITS = 200
EVERY_TRAIT = "*"

DEFAULT_WEBHOOK_BATCH = 1
MAX_WEBHOOK_BATCH = 1000
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_IN_FLIGHT = 16
DEFAULT_FILES_BATCH = 1000
MAX_FILES_BATCH = 100_000
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_INITIAL_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 600.0


def definition_stream(workspace: str, name: str) -> str:
    return f"destinations-definition:{workspace}:{name}"


def secret_subject(workspace: str, name: str) -> str:
    """The data subject whose key seals a destination's signing secret (shredded at archive)."""
    return f"{workspace}:destination:{name}"


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Known:
    """What a destination may name outside itself: the workspace's consent purposes and live segments."""

    purposes: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()


def target_kind(destination: pb.Destination) -> str:
    """ "webhook", "table", "files" or "" (none set)."""
    return destination.WhichOneof("target") or ""


def with_defaults(destination: pb.Destination) -> pb.Destination:
    """A copy with every unset tunable at its default and the output-only fields cleared, so two
    applications of the same YAML compare equal."""
    d = pb.Destination()
    d.CopyFrom(destination)
    for output in ("version", "status", "updated_at"):
        d.ClearField(output)
    kind = target_kind(d)
    if kind == "webhook":
        d.webhook.batch_size = d.webhook.batch_size or DEFAULT_WEBHOOK_BATCH
        d.webhook.timeout_seconds = d.webhook.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        d.webhook.max_in_flight = d.webhook.max_in_flight or DEFAULT_MAX_IN_FLIGHT
    elif kind == "files":
        d.files.batch_size = d.files.batch_size or DEFAULT_FILES_BATCH
        d.files.format = d.files.format or pb.FILE_FORMAT_CSV
    d.retry.max_attempts = d.retry.max_attempts or DEFAULT_MAX_ATTEMPTS
    d.retry.initial_backoff_seconds = d.retry.initial_backoff_seconds or DEFAULT_INITIAL_BACKOFF
    d.retry.max_backoff_seconds = d.retry.max_backoff_seconds or DEFAULT_MAX_BACKOFF
    return d


def problems(destination: pb.Destination, known: Known) -> list[Problem]:
    """Everything wrong with `destination` (with its defaults applied), each named by its path."""
    found: list[Problem] = []
    d = destination
    if not NAME.match(d.name):
        found.append(Problem("name", "must match [a-z][a-z0-9_-]{0,63}"))
    if not d.purpose:
        found.append(Problem("purpose", "required: the consent purpose each delivery is checked for"))
    elif d.purpose not in known.purposes:
        listed = ", ".join(sorted(known.purposes)) or "none: apply a consent model first"
        found.append(Problem("purpose", f"unknown purpose {d.purpose!r} (the workspace has: {listed})"))
    found += _target_problems(d)
    if not (d.events or d.segments or d.traits):
        found.append(Problem("events", "nothing flows: name events, segments or traits"))
    found += _flow_problems(d, known)
    r = d.retry
    if not 1 <= r.max_attempts <= 50:
        found.append(Problem("retry.max_attempts", "must be between 1 and 50"))
    if not 0.01 <= r.initial_backoff_seconds <= 3600:
        found.append(Problem("retry.initial_backoff", "must be between 10 ms and 1 h"))
    if not r.initial_backoff_seconds <= r.max_backoff_seconds <= 86_400:
        found.append(Problem("retry.max_backoff", "must be at least initial_backoff and at most 1 day"))
    return found


def _target_problems(d: pb.Destination) -> list[Problem]:
    kind = target_kind(d)
    found: list[Problem] = []
    if kind == "webhook":
        url = urlsplit(d.webhook.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            found.append(Problem("webhook.url", "must be an http:// or https:// URL"))
        if url.password:
            found.append(
                Problem("webhook.url", "must not hold a password: the definition is stored in the log")
            )
        if not 1 <= d.webhook.batch_size <= MAX_WEBHOOK_BATCH:
            found.append(Problem("webhook.batch_size", f"must be between 1 and {MAX_WEBHOOK_BATCH}"))
        if not 0.1 <= d.webhook.timeout_seconds <= 120:
            found.append(Problem("webhook.timeout", "must be between 100 ms and 120 s"))
        if not 1 <= d.webhook.max_in_flight <= 256:
            found.append(Problem("webhook.max_in_flight", "must be between 1 and 256"))
        for header in d.webhook.headers:
            if header.lower().startswith("webhook-") or header.lower() in ("content-type", "idempotency-key"):
                found.append(Problem(f"webhook.headers.{header}", "is set by the service"))
    elif kind == "table":
        t = d.table
        if bool(t.url_env) == bool(t.url):
            found.append(Problem("table", "set exactly one of url_env (an environment variable) and url"))
        if t.url_env and not ENV_NAME.match(t.url_env):
            found.append(Problem("table.url_env", "must be an environment variable name (A-Z, 0-9, _)"))
        if t.url and _has_password(t.url):
            found.append(
                Problem(
                    "table.url", "holds a password: put the URL in an environment variable named by url_env"
                )
            )
        if not TABLE_PREFIX.match(t.table):
            found.append(Problem("table.table", "must match [a-z][a-z0-9_]{0,40}"))
    elif kind == "files":
        f = d.files
        if not f.directory:
            found.append(Problem("files.directory", "required: a directory or an s3://bucket/prefix URI"))
        elif "://" in f.directory and not f.directory.startswith("s3://"):
            found.append(Problem("files.directory", "a local directory or an s3:// URI"))
        elif "://" not in f.directory and not f.directory.startswith("/"):
            # Relative to what? The service's working directory differs between `onefold up` and a pod.
            found.append(Problem("files.directory", "a local directory must be an absolute path"))
        if f.endpoint and not f.directory.startswith("s3://"):
            found.append(Problem("files.endpoint", "only for an s3:// directory"))
        if not 1 <= f.batch_size <= MAX_FILES_BATCH:
            found.append(Problem("files.batch_size", f"must be between 1 and {MAX_FILES_BATCH}"))
    else:
        found.append(Problem("webhook", "set one of webhook, table and files"))
    return found


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return True  # unparseable: refused rather than risk storing a secret


def _flow_problems(d: pb.Destination, known: Known) -> list[Problem]:
    found: list[Problem] = []
    if len(d.events) > MAX_FLOWS:
        found.append(Problem("events", f"at most {MAX_FLOWS} flows"))
    for i, flow in enumerate(d.events):
        path = f"events[{i}]"
        if flow.type not in EVENT_TYPES:
            found.append(Problem(f"{path}.type", f"must be one of {', '.join(EVENT_TYPES)}"))
        if len(flow.where) > MAX_FILTERS:
            found.append(Problem(f"{path}.where", f"at most {MAX_FILTERS} filters"))
        for j, condition in enumerate(flow.where):
            where = f"{path}.where[{j}]"
            if not FIELD_PATH.match(condition.field):
                found.append(Problem(f"{where}.field", "must be a dotted path such as properties.total"))
            if condition.op == pb.FILTER_OP_UNSPECIFIED:
                found.append(
                    Problem(f"{where}.op", "required: eq, ne, gt, gte, lt, lte, in, exists, contains")
                )
            if condition.op == pb.FILTER_OP_IN and condition.value.WhichOneof("kind") != "list_value":
                found.append(Problem(f"{where}.value", "`in` takes a list"))
            if condition.op in (pb.FILTER_OP_GT, pb.FILTER_OP_GTE, pb.FILTER_OP_LT, pb.FILTER_OP_LTE) and (
                condition.value.WhichOneof("kind") not in ("number_value", "string_value")
            ):
                found.append(Problem(f"{where}.value", "a comparison takes a number or a string"))
        if len(flow.mapping) > MAX_MAPPED_FIELDS:
            found.append(Problem(f"{path}.mapping", f"at most {MAX_MAPPED_FIELDS} fields"))
        for output, source in flow.mapping.items():
            if not output or len(output) > 128:
                found.append(Problem(f"{path}.mapping", "an output field is 1 to 128 characters"))
            if not FIELD_PATH.match(source):
                found.append(
                    Problem(f"{path}.mapping.{output}", "must be a dotted path such as properties.total")
                )
    if len(d.segments) > MAX_SEGMENTS:
        found.append(Problem("segments", f"at most {MAX_SEGMENTS}"))
    for i, segment in enumerate(d.segments):
        if segment not in known.segments:
            found.append(Problem(f"segments[{i}]", f"no live segment named {segment!r}"))
    if len(d.traits) > MAX_TRAITS:
        found.append(Problem("traits", f"at most {MAX_TRAITS}"))
    for i, trait in enumerate(d.traits):
        if not trait or len(trait) > 128:
            found.append(Problem(f"traits[{i}]", "a trait name is 1 to 128 characters"))
    if EVERY_TRAIT in d.traits and len(d.traits) > 1:
        found.append(Problem("traits", '"*" already names every trait'))
    return found


# ------------------------------------------------------------------------------ versions


@dataclass
class DestinationVersions(Handlers):
    """A destination's stored versions and where its lifecycle stands."""

    versions: dict[int, pb.Destination] = field(default_factory=dict)
    status: int = pb.DESTINATION_STATUS_UNSPECIFIED  # unspecified: never applied
    updated_at: datetime | None = None

    @staticmethod
    def fold(messages: Iterable[tuple[Message, datetime]]) -> DestinationVersions:
        folded = DestinationVersions()
        for message, at in messages:
            folded.apply(message, at)
        return folded

    def apply(self, message: Message, at: datetime) -> None:
        self.dispatch(message, message, at)

    @handles(pb.DestinationSet)
    def _set(self, message: pb.DestinationSet, at: datetime) -> None:
        self.versions[message.destination.version] = message.destination
        if self.status == pb.DESTINATION_STATUS_UNSPECIFIED:
            self.status = pb.DESTINATION_STATUS_ACTIVE
        self.updated_at = at

    @handles(pb.DestinationStatusChanged)
    def _status(self, message: pb.DestinationStatusChanged, at: datetime) -> None:
        self.status = message.status
        self.updated_at = at

    @handles(pb.SigningSecretIssued)
    def _secret(self, message: pb.SigningSecretIssued, at: datetime) -> None:
        return None  # the secret is read where it is used (application/catalog.py), not kept here

    @property
    def latest(self) -> int:
        return max(self.versions, default=0)

    def current(self) -> pb.Destination:
        """The latest version, with its status and when it last changed."""
        found = pb.Destination()
        found.CopyFrom(self.versions[self.latest])
        found.status = self.status  # type: ignore[assignment]
        if self.updated_at is not None:
            found.updated_at.FromDatetime(self.updated_at)
        return found


def save(
    current: DestinationVersions, workspace: str, destination: pb.Destination, actor: str
) -> list[Message]:
    """A new version, unless it is the latest one again (an archived name cannot be applied)."""
    if current.status == pb.DESTINATION_STATUS_ARCHIVED:
        raise FailedPrecondition(f"destination {destination.name!r} is archived: choose another name")
    if current.versions and current.versions[current.latest] == _versioned(destination, current.latest):
        return []
    return [
        pb.DestinationSet(
            workspace=workspace, destination=_versioned(destination, current.latest + 1), actor=actor
        )
    ]


def _versioned(destination: pb.Destination, version: int) -> pb.Destination:
    found = pb.Destination()
    found.CopyFrom(destination)
    found.version = version
    return found


def set_status(
    current: DestinationVersions, workspace: str, name: str, status: int, actor: str
) -> list[Message]:
    if not current.versions:
        raise NotFound(f"no destination named {name!r}")
    if status not in (
        pb.DESTINATION_STATUS_ACTIVE,
        pb.DESTINATION_STATUS_PAUSED,
        pb.DESTINATION_STATUS_ARCHIVED,
    ):
        raise InvalidArgument("status must be ACTIVE, PAUSED or ARCHIVED")
    if current.status == pb.DESTINATION_STATUS_ARCHIVED:
        raise FailedPrecondition(f"destination {name!r} is archived")
    if current.status == status:
        return []
    return [pb.DestinationStatusChanged(workspace=workspace, name=name, status=status, actor=actor)]  # type: ignore[arg-type]
