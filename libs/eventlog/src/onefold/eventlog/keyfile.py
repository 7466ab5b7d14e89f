"""Key-encryption keys kept in files (`eventlog.key_file`; `onefold up` keeps one per service).

A key file holds `KeyEncryptionKey.to_text()` and is only ever written whole: to a temporary file
(mode 0600) in the same directory, flushed to disk, then renamed over the old one, so a crash leaves
either the old file or the new, never half of one.

During a rotation the old key waits beside the new one as `<key file>.previous` until every data
key is re-wrapped; whoever loads the key file meanwhile (a service started mid-rotation, a resumed
rotation) gets the new KEK with the old one as its `previous`, so no data key is unreadable at any
moment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from onefold.eventlog.cipher import KeyEncryptionKey

PREVIOUS_SUFFIX = ".previous"


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def load_key_file(path: Path, *, create: bool = False) -> KeyEncryptionKey:
    """The KEK in `path` (with `<path>.previous` as its previous key, when a rotation is under way).

    `create`: make the file with a new random key when it does not exist yet."""
    if create and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another service process made it first
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(KeyEncryptionKey.generate().to_text())
                file.flush()
                os.fsync(file.fileno())
    kek = KeyEncryptionKey.from_text(path.read_text())
    previous = previous_path(path)
    if previous.exists():
        old = KeyEncryptionKey.from_text(previous.read_text())
        if old.key_id != kek.key_id:
            kek.previous = old
    return kek


def write_key_file(path: Path, kek: KeyEncryptionKey) -> None:
    """Replace `path` with `kek` atomically and durably (0600)."""
    write_text_file(path, kek.to_text())


def write_text_file(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
