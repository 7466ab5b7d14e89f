"""A real webhook receiver for the destinations tests (the service's and the end-to-end ones): the
standard library's HTTP server on a free port of this machine, in a thread, that checks each
request's Standard Webhooks signature as a receiver would — with its own few lines of `hmac`, not
the service's code, so the signing is checked against the specification — keeps what it received
once per delivery id as an idempotent receiver does, and fails on demand.

    with WebhookReceiver(secret) as receiver:
        ...  # deliver to receiver.url
        await receiver.wait_for(3)
        receiver.received      # wire dicts, unique by id, in arrival order
        receiver.fail(503, times=2); receiver.fail_person("p-1", 400); receiver.recover()
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """Not signed with the receiver's secret, or too old."""


def verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    """Standard Webhooks: base64 HMAC-SHA256 of "id.timestamp.body" under the secret's key (the
    base64 after `whsec_`), compared with each `v1,` signature of the header."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not (msg_id and stamp.isdigit() and abs(time.time() - int(stamp)) <= TOLERANCE_SECONDS):
        raise WebhookVerificationError("missing or stale webhook-id / webhook-timestamp")
    key = base64.b64decode(secret.removeprefix("whsec_") or "AA==")
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    if not any(
        hmac.compare_digest(expected, given) for given in headers.get("webhook-signature", "").split()
    ):
        raise WebhookVerificationError("no matching signature")


@dataclass(frozen=True)
class ReceivedRequest:
    headers: dict[str, str]
    body: Any  # the parsed JSON
    status: int  # what the receiver answered


class WebhookReceiver:
    """An HTTP server taking signed POSTs at /hooks; `secret` may be changed while it runs."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []  # unique by delivery id, in arrival order
        self.duplicates = 0  # deliveries received again (a retry after a lost answer)
        self.bad_signatures = 0
        self.requests: list[ReceivedRequest] = []
        self._ids: set[str] = set()
        self._failing_status = 0
        self._failures_left: int | None = None  # None: until recover()
        self._failing_persons: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="test-webhook-receiver",
            daemon=True,
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._started = False

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> WebhookReceiver:
        self._thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._server.shutdown()
            self._thread.join()
            self._started = False
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------- scripting

    def fail(self, status: int = 503, times: int | None = None) -> None:
        """Answer `status` to the next `times` requests (None: until `recover()`), keeping nothing."""
        with self._lock:
            self._failing_status = status
            self._failures_left = times

    def fail_person(self, profile_id: str, status: int = 503) -> None:
        """Answer `status` to every request holding a delivery about `profile_id`, until `recover()`."""
        with self._lock:
            self._failing_persons[profile_id] = status

    def recover(self) -> None:
        with self._lock:
            self._failing_status = 0
            self._failures_left = None
            self._failing_persons.clear()

    def ids(self) -> list[str]:
        with self._lock:
            return [delivery["id"] for delivery in self.received]

    async def wait_for(self, count: int, seconds: float = 10.0) -> None:
        """Until `count` unique deliveries have arrived; AssertionError after `seconds`."""
        deadline = time.monotonic() + seconds
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(self.received)} deliveries, expected {count}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------------ receiving

    def _answer(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        with self._lock:  # an outage answers before anything is checked, as a down receiver does
            if self._failing_status:
                status = self._failing_status
                if self._failures_left is not None:
                    self._failures_left -= 1
                    if self._failures_left <= 0:
                        self._failing_status, self._failures_left = 0, None
                return status, None
        try:
            verify(self.secret, headers, raw)
        except WebhookVerificationError:
            with self._lock:
                self.bad_signatures += 1
            return 401, None
        body = json.loads(raw)
        deliveries = body.get("batch", [body])
        with self._lock:
            for delivery in deliveries:
                if delivery["profileId"] in self._failing_persons:
                    return self._failing_persons[delivery["profileId"]], body
            for delivery in deliveries:
                if delivery["id"] in self._ids:
                    self.duplicates += 1
                else:
                    self._ids.add(delivery["id"])
                    self.received.append(delivery)
        return 200, body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, body = receiver._answer(headers, raw)
                with receiver._lock:
                    receiver.requests.append(ReceivedRequest(headers, body, status))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler
