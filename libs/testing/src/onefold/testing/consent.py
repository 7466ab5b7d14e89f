"""The real consent service as the tests of the services that ask it (journeys, destinations) run
it: composed in process (`composed_service`, a real nats-server), a model of one purpose set through
its API, an admin credential for the test's own calls and a service credential for the service
under test; `grant` and `withdraw` go through its gRPC API as a person's app would.

    async with running_consent(directory, nats_server, compose, workspace="acme", purpose="marketing",
                               channels=("email", "sms"), caller="journeys tests") as consent:
        await consent.grant("p-1")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.contracts.identity.v1 import identity_pb2
from onefold.eventlog.service import EventSourcedService
from onefold.platform.auth import ANY_WORKSPACE
from onefold.platform.nats_server import NatsServerProcess
from onefold.platform.service import ServiceContext
from onefold.testing.services import ComposedService, composed_service

NOTICE = "privacy"


def one_purpose_model(
    purpose: str, channels: Sequence[str], language: str = "en"
) -> consent_pb2.ConsentModel:
    """A model of one marketing purpose on `channels`, consent its lawful basis under PIPL and GDPR,
    and the notice (published a month ago) that a grant's proof names."""
    legal_bases = {"PIPL": consent_pb2.LEGAL_BASIS_CONSENT, "GDPR": consent_pb2.LEGAL_BASIS_CONSENT}
    model = consent_pb2.ConsentModel(
        purposes=[
            consent_pb2.Purpose(
                purpose_id=purpose, kind=consent_pb2.PURPOSE_KIND_MARKETING, legal_bases=legal_bases
            )
        ],
        channels=list(channels),
    )
    notice = model.notices.add(
        notice_id=NOTICE, version="1", language=language, text_sha256="0" * 64, purpose_ids=[purpose]
    )
    notice.published_at.FromDatetime(datetime.now(UTC) - timedelta(days=30))
    return model


@dataclass
class ConsentService:
    """The real consent service, composed in process, with its model of one purpose."""

    running: ComposedService
    channel: grpc.aio.Channel
    admin_token: str
    service_token: str  # for the service under test
    purpose: str
    jurisdiction: consent_pb2.Jurisdiction.ValueType  # what the proofs of `grant` and `withdraw` say
    grant_channels: tuple[str, ...]  # what `grant` covers unless told (none: every channel)

    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token}"),)

    @property
    def stub(self) -> consent_pb2_grpc.ConsentServiceStub:
        return consent_pb2_grpc.ConsentServiceStub(self.channel)

    def proof(self) -> consent_pb2.Proof:
        return consent_pb2.Proof(
            notice_id=NOTICE,
            notice_version="1",
            jurisdiction=self.jurisdiction,
            collection_point="app:settings",
        )

    async def grant(self, *profile_ids: str, channels: Sequence[str] | None = None) -> set[str]:
        """Grant each person the purpose on `channels` (default: `grant_channels`); the ids of the
        ledger events recorded."""
        recorded: set[str] = set()
        for profile_id in profile_ids:
            written = await self.stub.GrantConsent(
                consent_pb2.GrantConsentRequest(
                    subject=identity_pb2.ProfileRef(profile_id=profile_id),
                    purpose_ids=[self.purpose],
                    channels=list(self.grant_channels if channels is None else channels),
                    proof=self.proof(),
                ),
                metadata=self.admin_metadata(),
            )
            recorded |= {event.event_id for event in written.recorded}
        return recorded

    async def withdraw(self, profile_id: str, channel: str = "") -> str:
        """Withdraw the purpose on `channel` ("": everywhere); the id of the ledger event recorded."""
        written = await self.stub.WithdrawConsent(
            consent_pb2.WithdrawConsentRequest(
                subject=identity_pb2.ProfileRef(profile_id=profile_id),
                purpose_ids=[self.purpose],
                channels=[channel] if channel else [],
                proof=self.proof(),
                reason="asked to stop",
            ),
            metadata=self.admin_metadata(),
        )
        [recorded] = written.recorded
        return recorded.event_id

    def envelope_of(self, event_id: str) -> EventEnvelope:
        """Consent's ledger event as its bus hands it to subscribers (decrypted)."""
        store = self.running.service.store
        [event] = [e for e in store.iter_all() if e.event_id == event_id]
        return store.to_envelope(event)


@asynccontextmanager
async def running_consent(
    directory: Path,
    nats_server: NatsServerProcess,
    compose: Callable[[ServiceContext], EventSourcedService[Any]],
    *,
    workspace: str,
    purpose: str,
    channels: Sequence[str],
    caller: str,
    grant_channels: Sequence[str] = (),
    jurisdiction: consent_pb2.Jurisdiction.ValueType = consent_pb2.JURISDICTION_PIPL,
    language: str = "en",
) -> AsyncIterator[ConsentService]:
    """Consent (its bootstrap's `compose`) running in `directory` (it exists) with its model set."""
    async with composed_service("consent", compose, directory, nats_server) as running:
        admin = running.credentials.issue(workspace, ["admin"]).token
        service = running.credentials.issue(ANY_WORKSPACE, ["service"], name=caller).token
        async with grpc.aio.insecure_channel(running.target) as channel:
            consent = ConsentService(
                running, channel, admin, service, purpose, jurisdiction, tuple(grant_channels)
            )
            await consent.stub.SetModel(
                consent_pb2.SetModelRequest(model=one_purpose_model(purpose, channels, language)),
                metadata=consent.admin_metadata(),
            )
            yield consent
