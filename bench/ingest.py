"""Ingest benchmark: events durably accepted per second through gRPC `Batch` and HTTP `/v1/batch`,
single-event latency at a fixed request rate, and the ingest process's memory, each beside raw
nats-py JetStream async publish of the same events to the same nats-server, measured in the same run.

    python bench/ingest.py [--events N] [--json]
    onefold bench ingest --json

Setup: a real nats-server (JetStream, `sync_interval: always`) and a real ingest service process
(`python -m onefold.ingest`, SQLite in a temporary data directory), a source created through the
admin gRPC API. Workload: Segment `track` calls (`Product Viewed`, five properties, 1,000 users,
unique messageIds), about 300 bytes of JSON each.

- gRPC: `Batch` of 500 events from several concurrent clients; the rate counts events acknowledged
  (the service answers only after they are committed to its log).
- HTTP: `/v1/batch` bodies of 500 events from several concurrent keep-alive clients.
- Latency: single `/v1/track` (and gRPC `Track`) calls started on a fixed schedule (open loop, so
  a slow answer does not slow the schedule down); p50 / p99 from start to answer.
- RSS: the ingest process's peak resident memory while under load (sampled every 50 ms).
- Service CPU: the ingest process's CPU seconds per event over each throughput phase, counted until
  the process is idle again (its relay's publishing of those events included): on two cores shared
  with the clients this is the stable figure, where the rates move with the load.
- Baseline: the same events' JSON published with `js.publish_async` (Nats-Msg-Id = messageId) to a
  stream on the same server, all acknowledged.

Targets (issue 4, a 2-core machine): gRPC >= 25,000 events/s and >= 0.6x raw JetStream; HTTP >= 15,000
events/s; p99 <= 20 ms at 500 requests/s; RSS <= 300 MB. The bench client runs on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import orjson
from google.protobuf import struct_pb2, timestamp_pb2

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2_grpc
from onefold.platform.auth import CredentialStore
from onefold.platform.bus_permissions import ADMIN
from onefold.platform.client import authenticated_channel
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.ports import free_port, wait_for_port
from onefold.testing.measure import cpu_seconds, percentile, say_targets
from onefold.testing.processes import ServiceProcess

WORKSPACE = "bench"
USERS = 1000
BATCH = 500
GRPC_CLIENTS = 4
HTTP_CLIENTS = 4
LATENCY_RATE = 500  # requests per second
TARGETS = {
    "grpc_events_per_s": 25_000,
    "grpc_ratio_vs_jetstream": 0.6,
    "http_events_per_s": 15_000,
    "http_track_p99_ms": 20.0,
    "rss_mb": 300.0,
}


# --- workload -------------------------------------------------------------------------------------


def make_events(count: int, tag: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [
        {
            "type": "track",
            "messageId": f"{tag}-{uuid.uuid4()}",
            "userId": f"user-{i % USERS}",
            "event": "Product Viewed",
            "properties": {
                "product_id": f"sku-{i % 5000}",
                "name": "Monopoly: 3rd Edition",
                "price": 18.99,
                "currency": "USD",
                "position": i % 10,
            },
            "context": {"library": {"name": "onefold-bench", "version": "1.0"}},
            "timestamp": now,
        }
        for i in range(count)
    ]


def to_proto(event: dict[str, Any]) -> pb.TrackingEvent:
    properties = struct_pb2.Struct()
    properties.update(event["properties"])
    context = struct_pb2.Struct()
    context.update(event["context"])
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(event["timestamp"])
    return pb.TrackingEvent(
        type=pb.EVENT_TYPE_TRACK,
        message_id=event["messageId"],
        user_id=event["userId"],
        event=event["event"],
        properties=properties,
        context=context,
        timestamp=stamp,
    )


def http_client(target: Target, **kwargs: Any) -> httpx.AsyncClient:
    """httpx with TCP_NODELAY, as browsers and mobile SDKs send: without it the request body waits
    for the server's delayed ACK of the headers (about 40 ms on Linux) and the figure measures that."""
    transport = httpx.AsyncHTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        limits=kwargs.pop("limits", None) or httpx.Limits(),
    )
    return httpx.AsyncClient(
        base_url=target.http_url, auth=(target.write_key, ""), transport=transport, **kwargs
    )


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- the system under test ------------------------------------------------------------------------


