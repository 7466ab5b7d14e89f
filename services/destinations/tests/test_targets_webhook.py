"""The webhook target against a real receiver on this machine: Standard Webhooks signatures, single
and batched bodies, how answers and outages become Results, and a person's order under concurrency."""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import (
    BEHIND_A_FAILURE,
    DELIVERED,
    Delivery,
    Outcome,
    Result,
    wire,
)
from onefold.destinations.adapters.targets.webhook import (
    WebhookTarget,
    WebhookVerificationError,
    new_secret,
    sign,
    verify,
)
from onefold.platform.ports import free_port
from onefold.testing.webhooks import WebhookReceiver

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def delivery(number: int, profile_id: str = "p-1", kind: str = "event") -> Delivery:
    return Delivery(
        delivery_id=f"d-{number:04d}",
        workspace="acme",
        destination="crm",
        profile_id=profile_id,
        kind=kind,
        name="Order Completed" if kind == "event" else "",
        occurred_at=AT,
        position=number,
        data={"total": number} if kind == "event" else {},
    )


def webhook(url: str, **fields: object) -> pb.Webhook:
    return pb.Webhook(url=url, **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ signing


def test_a_signature_verifies_and_a_tampered_body_or_an_old_timestamp_does_not() -> None:
    secret = new_secret()
    body = json.dumps({"id": "d-1"})
    now = int(time.time())
    headers = {
        "webhook-id": "d-1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "d-1", now, body),
    }
    verify(secret, headers, body)
    verify(secret, headers, body.encode())
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body.replace("d-1", "d-2"))
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers, body)
    old = now - 301
    stale = {
        "webhook-id": "d-1",
        "webhook-timestamp": str(old),
        "webhook-signature": sign(secret, "d-1", old, body),
    }
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, stale, body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, {"webhook-id": "d-1"}, body)


def test_the_signature_is_the_standard_webhooks_one() -> None:
    # The example of the Standard Webhooks specification (and Svix's libraries' tests).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = '{"test": 2432232314}'
    assert sign(secret, msg_id, timestamp, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_url_that_is_not_http_and_a_malformed_secret_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookTarget(webhook("file:///etc/passwd"), new_secret())
    with pytest.raises(ValueError, match="whsec_"):
        WebhookTarget(webhook("https://example.com/hooks"), "whsec_not base64!")


# ----------------------------------------------------------------------------------- delivering


async def test_a_single_delivery_is_posted_signed_with_its_id_as_the_idempotency_key() -> None:
    secret = new_secret()
    with WebhookReceiver(secret) as receiver:
        target = WebhookTarget(webhook(receiver.url, headers={"x-tenant": "acme"}), secret)
        results = await target.deliver([delivery(1)])
        await target.aclose()
    assert results == [DELIVERED]
    assert receiver.bad_signatures == 0
    assert receiver.received == [wire(delivery(1))]
    (request,) = receiver.requests
    assert request.body == wire(delivery(1))
    assert request.headers["webhook-id"] == request.headers["idempotency-key"] == "d-0001"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-tenant"] == "acme"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60


async def test_batches_carry_up_to_batch_size_deliveries_under_a_stable_batch_id() -> None:
    secret = new_secret()
    deliveries = [delivery(number, profile_id=f"p-{number % 3}") for number in range(1, 8)]
    with WebhookReceiver(secret) as receiver:
        target = WebhookTarget(webhook(receiver.url, batch_size=3, max_in_flight=1), secret)
        assert await target.deliver(deliveries) == [DELIVERED] * 7
        assert await target.deliver(deliveries) == [DELIVERED] * 7  # sent again: the same ids
        await target.aclose()
    first_round = receiver.requests[:3]
    assert [len(request.body["batch"]) for request in first_round] == [3, 3, 1]
    assert [d["id"] for request in first_round for d in request.body["batch"]] == [
        d.delivery_id for d in deliveries
    ]
    assert [r.headers["webhook-id"] for r in receiver.requests[3:]] == [
        r.headers["webhook-id"] for r in first_round
    ]
    assert len({r.headers["webhook-id"] for r in first_round}) == 3
    assert receiver.received == [wire(d) for d in deliveries]
    assert receiver.duplicates == 7
    assert receiver.bad_signatures == 0


async def test_a_receiver_signing_with_another_secret_rejects_the_delivery() -> None:
    with WebhookReceiver(new_secret()) as receiver:
        target = WebhookTarget(webhook(receiver.url), new_secret())
        (result,) = await target.deliver([delivery(1)])
        await target.aclose()
    assert result.outcome is Outcome.REJECTED
    assert result.error == "HTTP 401"
    assert receiver.bad_signatures == 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (503, Outcome.RETRY),
        (500, Outcome.RETRY),
        (429, Outcome.RETRY),
        (408, Outcome.RETRY),
        (400, Outcome.REJECTED),
        (404, Outcome.REJECTED),
    ],
)
async def test_answers_become_retries_or_rejections_with_the_status_only(
    status: int, outcome: Outcome
) -> None:
    secret = new_secret()
    with WebhookReceiver(secret) as receiver:
        receiver.fail(status, times=1)
        target = WebhookTarget(webhook(receiver.url), secret)
        (failed,) = await target.deliver([delivery(1)])
        (then,) = await target.deliver([delivery(1)])
        await target.aclose()
    assert failed.outcome is outcome
    assert failed.error == f"HTTP {status}"
    assert then == DELIVERED
    assert receiver.ids() == ["d-0001"]


