"""What the journeys and destinations benches share to stand their system up: nats-server and the
consent service as a subprocess (with the bench's admin credential and the service credential the
service under test calls it with), and the service under test composed by its own bootstrap in this
process, on an event loop of its own thread (no relay, no subscriber: the bench hands it upstream
events itself, a batch at a time as `next_batch` takes them)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from onefold.eventlog.service import EventSourcedService
from onefold.platform.auth import ANY_WORKSPACE, CredentialStore
from onefold.platform.config import ServiceSection, load_settings
from onefold.platform.database import create_engine
from onefold.platform.nats import NatsConnection
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.service import ServiceContext
from onefold.testing.processes import ServiceProcess

T = TypeVar("T")


def next_batch(produced: queue.Queue[T | None], most: int) -> tuple[list[T], bool]:
    """What waits in `produced` (blocking for the first), up to `most`, as a subscriber takes what a
    fetch returned; and whether the producer said it is finished (its None)."""
    items = [produced.get()]
    while len(items) < most:
        try:
            items.append(produced.get_nowait())
        except queue.Empty:
            break
    return [item for item in items if item is not None], items[-1] is None


@dataclass
class Consent:
    nats: NatsServerProcess
    process: ServiceProcess
    admin_token: str  # the bench's own credential at consent: the model, the grants
    service_token: str  # the service under test's credential at consent (as `onefold up` gives it)

    def stop(self) -> None:
        self.process.stop()
        self.nats.stop()


def start_consent(directory: Path, workspace: str, caller: str) -> Consent:
    """nats-server and the consent service (a subprocess), each under `directory`."""
    nats = NatsServerProcess(directory / "nats")
    nats.start()
    consent_dir = directory / "consent"
    consent_dir.mkdir(parents=True)
    credentials = CredentialStore(f"sqlite:///{consent_dir / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    admin_token = credentials.issue(workspace, ["admin"], name="bench").token
    service_token = credentials.issue(ANY_WORKSPACE, ["service"], name=f"bench: {caller}").token
    credentials.engine.dispose()
    process = ServiceProcess(
        name="consent",
        data_dir=consent_dir,
        nats=nats,
        extra_env={"ONEFOLD_AUTH__CACHE_SECONDS": "60", "ONEFOLD_TELEMETRY__LOG_LEVEL": "WARNING"},
    )
    try:
        process.start(timeout=60)
    except BaseException:
        nats.stop()
        raise
    return Consent(nats, process, admin_token, service_token)


def compose_here(
    name: str,
    compose: Callable[[ServiceContext], EventSourcedService[Any]],
    sections: Sequence[type[ServiceSection]],
    directory: Path,
    consent: Consent,
) -> tuple[EventSourcedService[Any], asyncio.AbstractEventLoop]:
    """Service `name` composed by its bootstrap on a data dir under `directory`, with consent's
    address and the service credential; and the running event loop its use cases are run on."""
    data_dir = directory / name
    data_dir.mkdir()
    settings = load_settings(
        name,
        env={},
        sections=list(sections),
        data_dir=str(data_dir),
        nats=consent.nats.client_settings(name).model_dump(),
        auth={"cache_seconds": 0, "bootstrap_admin": False, "service_token": consent.service_token},
        peers={"consent": consent.process.target},
        eventlog={"key_file": str(directory / "keys" / f"{name}.kek")},
        telemetry={"log_level": "WARNING"},
    )
    context = ServiceContext(
        settings,
        create_engine(settings.database_url()),
        CredentialStore(settings.auth_database_url(), cache_seconds=0),
        NatsConnection(settings.nats, f"{name}-bench"),  # never started: no relay, no subscriber
    )
    service = compose(context)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=f"{name}-bench-loop", daemon=True).start()
    return service, loop
