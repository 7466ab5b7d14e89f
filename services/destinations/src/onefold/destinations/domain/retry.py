"""When a failed delivery is tried again, and when a destination is left alone for a while.

- Backoff: exponential with full jitter (AWS's "exponential backoff and jitter"): the n-th retry
  waits a uniform random time in [0, min(max, initial · 2ⁿ⁻¹)], so receivers coming back from an
  outage are not hit by every sender at the same instant. After `max_attempts` a delivery is
  dead-lettered with its last error.
- Circuit breaker, one per destination: after FAILURES_TO_OPEN batches failed in a row nothing is
  tried for a cool-down (30 s, doubling each time it opens again, at most 5 min); then one batch
  is let through (half-open): delivered closes it, failed opens it again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from onefold.contracts.destinations.v1 import destinations_pb2 as pb

FAILURES_TO_OPEN = 5
FIRST_COOL_DOWN = timedelta(seconds=30)
MAX_COOL_DOWN = timedelta(minutes=5)


def backoff(
    policy: pb.RetryPolicy, attempts: int, uniform: Callable[[float, float], float] = random.uniform
) -> timedelta:
    """How long to wait after the `attempts`-th failed attempt (1 = the first)."""
    ceiling = min(policy.max_backoff_seconds, policy.initial_backoff_seconds * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=uniform(0.0, ceiling))


def exhausted(policy: pb.RetryPolicy, attempts: int) -> bool:
    return attempts >= policy.max_attempts


@dataclass
class CircuitBreaker:
    failures: int = 0  # batches failed in a row
    open_until: datetime | None = None
    cool_down: timedelta = FIRST_COOL_DOWN
    half_open: bool = False

    def state(self, now: datetime) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half-open"

    def allows(self, now: datetime) -> bool:
        """Whether a batch may be tried now (half-open: this one, to probe)."""
        if self.open_until is None:
            return True
        if now < self.open_until:
            return False
        self.half_open = True
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = None
        self.cool_down = FIRST_COOL_DOWN
        self.half_open = False

    def failed(self, now: datetime) -> None:
        self.failures += 1
        if self.half_open:
            self.cool_down = min(self.cool_down * 2, MAX_COOL_DOWN)
            self.open_until = now + self.cool_down
            self.half_open = False
        elif self.failures >= FAILURES_TO_OPEN:
            self.open_until = now + self.cool_down