async def test_a_receiver_that_is_down_is_retried() -> None:
    target = WebhookTarget(webhook(f"http://127.0.0.1:{free_port()}/hooks"), new_secret())
    results = await target.deliver([delivery(1), delivery(2)])
    await target.aclose()
    assert [result.outcome for result in results] == [Outcome.RETRY, Outcome.RETRY]
    assert results[0].error == "connection refused"
    assert results[1] == BEHIND_A_FAILURE


async def test_a_receiver_slower_than_the_timeout_is_retried() -> None:
    # A socket that accepts connections but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hooks"
        target = WebhookTarget(webhook(url, timeout_seconds=0.3), new_secret())
        (result,) = await target.deliver([delivery(1)])
        await target.aclose()
    assert result.outcome is Outcome.RETRY
    assert result.error == "timeout after 0.3 s"


# ------------------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("batch_size", [1, 4])
async def test_each_persons_deliveries_arrive_in_order_under_concurrency(batch_size: int) -> None:
    secret = new_secret()
    persons = [f"p-{number}" for number in range(40)]
    deliveries = [
        delivery(round_ * len(persons) + number, profile_id=person)
        for round_ in range(5)
        for number, person in enumerate(persons)
    ]
    with WebhookReceiver(secret) as receiver:
        target = WebhookTarget(webhook(receiver.url, batch_size=batch_size, max_in_flight=8), secret)
        results = await target.deliver(deliveries)
        await target.aclose()
    assert results == [DELIVERED] * len(deliveries)
    arrived: dict[str, list[str]] = defaultdict(list)
    for received in receiver.received:
        arrived[received["profileId"]].append(received["id"])
    expected: dict[str, list[str]] = defaultdict(list)
    for sent in deliveries:
        expected[sent.profile_id].append(sent.delivery_id)
    assert arrived == expected
    assert receiver.duplicates == 0


@pytest.mark.parametrize("batch_size", [1, 2])
async def test_after_a_persons_failure_their_later_deliveries_wait_and_others_go_on(batch_size: int) -> None:
    secret = new_secret()
    deliveries = [
        delivery(number, profile_id=["p-ok", "p-bad", "p-other"][number % 3]) for number in range(9)
    ]
    with WebhookReceiver(secret) as receiver:
        receiver.fail_person("p-bad", 503)
        target = WebhookTarget(webhook(receiver.url, batch_size=batch_size, max_in_flight=3), secret)
        results = await target.deliver(deliveries)
        await target.aclose()
    by_person: dict[str, list[Result]] = defaultdict(list)
    for sent, result in zip(deliveries, results, strict=True):
        by_person[sent.profile_id].append(result)
    assert by_person["p-ok"] == [DELIVERED] * 3
    assert by_person["p-other"] == [DELIVERED] * 3
    # The failed request's deliveries fail with it; the person's later ones are not sent.
    failed = Result.retry("HTTP 503")
    assert by_person["p-bad"] == [failed] * batch_size + [BEHIND_A_FAILURE] * (3 - batch_size)
    assert {received["profileId"] for received in receiver.received} == {"p-ok", "p-other"}
