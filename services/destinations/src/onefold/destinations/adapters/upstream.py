"""Destinations' clients of the services it asks (the calls themselves are onefold.platform.peer_calls):
consent — CheckConsentBatch before every delivery, the purposes a destination may name — and
segments — the segments it may name, and their members when a destination starts naming one."""

from __future__ import annotations

from onefold.destinations.domain.definitions import Known
from onefold.platform.client import Peers
from onefold.platform.peer_calls import PeerCalls


class Upstream(PeerCalls):
    def __init__(self, peers: Peers, call_timeout_seconds: float) -> None:
        super().__init__(peers, "destinations", call_timeout_seconds)

    async def known(self, workspace: str) -> Known:
        found = await self.nameable(workspace, "the destination")
        return Known(purposes=found.purposes, segments=found.segments)
