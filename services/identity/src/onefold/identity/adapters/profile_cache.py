"""The profiles 360 most recently read, kept in memory so a hot profile is answered without reading
and decrypting its history again.

Entries are keyed by (workspace, live profile id) and hold the profile serialised (its size is
its memory, and every hit is a fresh message the caller may change). The cache is bounded by count
and by bytes, least recently used first out.

It never decides on its own whether an entry is current: the reads that use it follow the
service's log (`followed`, `epoch`) and `invalidate` the profiles each committed event concerns
before they look anything up. A read that assembles a profile takes a `ticket` first and `put`s
its result with it; the put is refused when that profile was invalidated after the ticket was
taken, because the assembly may then have read the profile before the change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from onefold.contracts.identity.v1 import identity_pb2 as pb

ProfileKey = tuple[str, str]  # (workspace, live profile id)

# How many recent invalidations are remembered one by one: a fill that started before an older one
# than these is refused as a whole (see `_changed_floor`).
_REMEMBERED_CHANGES = 10_000


class ProfileCache:
    def __init__(self, max_profiles: int, max_bytes: int) -> None:
        self.max_profiles = max_profiles
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[ProfileKey, bytes] = OrderedDict()
        self._bytes = 0
        self._changes = 0  # invalidations so far, numbered
        self._changed: OrderedDict[ProfileKey, int] = OrderedDict()  # key -> its latest invalidation
        self._changed_floor = 0  # the newest invalidation no longer remembered by key
        # Held by the one read that applies the log's new events; the others wait for it.
        self.following = threading.Lock()
        self.followed = -1  # the log position through which invalidations are applied
        self.epoch = -1  # the erasure epoch the entries were read under

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def ticket(self) -> int:
        """Take before reading what a `put` will store."""
        return self._changes

    def get(self, key: ProfileKey) -> pb.Profile | None:
        with self._lock:
            data = self._entries.get(key)
            if data is None:
                return None
            self._entries.move_to_end(key)
        return pb.Profile.FromString(data)

    def put(self, key: ProfileKey, ticket: int, profile: pb.Profile) -> bool:
        """Keep `profile` unless `key` changed after `ticket` was taken (or it is too big to keep)."""
        data = profile.SerializeToString()
        if len(data) > self.max_bytes:
            return False
        with self._lock:
            if self._changed.get(key, self._changed_floor) > ticket:
                return False
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= len(previous)
            self._entries[key] = data
            self._bytes += len(data)
            while len(self._entries) > self.max_profiles or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
        return True

    def invalidate(self, keys: Iterable[ProfileKey]) -> None:
        with self._lock:
            for key in keys:
                self._changes += 1
                self._changed[key] = self._changes
                self._changed.move_to_end(key)
                dropped = self._entries.pop(key, None)
                if dropped is not None:
                    self._bytes -= len(dropped)
            while len(self._changed) > _REMEMBERED_CHANGES:
                _, forgotten = self._changed.popitem(last=False)
                self._changed_floor = max(self._changed_floor, forgotten)

    def clear(self) -> None:
        """Drop every entry, and refuse every fill that started before."""
        with self._lock:
            self._changes += 1
            self._changed.clear()
            self._changed_floor = self._changes
            self._entries.clear()
            self._bytes = 0
