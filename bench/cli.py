"""CLI start-up benchmark: the median wall time of `onefold --help`, `onefold status` (against a
running suite's endpoints, and with nothing running) and a few command groups' `--help`, beside
`python -c pass` and `python -c "import typer"` measured in the same run.

The "running suite" is stood in for by real listeners in this process — a gRPC health service
answering SERVING for every service and its NATS connection, an HTTP server answering /health and a
TCP listener for NATS — named in an endpoints.json as `onefold up` writes it, so `status` does the
whole round of health checks a user's `onefold status` does.

    python bench/cli.py [--runs N] [--uncached-runs N] [--json]
    onefold bench cli --json

Each command is a fresh process (the `onefold` script next to this Python, else `python -m
onefold.cli`), run in turn with the others so that a busy moment slows all of them alike. Three
states of Python's bytecode cache:

- installed: the environment as it is (what a user of this checkout gets; `make env` compiles the
  bytecode of the virtualenv and the workspace);
- cached: a private bytecode cache (PYTHONPYCACHEPREFIX) filled by a first run, so every module,
  the standard library included, loads from bytecode: the floor;
- uncached: an empty private cache that is never written (PYTHONDONTWRITEBYTECODE), so every module,
  the standard library included, is compiled from source on each run: the ceiling.

Targets (a 2-core machine): `onefold --help` and `onefold status` (suite running) median <= 300 ms,
installed and cached. `met` in the JSON says which were met.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

TARGET_MS = 300.0
GROUPS = ("profile", "consent", "credentials", "audit")


def onefold_command() -> list[str]:
    script = Path(sys.executable).parent / "onefold"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "onefold.cli"]


def commands(data_dir: Path, running_dir: Path) -> dict[str, list[str]]:
    onefold = onefold_command()
    measured = {
        "python_pass": [sys.executable, "-c", "pass"],
        "import_typer": [sys.executable, "-c", "import typer"],
        "help": [*onefold, "--help"],
        "status": [*onefold, "status", "--data-dir", str(running_dir)],
        "status_nothing_running": [*onefold, "status", "--data-dir", str(data_dir)],
    }
    measured.update({f"{group}_help": [*onefold, group, "--help"] for group in GROUPS})
    return measured


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def running_suite(data_dir: Path) -> Iterator[None]:
    """Listeners answering as a healthy suite does, named in data_dir/run/endpoints.json."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from onefold.platform.health import NATS_HEALTH_NAME

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    for name in ("", NATS_HEALTH_NAME):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    nats = socket.create_server(("127.0.0.1", 0))
    target = f"127.0.0.1:{grpc_port}"
    services = dict.fromkeys(
        ("ingest", "identity", "consent", "segments", "journeys", "destinations"), target
    )
    state = {
        "pid": os.getpid(),
        "nats_url": f"nats://127.0.0.1:{nats.getsockname()[1]}",
        "services": services,
        "http": {"ingest": f"http://127.0.0.1:{web.server_address[1]}"},
    }
    (data_dir / "run").mkdir(parents=True)
    (data_dir / "run" / "endpoints.json").write_text(json.dumps(state))
    try:
        yield
    finally:
        server.stop(None)
        web.shutdown()
        nats.close()


def environment(state: str, cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ, COLUMNS="100")
    if state == "installed":
        return env
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir / state)
    if state == "uncached":
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - start) * 1000


def measure(measured: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall time of each command; the commands take turns, run after run."""
    times: dict[str, list[float]] = {name: [] for name in measured}
    for _ in range(runs):
        for name, argv in measured.items():
            times[name].append(wall_ms(argv, env))
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command, installed and cached")
    parser.add_argument("--uncached-runs", type=int, default=5, help="runs per command without bytecode")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)

    results: dict[str, Any] = {
        "runs": args.runs,
        "uncached_runs": args.uncached_runs,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    with (
        tempfile.TemporaryDirectory(prefix="onefold-bench-cli-") as tmp,
        running_suite(Path(tmp) / "running"),
    ):
        directory = Path(tmp)
        measured = commands(directory / "data", directory / "running")
        for state, runs in (
            ("installed", args.runs),
            ("cached", args.runs),
            ("uncached", args.uncached_runs),
        ):
            env = environment(state, directory)
            if state == "cached":
                measure(measured, env, 1)  # fills the private cache
            print(f"{state}: {runs} runs of {len(measured)} commands", file=sys.stderr)
            results[f"{state}_median_ms"] = medians = measure(measured, env, runs)
            for name, value in medians.items():
                print(f"  {name:<20} {value:>8.1f} ms", file=sys.stderr)
    results["met"] = {
        f"{name}_{state}_ms": results[f"{state}_median_ms"][name] <= TARGET_MS
        for state in ("installed", "cached")
        for name in ("help", "status")
    }
    results["targets_ms"] = {"help": TARGET_MS, "status": TARGET_MS}
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
