"""Leases: at most one process per service database runs the log's background work.

Every replica of a service serves gRPC, but the outbox relay, the digest publisher and the
subscribers must run once per database: two relays would race on the published position, and two
subscribers on one durable consumer would apply events out of order (a later position committed
first makes the earlier one look already applied). The lease is a PostgreSQL session advisory lock
held on a dedicated connection, or an exclusive file lock beside a SQLite database. A replica that
loses its connection loses the lease and stops leading; another takes over. The same leases, under
other names, give the worker processes of a service their slots and partition groups (workers.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


def _lock_key(name: str) -> int:
    # A signed 64-bit key, stable across processes and releases.
    return int.from_bytes(hashlib.sha256(f"onefold-leader:{name}".encode()).digest()[:8], "big", signed=True)


class LeaderLease:
    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None
        self._private = False  # an in-memory database: nobody else can open it

    @property
    def held(self) -> bool:
        return self._connection is not None or self._file is not None or self._private

    def try_acquire(self) -> bool:
        """Take the lease if it is free; never waits. Blocking I/O: call from a worker thread."""
        if self.held:
            return True
        if self.engine.dialect.name == "postgresql":
            connection = self.engine.connect()
            try:
                got = connection.execute(
                    sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_key(self.name)}
                )
                if got.scalar():
                    connection.commit()  # end the implicit transaction; the session lock stays
                    self._connection = connection
                    return True
            except Exception:
                connection.close()
                raise
            connection.close()
            return False
        database = self.engine.url.database
        token = "".join(c if c.isalnum() else "_" for c in self.name)
        path = Path(f"{database}.{token}.leader") if database and database != ":memory:" else None
        if path is None:
            self._private = True  # an in-memory database cannot be shared between processes
            return True
        handle = path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def taken_elsewhere(self) -> bool:
        """Does another process (another connection) hold the lease now? Probed, never kept."""
        if self.held:
            return False
        if self.try_acquire():
            self.release()
            return False
        return True

    def still_held(self) -> bool:
        """False when the connection carrying a PostgreSQL lease is gone (the server released it)."""
        if self._connection is None:
            return self.held
        try:
            self._connection.execute(sa.text("SELECT 1"))
            self._connection.commit()
            return True
        except Exception:
            self.release()
            return False

    def release(self) -> None:
        self._private = False
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(self.name)}
                )
                self._connection.commit()
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._file is not None:
            with contextlib.suppress(Exception):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
