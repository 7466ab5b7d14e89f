"""Fixtures of the destinations application tests (destinations_harness.py holds what they build):

- `consent`: the real consent service composed in process (`composed_service`, a real nats-server)
  with its model set, and a service credential issued from its credential store;
- `make_destinations(...)`: a `DestinationsHarness` on the test's SQLite file (a second one is the
  service restarted); `destinations` is the first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from destinations_harness import (
    WORKSPACE,
    Clock,
    DestinationsFactory,
    DestinationsHarness,
)

from onefold.consent.bootstrap import compose as compose_consent
from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.destinations.adapters.read_model import DestinationsReadModel
from onefold.destinations.adapters.upstream import Upstream
from onefold.destinations.application import DestinationsApplication
from onefold.destinations.domain.definitions import Known
from onefold.destinations.domain.events import REGISTRY
from onefold.eventlog import EventStore
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.service import ServiceLog
from onefold.platform.client import Peers
from onefold.platform.database import create_engine
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.consent import ConsentService, running_consent

# The segments a destination may name: no segments service runs beside these tests (see `known`).
SEGMENTS = frozenset({"vip", "churn_risk"})
CONSENT_CALL_TIMEOUT_SECONDS = 10.0


@pytest.fixture
async def consent(tmp_path: Path, nats_server: NatsServerProcess) -> AsyncIterator[ConsentService]:
    (tmp_path / "consent").mkdir()
    async with running_consent(
        tmp_path / "consent",
        nats_server,
        compose_consent,
        workspace=WORKSPACE,
        purpose="crm_sync",
        channels=("email",),
        grant_channels=(),
        caller="destinations tests",
        jurisdiction=consent_pb2.JURISDICTION_GDPR,
        language="en",
    ) as consent:
        yield consent


@pytest.fixture
async def make_destinations(tmp_path: Path, consent: ConsentService) -> AsyncIterator[DestinationsFactory]:
    """`make(clock=..., environ=..., consent_target=...)`: a harness on the test's destinations
    directory; a second one (the same log and key) is the service restarted."""
    made: list[DestinationsHarness] = []
    keys = KeyEncryptionKey.generate()

    def make(
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        consent_target: str | None = None,
    ) -> DestinationsHarness:
        data = tmp_path / "destinations"
        data.mkdir(exist_ok=True)
        store = EventStore(
            create_engine(f"sqlite:///{data / 'destinations.db'}"),
            service="destinations",
            registry=REGISTRY,
            keys=keys,
        )
        store.create_schema()
        log = ServiceLog(store, projections=[DestinationsReadModel()])
        peers = Peers(
            {"consent": consent_target or consent.running.target, "segments": ""}, consent.service_token
        )
        moved_by_the_test = clock or Clock()
        application = DestinationsApplication(
            log,
            Upstream(peers, CONSENT_CALL_TIMEOUT_SECONDS),
            clock=moved_by_the_test,
            environ={} if environ is None else environ,
        )

        async def known(workspace: str) -> Known:
            # Upstream.known also lists segments' definitions, and no segments service runs here:
            # the purposes are consent's real answer, the segments a fixed set.
            model = await consent_pb2_grpc.ConsentServiceStub(peers.channel("consent")).GetModel(
                consent_pb2.GetModelRequest(), metadata=peers.acting_for(workspace)
            )
            return Known(purposes=frozenset(p.purpose_id for p in model.purposes), segments=SEGMENTS)

        application.destinations.known = known

        async def dispose_engine() -> None:
            store.engine.dispose()

        harness = DestinationsHarness(application, moved_by_the_test)
        harness.closers += [log.writer.stop, peers.close, application.aclose, dispose_engine]
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.close()


@pytest.fixture
def destinations(make_destinations: DestinationsFactory) -> DestinationsHarness:
    return make_destinations()
