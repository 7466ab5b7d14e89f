"""Real servers for the channel tests: an SMTP server (aiosmtpd) and an HTTP server (the standard
library's), each on a free port of this machine, recording what they received and answering as
the test scripts them."""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from onefold.platform.ports import free_port

# --------------------------------------------------------------------------------------- TLS


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by itself (so it is its own CA): cert, key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# -------------------------------------------------------------------------------------- SMTP


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class SmtpServer:
    """What an aiosmtpd server received; `refuse[address] = "550 5.1.1 ..."` answers RCPT with it."""

    port: int
    received: list[ReceivedMail] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 queued"


@contextmanager
def smtp_server(
    *,
    tls: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    credentials: tuple[str, str] | None = None,
) -> Iterator[SmtpServer]:
    """A running SMTP server: plain, with STARTTLS (`tls`), or TLS from the start (`implicit_tls`);
    with `credentials`, AUTH is required and only that user/password accepted."""
    recorder = SmtpServer(port=free_port())
    smtp_options: dict[str, Any] = {}
    if tls is not None and not implicit_tls:
        smtp_options.update(tls_context=tls, require_starttls=True)
    if credentials is not None:

        def authenticate(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
        ) -> AuthResult:
            ok = (
                isinstance(auth_data, LoginPassword)
                and (
                    auth_data.login.decode(),
                    auth_data.password.decode(),
                )
                == credentials
            )
            if ok:
                recorder.logins.append(auth_data.login.decode())
            return AuthResult(success=ok, handled=False)  # False: the server answers 535

        smtp_options.update(authenticator=authenticate, auth_required=True)
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=recorder.port,
        ssl_context=tls if implicit_tls else None,
        server_hostname="localhost",
        **smtp_options,
    )
    controller.start()
    try:
        yield recorder
    finally:
        controller.stop()


# -------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = field(default_factory=dict)  # JSON, or bytes sent as they are
    delay_seconds: float = 0.0  # wait before answering (a provider slower than the client's timeout)


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpServer:
    """Answers POSTs from `script` in order, then with `default`; records every request."""

    url: str
    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=lambda: Answer(200, {"id": "provider-1"}))
    received: list[ReceivedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self, request: ReceivedRequest) -> Answer:
        with self.lock:
            self.received.append(request)
            return self.script.pop(0) if self.script else self.default


@contextmanager
def http_server(*, tls: ssl.SSLContext | None = None) -> Iterator[HttpServer]:
    """A running HTTP server (HTTPS with `tls`) taking POSTs at /v1/messages."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            request = ReceivedRequest(
                self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"null")
            )
            answer = recorder.next_answer(request)
            if answer.delay_seconds:
                time.sleep(answer.delay_seconds)
            payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    recorder = HttpServer(url=f"{scheme}://127.0.0.1:{server.server_address[1]}/v1/messages")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="test-http-provider", daemon=True
    )
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
