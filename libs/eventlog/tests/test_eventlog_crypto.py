"""Crypto-shredding: personal fields encrypted per subject, erasure, blind indexes, keys."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from onefold.contracts.eventlog.testing.v1 import events_pb2
from onefold.contracts.options.v1 import options_pb2
from onefold.eventlog import (
    ERASED,
    BlindIndex,
    EventRegistry,
    EventStore,
    InvalidEvent,
    KeyEncryptionKey,
    MissingKeyEncryptionKey,
    NewEvent,
    SubjectErased,
    WrongKeyEncryptionKey,
    schema,
)
from onefold.eventlog.cipher import DataKeyCipher, new_data_key


def profile(email: str, **fields: object) -> events_pb2.ProfileUpdated:
    message = events_pb2.ProfileUpdated(profile_id="p", email=email, plan="pro", **fields)  # type: ignore[arg-type]
    message.traits.update({"favourite": email})
    message.properties["nickname"] = email
    message.address.street = email
    message.address.city = "Paris"
    message.phone_numbers.append(email)
    return message


def test_erasure_leaves_markers_keeps_chain_and_other_subjects(store: EventStore) -> None:
    store.append(
        [
            NewEvent("profile:a", profile("ada@example.com", name="Ada"), subject="a"),
            NewEvent("profile:b", profile("bob@example.com", name="Bob"), subject="b"),
            NewEvent("counter", events_pb2.CounterChanged(counter="c", delta=1), subject="a"),
        ]
    )
    store.erase_subject("a")
    assert store.is_erased("a") and not store.is_erased("b")
    a_event, b_event, counter_event = store.read()
    erased = store.decode(a_event)
    assert isinstance(erased, events_pb2.ProfileUpdated)
    assert erased.email == ERASED and erased.name == ERASED and erased.address.street == ERASED
    assert erased.plan == "pro" and erased.address.city == "Paris" and erased.profile_id == "p"
    assert dict(erased.properties) == {ERASED: ERASED}
    assert erased.traits.fields[ERASED].string_value == ERASED and len(erased.traits.fields) == 1
    assert list(erased.phone_numbers) == [ERASED] and erased.photo == b""
    assert store.decode(b_event) == profile("bob@example.com", name="Bob")
    assert store.decode(counter_event) == events_pb2.CounterChanged(counter="c", delta=1)
    assert store.verify().ok
    envelope = store.to_envelope(a_event)
    assert b"ada@example.com" not in envelope.payload
    # New personal data for an erased subject is refused; events without it are fine.
    with pytest.raises(SubjectErased):
        store.append(
            [NewEvent("profile:a", events_pb2.ProfileUpdated(email="again@example.com"), subject="a")]
        )
    store.append([NewEvent("profile:a", events_pb2.ProfileUpdated(plan="closed"), subject="a")])
    # A fresh process (no cache) sees the erasure too, and erasing twice is harmless.
    other = EventStore(store.engine, service="test", registry=store.registry, keys=store.keys)
    assert other.decode(a_event) == erased
    other.erase_subject("a")
    other.erase_subject("never-seen")
    with pytest.raises(SubjectErased):
        other.append([NewEvent("x", events_pb2.ProfileUpdated(email="x@example.com"), subject="never-seen")])


def test_erasure_in_another_process_invalidates_cached_keys(make_store: object) -> None:
    first = make_store()  # type: ignore[operator]
    second = make_store()  # type: ignore[operator]
    first.append([NewEvent("p", events_pb2.ProfileUpdated(email="a@example.com"), subject="s")])
    second.append(
        [NewEvent("p", events_pb2.ProfileUpdated(email="b@example.com"), subject="s")]
    )  # caches key
    first.erase_subject("s")
    with pytest.raises(SubjectErased):
        second.append([NewEvent("p", events_pb2.ProfileUpdated(email="c@example.com"), subject="s")])


def test_no_plaintext_or_key_remains_in_sqlite_file_after_erasure(
    tmp_path: Path, registry: EventRegistry
) -> None:
    path = tmp_path / "shred.db"
    store = EventStore(
        f"sqlite:///{path}", service="test", registry=registry, keys=KeyEncryptionKey.generate()
    )
    store.create_schema()
    secret_email = f"zq-{uuid.uuid4().hex}@example.com"
    secret_name = f"Name-{uuid.uuid4().hex}"
    store.append(
        [NewEvent("profile:s", profile(secret_email, name=secret_name), subject="s") for _ in range(50)]
        + [NewEvent("profile:t", profile("keep@example.com"), subject="t")]
    )
    with store.engine.connect() as conn:
        wrapped = conn.execute(
            sa.select(schema.subject_keys.c.wrapped_key).where(schema.subject_keys.c.subject == "s")
        ).scalar_one()
    wal = path.with_name(path.name + "-wal")
    needles = [secret_email.encode(), secret_name.encode(), bytes(wrapped)]
    raw = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert not any(n in raw for n in needles[:2]), "plaintext personal data reached the database file"
    assert bytes(wrapped) in raw  # the probe works: the wrapped key is in the file before erasure

    store.erase_subject("s")
    store.append([NewEvent("counter", events_pb2.CounterChanged(counter="c", delta=1))])  # more WAL traffic
    store.checkpoint_wal()
    raw = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    for needle in needles:
        assert needle not in raw, "erased subject's data or key is still in the database file or WAL"
    assert store.verify().ok
    assert store.decode(store.read()[0]).email == ERASED  # type: ignore[attr-defined]
    assert store.decode(store.read()[-2]).email == "keep@example.com"  # type: ignore[attr-defined]
    store.close()


def test_keys_from_config_and_wrong_key_is_a_clear_error(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    kek = KeyEncryptionKey.generate()
    assert len(base64.b64decode(kek.to_base64())) == 32
    monkeypatch.setenv("ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY", kek.to_base64())
    assert KeyEncryptionKey.from_env().key_id == kek.key_id
    monkeypatch.delenv("ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY")
    with pytest.raises(MissingKeyEncryptionKey):
        KeyEncryptionKey.from_env()
    with pytest.raises(MissingKeyEncryptionKey):
        KeyEncryptionKey.from_base64("not base64!")
    with pytest.raises(MissingKeyEncryptionKey):
        KeyEncryptionKey(b"short")

    (event,) = store.append([NewEvent("p", events_pb2.ProfileUpdated(email="a@example.com"), subject="s")])
    stranger = EventStore(store.engine, service="test", registry=store.registry, keys=kek)
    with pytest.raises(WrongKeyEncryptionKey):
        stranger.decode(event)


def test_ciphertext_is_bound_to_subject_and_type(store: EventStore) -> None:
    a, b = store.append(
        [
            NewEvent("p", events_pb2.ProfileUpdated(email="a@example.com"), subject="a"),
            NewEvent("q", events_pb2.ProfileUpdated(email="b@example.com"), subject="b"),
        ]
    )
    moved = dataclasses.replace(b, subject="a")
    with pytest.raises(Exception, match="does not authenticate"):
        store.decode(moved)
    assert a.payload != b.payload


def test_compression_pays_for_large_personal_data() -> None:
    cipher = DataKeyCipher(new_data_key())
    plain = b"the same words again " * 100
    sealed = cipher.seal(plain, b"ad")
    assert len(sealed) < len(plain) // 2 and sealed[0] == 1
    assert cipher.open(sealed, b"ad") == plain
    small = cipher.seal(b"tiny", b"ad")
    assert small[0] == 0 and cipher.open(small, b"ad") == b"tiny"


def test_blind_index_is_keyed_normalised_and_per_field(store: EventStore) -> None:
    digest = store.blind_index(" Ada@Example.com ", field="email")
    assert digest == store.blind_index("ada@example.com", field="email")
    assert digest != store.blind_index("ada@example.com", field="phone")
    assert digest != BlindIndex(KeyEncryptionKey.generate()).digest("ada@example.com", field="email")
    assert "example" not in digest and len(digest) == 64  # ("ada" alone is hex, so it can occur)
    assert store.blind_index("Ada", case_sensitive=True) != store.blind_index("ada", case_sensitive=True)
    keyless = EventStore(store.engine, service="test", registry=store.registry)
    with pytest.raises(MissingKeyEncryptionKey):
        keyless.blind_index("x")


def test_a_blind_index_field_accepts_only_a_keyed_hash(store: EventStore) -> None:
    digest = store.blind_index("ada@example.com", field="email")
    store.append([NewEvent("profile:a", profile("ada@example.com", email_index=digest), subject="a")])
    head = store.head_position()
    # The value itself in a blind-index field would be personal data in clear: refused, not echoed.
    with pytest.raises(InvalidEvent) as caught:
        store.append(
            [NewEvent("profile:a", profile("ada@example.com", email_index="ada@example.com"), subject="a")]
        )
    assert "email_index" in str(caught.value) and "ada@" not in str(caught.value)
    assert store.head_position() == head


def test_a_blind_index_mark_on_a_field_that_cannot_hold_a_hash_is_refused() -> None:
    assert EventRegistry().register(events_pb2.ProfileUpdated).blind_index == ("email_index",)
    # A message declared on the fly: an int64 cannot hold a keyed hash, so registering it fails.
    file = descriptor_pb2.FileDescriptorProto(
        name="onefold_test_bad_blind_index.proto", package="onefold.test.bad", syntax="proto3"
    )
    file.dependency.append(options_pb2.DESCRIPTOR.name)
    field = file.message_type.add(name="Bad").field.add(
        name="count", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    )
    field.options.Extensions[options_pb2.blind_index] = True
    descriptor_pool.Default().Add(file)
    bad = message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName("onefold.test.bad.Bad")
    )
    with pytest.raises(InvalidEvent, match=r"Bad\.count is marked blind_index"):
        EventRegistry().register(bad)


def test_public_decode_reads_public_fields_without_a_key(store: EventStore) -> None:
    store.append([NewEvent("profile:a", profile("ada@example.com", name="Ada"), subject="a")])
    (event,) = store.read()
    public = store.decode(event, decrypt=False)
    assert isinstance(public, events_pb2.ProfileUpdated)
    assert public.plan == "pro" and public.address.city == "Paris" and public.profile_id == "p"
    assert public.email == ERASED and public.name == ERASED  # never decrypted...
    assert store.decode(event).email == "ada@example.com"  # ...though the key is there
