"""The event log's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Timestamps are integer microseconds since the Unix epoch, UTC: exact and comparable on both
databases, and hashed as they are stored. `metadata` is canonical JSON text (sorted keys, no
spaces) rather than a JSON/JSONB column, because JSONB re-normalises text and the hash is over the
exact stored bytes.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index to maintain per insert.
_Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "events",
    metadata,
    sa.Column("position", _Position, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("stream_id", sa.String(255), nullable=False),
    sa.Column("stream_version", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("workspace", sa.String(255), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("occurred_at", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
    sa.Column("prev_hash", sa.LargeBinary, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("stream_id", "stream_version", name="uq_events_stream_version"),
)

# Subscriber checkpoints: the last upstream position whose effects are committed here, and that
# event's chain hash (the next event must link to it; NULL in rows written before hashes were kept).
tracking = sa.Table(
    "tracking",
    metadata,
    sa.Column("upstream", sa.String(255), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False, default=""),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=True),
)

# Outbox relay: the last position published to each bus stream.
relay_positions = sa.Table(
    "relay_positions",
    metadata,
    sa.Column("stream_name", sa.String(255), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# One data key per data subject, wrapped by the service's key-encryption key; NULL once erased.
subject_keys = sa.Table(
    "subject_keys",
    metadata,
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("erased_at", sa.BigInteger, nullable=True),
)

# Folded state of a stream at a version, per fold (several read models may snapshot one stream).
snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("stream_id", sa.String(255), primary_key=True),
    sa.Column("fold", sa.String(255), primary_key=True),
    sa.Column("stream_version", sa.BigInteger, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
)

# Chain digests this service exported (what was published; the copy elsewhere is the real check).
chain_digests = sa.Table(
    "chain_digests",
    metadata,
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
)

# Small counters; `erasure_epoch` tells other processes that cached data keys may be stale.
eventlog_state = sa.Table(
    "eventlog_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

ERASURE_EPOCH = "erasure_epoch"

# Columns added after a table was first created: `create_all` makes new tables whole but never
# alters existing ones, so these are added to older databases by `migrate`.
_ADDED_COLUMNS = ((tracking, "hash"),)


def migrate(engine: sa.Engine) -> None:
    """Bring tables created by an earlier release up to this schema (idempotent, additive only)."""
    inspector = sa.inspect(engine)
    for table, name in _ADDED_COLUMNS:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        if name in present:
            continue
        column = table.c[name]
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")
        except sa.exc.DBAPIError:
            # Another replica added it first; anything else is still wrong after a second look.
            if name not in {column["name"] for column in sa.inspect(engine).get_columns(table.name)}:
                raise
