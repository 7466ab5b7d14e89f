"""The benches' webhook receiver: a minimal asyncio HTTP/1.1 server (keep-alive, Content-Length
bodies, 200 to everything) in a process of its own, so that what it costs is measured apart and it
is never the bottleneck (the test receiver in onefold.testing.webhooks is a threaded stdlib server,
right for tests, too slow here). Each bench says what it records by its `answer`.

    python bench/NAME.py --receiver          # serve(NAME's Receiver): prints the port, then serves
    process, port = start(Path(__file__))    # from the bench: the receiver as a subprocess
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class Answering(Protocol):
    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        """The JSON answered to one request (with 200)."""
        ...


async def _connection(
    receiver: Answering, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            answer = receiver.answer(method, path, headers, body)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(answer), answer)
            )
            if headers.get("connection", "").lower() == "close":
                break
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


def serve(make: Callable[[], Answering]) -> None:
    """Serve on a free port (printed first, on its own line) until the bench that started it is gone."""

    async def run() -> None:
        receiver = make()
        server = await asyncio.start_server(
            lambda r, w: _connection(receiver, r, w), "127.0.0.1", 0, backlog=1024
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        parent = os.getppid()
        async with server:
            while os.getppid() == parent:  # noqa: ASYNC110 (the bench is gone: so is its receiver)
                await asyncio.sleep(1)

    asyncio.run(run())


def start(bench: Path) -> tuple[subprocess.Popen[str], int]:
    """`bench --receiver` as a subprocess, and the port it serves on."""
    process = subprocess.Popen([sys.executable, str(bench), "--receiver"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())
