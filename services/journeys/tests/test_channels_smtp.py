"""Email through a real SMTP server (aiosmtpd on a free port): plain, STARTTLS and TLS, with AUTH;
refusals and outages become the right Delivery, with errors that quote no address."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from channel_servers import self_signed_certificate, server_tls_context, smtp_server

from onefold.journeys.adapters.providers.base import Delivery, DeliveryStatus, Message
from onefold.journeys.adapters.providers.resilience import Retrying, RetryPolicy
from onefold.journeys.adapters.providers.settings import SecretSource, SmtpChannel
from onefold.journeys.adapters.providers.smtp import SmtpProvider
from onefold.platform.ports import free_port

ANN = "ann@example.com"


def email(to: str = ANN, **overrides: str) -> Message:
    fields = {
        "subject": "Welcome, Ann",
        "text": "Hello Ann",
        "html": "<p>Hello <b>Ann</b></p>",
    } | overrides
    return Message(
        message_id="msg-0001", workspace="acme", profile_id="p-1", channel="email", to=to, **fields
    )


def settings(port: int, **overrides: object) -> SmtpChannel:
    values: dict[str, object] = {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": "news@shop.example",
        "timeout_seconds": 5,
    } | overrides
    return SmtpChannel.model_validate(values)


async def test_an_email_arrives_with_both_bodies_and_our_message_id() -> None:
    with smtp_server() as server:
        delivery = await SmtpProvider(settings(server.port), password="").send(email())
    assert delivery == Delivery.delivered("<msg-0001@shop.example>")
    (mail,) = server.received
    assert mail.mail_from == "news@shop.example" and mail.rcpt_tos == [ANN]
    assert mail.message["Message-ID"] == "<msg-0001@shop.example>"
    assert mail.message["Subject"] == "Welcome, Ann"
    text = mail.message.get_body(("plain",))
    html = mail.message.get_body(("html",))
    assert text is not None and text.get_content().strip() == "Hello Ann"
    assert html is not None and html.get_content().strip() == "<p>Hello <b>Ann</b></p>"


async def test_the_message_id_domain_can_be_set() -> None:
    with smtp_server() as server:
        provider = SmtpProvider(settings(server.port, message_id_domain="mail.onefold.test"), password="")
        delivery = await provider.send(email())
    assert delivery.provider_message_id == "<msg-0001@mail.onefold.test>"
    assert server.received[0].message["Message-ID"] == "<msg-0001@mail.onefold.test>"


async def test_an_html_only_email_is_sent_as_html(tmp_path: Path) -> None:
    with smtp_server() as server:
        delivery = await SmtpProvider(settings(server.port), password="").send(email(text=""))
    assert delivery.status is DeliveryStatus.DELIVERED
    assert server.received[0].message.get_content_type() == "text/html"


async def test_starttls_with_auth_against_the_servers_own_ca(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with smtp_server(tls=server_tls_context(cert, key), credentials=("onefold", "s3cret")) as server:
        provider = SmtpProvider(
            settings(server.port, security="starttls", username="onefold", ca_file=str(cert)),
            password="s3cret",
        )
        delivery = await provider.send(email())
    assert delivery.status is DeliveryStatus.DELIVERED, delivery.error
    assert server.logins == ["onefold"]
    assert len(server.received) == 1


async def test_implicit_tls(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with smtp_server(tls=server_tls_context(cert, key), implicit_tls=True) as server:
        provider = SmtpProvider(settings(server.port, security="tls", ca_file=str(cert)), password="")
        delivery = await provider.send(email())
    assert delivery.status is DeliveryStatus.DELIVERED, delivery.error
    assert len(server.received) == 1


async def test_a_certificate_the_client_does_not_trust_is_not_delivered_to(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with smtp_server(tls=server_tls_context(cert, key), implicit_tls=True) as server:
        delivery = await SmtpProvider(settings(server.port, security="tls"), password="").send(email())
    assert delivery.status is not DeliveryStatus.DELIVERED
    assert server.received == []


async def test_wrong_credentials_are_a_permanent_failure(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with smtp_server(tls=server_tls_context(cert, key), credentials=("onefold", "s3cret")) as server:
        provider = SmtpProvider(
            settings(server.port, security="starttls", username="onefold", ca_file=str(cert)),
            password="wrong",
        )
        delivery = await provider.send(email())
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.error == "SMTP 535 5.7.8"
    assert server.received == []


async def test_an_unknown_recipient_fails_for_good_without_quoting_the_address() -> None:
    with smtp_server() as server:
        server.refuse[ANN] = f"550 5.1.1 <{ANN}>: Recipient address rejected: User unknown"
        delivery = await SmtpProvider(settings(server.port), password="").send(email())
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.error == "SMTP 550 5.1.1"
    assert ANN not in delivery.error


async def test_a_temporary_refusal_is_retryable() -> None:
    with smtp_server() as server:
        server.refuse[ANN] = f"451 4.7.1 <{ANN}>: greylisted, try again later"
        delivery = await SmtpProvider(settings(server.port), password="").send(email())
    assert delivery == Delivery.retryable("SMTP 451 4.7.1")


async def test_a_server_that_is_down_is_retried_then_recorded_as_failed() -> None:
    port = free_port()  # nothing listens there
    sleeps: list[float] = []

    async def no_wait(seconds: float) -> None:
        sleeps.append(seconds)

    provider = Retrying(
        SmtpProvider(settings(port), password=""),
        RetryPolicy(attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.01),
        sleep=no_wait,
    )
    delivery = await provider.send(email())
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempts == 3
    assert delivery.error.startswith("gave up after 3 attempts: SMTP connection failed")
    assert len(sleeps) == 2


@pytest.mark.parametrize("field", ["to", "subject"])
async def test_a_line_break_in_a_header_is_refused_not_injected(field: str) -> None:
    injected = {"to": f"{ANN}\r\nBcc: eve@example.com", "subject": "Hi\r\nBcc: eve@example.com"}[field]
    message = email(to=injected) if field == "to" else email(subject=injected)
    with smtp_server() as server:
        delivery = await SmtpProvider(settings(server.port), password="").send(message)
    assert delivery.status is DeliveryStatus.FAILED
    assert server.received == []


async def test_the_password_never_appears_in_the_settings_repr() -> None:
    channel = settings(25, username="onefold", password=SecretSource(secret="s3cret-value"))
    assert "s3cret-value" not in repr(channel)
    assert "s3cret-value" not in str(channel)


def test_without_verification_any_certificate_is_accepted() -> None:
    provider = SmtpProvider(settings(465, security="tls", validate_certs=False), password="")
    context = provider._tls_context
    assert context is not None and context.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("message_id", ["", "a b", "id>\r\nBcc: eve@example.com", "x@y", "é", "x" * 201])
def test_a_message_id_that_could_break_a_header_is_refused_when_the_message_is_built(message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        Message(message_id=message_id, workspace="acme", profile_id="p-1", channel="email", to=ANN)