class RssSampler:
    """Peak resident memory of a process, sampled from /proc in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_kb(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return 0
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self.current_kb())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self.current_kb())


def settle(pid: int, timeout: float = 120.0) -> float:
    """Wait until the service is idle again (its relay has published the backlog to JetStream), so
    one phase's leftovers do not slow the next; returns the seconds waited."""
    started = time.perf_counter()
    previous = cpu_seconds(pid)
    while time.perf_counter() - started < timeout:
        time.sleep(0.5)
        current = cpu_seconds(pid)
        if current - previous < 0.05:  # under 10% of a core
            break
        previous = current
    return round(time.perf_counter() - started, 1)


@dataclass
class Target:
    grpc_target: str
    http_url: str
    token: str
    source_id: str
    write_key: str
    pid: int
    extra: dict[str, Any] = field(default_factory=dict)


async def create_source(target: str, token: str) -> tuple[str, str]:
    async with authenticated_channel(target, token, workspace=WORKSPACE) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        # High enough that the rate limit never shapes a throughput figure.
        response = await stub.CreateSource(
            pb.CreateSourceRequest(workspace=WORKSPACE, name="bench", rate_limit_per_second=10_000_000)
        )
    return response.source.source_id, response.write_key


# --- measurements ---------------------------------------------------------------------------------


async def grpc_batch_rate(target: Target, events: list[dict[str, Any]], clients: int) -> float:
    requests = [
        pb.BatchRequest(source_id=target.source_id, events=[to_proto(e) for e in chunk])
        for chunk in chunks(events, BATCH)
    ]
    queue: asyncio.Queue[pb.BatchRequest] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    channels = [
        authenticated_channel(
            target.grpc_target,
            target.token,
            workspace=WORKSPACE,
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(clients)
    ]
    accepted = 0

    async def client(channel: grpc.aio.Channel) -> None:
        nonlocal accepted
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        while not queue.empty():
            response = await stub.Batch(queue.get_nowait(), timeout=60)
            accepted += response.accepted

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in channels))
        elapsed = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    if accepted != len(events):
        raise RuntimeError(f"gRPC: {accepted} of {len(events)} events accepted")
    return len(events) / elapsed


