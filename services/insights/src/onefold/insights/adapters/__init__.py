"""The analytical store (DuckDB) and what reads and writes it."""
