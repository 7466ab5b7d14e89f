"""Backoff with jitter and the token bucket, on a manual clock (what they wait is asserted exactly,
never how long a test took); and both around a real HTTP provider."""

from __future__ import annotations

import asyncio
import random

import pytest
from channel_servers import Answer, http_server

from onefold.journeys.adapters.providers.base import DeliveryStatus, Message
from onefold.journeys.adapters.providers.http import HttpProvider
from onefold.journeys.adapters.providers.resilience import (
    RateLimited,
    Retrying,
    RetryPolicy,
    TokenBucket,
    backoff_delay,
)
from onefold.journeys.adapters.providers.settings import HttpChannel


class ManualClock:
    """Time that passes only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_backoff_grows_exponentially_under_full_jitter_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(attempts=10, base_delay_seconds=1.0, max_delay_seconds=8.0)
    rng = random.Random(7)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        draws = [backoff_delay(retry, policy, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # the whole range is used, not just its bottom
        assert len(set(draws)) > 100  # jittered: senders failing together do not retry in step


def test_retry_policies_refuse_meaningless_values() -> None:
    with pytest.raises(ValueError, match="at least one attempt"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="base <= max"):
        RetryPolicy(base_delay_seconds=5, max_delay_seconds=1)


async def test_a_bucket_lets_a_burst_through_then_paces_at_its_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate_per_second=2, burst=2, clock=clock.time, sleep=clock.sleep)
    await bucket.acquire()
    await bucket.acquire()
    assert clock.slept == []
    await bucket.acquire()
    assert clock.slept == [0.5]
    clock.now += 60  # a long idle refills the bucket, but never beyond its burst
    for _ in range(3):
        await bucket.acquire()
    assert clock.slept == [0.5, 0.5]


async def test_waiters_are_served_in_turn() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate_per_second=1, burst=1, clock=clock.time, sleep=clock.sleep)
    order: list[int] = []

    async def take(n: int) -> None:
        await bucket.acquire()
        order.append(n)

    await asyncio.gather(*(take(n) for n in range(4)))
    assert order == [0, 1, 2, 3]
    assert clock.slept == [1.0, 1.0, 1.0]
    assert clock.now == 3.0


def test_a_bucket_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError, match="rate_per_second"):
        TokenBucket(rate_per_second=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate_per_second=1, burst=0)


async def test_every_retry_takes_a_token_of_the_providers_rate() -> None:
    clock = ManualClock()
    retry_waits: list[float] = []

    async def record_retry_wait(seconds: float) -> None:
        retry_waits.append(seconds)

    message = Message(
        message_id="m-1", workspace="acme", profile_id="p-1", channel="sms", to="+10000", text="hi"
    )
    with http_server() as gateway:
        gateway.script += [Answer(503), Answer(503), Answer(200, {"id": "ok"})]
        settings = HttpChannel.model_validate({"kind": "http", "url": gateway.url, "auth": "none"})
        bucket = TokenBucket(rate_per_second=1, burst=1, clock=clock.time, sleep=clock.sleep)
        provider = Retrying(
            RateLimited(HttpProvider(settings, secret=""), bucket),
            RetryPolicy(attempts=3, base_delay_seconds=0.0, max_delay_seconds=0.0),
            sleep=record_retry_wait,
        )
        delivery = await provider.send(message)
        await provider.aclose()
    assert delivery.status is DeliveryStatus.DELIVERED and delivery.attempts == 3
    assert retry_waits == [0.0, 0.0]
    assert clock.slept == [1.0, 1.0]  # the second and third attempts each waited for a token
