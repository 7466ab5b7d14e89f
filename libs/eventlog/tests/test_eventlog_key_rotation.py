"""Key rotation: every data key re-wrapped under a new KEK, readable at every step, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.eventlog import (
    ERASED,
    EventRegistry,
    EventStore,
    KeyEncryptionKey,
    NewEvent,
    WrongKeyEncryptionKey,
    schema,
)
from onefold.eventlog.cipher import DERIVED_PURPOSES
from onefold.eventlog.keyfile import load_key_file, previous_path, write_key_file, write_text_file

SUBJECTS = [f"subject-{n:03d}" for n in range(23)]


class Interrupted(Exception):
    pass


def _fill(store: EventStore) -> None:
    store.append(
        [
            NewEvent(
                f"profile:{subject}",
                events_pb2.ProfileUpdated(profile_id=subject, email=f"{subject}@example.com"),
                subject=subject,
            )
            for subject in SUBJECTS
        ]
    )
    store.erase_subject(SUBJECTS[5])


def _emails(store: EventStore) -> dict[str, str]:
    decoded = {event.subject: store.decode(event) for event in store.read()}
    return {subject: message.email for subject, message in decoded.items()}  # type: ignore[attr-defined]


def _wrapped_by(store: EventStore, kek: KeyEncryptionKey) -> int:
    with store.engine.connect() as conn:
        rows = conn.execute(schema.subject_keys.select()).all()
    return sum(
        1 for row in rows if row.wrapped_key is not None and kek.wrapped_by_this(bytes(row.wrapped_key))
    )


def test_rotation_rewraps_every_live_key_and_the_old_key_no_longer_reads(
    database_url: str, registry: EventRegistry, kek: KeyEncryptionKey
) -> None:
    old = EventStore(database_url, service="test", registry=registry, keys=kek)
    old.create_schema()
    _fill(old)
    before = _emails(old)
    blind = old.blind_index("ada@example.com", field="email")
    old.close()

    new_kek = kek.rotated()
    rotating = EventStore(database_url, service="test", registry=registry, keys=new_kek)
    seen: list[tuple[int, int]] = []
    assert (
        rotating.rewrap_data_keys(batch_size=4, progress=lambda done, total: seen.append((done, total))) == 22
    )
    assert seen[-1] == (22, 22) and len(seen) >= 6  # batches of 4, reported as they commit
    assert _wrapped_by(rotating, new_kek) == 22 and _wrapped_by(rotating, kek) == 0
    assert rotating.rewrap_data_keys(batch_size=4) == 0  # nothing left: idempotent
    rotating.close()

    after = EventStore(database_url, service="test", registry=registry, keys=new_kek.without_previous())
    assert _emails(after) == before
    assert before[SUBJECTS[5]] == ERASED and before[SUBJECTS[0]] == f"{SUBJECTS[0]}@example.com"
    # Blind indexes (and every other derived key) are unchanged by the rotation.
    assert after.blind_index("ada@example.com", field="email") == blind
    assert after.verify().ok
    after.close()

    stale = EventStore(database_url, service="test", registry=registry, keys=kek)
    with pytest.raises(WrongKeyEncryptionKey):
        stale.decode(stale.read()[0])
    stale.close()


def test_an_interrupted_rotation_reads_everything_and_resumes(
    database_url: str, registry: EventRegistry, kek: KeyEncryptionKey
) -> None:
    old = EventStore(database_url, service="test", registry=registry, keys=kek)
    old.create_schema()
    _fill(old)
    before = _emails(old)
    new_kek = kek.rotated()
    rotating = EventStore(database_url, service="test", registry=registry, keys=new_kek)

    def crash_after_two_batches(done: int, _total: int) -> None:
        if done >= 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        rotating.rewrap_data_keys(batch_size=5, progress=crash_after_two_batches)
    assert _wrapped_by(rotating, new_kek) == 10 and _wrapped_by(rotating, kek) == 12  # two batches committed
    rotating.close()

    # Half rotated: a store knowing both keys (as a service started meanwhile) reads every subject
    # and wraps new subjects' keys under the new KEK only.
    both = EventStore(database_url, service="test", registry=registry, keys=new_kek)
    assert _emails(both) == before
    both.append(
        [
            NewEvent(
                "profile:late",
                events_pb2.ProfileUpdated(profile_id="late", email="late@example.com"),
                subject="late",
            )
        ]
    )
    # A process that still has only the old KEK writes a key the current pass already went past:
    # the next pass picks it up.
    old_only = EventStore(database_url, service="test", registry=registry, keys=kek)

    def old_writer_during_the_pass(done: int, _total: int) -> None:
        if done == 5 and not old_only.stream_version("profile:aa"):
            old_only.append(
                [
                    NewEvent(
                        "profile:aa",
                        events_pb2.ProfileUpdated(profile_id="aa", email="aa@example.com"),
                        subject="aa",
                    )
                ]
            )

    assert both.rewrap_data_keys(batch_size=5, progress=old_writer_during_the_pass) == 13
    assert _wrapped_by(both, kek) == 0
    old_only.close()
    both.close()

    after = EventStore(database_url, service="test", registry=registry, keys=new_kek.without_previous())
    emails = _emails(after)
    assert emails["late"] == "late@example.com" and emails["aa"] == "aa@example.com"
    assert {s: emails[s] for s in SUBJECTS} == before
    after.close()


def test_key_text_carries_derived_keys_and_key_files_know_the_previous_key(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.generate()
    assert KeyEncryptionKey.from_text(kek.to_text()).key_id == kek.key_id
    assert kek.to_text() == kek.to_base64() + "\n"  # a key never rotated reads as before
    rotated = kek.rotated()
    restored = KeyEncryptionKey.from_text(rotated.to_text())
    assert restored.key_id == rotated.key_id != kek.key_id
    assert all(restored.derive(purpose) == kek.derive(purpose) for purpose in DERIVED_PURPOSES)
    assert restored.rotated().derive("blind-index") == kek.derive("blind-index")  # and again
    with pytest.raises(ValueError, match="DERIVED_PURPOSES"):
        kek.derive("something-new")

    path = tmp_path / "keys" / "test.kek"
    created = load_key_file(path, create=True)
    assert path.stat().st_mode & 0o777 == 0o600 and created.previous is None
    write_text_file(previous_path(path), created.to_text())
    assert load_key_file(path).previous is None  # the previous copy equals the key: not started yet
    write_key_file(path, created.rotated())
    loaded = load_key_file(path)
    assert loaded.previous is not None and loaded.previous.key_id == created.key_id
    assert path.stat().st_mode & 0o777 == 0o600 and previous_path(path).stat().st_mode & 0o777 == 0o600
    wrapped = created.wrap(b"k" * 32, "s")
    assert loaded.unwrap(wrapped, "s") == b"k" * 32  # the old key's wrapped keys still open
