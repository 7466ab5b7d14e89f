"""Keys and ciphers for crypto-shredding.

Two levels of keys:

- the service's **key-encryption key** (KEK): 32 random bytes from config / a Kubernetes Secret,
  given as base64 (`KeyEncryptionKey.from_base64`, `.from_env`, `.generate`). It never touches the
  database; it only wraps data keys.
- one **data key** per data subject: 32 random bytes that encrypt that subject's personal fields
  with AES-256-GCM. It is stored wrapped (encrypted by the KEK, with the subject as associated data
  so a wrapped key cannot be moved to another subject). Erasing a subject deletes its wrapped key;
  from then on its ciphertext is noise.

Wrapped-key format: ``b"\\x01" | kek_id (8) | nonce (12) | AES-GCM(dek) (32 + 16 tag)``.

Rotation (`onefold keys rotate`, EventStore.rewrap_data_keys) replaces the KEK by a new one
and re-wraps every data key. While it runs the new KEK carries the old one as `previous`, and a wrapped
key's kek_id picks which one unwraps it, so a half-rotated table reads fine. Keys derived for other
purposes (blind indexes, signatures) must not change with the KEK — stored blind indexes and
signatures would stop matching — so a rotated KEK carries them along as plain derived keys (HMAC
outputs: they cannot unwrap anything). Its text form is then several lines: the KEK's base64, then
``derived <purpose> <base64>`` per purpose (`to_text` / `from_text`).
Sealed-data format: ``flags (1) | nonce (12) | AES-GCM(plaintext)``; flag bit 0 = zlib-compressed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from onefold.eventlog.errors import MissingKeyEncryptionKey, WrongKeyEncryptionKey

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
DEFAULT_KEK_ENV = "ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY"  # settings: eventlog.key_encryption_key
_WRAP_FORMAT = b"\x01"
_FLAG_ZLIB = 0x01
_ZLIB_PREFIX = bytes((_FLAG_ZLIB,))
# Compression pays only for larger plaintexts; below this it costs time and rarely saves bytes.
COMPRESS_MIN_BYTES = 256
# Every purpose `KeyEncryptionKey.derive` is called with; a rotation carries exactly these over (a
# purpose missing here would get a different key after a rotation, so `derive` refuses it).
DERIVED_PURPOSES = (
    "blind-index",  # store.blind_index: identifiers looked up by keyed hash
    "dsr-completion-record",  # consent: signatures of completed data-subject requests
    "dsr-identifier-hash",  # consent: keyed hashes of an erasure request's identifiers
    "chain-digest-signing",  # digests: the Ed25519 key that signs chain heads (pinned by witnesses)
)
_DERIVED_LINE = "derived"


class KeyEncryptionKey:
    """The service's key-encryption key: wraps and unwraps per-subject data keys."""

    def __init__(
        self,
        key: bytes,
        *,
        derived: Mapping[str, bytes] | None = None,
        previous: KeyEncryptionKey | None = None,
    ) -> None:
        if len(key) != KEY_BYTES:
            raise MissingKeyEncryptionKey(
                f"a key-encryption key must be {KEY_BYTES} bytes, got {len(key)}; "
                "create one with `KeyEncryptionKey.generate().to_base64()`"
            )
        self._key = key
        self._aead = AESGCM(key)
        # Identifies the KEK without revealing it, so a mismatch is a clear error, not an InvalidTag.
        self.key_id = hashlib.sha256(b"onefold kek id\x00" + key).digest()[:8]
        # None: derived from this key (never rotated). Otherwise carried over from before a rotation.
        self._derived = dict(derived) if derived is not None else None
        # The KEK being rotated away from: unwraps (never wraps) the keys not re-wrapped yet.
        self.previous = previous

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_base64(cls, text: str) -> KeyEncryptionKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MissingKeyEncryptionKey("the key-encryption key is not valid base64") from None
        return cls(raw)

    @classmethod
    def from_env(cls, name: str = DEFAULT_KEK_ENV) -> KeyEncryptionKey:
        text = os.environ.get(name, "")
        if not text:
            raise MissingKeyEncryptionKey(
                f"environment variable {name} must hold the base64 key-encryption key "
                "(create one with `python -m onefold.eventlog.cipher`)"
            )
        return cls.from_base64(text)

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKey:
        """Read `to_text`'s form: one base64 line, then any `derived <purpose> <base64>` lines."""
        lines = [line.split() for line in text.strip().splitlines() if line.strip()]
        if not lines or len(lines[0]) != 1:
            raise MissingKeyEncryptionKey("the key-encryption key must start with one line of base64")
        key = cls.from_base64(lines[0][0])._key
        if len(lines) == 1:
            return cls(key)
        derived: dict[str, bytes] = {}
        for line in lines[1:]:
            if len(line) != 3 or line[0] != _DERIVED_LINE:
                raise MissingKeyEncryptionKey(
                    "each line after the key-encryption key must be 'derived <purpose> <base64>'"
                )
            derived[line[1]] = cls.from_base64(line[2])._key
        return cls(key, derived=derived)

    def to_base64(self) -> str:
        return base64.b64encode(self._key).decode()

    def to_text(self) -> str:
        """The key as text for a key file or a Secret (with its carried-over derived keys, if any)."""
        lines = [self.to_base64()]
        for purpose, derived in sorted((self._derived or {}).items()):
            lines.append(f"{_DERIVED_LINE} {purpose} {base64.b64encode(derived).decode()}")
        return "\n".join(lines) + "\n"

    def rotated(self) -> KeyEncryptionKey:
        """A new random KEK that derives the same keys as this one and unwraps its keys meanwhile."""
        derived = {purpose: self.derive(purpose) for purpose in DERIVED_PURPOSES}
        derived.update(self._derived or {})
        return KeyEncryptionKey(os.urandom(KEY_BYTES), derived=derived, previous=self)

    def without_previous(self) -> KeyEncryptionKey:
        return KeyEncryptionKey(self._key, derived=self._derived)

    def wrapped_by_this(self, wrapped: bytes) -> bool:
        """Whether `wrapped` was wrapped by this KEK (not by its previous one)."""
        return wrapped[:1] == _WRAP_FORMAT and wrapped[1:9] == self.key_id

    def wrap(self, data_key: bytes, subject: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return _WRAP_FORMAT + self.key_id + nonce + self._aead.encrypt(nonce, data_key, subject.encode())

    def unwrap(self, wrapped: bytes, subject: str) -> bytes:
        if self.previous is not None and self.previous.wrapped_by_this(wrapped):
            return self.previous.unwrap(wrapped, subject)
        if wrapped[:1] != _WRAP_FORMAT or wrapped[1:9] != self.key_id:
            raise WrongKeyEncryptionKey(
                f"the data key of subject '{subject}' was wrapped by a different key-encryption key "
                "than the one this service is configured with"
            )
        nonce = wrapped[9 : 9 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, wrapped[9 + NONCE_BYTES :], subject.encode())
        except InvalidTag:
            raise WrongKeyEncryptionKey(
                f"the wrapped data key of subject '{subject}' does not authenticate; it was damaged"
            ) from None

    def derive(self, purpose: str) -> bytes:
        """A separate key for another purpose (e.g. blind indexes), so one key never serves two.

        `purpose` must be listed in DERIVED_PURPOSES, so a rotation keeps its key unchanged."""
        if purpose not in DERIVED_PURPOSES:
            raise ValueError(f"derived-key purpose '{purpose}' must be listed in cipher.DERIVED_PURPOSES")
        if self._derived is not None:
            return self._derived[purpose]
        return hmac.digest(self._key, b"onefold derive\x00" + purpose.encode(), "sha256")


class DataKeyCipher:
    """AES-256-GCM with one subject's data key; the AESGCM object is reused across calls."""

    __slots__ = ("_aead",)

    def __init__(self, data_key: bytes) -> None:
        self._aead = AESGCM(data_key)

    def seal(self, plaintext: bytes, associated_data: bytes, nonce: bytes | None = None) -> bytes:
        """Encrypt; `nonce` (if given) must be 12 fresh bytes from the OS CSPRNG, used only here.

        Nonces are random (96 bits from the OS CSPRNG), never counters: several processes and
        restarts share a data key and keep no nonce state, so only random nonces are safe. The
        store draws a batch's nonces in one `os.urandom(12 * n)` read and hands out disjoint
        slices: the same random source and distribution as one read per event, at less cost.
        """
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES)
        elif len(nonce) != NONCE_BYTES:
            raise ValueError(f"an AES-GCM nonce here is {NONCE_BYTES} bytes")
        if len(plaintext) >= COMPRESS_MIN_BYTES:
            compressed = zlib.compress(plaintext, 1)
            if len(compressed) < len(plaintext) * 0.9:
                return _ZLIB_PREFIX + nonce + self._aead.encrypt(nonce, compressed, associated_data)
        return b"\x00" + nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        """Raises cryptography's InvalidTag (or ValueError) when the bytes were altered."""
        if len(sealed) < 1 + NONCE_BYTES + TAG_BYTES:
            raise ValueError("sealed data is too short")
        flags = sealed[0]
        plaintext = self._aead.decrypt(
            sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :], associated_data
        )
        return zlib.decompress(plaintext) if flags & _FLAG_ZLIB else plaintext


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


