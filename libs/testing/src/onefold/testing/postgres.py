"""A fresh PostgreSQL database per test session, when ONEFOLD_TEST_POSTGRES_URL points at a server."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from onefold.platform.database import normalise_url

POSTGRES_ENV = "ONEFOLD_TEST_POSTGRES_URL"


def postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV, "").strip()
    return normalise_url(url) if url else None


@contextmanager
def temporary_database(admin_url: str, prefix: str = "onefold_test") -> Iterator[str]:
    """Create an empty database on the server of `admin_url`, yield its URL, drop it afterwards."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield str(sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
