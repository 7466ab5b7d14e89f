"""FoldedStreams: states folded from streams, kept between transactions, folded again exactly when
a stream's last event differs (a new event, a rolled-back one, another writer) or its subject was
erased. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import ERASED, EventStore, NewEvent, RecordedEvent
from onefold.eventlog.folded import FoldedStreams


class Folds:
    """A fold of ProfileUpdated streams into their emails, noting which streams it read."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.read: list[str] = []

    def __call__(self, events: Sequence[RecordedEvent]) -> list[str]:
        self.read.append(events[0].stream_id)
        return [self.store.decode(e).email for e in events]  # type: ignore[attr-defined]

    def load(self, folded: FoldedStreams[list[str]], *stream_ids: str) -> dict[str, list[str]]:
        self.read.clear()
        with self.store.transaction() as conn:
            return {s: f.state for s, f in folded.load(conn, stream_ids, self).items()}


def updated(stream_id: str, subject: str, email: str) -> NewEvent:
    return NewEvent(stream_id, events_pb2.ProfileUpdated(profile_id=subject, email=email), subject=subject)


def test_only_the_streams_that_moved_are_read_again(store: EventStore) -> None:
    store.append([updated("p:a", "a", "a1@example.com"), updated("p:b", "b", "b1@example.com")])
    folded: FoldedStreams[list[str]] = FoldedStreams(store)
    folds = Folds(store)

    first = folds.load(folded, "p:a", "p:b", "p:none")
    assert first == {"p:a": ["a1@example.com"], "p:b": ["b1@example.com"]}
    assert sorted(folds.read) == ["p:a", "p:b"]

    first["p:a"].append("changed by the caller")  # a copy: the kept state is not touched
    assert folds.load(folded, "p:a", "p:b") == {"p:a": ["a1@example.com"], "p:b": ["b1@example.com"]}
    assert folds.read == []

    store.append([updated("p:b", "b", "b2@example.com")])
    assert folds.load(folded, "p:a", "p:b")["p:b"] == ["b1@example.com", "b2@example.com"]
    assert folds.read == ["p:b"]


def test_a_state_folded_from_a_rolled_back_append_is_never_served(store: EventStore) -> None:
    store.append([updated("p:a", "a", "a1@example.com")])
    folded: FoldedStreams[list[str]] = FoldedStreams(store)
    folds = Folds(store)

    with pytest.raises(RuntimeError), store.transaction() as conn:
        store.append([updated("p:a", "a", "rolled-back@example.com")], conn=conn)
        assert folded.load(conn, ["p:a"], folds)["p:a"].state == ["a1@example.com", "rolled-back@example.com"]
        raise RuntimeError("the transaction fails after the state was folded")
    # The same version number, written again by another event: its hash differs.
    store.append([updated("p:a", "a", "a2@example.com")])

    assert folds.load(folded, "p:a") == {"p:a": ["a1@example.com", "a2@example.com"]}
    assert folds.read == ["p:a"]


def test_a_state_the_caller_folded_through_its_own_event_is_served_without_reading(store: EventStore) -> None:
    store.append([updated("p:a", "a", "a1@example.com")])
    folded: FoldedStreams[list[str]] = FoldedStreams(store)
    folds = Folds(store)
    with store.transaction() as conn:
        loaded = folded.load(conn, ["p:a"], folds)["p:a"]
        assert loaded.version == 1
        [recorded] = store.append([updated("p:a", "a", "a2@example.com")], conn=conn)
        folded.keep([*loaded.state, "a2@example.com"], recorded)

    assert folds.load(folded, "p:a") == {"p:a": ["a1@example.com", "a2@example.com"]}
    assert folds.read == []

    with pytest.raises(RuntimeError), store.transaction() as conn:
        [recorded] = store.append([updated("p:a", "a", "rolled-back@example.com")], conn=conn)
        folded.keep(["kept from a transaction that rolls back"], recorded)
        raise RuntimeError("the transaction fails after the state was kept")

    assert folds.load(folded, "p:a") == {"p:a": ["a1@example.com", "a2@example.com"]}
    store.append([updated("p:a", "a", "a3@example.com")])  # version 3 again, another event
    assert folds.load(folded, "p:a") == {"p:a": ["a1@example.com", "a2@example.com", "a3@example.com"]}
    assert folds.read == ["p:a"]


def test_an_erased_subject_is_folded_again_with_its_personal_fields_erased_and_not_kept(
    store: EventStore,
) -> None:
    store.append([updated("p:a", "a", "a1@example.com")])
    folded: FoldedStreams[list[str]] = FoldedStreams(store)
    folds = Folds(store)
    assert folds.load(folded, "p:a") == {"p:a": ["a1@example.com"]}

    store.erase_subject("a")  # no new event on the stream: only the key is gone

    assert folds.load(folded, "p:a") == {"p:a": [ERASED]}
    assert folds.load(folded, "p:a") == {"p:a": [ERASED]}
    assert folds.read == ["p:a"]  # read again each time: nothing of an erased subject is kept


def test_the_least_recently_used_states_leave_first(store: EventStore) -> None:
    store.append([updated(f"p:{n}", n, f"{n}@example.com") for n in "abc"])
    folded: FoldedStreams[list[str]] = FoldedStreams(store, max_streams=2)
    folds = Folds(store)
    folds.load(folded, "p:a", "p:b")
    folds.load(folded, "p:a")
    folds.load(folded, "p:c")  # p:b was used least recently

    folds.load(folded, "p:a", "p:b", "p:c")
    assert folds.read == ["p:b"]
