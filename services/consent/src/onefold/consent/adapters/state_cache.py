"""CheckConsent's answers from memory: each profile's current state (its live profile after merges,
the model version and its ledger state) as the read model holds it, kept in this process.

Freshness. The cache knows the log position up to which it has accounted for every event (`head`).
Every lookup first reads the log's head and the read model's tracking position (two index seeks in
one statement, on a connection the cache keeps open for it, in autocommit: no write lock, no
transaction left open). When the head moved — an event committed by this process or by any other
process on the same database (another replica, the CLI) — the events after `head` are read and the
profiles they change dropped (the whole cache when a workspace's model changed or too many events
passed), before anything is answered. So an answer never rests on a state older than the log as it
stood when the check began: a grant, withdrawal, objection, erasure or merge committed before the
check is always seen. Positions are gap-free and become visible in order (appends are serialised),
so "the events after `head` up to the head read" are exactly those not yet accounted for.

A state loaded on a miss is read in one statement with the positions of its snapshot; it is kept
only if that snapshot is not older than what the cache has already accounted for (a concurrent
lookup may have dropped newer changes of that profile in between). A miss while the read model is
not folded up to the head (a rebuild or catch-up under way: its rows are incomplete) is refused as
UNAVAILABLE rather than answered; what is cached stays right meanwhile, as it follows the log, not
the read model's rows.

Nothing personal is held: the read model's rows are public fields and evidence (no proof).
"""

from __future__ import annotations

import threading
from collections.abc import Collection

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection

from onefold.consent.adapters.read_model import (
    POSITIONS_SQL,
    CheckState,
    LogPositions,
    changed_by,
    check_state,
)
from onefold.eventlog.store import EventStore
from onefold.platform.errors import Unavailable

# Events read to find what changed: beyond this many since the last look, dropping everything is
# cheaper than reading them (a bulk import, a long pause).
MAX_EVENTS_TO_FOLLOW = 5_000
MAX_PROFILES = 200_000

Key = tuple[str, str]  # (workspace, profile id)


class _PositionsProbe:
    """A connection of the cache's own, kept open, that reads the log's head and the read model's
    position in one statement: what every check pays (no pool checkout, no BEGIN / ROLLBACK round
    trips, no pre-ping). In autocommit, so that no transaction stays open between checks; the
    connection is discarded, never pooled again, after an error or at close."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._connection: PoolProxiedConnection | None = None

    def read(self) -> LogPositions:
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = self.engine.raw_connection()
                    if self.engine.dialect.name == "postgresql":
                        # psycopg opens a transaction at the first statement unless told not to (the
                        # event store's SQLite connections already leave BEGIN to their callers).
                        self._connection.driver_connection.autocommit = True  # type: ignore[union-attr]
                cursor = self._connection.cursor()
                try:
                    cursor.execute(POSITIONS_SQL)
                    row = cursor.fetchone()
                    assert row is not None  # a query of two subqueries answers one row
                    head, folded = row
                finally:
                    cursor.close()
            except BaseException:
                self._discard()
                raise
        return LogPositions.read(head, folded)

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.invalidate()


class ConsentStateCache:
    def __init__(self, store: EventStore, *, max_profiles: int = MAX_PROFILES) -> None:
        self.store = store
        self.max_profiles = max_profiles
        self._probe = _PositionsProbe(store.engine)
        self._lock = threading.Lock()  # checks run on the event loop, batches in worker threads
        self._head: int | None = None  # every event up to here is accounted for; None: nothing is
        self._states: dict[Key, CheckState] = {}  # by the profile asked for
        self._asked_for: dict[Key, set[str]] = {}  # (workspace, live profile) -> profiles asked for

    def states(self, workspace: str, profile_ids: Collection[str]) -> dict[str, CheckState]:
        """Each profile's current state: from memory when nothing changed it since it was loaded;
        the others (and, when the log moved, what changed) read on a connection of their own."""
        positions = self._probe.read()
        found: dict[str, CheckState] = {}
        with self._lock:
            if self._head is not None and positions.head <= self._head:
                for profile_id in profile_ids:
                    cached = self._states.get((workspace, profile_id))
                    if cached is not None:
                        found[profile_id] = cached
        if len(found) == len(profile_ids):
            return found
        with self.store.engine.connect() as conn:
            with self._lock:
                self._follow(conn, positions)
                for profile_id in profile_ids:
                    cached = self._states.get((workspace, profile_id))
                    if cached is not None:
                        found[profile_id] = cached
            for profile_id in profile_ids:
                if profile_id not in found:
                    found[profile_id] = self._load(conn, workspace, profile_id)
        return found

    def close(self) -> None:
        self._probe.close()

    def _load(self, conn: Connection, workspace: str, profile_id: str) -> CheckState:
        loaded = check_state(conn, workspace, profile_id)
        if not loaded.positions.read_model_current:
            # Its rows are incomplete (a rebuild, or a catch-up, is under way): an answer from them
            # could allow what a withdrawal not yet refolded denies.
            raise Unavailable("the consent read model is being rebuilt; retry", retry_after_seconds=1.0)
        with self._lock:
            self._keep(workspace, profile_id, loaded)
        return loaded

    def _follow(self, conn: Connection, positions: LogPositions) -> None:
        """Drop what the events since `_head` changed (under the lock)."""
        head = self._head
        if head is None:
            self._head = positions.head
            return
        if positions.head <= head:
            return  # a lookup that began earlier than another's that already followed further
        if positions.head - head > MAX_EVENTS_TO_FOLLOW:
            self._drop_all(positions.head)
            return
        events = self.store.read(after_position=head, limit=positions.head - head, conn=conn)
        for event in events:
            workspace, profiles, model_changed = changed_by(
                self.store.decode(event, conn=conn, decrypt=False)
            )
            if model_changed:
                self._drop_all(positions.head)
                return
            for profile_id in profiles:
                self._drop(workspace, profile_id)
        self._head = positions.head

    def _keep(self, workspace: str, profile_id: str, loaded: CheckState) -> None:
        if self._head is None or loaded.positions.head < self._head:
            return  # read before changes this cache has already dropped
        if len(self._states) >= self.max_profiles:
            oldest_workspace, oldest_profile = next(iter(self._states))
            self._drop(oldest_workspace, oldest_profile)
        self._states[(workspace, profile_id)] = loaded
        self._asked_for.setdefault((workspace, loaded.live), set()).add(profile_id)

    def _drop(self, workspace: str, profile_id: str) -> None:
        """Forget the profile's state and that of every profile whose live profile it is."""
        for asked in self._asked_for.pop((workspace, profile_id), ()):
            self._states.pop((workspace, asked), None)
        own = self._states.pop((workspace, profile_id), None)
        if own is not None:
            asked_for_live = self._asked_for.get((workspace, own.live))
            if asked_for_live is not None:
                asked_for_live.discard(profile_id)
                if not asked_for_live:
                    del self._asked_for[(workspace, own.live)]

    def _drop_all(self, head: int) -> None:
        self._states.clear()
        self._asked_for.clear()
        self._head = head
