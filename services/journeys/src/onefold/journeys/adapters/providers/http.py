"""SMS, app push and WeChat template messages: one JSON POST per message to a configured
endpoint (the provider's API or a gateway in front of it), with httpx.

The body's shape is the channel's (below); every request carries the message id as its
`Idempotency-Key`, so a retry after a timeout is recognised by a provider that honours it.
Answers: 2xx delivered (the provider's id read from `id_field`); 429 and 5xx, timeouts and
connection errors retryable; any other 4xx a permanent failure. The recorded error is the status
or the kind of transport failure, never the answer's body, which may quote the number or the text.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from onefold.journeys.adapters.providers.base import Delivery, Message
from onefold.journeys.adapters.providers.settings import HttpChannel

# WeChat's template-message API answers HTTP 200 with an `errcode`; -1 is "system busy, retry".
_WECHAT_BUSY = -1
MAX_PROVIDER_ID_CHARS = 200


def request_body(message: Message) -> dict[str, Any]:
    """The JSON a channel's endpoint receives for `message`."""
    if message.channel == "wechat":
        # The shape of WeChat's /cgi-bin/message/template/send.
        return {
            "message_id": message.message_id,
            "touser": message.to,
            "template_id": message.template,
            "data": {name: {"value": value} for name, value in message.data.items()},
        }
    if message.channel == "push":
        return {
            "message_id": message.message_id,
            "token": message.to,
            "title": message.subject,
            "body": message.text,
            "data": dict(message.data),
        }
    if message.channel == "email":
        return {
            "message_id": message.message_id,
            "to": message.to,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
        }
    return {"message_id": message.message_id, "to": message.to, "text": message.text}


class HttpProvider:
    kind = "http"

    def __init__(self, settings: HttpChannel, secret: str) -> None:
        self.settings = settings
        headers = {"User-Agent": "onefold-journeys"}
        if settings.auth == "bearer":
            headers["Authorization"] = f"Bearer {secret}"
        elif settings.auth == "header":
            headers[settings.secret_header] = secret
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True
        )
        self._client = httpx.AsyncClient(timeout=settings.timeout_seconds, verify=verify)
        self._headers = headers

    async def send(self, message: Message) -> Delivery:
        headers = {**self._headers, "Idempotency-Key": message.message_id}
        try:
            response = await self._client.post(self.settings.url, json=request_body(message), headers=headers)
        except httpx.TimeoutException:
            return Delivery.retryable(f"HTTP timed out after {self.settings.timeout_seconds:g}s")
        except httpx.TransportError as exc:
            return Delivery.retryable(f"HTTP connection failed ({type(exc).__name__})")
        status = response.status_code
        if status == 429 or status >= 500:
            return Delivery.retryable(f"HTTP {status}")
        if not 200 <= status < 300:
            return Delivery.failed(f"HTTP {status}")
        answer = _json_object(response)
        if message.channel == "wechat":
            errcode = answer.get("errcode", 0)
            if errcode == _WECHAT_BUSY:
                return Delivery.retryable("WeChat errcode -1 (busy)")
            if errcode:
                return Delivery.failed(
                    f"WeChat errcode {errcode}" if isinstance(errcode, int) else "WeChat error"
                )
            return Delivery.delivered(_provider_id(answer.get("msgid")))
        return Delivery.delivered(_provider_id(answer.get(self.settings.id_field)))

    async def aclose(self) -> None:
        await self._client.aclose()


def _provider_id(value: object) -> str:
    """The provider's id for the message, as text of bounded length (anything else: none)."""
    return str(value)[:MAX_PROVIDER_ID_CHARS] if isinstance(value, str | int) else ""


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
