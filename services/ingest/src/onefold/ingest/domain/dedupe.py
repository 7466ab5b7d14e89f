"""Dedupe on (workspace, messageId) within a window, as a pure model.

The durable answer lives in the database (a unique key on the accepted messages); this model decides
a batch against what is known to be seen, and can serve as an in-process front cache so that a retry
storm does not cost one database round trip per event.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Sequence
from datetime import datetime, timedelta


def first_sightings(keys: Sequence[str], seen: Container[str]) -> list[bool]:
    """True for each key not seen before and not earlier in the same batch: a batch that repeats a
    messageId keeps the first copy, exactly as two requests in a row would."""
    fresh: list[bool] = []
    in_batch: set[str] = set()
    for key in keys:
        fresh.append(key not in in_batch and key not in seen)
        in_batch.add(key)
    return fresh


class DedupeWindow(Container[str]):
    """Keys seen within `window` of the latest time observed, oldest evicted first (and past `capacity`)."""

    def __init__(self, window: timedelta, capacity: int = 1_000_000) -> None:
        self.window, self.capacity = window, capacity
        self._seen: OrderedDict[str, datetime] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, keys: Sequence[str], now: datetime) -> list[bool]:
        """Decide a batch and remember its fresh keys; True = first sighting within the window."""
        self.expire(now)
        fresh = first_sightings(keys, self._seen)
        for key, is_fresh in zip(keys, fresh, strict=True):
            if is_fresh:
                self._seen[key] = now
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return fresh

    def expire(self, now: datetime) -> None:
        horizon = now - self.window
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if at > horizon:
                break
            del self._seen[key]
