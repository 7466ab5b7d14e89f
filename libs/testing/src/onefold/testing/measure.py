"""What the benchmarks under bench/ measure with: a progress bar on stderr, a line of progress, a
process's memory and CPU time, and percentiles (nearest rank)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress(what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def say(text: str) -> None:
    sys.stderr.write(f"  {text}\n")
    sys.stderr.flush()


def say_targets(met: Mapping[str, bool]) -> None:
    """A benchmark's last line: every target met, or the ones missed."""
    missed = [name for name, ok in met.items() if not ok]
    say("targets: " + ("all met" if not missed else "missed " + ", ".join(missed)))


def memory_mb(pid: int | None = None) -> dict[str, float]:
    """A process's resident set now and at its peak (VmRSS, VmHWM), in MB; this process's by default."""
    fields = {}
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(rest.split()[0]) / 1024, 1)
    return {"rss_mb": fields.get("VmRSS", float("nan")), "peak_rss_mb": fields.get("VmHWM", float("nan"))}


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]
