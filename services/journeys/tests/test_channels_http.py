"""SMS, push and WeChat through a real HTTP server on this machine: the JSON each channel sends, the
credential and idempotency headers, and how answers, outages and timeouts become Deliveries."""

from __future__ import annotations

from pathlib import Path

from channel_servers import Answer, http_server, self_signed_certificate, server_tls_context
from structlog.testing import capture_logs

from onefold.journeys.adapters.providers.base import Delivery, DeliveryStatus, Message
from onefold.journeys.adapters.providers.http import HttpProvider
from onefold.journeys.adapters.providers.resilience import Retrying, RetryPolicy
from onefold.journeys.adapters.providers.settings import HttpChannel
from onefold.platform.ports import free_port

PHONE = "+8613800138000"


def text_message(message_id: str = "msg-sms-1") -> Message:
    return Message(
        message_id=message_id,
        workspace="acme",
        profile_id="p-1",
        channel="sms",
        to=PHONE,
        text="Your code: 1234",
    )


def channel(url: str, **overrides: object) -> HttpChannel:
    return HttpChannel.model_validate({"kind": "http", "url": url, "timeout_seconds": 5} | overrides)


async def no_wait(seconds: float) -> None:
    return None


async def test_a_text_is_posted_as_json_with_the_bearer_secret_and_its_idempotency_key() -> None:
    with http_server() as server:
        server.script.append(Answer(201, {"id": "SM-42", "status": "queued"}))
        provider = HttpProvider(channel(server.url), secret="tok-123")
        delivery = await provider.send(text_message())
        await provider.aclose()
    assert delivery == Delivery.delivered("SM-42")
    (request,) = server.received
    assert request.path == "/v1/messages"
    assert request.headers["authorization"] == "Bearer tok-123"
    assert request.headers["idempotency-key"] == "msg-sms-1"
    assert request.body == {"message_id": "msg-sms-1", "to": PHONE, "text": "Your code: 1234"}


async def test_a_secret_header_and_another_id_field() -> None:
    with http_server() as server:
        server.script.append(Answer(200, {"sid": 7}))
        provider = HttpProvider(
            channel(server.url, auth="header", secret_header="X-Gateway-Key", id_field="sid"), secret="k-9"
        )
        delivery = await provider.send(text_message())
        await provider.aclose()
    assert delivery.provider_message_id == "7"
    assert server.received[0].headers["x-gateway-key"] == "k-9"
    assert "authorization" not in server.received[0].headers


async def test_a_push_carries_title_body_and_data() -> None:
    push = Message(
        message_id="msg-push-1",
        workspace="acme",
        profile_id="p-1",
        channel="push",
        to="device-token-abc",
        subject="Your cart",
        text="3 items are waiting",
        data={"deep_link": "shop://cart"},
    )
    with http_server() as server:
        provider = HttpProvider(channel(server.url, auth="none"), secret="")
        delivery = await provider.send(push)
        await provider.aclose()
    assert delivery.status is DeliveryStatus.DELIVERED
    assert server.received[0].body == {
        "message_id": "msg-push-1",
        "token": "device-token-abc",
        "title": "Your cart",
        "body": "3 items are waiting",
        "data": {"deep_link": "shop://cart"},
    }


def wechat_message() -> Message:
    return Message(
        message_id="msg-wx-1",
        workspace="acme",
        profile_id="p-1",
        channel="wechat",
        to="oPENID-123",
        template="TPL-ORDER-SHIPPED",
        data={"first": "Shipped", "keyword1": "A-1001"},
    )


async def test_a_wechat_template_message_has_wechats_shape_and_its_msgid() -> None:
    with http_server() as server:
        server.script.append(Answer(200, {"errcode": 0, "errmsg": "ok", "msgid": 200228332}))
        provider = HttpProvider(channel(server.url), secret="t")
        delivery = await provider.send(wechat_message())
        await provider.aclose()
    assert delivery == Delivery.delivered("200228332")
    assert server.received[0].body == {
        "message_id": "msg-wx-1",
        "touser": "oPENID-123",
        "template_id": "TPL-ORDER-SHIPPED",
        "data": {"first": {"value": "Shipped"}, "keyword1": {"value": "A-1001"}},
    }


async def test_wechat_errors_inside_a_200_answer() -> None:
    with http_server() as server:
        server.script += [
            Answer(200, {"errcode": 40003, "errmsg": "invalid openid oPENID-123"}),
            Answer(200, {"errcode": -1, "errmsg": "system error"}),
        ]
        provider = HttpProvider(channel(server.url), secret="t")
        invalid = await provider.send(wechat_message())
        busy = await provider.send(wechat_message())
        await provider.aclose()
    assert invalid == Delivery.failed("WeChat errcode 40003")
    assert busy == Delivery.retryable("WeChat errcode -1 (busy)")


