"""Credentials, workspaces and scopes.

A credential is `ofk_<id>_<secret>`. Only SHA-256 of the secret is stored (the secret is 256 random
bits, so a slow password hash buys nothing). Each credential belongs to exactly one workspace and
carries scopes; `admin` implies every scope inside its own workspace, never another's. Service
credentials (workspace `*`, scope `service`) let Onefold services call each other on behalf of the
workspace named in the `x-onefold-workspace` metadata. `installation:admin` is the one scope about the
whole installation rather than a workspace (e.g. the whole event log's counts and heads): a workspace's
`admin` does not imply it; the bootstrap admin and service credentials hold it.

Denied calls are logged through `DenialLog`: the reason and the method, never the presented token,
rate-limited per (reason, method) so a flood of bad calls cannot fill the disk.

The store is a small SQL database shared by the services of one installation (SQLite file under the
data dir for `onefold up`, PostgreSQL in production); services only read it, and cache what they
verified for `auth.cache_seconds` so a revocation takes effect within that time.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from onefold.contracts.common.v1 import errors_pb2
from onefold.platform.database import create_engine
from onefold.platform.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from onefold.platform.scopes import INSTALLATION_ADMIN as INSTALLATION_ADMIN
from onefold.platform.scopes import SCOPES as SCOPES
from onefold.platform.telemetry import get_logger

ANY_WORKSPACE = "*"
WORKSPACE_HEADER = "x-onefold-workspace"
_WORKSPACE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TOKEN = re.compile(r"^ofk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
# PostgreSQL's advisory lock held while the credential store's tables are created.
_SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(b"onefold.auth.schema").digest()[:8], "big", signed=True)

metadata = sa.MetaData()
workspaces_table = sa.Table(
    "workspaces",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
credentials_table = sa.Table(
    "credentials",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("scopes", sa.String(1000), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from a credential, held in a ContextVar for the RPC's duration."""

    credential_id: str
    workspace: str
    scopes: frozenset[str]
    name: str = ""

    @property
    def is_service(self) -> bool:
        return self.workspace == ANY_WORKSPACE and "service" in self.scopes

    def has_scope(self, scope: str) -> bool:
        if scope in self.scopes:
            return True
        if scope == INSTALLATION_ADMIN:  # about every workspace: a workspace's admin never implies it
            return self.is_service
        return "admin" in self.scopes or (self.is_service and scope != "admin")


@dataclass(frozen=True)
class IssuedCredential:
    id: str
    workspace: str
    name: str
    scopes: tuple[str, ...]
    token: str = field(repr=False)  # shown once, never stored


_current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "onefold_principal", default=None
)
_current_workspace: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "onefold_workspace", default=None
)


def current_principal() -> Principal:
    principal = _current_principal.get()
    if principal is None:
        raise Unauthenticated(
            "this call needs a credential", metadata={"hint": "authorization: Bearer ofk_..."}
        )
    return principal


def current_workspace() -> str:
    """The workspace this RPC acts in (the credential's, or the one a service credential named)."""
    workspace = _current_workspace.get()
    if workspace is None:
        raise PermissionDenied(
            "a service credential must name the workspace it acts for in x-onefold-workspace",
            metadata={"header": WORKSPACE_HEADER},
        )
    return workspace


def bind(principal: Principal, requested_workspace: str | None) -> None:
    """Set the principal and its workspace for the current task (called by the interceptor)."""
    _current_principal.set(principal)
    _current_workspace.set(workspace_for(principal, requested_workspace))


def workspace_for(principal: Principal, requested: str | None) -> str | None:
    if not requested:
        return None if principal.is_service else principal.workspace
    if principal.is_service or requested == principal.workspace:
        return requested
    error = PermissionDenied(
        f"this credential belongs to workspace '{principal.workspace}' and cannot act in '{requested}'",
        metadata={"credential_workspace": principal.workspace, "requested_workspace": requested},
    )
    error.reason = errors_pb2.WORKSPACE_MISMATCH
    raise error


def require_workspace(requested: str) -> str:
    """Check a workspace named in a request body against the caller's; return the one to use."""
    principal = current_principal()
    resolved = workspace_for(principal, requested) if requested else current_workspace()
    assert resolved is not None
    return resolved


def current_principal_or_none() -> Principal | None:
    """The authenticated caller, if authentication got that far (for logging a denied call)."""
    return _current_principal.get()


def current_credential_id() -> str:
    """The calling credential's id, recorded as the actor of what a call writes ("" when none)."""
    principal = _current_principal.get()
    return principal.credential_id if principal is not None else ""


def require_scope(scope: str) -> Principal:
    principal = current_principal()
    if not principal.has_scope(scope):
        raise PermissionDenied(
            f"this credential lacks the '{scope}' scope needed for this call",
            metadata={"required_scope": scope, "credential_scopes": " ".join(sorted(principal.scopes))},
        )
    return principal


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_workspace_name(name: str) -> str:
    if not _WORKSPACE_NAME.match(name):
        raise InvalidArgument(
            f"'{name}' is not a valid workspace name",
            violations=[("workspace", "1-63 characters: lower-case letters, digits, '-' or '_'")],
        )
    return name


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    scopes = tuple(sorted(set(scopes)))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidArgument(
            f"unknown scope(s): {', '.join(unknown)}" if unknown else "a credential needs at least one scope",
            violations=[("scopes", "choose from " + ", ".join(sorted(SCOPES)))],
        )
    return scopes


