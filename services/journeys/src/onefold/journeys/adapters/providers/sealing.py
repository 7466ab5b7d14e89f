"""Sealing what a provider keeps about a person under that person's data key.

Providers that store personal data (the sandbox: addresses and bodies) take a `Sealer`, given by
the composition root; `SubjectKeySealer` is the one built on the service's own log: the profile's
data key from `EventStore.data_ciphers`, so shredding the key (an erasure) leaves what was sealed
unreadable, exactly like the profile's events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from onefold.eventlog.mapper import associated_data
from onefold.eventlog.service import ServiceLog


class ProfileErased(Exception):
    """The profile's data key was destroyed: nothing new may be sealed for it."""


class Sealer(Protocol):
    async def seal(self, workspace: str, profile_id: str, plaintext: bytes) -> bytes:
        """Raises ProfileErased when the profile's key was shredded."""
        ...

    async def unseal(self, workspace: str, profile_id: str, sealed: bytes) -> bytes | None:
        """None when the profile's key was shredded (the data reads as erased)."""
        ...


class SubjectKeySealer:
    """Seals under the profile's data key in the service's log (AES-256-GCM; the associated data
    binds each sealed value to its purpose and subject, so one cannot be passed off as another).

    A key may have to be created, a write: that runs on the log's writer thread like every write
    of the service. Opening reads on a thread of its own connection."""

    def __init__(self, log: ServiceLog, subject_of: Callable[[str, str], str], purpose: str) -> None:
        self.log = log
        self.subject_of = subject_of
        self.purpose = purpose

    async def seal(self, workspace: str, profile_id: str, plaintext: bytes) -> bytes:
        subject = self.subject_of(workspace, profile_id)
        # The profile's key almost always exists (its facts and its instance's events are sealed
        # under it): read it on a thread rather than queue a write transaction behind every other
        # write of the service for each message; only a missing key goes to the writer.
        sealed = await asyncio.to_thread(self._seal_with_existing_key, subject, plaintext)
        if sealed is None:
            sealed = await self.log.writer.run(self._seal, subject, plaintext)
        return sealed

    async def unseal(self, workspace: str, profile_id: str, sealed: bytes) -> bytes | None:
        return await asyncio.to_thread(self._unseal, self.subject_of(workspace, profile_id), sealed)

    def _seal_with_existing_key(self, subject: str, plaintext: bytes) -> bytes | None:
        """Sealed under the subject's key; None when it has no key yet. Raises ProfileErased."""
        store = self.log.store
        with store.engine.connect() as conn:
            ciphers = store.data_ciphers(conn, [subject], create=False)
        if subject not in ciphers:
            return None
        cipher = ciphers[subject]
        if cipher is None:
            raise ProfileErased(subject)
        return cipher.seal(plaintext, associated_data(self.purpose, subject))

    def _seal(self, subject: str, plaintext: bytes) -> bytes:
        store = self.log.store
        with store.transaction() as conn:
            cipher = store.data_ciphers(conn, [subject], create=True).get(subject)
        if cipher is None:
            raise ProfileErased(subject)
        return cipher.seal(plaintext, associated_data(self.purpose, subject))

    def _unseal(self, subject: str, sealed: bytes) -> bytes | None:
        store = self.log.store
        with store.engine.connect() as conn:
            cipher = store.data_ciphers(conn, [subject], create=False).get(subject)
        if cipher is None:
            return None
        return cipher.open(sealed, associated_data(self.purpose, subject))
