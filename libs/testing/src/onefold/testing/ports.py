"""Ports for tests that need a fixed, known layout (e.g. `onefold up --port-base N` twice)."""

from __future__ import annotations

import random
from pathlib import Path

from onefold.platform.ports import port_in_use

_LOWEST = 10000


def _ephemeral_low() -> int:
    """Where the kernel's own free-port choices (port 0) start: ranges below it are not handed out
    to other tests' `free_port()` meanwhile."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_range(count: int, attempts: int = 200) -> int:
    """The first of `count` consecutive ports that are all free now, chosen at random below the
    ephemeral range so parallel suites (and a developer's `onefold up` on 7460-7467) do not meet."""
    highest = _ephemeral_low() - count
    for _ in range(attempts):
        base = random.randrange(_LOWEST, highest)
        if not any(port_in_use(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found in {attempts} tries")
