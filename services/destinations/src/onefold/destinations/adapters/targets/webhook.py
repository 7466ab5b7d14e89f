"""A webhook: deliveries POSTed as JSON to the destination's URL, signed as Standard Webhooks (what
Svix uses) specify, so a receiver checks them with any Standard Webhooks library or with `verify`.

Every request carries `webhook-id` (the delivery id, or for a batch a digest of its ids: the same
batch sent again has the same id), `webhook-timestamp` (unix seconds), `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the key of the `whsec_…` secret) and
`idempotency-key` (= webhook-id). The body is `wire(delivery)`, or `{"batch": [...]}` with
batch_size > 1.

Requests run up to max_in_flight at once, in lanes: a person's deliveries all go to one lane, whose
requests are sent one after another, so a receiver sees each person's deliveries in order. After a
person's failure, their later deliveries are not sent (BEHIND_A_FAILURE); other persons go on.

Answers: 2xx delivered; 408, 429, 5xx, timeouts and connection errors retried; other 4xx rejected.
The recorded error is the status or the kind of transport failure, never the answer's body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import httpx

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import (
    BEHIND_A_FAILURE,
    DELIVERED,
    Delivery,
    Outcome,
    Result,
    wire,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of every secret, not one)
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_IN_FLIGHT = 16
MAX_BATCH_SIZE = 1000
_RETRYABLE_4XX = frozenset({408, 429})


class WebhookVerificationError(ValueError):
    """A request whose signature does not match, or whose timestamp is too old or too new."""


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and a base64 random 32-byte key."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("a webhook signing secret is 'whsec_' and a base64 key") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The `webhook-signature` header's value for a request: `v1,<base64 HMAC-SHA256>`."""
    payload = body.decode() if isinstance(body, bytes) else body
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.{payload}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, tolerance_seconds: int = 300) -> None:
    """Check a received request as a receiver does; raises WebhookVerificationError if it is not
    signed with `secret` or its timestamp is more than `tolerance_seconds` away from now."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    timestamp_text = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not msg_id or not timestamp_text or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not unix seconds") from None
    if abs(time.time() - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).encode()
    # The header may hold several space-separated signatures (during a secret's rotation).
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split()):
        raise WebhookVerificationError("no matching signature")


def batch_id(deliveries: Sequence[Delivery]) -> str:
    """The webhook-id of a request: the delivery id, or a digest of a batch's ids (stable on resend)."""
    if len(deliveries) == 1:
        return deliveries[0].delivery_id
    joined = "\n".join(delivery.delivery_id for delivery in deliveries)
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


class WebhookTarget:
    kind = "webhook"

    def __init__(
        self,
        config: pb.Webhook,
        secret: str,
        *,
        environ: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if urlsplit(config.url).scheme not in ("http", "https") or not urlsplit(config.url).netloc:
            raise ValueError("a webhook's url must be http:// or https://")
        _key(secret)  # refuse a malformed secret now, not at the first delivery
        self._url = config.url
        self._secret = secret
        self._extra_headers = dict(config.headers)
        for header, variable in config.header_envs.items():
            value = (environ or {}).get(variable)
            if not value:
                raise ValueError(
                    f"set {variable} in the destinations service's environment (header {header})"
                )
            self._extra_headers[header] = value
        self._batch_size = min(max(config.batch_size, 1), MAX_BATCH_SIZE)
        self._timeout_seconds = config.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        self._max_in_flight = config.max_in_flight or DEFAULT_MAX_IN_FLIGHT
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=self._timeout_seconds,
            limits=httpx.Limits(max_connections=self._max_in_flight),
            follow_redirects=False,
        )

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        results: list[Result | None] = [None] * len(deliveries)
        async with asyncio.TaskGroup() as group:
            for lane in self._lanes(deliveries):
                group.create_task(self._run_lane(deliveries, lane, results))
        return [result or BEHIND_A_FAILURE for result in results]

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _lanes(self, deliveries: Sequence[Delivery]) -> list[list[int]]:
        """The deliveries' indexes split into at most max_in_flight lanes, each person wholly in one
        lane (the least loaded when the person is first seen), in the batch's order."""
        requests_needed = -(-len(deliveries) // self._batch_size)
        lanes: list[list[int]] = [[] for _ in range(min(self._max_in_flight, requests_needed))]
        lane_of_person: dict[str, list[int]] = {}
        for index, delivery in enumerate(deliveries):
            lane = lane_of_person.get(delivery.profile_id)
            if lane is None:
                lane = min(lanes, key=len)
                lane_of_person[delivery.profile_id] = lane
            lane.append(index)
        return [lane for lane in lanes if lane]

    async def _run_lane(
        self, deliveries: Sequence[Delivery], lane: list[int], results: list[Result | None]
    ) -> None:
        failed_persons: set[str] = set()
        pending = iter(lane)
        while True:
            batch: list[int] = []
            for index in pending:
                if deliveries[index].profile_id in failed_persons:
                    results[index] = BEHIND_A_FAILURE
                    continue
                batch.append(index)
                if len(batch) == self._batch_size:
                    break
            if not batch:
                return
            result = await self._post([deliveries[index] for index in batch])
            for index in batch:
                results[index] = result
                if result.outcome is not Outcome.DELIVERED:
                    failed_persons.add(deliveries[index].profile_id)

    async def _post(self, batch: Sequence[Delivery]) -> Result:
        if self._batch_size == 1:
            payload: object = wire(batch[0])
        else:
            payload = {"batch": [wire(delivery) for delivery in batch]}
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        msg_id = batch_id(batch)
        timestamp = int(time.time())
        headers = {
            **self._extra_headers,
            "content-type": "application/json",
            "user-agent": "onefold-destinations",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, msg_id, timestamp, body),
            "idempotency-key": msg_id,
        }
        try:
            response = await self._client.post(self._url, content=body.encode(), headers=headers)
        except httpx.TimeoutException:
            return Result.retry(f"timeout after {self._timeout_seconds:.1f} s")
        except httpx.ConnectError as exc:
            return Result.retry("connection refused" if _refused(exc) else "connection failed (ConnectError)")
        except httpx.RequestError as exc:
            return Result.retry(f"request failed ({type(exc).__name__})")
        status = response.status_code
        if 200 <= status < 300:
            return DELIVERED
        if status in _RETRYABLE_4XX or status >= 500:
            return Result.retry(f"HTTP {status}")
        return Result.rejected(f"HTTP {status}")


def _refused(error: BaseException) -> bool:
    """Whether a connection error was the receiver's port refusing (httpx wraps the OS's error)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
