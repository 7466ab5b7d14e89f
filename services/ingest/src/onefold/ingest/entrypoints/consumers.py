"""NATS consumers of the ingest service (durable subscribers from onefold.eventlog)."""

from __future__ import annotations

from onefold.platform.service import ServiceContext


async def start(_ctx: ServiceContext) -> None:
    """Nothing to consume yet."""
