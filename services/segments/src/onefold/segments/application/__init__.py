"""The segments use cases, on the service's log (`ServiceLog`).

Writes run on the log's writer thread (`await self.log.writer.run(self.log.projector.write, work)`,
where `work(conn)` decides and calls `self.log.projector.record(conn, events)`); reads run on their
own connections (`await asyncio.to_thread(...)`) and never wait behind a write. As the use cases
grow they move to modules of this package, one per use case; this module keeps exporting the class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from onefold.eventlog.service import ServiceLog


class SegmentsApplication:
    def __init__(self, log: ServiceLog) -> None:
        self.log = log

    # The data-subject contract. Segments keeps nothing about a person yet (no events, no read
    # model), so it exports and erases nothing. Once it does (segment memberships are keyed by
    # profile), both must cover it: consent's completion record says every service erased the person.

    async def export_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """How many records segments holds about these profiles, by kind."""
        return {"records": 0}

    async def erase_subject(self, workspace: str, profile_ids: Sequence[str]) -> Mapping[str, int]:
        """Erase what segments holds about these profiles; how many records, by kind."""
        return {"records_erased": 0}
