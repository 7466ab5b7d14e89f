"""The service-to-service credential of `onefold up`: revoked at a clean stop, and after a crash
(no stop at all) at the next start."""

from __future__ import annotations

from pathlib import Path

from onefold.cli.supervisor import SERVICE_CREDENTIAL_NAME, Supervisor
from onefold.platform.auth import ANY_WORKSPACE, CredentialStore


def active_service_credentials(data: Path) -> list[str]:
    store = CredentialStore(f"sqlite:///{data / 'auth.db'}")
    try:
        rows = store.list(ANY_WORKSPACE)
    finally:
        store.engine.dispose()
    return [
        str(row["id"]) for row in rows if row["name"] == SERVICE_CREDENTIAL_NAME and row["revoked_at"] is None
    ]


def test_the_service_credential_is_revoked_at_stop_and_after_a_crash_at_the_next_start(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = Supervisor(data_dir=data, report=lambda _: None)
    first.prepare()
    assert active_service_credentials(data) == [first._service_credential_id]
    first.stop()
    assert active_service_credentials(data) == []

    crashed = Supervisor(data_dir=data, report=lambda _: None)
    crashed.prepare()
    left_active = crashed._service_credential_id
    assert crashed._lock is not None
    crashed._lock.close()  # the process died: its lock is gone, stop() never ran
    assert active_service_credentials(data) == [left_active]

    after = Supervisor(data_dir=data, report=lambda _: None)
    after.prepare()
    assert active_service_credentials(data) == [after._service_credential_id] != [left_active]
    after.stop()
    assert active_service_credentials(data) == []