class KeyCache:
    """An LRU of unwrapped data keys (as ready ciphers); erased subjects are remembered as None."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, DataKeyCipher | None] = OrderedDict()

    def get(self, subject: str) -> DataKeyCipher | bool | None:
        """The cipher, None if the subject is known to be erased, False on a miss."""
        try:
            entry = self._entries[subject]
        except KeyError:
            return False
        self._entries.move_to_end(subject)
        return entry

    def get_many(self, subjects: Iterable[str]) -> tuple[dict[str, DataKeyCipher | None], list[str]]:
        """(cached entries of `subjects`, the subjects that missed), in one pass."""
        entries = self._entries
        move_to_end = entries.move_to_end
        found: dict[str, DataKeyCipher | None] = {}
        missing: list[str] = []
        for subject in subjects:
            if subject in entries:
                found[subject] = entries[subject]
                move_to_end(subject)
            else:
                missing.append(subject)
        return found, missing

    def put(self, subject: str, cipher: DataKeyCipher | None) -> None:
        self._entries[subject] = cipher
        self._entries.move_to_end(subject)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def discard(self, subject: str) -> None:
        self._entries.pop(subject, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class BlindIndex:
    """Keyed hashes (HMAC-SHA-256) for identifiers that must be looked up but never stored in clear.

    The key is derived from the KEK for this purpose only. Values are normalised (trimmed, and
    case-folded unless `case_sensitive`) so `Ada@Example.com` and `ada@example.com ` match.
    """

    def __init__(self, kek: KeyEncryptionKey, *, purpose: str = "blind-index") -> None:
        self._key = kek.derive(purpose)
        # A keyed HMAC state copied per digest. Not hmac.digest(): that one-shot call releases the
        # GIL around every (sub-microsecond) HMAC, and getting it back behind a busy thread (the
        # writer, the relay) costs up to the interpreter's switch interval, per identifier.
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256)

    def digest(self, value: str, *, field: str = "", case_sensitive: bool = False) -> str:
        normalised = value.strip() if case_sensitive else value.strip().casefold()
        # The field name is mixed in so equal values of different kinds do not share an index entry.
        mac = self._keyed.copy()
        mac.update(field.encode() + b"\x00" + normalised.encode())
        return mac.hexdigest()


if __name__ == "__main__":  # pragma: no cover - a one-line helper for operators
    import sys

    sys.stdout.write(KeyEncryptionKey.generate().to_base64() + "\n")