class CredentialStore:
    def __init__(self, url_or_engine: str | Engine, *, cache_seconds: float = 5.0) -> None:
        self.engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    def create_schema(self) -> None:
        """Create the tables that do not exist yet, one process at a time: every service shares this
        database and they may all start together on an empty one."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            else:
                # pysqlite opens no transaction before DDL: this one holds SQLite's write lock.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            metadata.create_all(conn)

    # -- administration (the CLI and bootstrap) -------------------------------------------------

    def ensure_workspace(self, name: str) -> None:
        if name != ANY_WORKSPACE:
            validate_workspace_name(name)
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(workspaces_table.c.name).where(workspaces_table.c.name == name))
            if exists.first() is None:
                conn.execute(workspaces_table.insert().values(name=name, created_at=datetime.now(UTC)))

    def issue(
        self, workspace: str, scopes: Iterable[str], name: str = "", *, credential_id: str | None = None
    ) -> IssuedCredential:
        """Create a credential; a fixed `credential_id` makes concurrent bootstraps collide safely."""
        checked = validate_scopes(scopes)
        self.ensure_workspace(workspace)
        cred_id, secret = credential_id or secrets.token_hex(8), secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(
                credentials_table.insert().values(
                    id=cred_id,
                    workspace=workspace,
                    name=name or f"{workspace} credential",
                    scopes=" ".join(checked),
                    secret_sha256=_hash(secret),
                    created_at=datetime.now(UTC),
                )
            )
        return IssuedCredential(cred_id, workspace, name, checked, f"ofk_{cred_id}_{secret}")

    def revoke(self, credential_id: str) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                credentials_table.update()
                .where(credentials_table.c.id == credential_id, credentials_table.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        if result.rowcount == 0:
            raise NotFound(f"no active credential with id '{credential_id}'")
        self._cache.clear()

    def add_scopes(self, credential_id: str, scopes: Iterable[str]) -> None:
        """Give an active credential these scopes too (no-op when it has them or is gone/revoked)."""
        wanted = set(validate_scopes(scopes))
        with self.engine.begin() as conn:
            held = conn.execute(
                sa.select(credentials_table.c.scopes).where(
                    credentials_table.c.id == credential_id, credentials_table.c.revoked_at.is_(None)
                )
            ).scalar()
            if held is None or wanted <= set(held.split()):
                return
            conn.execute(
                credentials_table.update()
                .where(credentials_table.c.id == credential_id)
                .values(scopes=" ".join(sorted(wanted | set(held.split()))))
            )
        self._cache.clear()

    def list(self, workspace: str | None = None) -> list[dict[str, object]]:
        query = sa.select(
            credentials_table.c.id,
            credentials_table.c.workspace,
            credentials_table.c.name,
            credentials_table.c.scopes,
            credentials_table.c.created_at,
            credentials_table.c.revoked_at,
        ).order_by(credentials_table.c.created_at)
        if workspace:
            query = query.where(credentials_table.c.workspace == workspace)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def has_admin(self) -> bool:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(credentials_table.c.scopes).where(credentials_table.c.revoked_at.is_(None))
            ).scalars()
            return any("admin" in scopes.split() for scopes in rows)

    # -- verification (every RPC) -----------------------------------------------------------------

    def recently_authenticated(self, token: str) -> Principal | None:
        """The principal of `token` when it was authenticated less than `cache_seconds` ago: no
        database read, so callers on an event loop need not hop to a thread for it."""
        cached = self._cache.get(token)
        if cached and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        return None

    def authenticate(self, token: str) -> Principal:
        recent = self.recently_authenticated(token)
        if recent is not None:
            return recent
        now = time.monotonic()
        match = _TOKEN.match(token)
        if not match:
            raise Unauthenticated("the credential is malformed; expected 'Bearer ofk_<id>_<secret>'")
        cred_id, secret = match.groups()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(credentials_table).where(credentials_table.c.id == cred_id)).first()
        if row is None or not hmac.compare_digest(row.secret_sha256, _hash(secret)):
            raise Unauthenticated("the credential is not recognised")
        if row.revoked_at is not None:
            raise Unauthenticated("the credential was revoked")
        principal = Principal(cred_id, row.workspace, frozenset(row.scopes.split()), row.name)
        self._cache[token] = (now, principal)
        return principal


class DenialLog:
    """Logs denied requests, at most `per_minute` lines per (reason, where) each minute.

    The first lines of a minute are written; the rest are counted, and the next line written for
    that key carries `suppressed` (how many were left out since the previous line). Callers pass
    only what is safe to keep: a reason code, the method or route, ids — never a token or a secret.
    """

    def __init__(
        self,
        logger_name: str,
        *,
        per_minute: int = 10,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = get_logger(logger_name)
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._clock = clock
        # (reason, where) -> [window start, lines written in it, suppressed since the last line]
        self._windows: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def denied(self, reason: str, where: str, **fields: object) -> bool:
        """Log one denial (or count it as suppressed); True when a line was written."""
        now = self._clock()
        key = (reason, where)
        window = self._windows.get(key)
        if window is None or now - window[0] >= 60.0:
            suppressed = int(window[2]) if window is not None else 0
            window = [now, 0, suppressed]
            self._windows[key] = window
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_keys:  # a bounded table, whatever callers send
            self._windows.popitem(last=False)
        if window[1] >= self.per_minute:
            window[2] += 1
            return False
        window[1] += 1
        suppressed, window[2] = int(window[2]), 0
        if suppressed:
            fields["suppressed"] = suppressed
        self._log.warning("auth.denied", reason=reason, where=where, **fields)
        return True
