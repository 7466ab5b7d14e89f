"""Fixtures for the insights service's tests: an empty in-memory analytical store and a hand-made
history writing into it (see insights_history.py)."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest
from insights_history import History

from onefold.insights.adapters.warehouse import open_warehouse


@pytest.fixture
def warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = open_warehouse(threads=2)
    yield connection
    connection.close()


@pytest.fixture
def history(warehouse: duckdb.DuckDBPyConnection) -> History:
    return History(warehouse)
