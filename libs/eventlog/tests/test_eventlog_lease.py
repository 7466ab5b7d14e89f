"""One leader per service database: the lease is exclusive across processes, and released on stop."""

from __future__ import annotations

import subprocess
import sys

from onefold.eventlog.lease import LeaderLease
from onefold.platform.database import create_engine


def test_only_one_lease_holder_per_database(database_url: str) -> None:
    first_engine, second_engine = create_engine(database_url), create_engine(database_url)
    first, second = (
        LeaderLease(first_engine, "ingest:eventlog"),
        LeaderLease(second_engine, "ingest:eventlog"),
    )
    other_service = LeaderLease(second_engine, "segments:eventlog")
    try:
        assert first.try_acquire()
        assert first.still_held()
        assert not second.try_acquire()
        assert other_service.try_acquire()  # leases are per name
        first.release()
        assert second.try_acquire()
        assert not first.try_acquire()
    finally:
        for lease in (first, second, other_service):
            lease.release()
        first_engine.dispose()
        second_engine.dispose()


def test_lease_held_by_another_process_is_released_when_it_dies(database_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from onefold.eventlog.lease import LeaderLease\n"
            "from onefold.platform.database import create_engine\n"
            f"lease = LeaderLease(create_engine({database_url!r}), 'ingest:eventlog')\n"
            "assert lease.try_acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    engine = create_engine(database_url)
    lease = LeaderLease(engine, "ingest:eventlog")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not lease.try_acquire()
        holder.kill()
        holder.wait(10)
        assert lease.try_acquire()  # the kernel / the server freed it with the process
    finally:
        holder.kill()
        lease.release()
        engine.dispose()
