"""Fixtures of the journeys application tests (journeys_harness.py holds what they build):

- `consent`: the real consent service composed in process (`composed_service`, a real nats-server)
  with its model set, and a service credential issued from its credential store;
- `journeys`: a `JourneysHarness` on a fresh SQLite file; `make_journeys(...)` builds another
  (the same directory: the service restarted; other channel settings, a pacing policy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from journeys_harness import (
    WORKSPACE,
    Clock,
    JourneysFactory,
    JourneysHarness,
)

from onefold.consent.bootstrap import compose as compose_consent
from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.eventlog import EventStore
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.service import ServiceLog
from onefold.journeys.adapters.providers.factory import build_channels
from onefold.journeys.adapters.providers.sandbox import SEALED_PURPOSE
from onefold.journeys.adapters.providers.sealing import SubjectKeySealer
from onefold.journeys.adapters.providers.settings import ChannelsSettings
from onefold.journeys.adapters.read_model import JourneysReadModel
from onefold.journeys.adapters.upstream import Upstream
from onefold.journeys.application import JourneysApplication
from onefold.journeys.domain.definitions import Known
from onefold.journeys.domain.events import REGISTRY
from onefold.journeys.domain.instance import subject_of
from onefold.journeys.domain.pacing import PacingPolicy
from onefold.platform.client import Peers
from onefold.platform.database import create_engine
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.consent import ConsentService, running_consent

# The segments a journey may name: no segments service runs beside these tests (see `known`).
SEGMENTS = frozenset({"vip", "cart_abandoners"})
CONSENT_CALL_TIMEOUT_SECONDS = 10.0


@pytest.fixture
async def consent(tmp_path: Path, nats_server: NatsServerProcess) -> AsyncIterator[ConsentService]:
    (tmp_path / "consent").mkdir()
    async with running_consent(
        tmp_path / "consent",
        nats_server,
        compose_consent,
        workspace=WORKSPACE,
        purpose="marketing",
        channels=("email", "sms"),
        grant_channels=("email", "sms"),
        caller="journeys tests",
        jurisdiction=consent_pb2.JURISDICTION_PIPL,
        language="zh-CN",
    ) as consent:
        yield consent


@pytest.fixture
async def make_journeys(tmp_path: Path, consent: ConsentService) -> AsyncIterator[JourneysFactory]:
    """`make(channels=..., policy=..., clock=..., consent_target=...)`: a harness on the test's
    journeys directory; a second one (the same log, key and sandbox files) is the service
    restarted. `consent_target` points it elsewhere than the running consent service."""
    made: list[JourneysHarness] = []
    keys = KeyEncryptionKey.generate()

    def make(
        *,
        channels: ChannelsSettings | None = None,
        policy: PacingPolicy | None = None,
        clock: Clock | None = None,
        consent_target: str | None = None,
    ) -> JourneysHarness:
        data = tmp_path / "journeys"
        data.mkdir(exist_ok=True)
        store = EventStore(
            create_engine(f"sqlite:///{data / 'journeys.db'}"),
            service="journeys",
            registry=REGISTRY,
            keys=keys,
        )
        store.create_schema()
        log = ServiceLog(store, projections=[JourneysReadModel()])
        built = build_channels(
            channels or ChannelsSettings(),
            data_dir=data,
            sealer=SubjectKeySealer(log, subject_of, SEALED_PURPOSE),
        )
        peers = Peers(
            {"consent": consent_target or consent.running.target, "segments": ""}, consent.service_token
        )
        upstream = Upstream(peers, CONSENT_CALL_TIMEOUT_SECONDS)
        moved_by_the_test = clock or Clock()
        application = JourneysApplication(log, upstream, built, policy=policy, clock=moved_by_the_test)

        async def known(workspace: str) -> Known:
            # Upstream.known also lists segments' definitions, and no segments service runs here:
            # the purposes are consent's real answer, the segments a fixed set.
            model = await consent_pb2_grpc.ConsentServiceStub(peers.channel("consent")).GetModel(
                consent_pb2.GetModelRequest(), metadata=peers.acting_for(workspace)
            )
            return Known(segments=SEGMENTS, purposes=frozenset(p.purpose_id for p in model.purposes))

        application.journeys.known = known

        async def dispose_engine() -> None:
            store.engine.dispose()

        harness = JourneysHarness(application, moved_by_the_test)
        harness.closers += [log.writer.stop, peers.close, built.aclose, built.sandbox.aclose, dispose_engine]
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.close()


@pytest.fixture
def journeys(make_journeys: JourneysFactory) -> JourneysHarness:
    return make_journeys()
