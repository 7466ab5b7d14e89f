"""Journeys' clients of the services it asks (the calls themselves are onefold.platform.peer_calls):
consent — CheckConsentBatch before every send, the purposes a journey may name — and segments — the
segments a journey may name, and a scheduled journey's audience. A workspace without a consent
model has no purposes (every send step is then refused, naming it)."""

from __future__ import annotations

from onefold.journeys.domain.definitions import Known
from onefold.platform.client import Peers
from onefold.platform.peer_calls import PeerCalls


class Upstream(PeerCalls):
    def __init__(self, peers: Peers, call_timeout_seconds: float) -> None:
        super().__init__(peers, "journeys", call_timeout_seconds)

    async def known(self, workspace: str) -> Known:
        found = await self.nameable(workspace, "the journey")
        return Known(segments=found.segments, purposes=found.purposes)

    async def members(self, workspace: str, segment: str) -> list[str]:
        """The profile ids in `segment` now, every page (a scheduled journey's audience)."""
        found: list[str] = []
        token = ""
        while True:
            page, token = await self.members_page(workspace, segment, token)
            found += page
            if not token:
                return found
