"""Retries with exponential backoff and jitter, and a per-provider rate limit (a token bucket), as
wrappers around any provider: `Retrying(RateLimited(provider, bucket), policy)` takes a token for
every attempt, so retries count against the provider's rate too."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from onefold.journeys.adapters.providers.base import Delivery, DeliveryStatus, Message, Provider
from onefold.platform.telemetry import get_logger

Sleep = Callable[[float], Awaitable[None]]

log = get_logger("onefold.journeys.channels")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # in all, the first one included
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")
        if self.base_delay_seconds < 0 or self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("retry delays must satisfy 0 <= base <= max")


def backoff_delay(retry: int, policy: RetryPolicy, rng: random.Random) -> float:
    """The wait before retry number `retry` (1 = the first retry): "full jitter", a uniform draw
    below base * 2^(retry-1), capped, so many senders failing together do not retry in step."""
    ceiling = min(policy.max_delay_seconds, policy.base_delay_seconds * 2 ** (retry - 1))
    return rng.uniform(0, ceiling)


class Retrying:
    """Sends again while the provider says RETRYABLE, up to `policy.attempts`; then the last
    error becomes a permanent failure. The same message (and so the same idempotency key) is sent
    each time, so a send that did reach the provider before a timeout is not delivered twice by a
    provider that honours the key."""

    def __init__(
        self,
        inner: Provider,
        policy: RetryPolicy,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.policy = policy
        self._rng = random.Random()
        self._sleep = sleep

    async def send(self, message: Message) -> Delivery:
        attempt = 1
        while True:
            delivery = await self.inner.send(message)
            if delivery.status is not DeliveryStatus.RETRYABLE:
                return replace(delivery, attempts=attempt)
            # Ids, the provider's kind and the bounded error only: nothing personal reaches the log.
            context = {"channel": message.channel, "provider": self.kind, "message_id": message.message_id}
            if attempt >= self.policy.attempts:
                log.warning("journeys.delivery_failed", attempts=attempt, error=delivery.error, **context)
                return replace(
                    Delivery.failed(f"gave up after {attempt} attempts: {delivery.error}"), attempts=attempt
                )
            delay = backoff_delay(attempt, self.policy, self._rng)
            log.info(
                "journeys.delivery_retry",
                attempt=attempt,
                delay_seconds=round(delay, 3),
                error=delivery.error,
                **context,
            )
            await self._sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self.inner.aclose()


class TokenBucket:
    """At most `burst` sends at once and `rate_per_second` on average; `acquire` waits its turn.

    Waiters are served in arrival order (one lock), so a burst of sends cannot starve an early one.
    `clock` and `sleep` are the event loop's by default; tests pass a manual clock."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_second > 0 and burst >= 1")
        self.rate = rate_per_second
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.rate)


class RateLimited:
    def __init__(self, inner: Provider, bucket: TokenBucket) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.bucket = bucket

    async def send(self, message: Message) -> Delivery:
        await self.bucket.acquire()
        return await self.inner.send(message)

    async def aclose(self) -> None:
        await self.inner.aclose()
