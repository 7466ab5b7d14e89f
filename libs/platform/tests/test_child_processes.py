"""Child processes (nats-server, the services under `onefold up` and the test fixtures) end with the
process that started them, and start reliably while it has gRPC calls in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from onefold.platform.nats_server import tied_to_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux ties children to parents")


def gone(pid: int) -> bool:
    """Not running: exited, or a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_child_ends_when_its_parent_is_killed() -> None:
    parent_code = textwrap.dedent(
        """
        import subprocess, sys, time
        from onefold.platform.nats_server import tied_to_parent
        child = subprocess.Popen(tied_to_parent(["sleep", "60"]), start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)  # as a crash: no chance to stop the child itself
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child)
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


@pytest.fixture
def grpc_calls_in_flight() -> Iterator[None]:
    """A gRPC server in this process and a thread calling it until the test ends."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    done = threading.Event()

    def call() -> None:
        while not done.is_set():
            stub.Check(health_pb2.HealthCheckRequest())

    caller = threading.Thread(target=call)
    caller.start()
    yield
    done.set()
    caller.join()
    channel.close()
    server.stop(0)


def test_children_start_while_grpc_calls_are_in_flight(grpc_calls_in_flight: None) -> None:
    # With a preexec_fn about one child in twenty aborted here before it ran (gRPC's fork handlers).
    exits = [
        subprocess.run(
            tied_to_parent(["sh", "-c", "exit 3"]), check=False, stderr=subprocess.DEVNULL
        ).returncode
        for _ in range(60)
    ]
    assert exits == [3] * 60
