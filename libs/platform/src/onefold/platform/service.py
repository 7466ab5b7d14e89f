"""Run one Onefold service: the shared composition every service's bootstrap plugs into.

A service describes itself with a ServiceSpec (its name, the servicers it serves, what to start
beside the gRPC server); `run_service` does the rest in the same order for all seven: settings,
logging, tracing, the credential store, the service database, gRPC (health, reflection, the
platform interceptor), NATS, then waits for SIGTERM/SIGINT and stops in reverse order.
Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from onefold.contracts.platform.v1 import platform_pb2, platform_pb2_grpc
from onefold.platform import __version__, auth
from onefold.platform.auth import CredentialStore
from onefold.platform.config import ConfigError, ServiceSection, Settings, load_settings, prepare_data_dir
from onefold.platform.database import create_engine
from onefold.platform.grpc_server import AUTHENTICATED, GrpcServer, ServiceRegistration, typed_registration
from onefold.platform.health import NATS_HEALTH_NAME
from onefold.platform.nats import NatsConnection
from onefold.platform.telemetry import configure_logging, configure_tracing, get_logger, serve_metrics

BOOTSTRAP_ADMIN_WORKSPACE = "default"
BOOTSTRAP_ADMIN_ID = "0000000000000000"
BOOTSTRAP_ADMIN_SCOPES = ("admin", auth.INSTALLATION_ADMIN)
# Whatever a service creates (databases and their -wal/-shm, keys, logs) is for its own user only.
PRIVATE_UMASK = 0o077
log = get_logger("onefold.service")


@dataclass
class ServiceContext:
    """What a service's composition receives: settings and the connections the platform made."""

    settings: Settings
    engine: Engine
    credentials: CredentialStore
    nats: NatsConnection
    # Sets a named gRPC health check (serving, name): how background work reports an alarm.
    set_health: Callable[[bool, str], Awaitable[None]] | None = None


class Composition(Protocol):
    """A composed service: built by its bootstrap from a ServiceContext, run by `serve`."""

    def registrations(self) -> Sequence[ServiceRegistration]:
        """The servicers to serve beside health, reflection and PlatformService."""
        ...

    async def start(self) -> None:
        """Start background work (relay, subscribers, timers); gRPC is already serving."""
        ...

    async def stop(self) -> None:
        """Stop background work, letting work in hand finish; gRPC still serves meanwhile."""
        ...


@dataclass
class ServiceSpec:
    name: str
    compose: Callable[[ServiceContext], Composition]
    version: str = __version__
    # The service's own settings sections, validated with the rest before anything starts.
    sections: Sequence[type[ServiceSection]] = ()


class PlatformServicer(platform_pb2_grpc.PlatformServiceServicer):
    def __init__(self, service: str, version: str) -> None:
        self.service, self.version = service, version

    async def WhoAmI(
        self, request: platform_pb2.WhoAmIRequest, context: object
    ) -> platform_pb2.WhoAmIResponse:
        principal = auth.current_principal()
        workspace = auth.require_workspace(request.workspace)
        return platform_pb2.WhoAmIResponse(
            service=self.service,
            version=self.version,
            workspace=workspace,
            scopes=sorted(principal.scopes),
            credential_id=principal.credential_id,
        )


def platform_registration(service: str, version: str) -> ServiceRegistration:
    return typed_registration(
        platform_pb2.DESCRIPTOR.services_by_name["PlatformService"],
        platform_pb2,
        PlatformServicer(service, version),
        {"WhoAmI": AUTHENTICATED},
    )


def ensure_bootstrap_admin(store: CredentialStore) -> auth.IssuedCredential | None:
    """Issue the first admin credential, once per installation; return it only to the one that made it.

    The bootstrap admin also holds `installation:admin`; one issued before that scope existed is given
    it here (it was the installation's administrator already), so `onefold audit verify` keeps working.
    """
    if store.has_admin():
        store.add_scopes(BOOTSTRAP_ADMIN_ID, BOOTSTRAP_ADMIN_SCOPES)
        return None
    try:
        return store.issue(
            BOOTSTRAP_ADMIN_WORKSPACE,
            BOOTSTRAP_ADMIN_SCOPES,
            name="bootstrap admin",
            credential_id=BOOTSTRAP_ADMIN_ID,
        )
    except sa.exc.IntegrityError:  # another process won the race; its output shows the credential
        return None


async def serve(spec: ServiceSpec, settings: Settings, stop: asyncio.Event) -> None:
    os.umask(PRIVATE_UMASK)
    prepare_data_dir(settings.data_dir)
    store = CredentialStore(settings.auth_database_url(), cache_seconds=settings.auth.cache_seconds)
    await asyncio.to_thread(store.create_schema)
    if settings.auth.bootstrap_admin:
        issued = await asyncio.to_thread(ensure_bootstrap_admin, store)
        if issued:
            # Printed once on stdout, outside the structured logs (in a container stdout is its log:
            # deploy/k8s/README.md says to read it once and rotate it).
            sys.stdout.write(
                f"Admin credential for workspace '{issued.workspace}' (shown once): {issued.token}\n"
            )
            sys.stdout.flush()
    engine = create_engine(settings.database_url())
    server: GrpcServer | None = None

    async def nats_state(connected: bool) -> None:
        if server is not None:
            await server.set_serving(connected, NATS_HEALTH_NAME)

    async def set_health(serving: bool, name: str) -> None:
        if server is not None:
            await server.set_serving(serving, name)

    nats = NatsConnection(settings.nats, f"onefold-{spec.name}", nats_state)
    ctx = ServiceContext(
        settings=settings, engine=engine, credentials=store, nats=nats, set_health=set_health
    )
    composition = await asyncio.to_thread(spec.compose, ctx)  # may create tables: keep the loop free
    registrations = [platform_registration(spec.name, spec.version), *composition.registrations()]
    server = GrpcServer(spec.name, settings.grpc, store, registrations)
    port = await server.start()
    serve_metrics(settings.telemetry.metrics_port)
    await server.set_serving(False, NATS_HEALTH_NAME)
    nats.start()
    try:
        await composition.start()
    except BaseException:  # it refused to start: close what was opened, then say why
        await server.stop()
        await nats.close()
        raise
    log.info("service.ready", port=port, grpc=f"{settings.grpc.host}:{port}", nats=settings.nats.url)
    try:
        await stop.wait()
    finally:
        log.info("service.stopping")
        await composition.stop()
        await server.stop()
        await nats.close()
        engine.dispose()
        store.engine.dispose()
        log.info("service.stopped")


def run_service(spec: ServiceSpec, config_file: str | Path | None = None) -> int:
    """Entry point for `python -m onefold.<service>`; returns the process exit code."""
    try:
        settings = load_settings(spec.name, config_file, sections=spec.sections)
    except ConfigError as error:
        sys.stderr.write(f"onefold-{spec.name}: {error}\n")
        return 2
    configure_logging(spec.name, settings.telemetry)
    configure_tracing(spec.name, spec.version, settings.telemetry)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(spec, settings, stop)

    try:
        asyncio.run(main())
    except ConfigError as error:
        sys.stderr.write(f"onefold-{spec.name}: {error}\n")
        return 2
    return 0
