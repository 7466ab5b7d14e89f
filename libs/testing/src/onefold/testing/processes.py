"""Start Onefold services as real subprocesses and wait until they report SERVING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onefold.platform.ports import free_port


def health_status(target: str, service: str = "", timeout: float = 1.0) -> str:
    """'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN' … or 'UNREACHABLE'."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError:
        return "UNREACHABLE"


def wait_for_health(target: str, service: str = "", want: str = "SERVING", timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(target, service) == want:
            return True
        time.sleep(0.1)
    return False


@dataclass
class ServiceProcess:
    """One service (`python -m onefold.<name>`) on a free port with its own data dir."""

    name: str
    data_dir: Path
    nats_url: str
    port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ONEFOLD_DATA_DIR": str(self.data_dir),
                "ONEFOLD_GRPC__PORT": str(self.port),
                "ONEFOLD_NATS__URL": self.nats_url,
                "ONEFOLD_AUTH__CACHE_SECONDS": "0",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> None:
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"onefold.{self.name}"], env=self.env(), stdout=log, stderr=log
            )
        if not wait_for_health(self.target, timeout=timeout):
            self.stop()
            raise RuntimeError(f"{self.name} did not become SERVING; log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
