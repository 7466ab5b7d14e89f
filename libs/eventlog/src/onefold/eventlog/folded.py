"""States folded from whole streams of a service's own log, kept between its transactions.

A service that decides against the state of a stream (journeys' instances) would otherwise read
and open every event of each stream it touches, in every batch, however few of them changed. A
`FoldedStreams` keeps each folded state with the stream's last event as it was folded: its
version and its hash. One query reads those of the wanted streams; only a stream whose last event
differs is read and folded again. The hash chain makes that exact: the last event's hash commits to
everything appended before it, so an equal (version, hash) is the very stream that was folded,
whoever wrote since (another replica, a rolled-back transaction, a rewrite all change it).

States hold personal data opened with the subjects' keys, so a state is never served for a subject
erased since (it is folded again: its personal fields then read as erased) and is not kept. Callers
get copies: what they fold into them in a transaction that may roll back never reaches the cache.
The cache is bounded (least recently used first out) and belongs to one thread, the writer.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onefold.eventlog import schema
from onefold.eventlog.models import RecordedEvent
from onefold.eventlog.store import EventStore

S = TypeVar("S")
_IN_CHUNK = 500


@dataclass(frozen=True)
class _Head:
    version: int
    hash: bytes
    subject: str


@dataclass(frozen=True)
class Folded(Generic[S]):
    state: S
    version: int  # the stream's version it is the fold through


class FoldedStreams(Generic[S]):
    def __init__(self, store: EventStore, *, max_streams: int = 20_000) -> None:
        self.store = store
        self.max_streams = max_streams
        self._states: OrderedDict[str, tuple[_Head, S]] = OrderedDict()

    def load(
        self, conn: Connection, stream_ids: Sequence[str], fold: Callable[[Sequence[RecordedEvent]], S]
    ) -> dict[str, Folded[S]]:
        """The state of each of `stream_ids` that has events, `fold`ed from its events in order
        (read in the caller's transaction) unless kept from earlier; the caller's to change."""
        heads = self._heads(conn, stream_ids)
        erased = self.store.erased_subjects(conn, {h.subject for h in heads.values()})
        found: dict[str, Folded[S]] = {}
        stale: list[str] = []
        for stream_id, head in heads.items():
            kept = self._states.get(stream_id)
            if kept is not None and kept[0] == head and head.subject not in erased:
                self._states.move_to_end(stream_id)
                found[stream_id] = Folded(copy.deepcopy(kept[1]), head.version)
            else:
                self._states.pop(stream_id, None)
                stale.append(stream_id)
        by_stream: dict[str, list[RecordedEvent]] = {}
        for event in self.store.read_streams(stale, conn=conn):
            by_stream.setdefault(event.stream_id, []).append(event)
        for stream_id, events in by_stream.items():
            state = fold(events)
            last = events[-1]
            if last.subject not in erased:
                self._put(last, state)
                state = copy.deepcopy(state)
            found[stream_id] = Folded(state, last.stream_version)
        return found

    def keep(self, state: S, last: RecordedEvent) -> None:
        """Keep `state` as the fold of its stream through `last`, an event the caller has just
        recorded on it, so the next load need not read it back. The caller vouches that `state` is
        exactly that fold (it held the stream's state when it decided, and folded everything it
        recorded since). Should its transaction roll back, nothing will ever match `last`'s hash."""
        self._put(last, copy.deepcopy(state))

    def _put(self, last: RecordedEvent, state: S) -> None:
        self._states[last.stream_id] = (_Head(last.stream_version, last.hash, last.subject), state)
        self._states.move_to_end(last.stream_id)
        while len(self._states) > self.max_streams:
            self._states.popitem(last=False)

    def forget(self, stream_ids: Sequence[str]) -> None:
        """Drop what is kept of these streams (their subjects are being erased)."""
        for stream_id in stream_ids:
            self._states.pop(stream_id, None)

    @staticmethod
    def _heads(conn: Connection, stream_ids: Sequence[str]) -> dict[str, _Head]:
        """Each stream's last event (version, hash, subject); streams without events are absent.
        Both lookups are on the (stream_id, stream_version) unique index."""
        events = schema.events
        wanted = sorted(set(stream_ids))
        heads: dict[str, _Head] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            last = (
                sa.select(events.c.stream_id, sa.func.max(events.c.stream_version).label("version"))
                .where(events.c.stream_id.in_(chunk))
                .group_by(events.c.stream_id)
                .subquery()
            )
            query = sa.select(
                events.c.stream_id, events.c.stream_version, events.c.hash, events.c.subject
            ).join(
                last, (events.c.stream_id == last.c.stream_id) & (events.c.stream_version == last.c.version)
            )
            for stream_id, version, hash_, subject in conn.execute(query):
                heads[str(stream_id)] = _Head(int(version), bytes(hash_), str(subject))
        return heads
