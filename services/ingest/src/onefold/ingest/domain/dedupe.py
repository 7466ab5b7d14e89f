"""Dedupe on (workspace, messageId): the in-batch rule. The durable answer (the window) lives in the
database, in a table with a unique key written in the same transaction as the append."""

from __future__ import annotations

from collections.abc import Container, Sequence


def first_sightings(keys: Sequence[str], seen: Container[str]) -> list[bool]:
    """True for each key not seen before and not earlier in the same batch: a batch that repeats a
    messageId keeps the first copy, exactly as two requests in a row would."""
    fresh: list[bool] = []
    in_batch: set[str] = set()
    for key in keys:
        fresh.append(key not in in_batch and key not in seen)
        in_batch.add(key)
    return fresh