async def test_a_4xx_fails_once_for_good_without_echoing_the_answer() -> None:
    with http_server() as server:
        server.script.append(Answer(400, {"error": f"invalid number {PHONE}"}))
        provider = Retrying(
            HttpProvider(channel(server.url), secret="t"), RetryPolicy(attempts=5), sleep=no_wait
        )
        delivery = await provider.send(text_message())
        await provider.aclose()
    assert delivery == Delivery(DeliveryStatus.FAILED, error="HTTP 400", attempts=1)
    assert len(server.received) == 1


async def test_an_outage_is_retried_with_the_same_key_then_recorded_as_failed() -> None:
    waits: list[float] = []

    async def record_wait(seconds: float) -> None:
        waits.append(seconds)

    with http_server() as server:
        server.default = Answer(503, {"error": "maintenance"})
        provider = Retrying(
            HttpProvider(channel(server.url), secret="t"),
            RetryPolicy(attempts=3, base_delay_seconds=1.0, max_delay_seconds=10.0),
            sleep=record_wait,
        )
        with capture_logs() as logs:
            delivery = await provider.send(text_message("msg-sms-outage"))
        await provider.aclose()
    assert delivery == Delivery(DeliveryStatus.FAILED, error="gave up after 3 attempts: HTTP 503", attempts=3)
    assert [r.headers["idempotency-key"] for r in server.received] == ["msg-sms-outage"] * 3
    assert len(waits) == 2
    assert 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0  # full jitter below base * 2^(retry-1)
    assert [entry["event"] for entry in logs] == [
        "journeys.delivery_retry",
        "journeys.delivery_retry",
        "journeys.delivery_failed",
    ]
    assert logs[-1]["message_id"] == "msg-sms-outage" and logs[-1]["error"] == "HTTP 503"
    assert PHONE not in repr(logs) and "Your code" not in repr(logs)


async def test_a_provider_back_after_an_outage_delivers_on_a_later_attempt() -> None:
    with http_server() as server:
        server.script += [Answer(502), Answer(429), Answer(200, {"id": "SM-after"})]
        provider = Retrying(
            HttpProvider(channel(server.url), secret="t"), RetryPolicy(attempts=4), sleep=no_wait
        )
        delivery = await provider.send(text_message())
        await provider.aclose()
    assert delivery == Delivery(DeliveryStatus.DELIVERED, provider_message_id="SM-after", attempts=3)
    assert len(server.received) == 3


async def test_a_refused_connection_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/messages"  # nothing listens there
    provider = HttpProvider(channel(url), secret="t")
    delivery = await provider.send(text_message())
    await provider.aclose()
    assert delivery == Delivery.retryable("HTTP connection failed (ConnectError)")


async def test_a_provider_slower_than_the_timeout_is_retryable() -> None:
    with http_server() as server:
        server.script.append(Answer(200, {"id": "late"}, delay_seconds=2.0))
        provider = HttpProvider(channel(server.url, timeout_seconds=0.2), secret="t")
        delivery = await provider.send(text_message())
        await provider.aclose()
    assert delivery == Delivery.retryable("HTTP timed out after 0.2s")


async def test_an_answer_that_is_not_json_still_counts_as_delivered() -> None:
    with http_server() as server:
        server.script.append(Answer(202, b"accepted"))
        provider = HttpProvider(channel(server.url), secret="t")
        delivery = await provider.send(text_message())
        await provider.aclose()
    assert delivery == Delivery.delivered("")


async def test_https_to_an_endpoint_signed_by_a_configured_ca(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with http_server(tls=server_tls_context(cert, key)) as server:
        trusting = HttpProvider(channel(server.url, ca_file=str(cert)), secret="t")
        delivered = await trusting.send(text_message("m-trusted"))
        await trusting.aclose()
        untrusting = HttpProvider(channel(server.url), secret="t")
        refused = await untrusting.send(text_message("m-untrusted"))
        await untrusting.aclose()
    assert delivered.status is DeliveryStatus.DELIVERED
    assert refused == Delivery.retryable("HTTP connection failed (ConnectError)")
    assert [r.headers["idempotency-key"] for r in server.received] == ["m-trusted"]


async def test_an_email_api_gets_subject_and_both_bodies() -> None:
    email = Message(
        message_id="m-mail",
        workspace="acme",
        profile_id="p-1",
        channel="email",
        to="ann@example.com",
        subject="Hi",
        text="Hello",
        html="<p>Hello</p>",
    )
    with http_server() as server:
        provider = HttpProvider(channel(server.url), secret="t")
        await provider.send(email)
        await provider.aclose()
    assert server.received[0].body == {
        "message_id": "m-mail",
        "to": "ann@example.com",
        "subject": "Hi",
        "text": "Hello",
        "html": "<p>Hello</p>",
    }
