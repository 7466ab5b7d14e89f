"""Worker processes of one service sharing its subscriptions by partition.

With `eventlog.workers` = W > 1, the subject partitions of every upstream are dealt into W groups
(partition p is in group p mod W), each subscription has one durable consumer per group, and the
processes of the service share the groups:

- each process takes the first free *slot* lease 0..W-1 (more processes than slots: the spares wait);
- the process in slot g runs group g, holding the group's lease while it consumes;
- a group whose slot is empty (its process died or never started) is taken by any process that finds
  the group's lease free, and given back once a process holds that slot again — so a dead worker's
  partitions move to the living within a lease round or two, and return when it restarts.

One person's events are in one partition, so per-person order holds in every group. A group is
consumed by the holder of its lease only, and a subscriber stops (its batch in hand committed and
acknowledged) before the lease is released; tracking rows per partition (subscriber.py) let a group
move between processes without losing its place, and a transaction's tracking check keeps every
event's effect single even if two processes ever overlapped. The relay, digests and duties stay with
the leader (service.py): what the workers share is the consuming, the larger part of the work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from onefold.eventlog.lease import LeaderLease
from onefold.eventlog.subscriber import Subscriber
from onefold.platform.telemetry import get_logger

logger = get_logger("onefold.eventlog")
ROUND_SECONDS = 2.0


def partition_groups(partitions: int, workers: int) -> list[list[int]]:
    """The partitions of each of `workers` groups: p in group p mod workers (every group non-empty)."""
    if not 1 <= workers <= partitions:
        raise ValueError(f"workers must be between 1 and the {partitions} partitions, not {workers}")
    return [list(range(group, partitions, workers)) for group in range(workers)]


class WorkerGroups:
    """The groups this process consumes, re-dealt every ROUND_SECONDS among the living workers.

    `groups[g]` are the subscribers of group g (one per subscription), started and stopped together.
    """

    def __init__(self, engine: Engine, service: str, groups: Sequence[Sequence[Subscriber]]) -> None:
        self.service = service
        self.groups = [list(group) for group in groups]
        self.slots = [LeaderLease(engine, f"{service}:worker:{g}") for g in range(len(groups))]
        self.leases = [LeaderLease(engine, f"{service}:group:{g}") for g in range(len(groups))]
        self.slot: int | None = None
        self.running: set[int] = set()

    async def run(self) -> None:
        """Until cancelled; then every group held is stopped and every lease released."""
        try:
            while True:
                try:
                    await self.deal()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the database is down: try again next round
                    logger.warning("eventlog.workers_round_failed", service=self.service, error=str(error))
                await asyncio.sleep(ROUND_SECONDS)
        finally:
            for group in sorted(self.running):
                await self._stop(group)
            for lease in self.slots:
                await asyncio.to_thread(lease.release)

    async def deal(self) -> None:
        """One round: keep (or find) this process's slot, give back and take groups."""
        if self.slot is not None and not await asyncio.to_thread(self.slots[self.slot].still_held):
            logger.warning("eventlog.worker_slot_lost", service=self.service, slot=self.slot)
            self.slot = None
        if self.slot is None:
            self.slot = await asyncio.to_thread(self._take_slot)
        for group in range(len(self.groups)):
            ours = group == self.slot
            if group in self.running:
                lost = not await asyncio.to_thread(self.leases[group].still_held)
                if lost or (not ours and await asyncio.to_thread(self.slots[group].taken_elsewhere)):
                    await self._stop(group)
            elif (ours or not await asyncio.to_thread(self.slots[group].taken_elsewhere)) and (
                await asyncio.to_thread(self.leases[group].try_acquire)
            ):
                for subscriber in self.groups[group]:
                    subscriber.start()
                self.running.add(group)
                logger.info(
                    "eventlog.worker_group_taken",
                    service=self.service,
                    group=group,
                    slot=self.slot,
                    partitions=self.groups[group][0].partitions if self.groups[group] else [],
                )

    def _take_slot(self) -> int | None:
        for slot, lease in enumerate(self.slots):
            if lease.try_acquire():
                logger.info("eventlog.worker_slot", service=self.service, slot=slot, of=len(self.slots))
                return slot
        return None

    async def _stop(self, group: int) -> None:
        """Stop the group's subscribers (their batches in hand committed), then free its lease."""
        for subscriber in self.groups[group]:
            await subscriber.stop()
        self.running.discard(group)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.leases[group].release)
        logger.info("eventlog.worker_group_released", service=self.service, group=group)
