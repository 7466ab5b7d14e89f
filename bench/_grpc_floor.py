"""The floor under every RPC: a bare grpc.aio server (an empty `PlatformService.WhoAmI` answer, no
interceptor, no credential, no telemetry) in a process of its own, so that a bench can measure a
service's call beside what grpcio alone costs on the same machine in the same run.

    python bench/_grpc_floor.py               # serve on a free port (printed first), until the parent is gone
    with bare_server() as (target, pid): ...  # from a bench: the server as a subprocess
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc

from onefold.contracts.platform.v1 import platform_pb2, platform_pb2_grpc


class _Empty(platform_pb2_grpc.PlatformServiceServicer):
    async def WhoAmI(  # type: ignore[override]
        self, request: platform_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> platform_pb2.WhoAmIResponse:
        return platform_pb2.WhoAmIResponse()


def serve() -> None:
    async def run() -> None:
        server = grpc.aio.server()
        platform_pb2_grpc.add_PlatformServiceServicer_to_server(_Empty(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        parent = os.getppid()
        while os.getppid() == parent:  # noqa: ASYNC110 (the bench is gone: so is this server)
            await asyncio.sleep(1)
        await server.stop(0)

    asyncio.run(run())


@contextlib.contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    """The bare server as a subprocess: (its host:port, its pid)."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve())], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield f"127.0.0.1:{int(process.stdout.readline())}", process.pid
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    serve()
