"""Email over SMTP (aiosmtplib): one connection per message, STARTTLS or TLS, optional AUTH.

SMTP reply codes decide what a failure is: 4xx (greylisting, a full mailbox, a busy server) and
a lost or timed-out connection are worth retrying; 5xx (unknown user, refused, bad credentials) are
not. The error recorded is the code and the enhanced status only: the text after them often
quotes the recipient's address.
"""

from __future__ import annotations

import re
import ssl
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from onefold.journeys.adapters.providers.base import Delivery, Message
from onefold.journeys.adapters.providers.settings import SmtpChannel

_ENHANCED_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


class SmtpProvider:
    kind = "smtp"

    def __init__(self, settings: SmtpChannel, password: str) -> None:
        self.settings = settings
        self._password = password
        self._domain = settings.message_id_domain or settings.from_address.rpartition("@")[2] or "onefold"
        self._tls_context: ssl.SSLContext | None = None
        if settings.security != "none":
            self._tls_context = ssl.create_default_context(cafile=settings.ca_file or None)
            if not settings.validate_certs:
                self._tls_context.check_hostname = False
                self._tls_context.verify_mode = ssl.CERT_NONE

    def message_id_header(self, message: Message) -> str:
        """The RFC 5322 Message-ID carrying our deterministic id: a resent message has the same one."""
        return f"<{message.message_id}@{self._domain}>"

    async def send(self, message: Message) -> Delivery:
        if not message.text and not message.html:
            return Delivery.failed("an email needs a text or an HTML body")
        try:
            email = self._compose(message)
        except ValueError:  # a line break in the address or subject: header injection refused
            return Delivery.failed("the address or subject is not a valid header value")
        settings = self.settings
        try:
            await aiosmtplib.send(
                email,
                hostname=settings.host,
                port=settings.port,
                username=settings.username or None,
                password=self._password if settings.username else None,
                use_tls=settings.security == "tls",
                start_tls=settings.security == "starttls",
                tls_context=self._tls_context,
                timeout=settings.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:  # one recipient per message: its refusal
            refusal = exc.recipients[0] if exc.recipients else None
            return (
                _by_code(refusal.code, refusal.message)
                if refusal
                else Delivery.failed("SMTP recipient refused")
            )
        except aiosmtplib.SMTPResponseException as exc:
            return _by_code(exc.code, exc.message)
        except aiosmtplib.SMTPTimeoutError:
            return Delivery.retryable(f"SMTP timed out after {settings.timeout_seconds:g}s")
        except aiosmtplib.SMTPNotSupported:
            return Delivery.failed(
                f"the SMTP server does not support what security={settings.security} needs"
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            return Delivery.retryable(f"SMTP connection failed ({type(exc).__name__})")
        return Delivery.delivered(email["Message-ID"])

    def _compose(self, message: Message) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.settings.from_address
        email["To"] = message.to
        email["Subject"] = message.subject
        email["Date"] = formatdate(localtime=False)
        email["Message-ID"] = self.message_id_header(message)
        if message.text:
            email.set_content(message.text)
            if message.html:
                email.add_alternative(message.html, subtype="html")
        else:
            email.set_content(message.html, subtype="html")
        return email

    async def aclose(self) -> None:
        return None


def _by_code(code: int, reply: str) -> Delivery:
    enhanced = _ENHANCED_STATUS.match(reply or "")
    error = f"SMTP {code}" + (f" {enhanced.group(1)}" if enhanced else "")
    return Delivery.retryable(error) if 400 <= code < 500 else Delivery.failed(error)