async def http_batch_rate(target: Target, events: list[dict[str, Any]], clients: int) -> float:
    bodies = [orjson.dumps({"batch": list(chunk)}) for chunk in chunks(events, BATCH)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        async with http_client(target, timeout=60) as http:
            while not queue.empty():
                response = await http.post(
                    "/v1/batch", content=queue.get_nowait(), headers={"Content-Type": "application/json"}
                )
                response.raise_for_status()
                accepted += response.json()["accepted"]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    if accepted != len(events):
        raise RuntimeError(f"HTTP: {accepted} of {len(events)} events accepted")
    return len(events) / elapsed


async def fixed_rate(
    call: Callable[[int], Awaitable[None]], rate: int, seconds: float
) -> tuple[list[float], int]:
    """Start call(i) every 1/rate s (open loop); latencies in ms, and how many failed."""
    total = int(rate * seconds)
    latencies: list[float] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        started = time.perf_counter()
        try:
            await call(i)
        except Exception:
            failures += 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    begin = time.perf_counter()
    for i in range(total):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, failures


class RawHttpClient:
    """A minimal HTTP/1.1 keep-alive client for the latency phase: one write per request (as a
    browser's or SDK's TCP_NODELAY socket), a pool of connections opened on demand. httpx costs the
    bench process about 1-3 ms of CPU per request under an open-loop schedule, on the same two
    cores as the service, which would measure the client instead of the server."""

    def __init__(self, host: str, port: int, write_key: str) -> None:
        self.host, self.port = host, port
        credentials = base64.b64encode(f"{write_key}:".encode()).decode()
        self.head = (
            f"POST {{path}} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {credentials}\r\n"
            "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def post(self, path: str, body: bytes) -> int:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.opened += 1
        writer.write(self.head.format(path=path, length=len(body)).encode() + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status

    async def close(self) -> None:
        for _reader, writer in self.idle:
            writer.close()
        self.idle.clear()


async def http_track_latency(target: Target, events: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    bodies = [orjson.dumps(e) for e in events]
    host, port = target.http_url.removeprefix("http://").rsplit(":", 1)
    client = RawHttpClient(host, int(port), target.write_key)
    try:
        for body in bodies[:20]:  # warm a connection and the source cache
            await client.post("/v1/track", body)

        async def call(i: int) -> None:
            status = await client.post("/v1/track", bodies[20 + i])
            if status != 200:
                raise RuntimeError(f"HTTP {status}")

        latencies, failures = await fixed_rate(call, LATENCY_RATE, seconds)
    finally:
        await client.close()
    return {**summarise(latencies, failures), "connections": client.opened}


async def grpc_track_latency(target: Target, events: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    requests = [pb.TrackRequest(source_id=target.source_id, event=to_proto(e)) for e in events]
    async with authenticated_channel(target.grpc_target, target.token, workspace=WORKSPACE) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for request in requests[:20]:
            await stub.Track(request, timeout=30)

        async def call(i: int) -> None:
            await stub.Track(requests[20 + i], timeout=30)

        latencies, failures = await fixed_rate(call, LATENCY_RATE, seconds)
    return summarise(latencies, failures)


def summarise(latencies: list[float], failures: int) -> dict[str, Any]:
    return {
        "requests": len(latencies) + failures,
        "failures": failures,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else float("nan"),
    }


async def jetstream_rate(nats_server: NatsServerProcess, events: list[dict[str, Any]]) -> float:
    payloads = [(e["messageId"], orjson.dumps(e)) for e in events]
    # A raw stream outside Onefold's subjects: only the maintenance user may create it.
    connection = await nats.connect(nats_server.url, **nats_server.connect_options(ADMIN))
    try:
        js = connection.jetstream(publish_async_max_pending=4000)
        await js.add_stream(name="BENCH_RAW", subjects=["bench.raw.>"])
        started = time.perf_counter()
        futures = [
            await js.publish_async(
                f"bench.raw.{WORKSPACE}.{i % 16}", payload, headers={"Nats-Msg-Id": message_id}
            )
            for i, (message_id, payload) in enumerate(payloads)
        ]
        acks = await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
        await js.delete_stream("BENCH_RAW")
    finally:
        await connection.close()
    if len(acks) != len(events) or any(ack.duplicate for ack in acks):
        raise RuntimeError("raw JetStream: not every event was acknowledged once")
    return len(events) / elapsed


# --- the run --------------------------------------------------------------------------------------


def start_system(directory: Path) -> tuple[NatsServerProcess, ServiceProcess, Target]:
    nats_server = NatsServerProcess(directory / "nats")
    nats_server.start()
    data_dir = directory / "ingest"
    data_dir.mkdir(parents=True)
    # A credential for the bench, issued where the service looks (its first start then makes no
    # bootstrap admin of its own).
    store = CredentialStore(f"sqlite:///{data_dir / 'auth.db'}", cache_seconds=0)
    store.create_schema()
    token = store.issue(WORKSPACE, ["admin"], name="bench").token
    store.engine.dispose()
    http_port = free_port()
    service = ServiceProcess(
        name="ingest",
        data_dir=data_dir,
        nats=nats_server,
        extra_env={
            "ONEFOLD_HTTP__PORT": str(http_port),
            "ONEFOLD_AUTH__CACHE_SECONDS": "60",
            "ONEFOLD_TELEMETRY__LOG_LEVEL": "WARNING",
        },
    )
    try:
        service.start(timeout=60)
        if not wait_for_port(http_port, timeout=30):
            raise RuntimeError(f"the ingest HTTP API did not listen on {http_port}; see {service.log_path}")
        source_id, write_key = asyncio.run(create_source(service.target, token))
    except BaseException:
        service.stop()
        nats_server.stop()
        raise
    assert service.process is not None
    target = Target(
        grpc_target=service.target,
        http_url=f"http://127.0.0.1:{http_port}",
        token=token,
        source_id=source_id,
        write_key=write_key,
        pid=service.process.pid,
    )
    return nats_server, service, target


def run(events: int, latency_seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {
        "events": events,
        "batch": BATCH,
        "grpc_clients": GRPC_CLIENTS,
        "http_clients": HTTP_CLIENTS,
        "latency_rate_per_s": LATENCY_RATE,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}",
    }
    with tempfile.TemporaryDirectory(prefix="onefold-bench-ingest-") as tmp:
        nats_server, service, target = start_system(Path(tmp))
        try:
            with RssSampler(target.pid) as rss:
                results["rss_idle_mb"] = round(rss.current_kb() / 1024, 1)
                latency_events = int(LATENCY_RATE * latency_seconds) + 20

                service_cpu: dict[str, float] = {}

                def phase(name: str, coroutine: Awaitable[Any], cpu_key: str = "") -> Any:
                    """Run one phase from idle; with `cpu_key`, the service's CPU seconds for it, counted
                    until it is idle again (so the relay's publishing of the phase's events is in)."""
                    waited = settle(target.pid)
                    print(f"  {name} (after {waited} s idle wait) ...", file=sys.stderr, flush=True)
                    before = cpu_seconds(target.pid)
                    outcome = asyncio.run(coroutine)  # type: ignore[arg-type]
                    if cpu_key:
                        settle(target.pid)
                        service_cpu[cpu_key] = cpu_seconds(target.pid) - before
                    return outcome

                results["jetstream_events_per_s"] = round(
                    phase(
                        "raw JetStream publish_async",
                        jetstream_rate(nats_server, make_events(events, "js")),
                    )
                )
                results["grpc_events_per_s"] = round(
                    phase(
                        "gRPC Batch",
                        grpc_batch_rate(target, make_events(events, "grpc"), GRPC_CLIENTS),
                        "grpc",
                    )
                )
                results["http_events_per_s"] = round(
                    phase(
                        "HTTP /v1/batch",
                        http_batch_rate(target, make_events(events, "http"), HTTP_CLIENTS),
                        "http",
                    )
                )
                results["http_track_latency"] = phase(
                    f"HTTP /v1/track at {LATENCY_RATE}/s",
                    http_track_latency(target, make_events(latency_events, "lat-http"), latency_seconds),
                )
                results["grpc_track_latency"] = phase(
                    f"gRPC Track at {LATENCY_RATE}/s",
                    grpc_track_latency(target, make_events(latency_events, "lat-grpc"), latency_seconds),
                )
            results["rss_peak_mb"] = round(rss.peak_kb / 1024, 1)
            for name, seconds in service_cpu.items():
                results[f"{name}_service_cpu_us_per_event"] = round(seconds / events * 1e6, 1)
        finally:
            service.stop()
            nats_server.stop()
    js = results["jetstream_events_per_s"]
    results["grpc_ratio_vs_jetstream"] = round(results["grpc_events_per_s"] / js, 2)
    results["http_ratio_vs_jetstream"] = round(results["http_events_per_s"] / js, 2)
    results["targets"] = TARGETS
    results["met"] = {
        "grpc_events_per_s": results["grpc_events_per_s"] >= TARGETS["grpc_events_per_s"],
        "grpc_ratio_vs_jetstream": results["grpc_ratio_vs_jetstream"] >= TARGETS["grpc_ratio_vs_jetstream"],
        "http_events_per_s": results["http_events_per_s"] >= TARGETS["http_events_per_s"],
        # A latency measured while requests failed is not met: failures are left out of the percentiles.
        "http_track_p99_ms": results["http_track_latency"]["p99_ms"] <= TARGETS["http_track_p99_ms"]
        and results["http_track_latency"]["failures"] == 0,
        "rss_mb": results["rss_peak_mb"] <= TARGETS["rss_mb"],
    }
    return results


def report(results: dict[str, Any]) -> None:
    js = results["jetstream_events_per_s"]

    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<44} {value:>14}  {note}", file=sys.stderr)

    print(f"ingest benchmark ({results['machine']}):", file=sys.stderr)
    line("raw JetStream publish_async (baseline)", f"{js:,}/s")
    for name, label in (("grpc", "gRPC Batch of 500"), ("http", "HTTP /v1/batch of 500")):
        rate = results[f"{name}_events_per_s"]
        line(
            label,
            f"{rate:,}/s",
            f"{results[f'{name}_ratio_vs_jetstream']:.2f}x raw JetStream, "
            f"{results[f'{name}_service_cpu_us_per_event']} µs service CPU/event",
        )
    for name, label in (("http_track_latency", "HTTP /v1/track"), ("grpc_track_latency", "gRPC Track")):
        lat = results[name]
        line(
            f"{label} at {results['latency_rate_per_s']}/s: p50 / p99",
            f"{lat['p50_ms']} / {lat['p99_ms']} ms",
            f"({lat['requests']} requests, {lat['failures']} failed)",
        )
    line("ingest RSS: idle / peak under load", f"{results['rss_idle_mb']} / {results['rss_peak_mb']} MB")
    say_targets(results["met"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per throughput phase")
    parser.add_argument(
        "--latency-seconds", type=float, default=5.0, help="duration of each fixed-rate latency phase"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    results = run(args.events, args.latency_seconds)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
