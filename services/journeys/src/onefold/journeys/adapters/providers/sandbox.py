"""The built-in sandbox provider: sends are kept in a local table instead of leaving the machine,
so a journey can be run and inspected offline (`onefold up` uses it for every channel by default).

A kept send holds what a real provider would have received — the address and the bodies — which
is personal data: it is sealed under the profile's data key (`Sealer`), with only ids, the channel
and the time in the clear. `count` and `erase` answer the data-subject contract for it; an erased
profile's rows are deleted, and any copy left (a backup) is unreadable once its key is shredded.

The message id is the table's key: the same message is kept once, and a repeat is answered with
the first delivery, as an idempotent provider would.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from onefold.journeys.adapters.providers.base import Delivery, Message
from onefold.journeys.adapters.providers.sealing import ProfileErased, Sealer
from onefold.platform.errors import Unavailable

metadata = sa.MetaData()

sandbox_sends = sa.Table(
    "journeys_sandbox_sends",
    metadata,
    sa.Column("message_id", sa.String(200), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("sent_at_us", sa.BigInteger, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),  # the SandboxSend's personal part, as JSON
    sa.Index("journeys_sandbox_sends_by_profile", "workspace", "profile_id"),
)

# The purpose sealed values are bound to (associated data): a sandbox send, and nothing else.
SEALED_PURPOSE = "onefold.journeys.SandboxSend"


@dataclass(frozen=True)
class SandboxSend:
    """A kept send, opened: what the provider would have received."""

    message_id: str
    channel: str
    sent_at_us: int
    to: str
    subject: str
    text: str
    html: str
    template: str
    data: dict[str, str]

    def __repr__(self) -> str:
        return f"SandboxSend(message_id={self.message_id!r}, channel={self.channel!r})"


def provider_message_id(message_id: str) -> str:
    return f"sandbox:{message_id}"


class SandboxProvider:
    kind = "sandbox"

    def __init__(self, engine: Engine, sealer: Sealer) -> None:
        self.engine = engine
        self.sealer = sealer
        metadata.create_all(engine)
        # Sends made while a keeping transaction runs, kept together by the next (see _keep_together).
        self._waiting: list[tuple[dict[str, object], asyncio.Future[None]]] = []
        self._keeper: asyncio.Task[None] | None = None

    async def send(self, message: Message) -> Delivery:
        try:
            return await self._send(message)
        except (OperationalError, Unavailable) as exc:  # its database busy or gone, the service stopping
            return Delivery.retryable(f"the sandbox cannot store now ({type(exc).__name__})")

    async def _send(self, message: Message) -> Delivery:
        if await asyncio.to_thread(self._kept, message.message_id):
            return Delivery.delivered(provider_message_id(message.message_id))
        personal = {
            "to": message.to,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "template": message.template,
            "data": dict(message.data),
        }
        try:
            sealed = await self.sealer.seal(
                message.workspace, message.profile_id, json.dumps(personal, ensure_ascii=False).encode()
            )
        except ProfileErased:
            return Delivery.failed("the profile was erased")
        await self._keep_together(self._row(message, sealed))
        return Delivery.delivered(provider_message_id(message.message_id))

    async def _keep_together(self, row: dict[str, object]) -> None:
        """Keep one send, in a transaction shared with the sends made meanwhile: the sender sends a
        batch's messages concurrently, and a transaction (and fsync) per message bounded the sandbox
        to a few hundred sends a second. Returns once the row is committed; a failure of the
        transaction is raised to every send in it."""
        kept: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, kept))
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_waiting())
        await kept

    async def _keep_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(self._keep, [row for row, _ in group])
            except Exception as exc:
                for _, kept in group:
                    if not kept.done():
                        kept.set_exception(exc)
            else:
                for _, kept in group:
                    if not kept.done():
                        kept.set_result(None)

    async def sends(self, workspace: str, profile_id: str) -> list[SandboxSend]:
        """The profile's kept sends, opened, oldest first (none once its key is shredded)."""
        rows = await asyncio.to_thread(self._rows, workspace, profile_id)
        opened: list[SandboxSend] = []
        for message_id, channel, sent_at_us, sealed in rows:
            plain = await self.sealer.unseal(workspace, profile_id, sealed)
            if plain is None:
                continue
            personal = json.loads(plain)
            opened.append(SandboxSend(message_id, channel, sent_at_us, **personal))
        return opened

    async def count(self, workspace: str, profile_id: str) -> int:
        return await asyncio.to_thread(self._count, workspace, profile_id)

    async def erase(self, workspace: str, profile_id: str) -> int:
        """Delete the profile's kept sends; the number deleted."""
        return await asyncio.to_thread(self._erase, workspace, profile_id)

    async def aclose(self) -> None:
        self.engine.dispose()

    def _kept(self, message_id: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(sandbox_sends.c.message_id).where(sandbox_sends.c.message_id == message_id)
            ).first()
        return found is not None

    @staticmethod
    def _row(message: Message, sealed: bytes) -> dict[str, object]:
        return {
            "message_id": message.message_id,
            "workspace": message.workspace,
            "profile_id": message.profile_id,
            "channel": message.channel,
            "sent_at_us": time.time_ns() // 1000,
            "sealed": sealed,
        }

    def _keep(self, rows: list[dict[str, object]]) -> None:
        dialect = pg_dialect if self.engine.dialect.name == "postgresql" else sqlite_dialect
        with self.engine.begin() as conn:
            # The same message kept meanwhile by a concurrent send (or twice in a group): kept once.
            conn.execute(
                dialect.insert(sandbox_sends).on_conflict_do_nothing(index_elements=["message_id"]), rows
            )

    def _rows(self, workspace: str, profile_id: str) -> list[tuple[str, str, int, bytes]]:
        table = sandbox_sends
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.message_id, table.c.channel, table.c.sent_at_us, table.c.sealed)
                .where(table.c.workspace == workspace, table.c.profile_id == profile_id)
                .order_by(table.c.sent_at_us, table.c.message_id)
            )
            return [(str(r[0]), str(r[1]), int(r[2]), bytes(r[3])) for r in rows]

    def _count(self, workspace: str, profile_id: str) -> int:
        table = sandbox_sends
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.workspace == workspace, table.c.profile_id == profile_id)
            ).scalar_one()
        return int(found)

    def _erase(self, workspace: str, profile_id: str) -> int:
        table = sandbox_sends
        with self.engine.begin() as conn:
            deleted = conn.execute(
                table.delete().where(table.c.workspace == workspace, table.c.profile_id == profile_id)
            ).rowcount
        return int(deleted)
