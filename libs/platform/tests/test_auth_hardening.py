"""The installation-wide scope, the bootstrap admin that holds it, and the denial log's bound."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from onefold.platform.auth import ANY_WORKSPACE, INSTALLATION_ADMIN, CredentialStore, DenialLog, Principal
from onefold.platform.service import BOOTSTRAP_ADMIN_ID, ensure_bootstrap_admin
from onefold.testing.together import all_at_once


def test_installation_admin_is_never_implied_by_a_workspace_admin() -> None:
    workspace_admin = Principal("a", "acme", frozenset({"admin"}))
    service = Principal("s", ANY_WORKSPACE, frozenset({"service"}))
    granted = Principal("b", "default", frozenset({"admin", INSTALLATION_ADMIN}))
    assert workspace_admin.has_scope("audit:read") and not workspace_admin.has_scope(INSTALLATION_ADMIN)
    assert service.has_scope(INSTALLATION_ADMIN) and not service.has_scope("admin")
    assert granted.has_scope(INSTALLATION_ADMIN)


def test_the_bootstrap_admin_holds_installation_admin_also_when_issued_before_it_existed(
    tmp_path: Path,
) -> None:
    fresh = CredentialStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh.create_schema()
    issued = ensure_bootstrap_admin(fresh)
    assert issued is not None and set(issued.scopes) == {"admin", INSTALLATION_ADMIN}

    older = CredentialStore(f"sqlite:///{tmp_path / 'older.db'}", cache_seconds=0)
    older.create_schema()
    old = older.issue("default", ["admin"], "bootstrap admin", credential_id=BOOTSTRAP_ADMIN_ID)
    other = older.issue("acme", ["admin"], "acme admin")
    assert ensure_bootstrap_admin(older) is None  # not issued again: upgraded in place
    assert older.authenticate(old.token).has_scope(INSTALLATION_ADMIN)
    assert not older.authenticate(other.token).has_scope(INSTALLATION_ADMIN)
    older.revoke(old.id)
    ensure_bootstrap_admin(older)  # a revoked bootstrap admin stays revoked
    assert [row["revoked_at"] is not None for row in older.list("default")] == [True]


def test_denial_log_writes_n_lines_a_minute_per_key_then_reports_what_it_suppressed() -> None:
    now = [0.0]
    denials = DenialLog("test", per_minute=3, clock=lambda: now[0])
    with capture_logs() as logs:
        written = [denials.denied("CREDENTIAL_INVALID", "/a/B") for _ in range(50)]
        assert denials.denied("SCOPE_MISSING", "/a/B")  # another key has its own allowance
        now[0] = 61.0
        assert denials.denied("CREDENTIAL_INVALID", "/a/B")
        assert denials.denied("CREDENTIAL_INVALID", "/a/B")
    assert written == [True] * 3 + [False] * 47
    invalid = [line for line in logs if line["reason"] == "CREDENTIAL_INVALID"]
    assert len(invalid) == 5 and all(line["event"] == "auth.denied" for line in invalid)
    assert [line.get("suppressed") for line in invalid] == [None, None, None, 47, None]


def test_denial_log_keeps_a_bounded_table_whatever_it_is_sent() -> None:
    denials = DenialLog("test", max_keys=10)
    with capture_logs():
        for n in range(1000):
            denials.denied("CREDENTIAL_INVALID", f"/route/{n}")
    assert len(denials._windows) == 10


def test_a_recent_authentication_is_known_without_a_read_until_it_expires_or_is_revoked(
    tmp_path: Path,
) -> None:
    store = CredentialStore(f"sqlite:///{tmp_path / 'auth.db'}", cache_seconds=60)
    store.create_schema()
    issued = store.issue("acme", ["consent:read"], name="reader")
    assert store.recently_authenticated(issued.token) is None  # never seen: the caller reads
    principal = store.authenticate(issued.token)
    assert store.recently_authenticated(issued.token) == principal
    store.revoke(principal.credential_id)
    assert store.recently_authenticated(issued.token) is None
    uncached = CredentialStore(store.engine, cache_seconds=0)
    other = store.issue("acme", ["consent:read"], name="other")
    uncached.authenticate(other.token)
    assert uncached.recently_authenticated(other.token) is None


def test_services_starting_together_on_an_empty_credential_store_create_one_schema(database_url: str) -> None:
    stores = [CredentialStore(database_url, cache_seconds=0) for _ in range(4)]
    errors = all_at_once([store.create_schema for store in stores])
    try:
        assert errors == []
        stores[0].ensure_workspace("acme")
    finally:
        for store in stores:
            store.engine.dispose()
