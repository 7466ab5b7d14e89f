"""Shared fixtures of the event log tests: a registry of test events, a key, a store on each database."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import EventRegistry, EventStore, KeyEncryptionKey
from onefold.eventlog import schema as eventlog_schema
from onefold.platform.database import create_engine
from onefold.platform.nats import NatsConnection


def make_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(events_pb2.ProfileUpdated)
    registry.register(events_pb2.CounterChanged)
    registry.register(events_pb2.ContactCaptured)
    return registry


@pytest.fixture
def registry() -> EventRegistry:
    return make_registry()


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey.generate()


_counter = itertools.count()


def reset_database(url: str) -> str:
    """A clean database for one Hypothesis example: a new SQLite file, or emptied PostgreSQL tables."""
    if url.startswith("sqlite"):
        path = Path(sa.engine.make_url(url).database or "")
        return f"sqlite:///{path.with_name(f'{path.stem}-{next(_counter)}.db')}"
    engine = create_engine(url)
    try:
        eventlog_schema.metadata.drop_all(engine)
    finally:
        engine.dispose()
    return url


StoreFactory = Callable[..., EventStore]


@pytest.fixture
def make_store(database_url: str, registry: EventRegistry, kek: KeyEncryptionKey) -> Iterator[StoreFactory]:
    """Builds stores on the test database; `fresh=True` gives an empty log (for Hypothesis examples)."""
    made: list[EventStore] = []

    def make(*, fresh: bool = False, **overrides: object) -> EventStore:
        url = reset_database(database_url) if fresh else database_url
        if fresh:
            for old in made:
                old.close()
        options: dict[str, object] = {"service": "test", "registry": registry, "keys": kek, **overrides}
        store = EventStore(url, **options)  # type: ignore[arg-type]
        store.create_schema()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> EventStore:
    return make_store()


@pytest.fixture
def nats(nats_connection: NatsConnection) -> NatsConnection:
    return nats_connection


@pytest.fixture
def open_store(
    tmp_path: Path, registry: EventRegistry, kek: KeyEncryptionKey
) -> Iterator[Callable[..., EventStore]]:
    """Open stores by service name (a SQLite file each, or `url`), with `extra` tables created beside."""
    opened: list[EventStore] = []

    def open_(
        service: str = "ingest", url: str | None = None, *, extra: sa.MetaData | None = None
    ) -> EventStore:
        store = EventStore(
            url or f"sqlite:///{tmp_path / (service + '.db')}", service=service, registry=registry, keys=kek
        )
        store.create_schema()
        if extra is not None:
            extra.create_all(store.engine)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
