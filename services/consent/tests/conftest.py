"""Fixtures for the consent service's tests: the application in process on a fresh database, with an
injectable clock, and a factory for consent models.

- `make_model(...)` builds a `ConsentModel` proto: the standard purposes (one of each kind, a
  non-consent one, an expiring one), channels, notices published `published_days_ago` days ago and
  member-state guardian ages.
- `consent`: a `ConsentHarness` on a fresh SQLite file with the standard model set for workspace
  `acme`; `consent_on_both_databases`: the same, run once on SQLite and once on PostgreSQL.
- `make_consent(url, keys=None)`: a harness on any database URL (no model set); given the key of
  another harness on the same database, it is a second replica of the service.
- `identity_event(message, occurred_at=...)`: an identity EventEnvelope (ProfilesMerged,
  EventResolved, ...) to hand to `harness.deliver(...)` as the identity subscriber does.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message

from onefold.consent.adapters.read_model import ConsentReadModel
from onefold.consent.application import ConsentApplication, Written
from onefold.consent.domain.events import REGISTRY
from onefold.consent.domain.ledger import ConsentDecision, ledger_stream
from onefold.consent.domain.model import SEPARATE_CONSENT_KINDS
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog import EventStore
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.models import RecordedEvent
from onefold.eventlog.service import ServiceLog
from onefold.platform.client import Peers
from onefold.platform.database import create_engine

T = TypeVar("T")

WORKSPACE = "acme"
CHANNELS = ("email", "sms", "push", "wechat")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def notice_text(notice_id: str, version: str) -> str:
    """The exact text shown for a notice version (its hash is what the model records)."""
    return f"{notice_id} notice, version {version}: what we collect, why, and how to withdraw."


class Clock:
    """The application's clock: the wall clock, or a frozen instant (`freeze`, `unfreeze`).

    Only the application reads it (occurred times, checks, expiry); the log stamps `recorded_at`
    with the wall clock."""

    def __init__(self) -> None:
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen if self.frozen is not None else datetime.now(UTC)

    def freeze(self, at: datetime | None = None) -> datetime:
        self.frozen = at or datetime.now(UTC)
        return self.frozen

    def unfreeze(self) -> None:
        self.frozen = None


def notice(
    notice_id: str,
    version: str,
    purposes: Iterable[str],
    published_at: datetime,
    *,
    material: bool = False,
    language: str = "zh-CN",
) -> pb.Notice:
    message = pb.Notice(
        notice_id=notice_id,
        version=version,
        language=language,
        text_sha256=text_sha256(notice_text(notice_id, version)),
        purpose_ids=list(purposes),
        material_change=material,
    )
    message.published_at.FromDatetime(published_at)
    return message


def recipient() -> pb.CrossBorderRecipient:
    return pb.CrossBorderRecipient(
        name="Globex CRM GmbH",
        country="DE",
        contact="privacy@globex.example",
        purpose="customer relationship management",
        method="encrypted API transfer",
        data_types=["name", "email", "purchase history"],
        rights_procedure="write to privacy@globex.example",
    )


CONSENT_EVERYWHERE = {"PIPL": pb.LEGAL_BASIS_CONSENT, "GDPR": pb.LEGAL_BASIS_CONSENT}


def build_model(
    *,
    published_days_ago: int = 400,
    now: datetime | None = None,
    validity_days: int = 30,
    guardian_age: Mapping[str, int] | None = None,
    extra_purposes: Sequence[pb.Purpose] = (),
    extra_notices: Sequence[pb.Notice] = (),
) -> pb.ConsentModel:
    """The standard model. Purposes:

    marketing (MARKETING), analytics (ANALYTICS), personalisation (PERSONALISATION), orders (CUSTOM,
    contract under PIPL and GDPR: no consent needed), fraud (CUSTOM, legitimate interests under GDPR,
    consent under PIPL), newsletter (MARKETING, consent valid `validity_days`), health (SENSITIVE),
    transfer (CROSS_BORDER, with a recipient).

    Notices (published `published_days_ago` days before `now`): privacy v1 (the ordinary purposes),
    sensitive v1 (health), transfer v1 (transfer).
    """
    published = (now or datetime.now(UTC)) - timedelta(days=published_days_ago)
    purposes = [
        pb.Purpose(
            purpose_id="marketing",
            name="Marketing",
            kind=pb.PURPOSE_KIND_MARKETING,
            legal_bases=CONSENT_EVERYWHERE,
        ),
        pb.Purpose(
            purpose_id="analytics",
            name="Analytics",
            kind=pb.PURPOSE_KIND_ANALYTICS,
            legal_bases=CONSENT_EVERYWHERE,
        ),
        pb.Purpose(
            purpose_id="personalisation",
            name="Personalised marketing",
            kind=pb.PURPOSE_KIND_PERSONALISATION,
            legal_bases=CONSENT_EVERYWHERE,
        ),
        pb.Purpose(
            purpose_id="orders",
            name="Order fulfilment",
            kind=pb.PURPOSE_KIND_CUSTOM,
            legal_bases={"PIPL": pb.LEGAL_BASIS_CONTRACT, "GDPR": pb.LEGAL_BASIS_CONTRACT},
        ),
        pb.Purpose(
            purpose_id="fraud",
            name="Fraud prevention",
            kind=pb.PURPOSE_KIND_CUSTOM,
            legal_bases={"PIPL": pb.LEGAL_BASIS_CONSENT, "GDPR": pb.LEGAL_BASIS_LEGITIMATE_INTERESTS},
        ),
        pb.Purpose(
            purpose_id="newsletter",
            name="Newsletter",
            kind=pb.PURPOSE_KIND_MARKETING,
            legal_bases=CONSENT_EVERYWHERE,
            consent_validity_days=validity_days,
        ),
        pb.Purpose(
            purpose_id="health",
            name="Health data",
            kind=pb.PURPOSE_KIND_SENSITIVE,
            legal_bases={"PIPL": pb.LEGAL_BASIS_CONSENT},
        ),
        pb.Purpose(
            purpose_id="transfer",
            name="Transfer to the CRM abroad",
            kind=pb.PURPOSE_KIND_CROSS_BORDER,
            legal_bases={"PIPL": pb.LEGAL_BASIS_CONSENT},
            recipient=recipient(),
        ),
        *extra_purposes,
    ]
    ordinary = ["marketing", "analytics", "personalisation", "fraud", "newsletter"]
    ordinary += [p.purpose_id for p in extra_purposes if p.kind not in SEPARATE_CONSENT_KINDS]
    notices = [
        notice("privacy", "1", ordinary, published),
        notice("sensitive", "1", ["health"], published),
        notice("transfer", "1", ["transfer"], published),
        *extra_notices,
    ]
    return pb.ConsentModel(
        purposes=purposes,
        channels=list(CHANNELS),
        notices=notices,
        guardian_age=dict(guardian_age if guardian_age is not None else {"GDPR:DE": 16, "GDPR:FR": 15}),
    )


@dataclass
class ConsentHarness:
    """The consent application on a real database, with shortcuts for the ledger's use cases."""

    log: ServiceLog
    app: ConsentApplication
    projection: ConsentReadModel
    clock: Clock
    loop: asyncio.AbstractEventLoop  # runs the async use cases for the synchronous shortcuts
    workspace: str = WORKSPACE
    actor: str = "cred-test"

    @property
    def store(self) -> EventStore:
        return self.log.store

    @property
    def kek(self) -> KeyEncryptionKey:
        assert self.log.keys is not None
        return self.log.keys

    def sync(self, use_case: Coroutine[Any, Any, T]) -> T:
        """Run an (async) use case to its end, from a test with or without an event loop."""
        return asyncio.run_coroutine_threadsafe(use_case, self.loop).result()

    def close(self) -> None:
        self.sync(self.app.close())
        self.sync(self.log.writer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.store.engine.dispose()

    # The builders, for tests (a test module cannot import this conftest).
    notice = staticmethod(notice)
    text_sha256 = staticmethod(text_sha256)
    notice_text = staticmethod(notice_text)
    build_model = staticmethod(build_model)

    # -------------------------------------------------------------------------- the model

    def set_model(
        self, model: pb.ConsentModel | None = None, workspace: str | None = None
    ) -> pb.ConsentModel:
        return self.sync(
            self.app.model.set_model(workspace or self.workspace, model or build_model(), "admin")
        )

    def publish(self, message: pb.Notice, workspace: str | None = None) -> pb.ConsentModel:
        """Add a notice version to the workspace's current model."""
        current = pb.ConsentModel()
        current.CopyFrom(self.sync(self.app.model.get_model(workspace or self.workspace)))
        current.notices.append(message)
        return self.sync(self.app.model.set_model(workspace or self.workspace, current, "admin"))

    # -------------------------------------------------------------------------- the ledger

    def proof(self, notice_id: str = "privacy", version: str = "1", **fields: Any) -> pb.Proof:
        fields.setdefault("jurisdiction", pb.JURISDICTION_PIPL)
        return pb.Proof(notice_id=notice_id, notice_version=version, **fields)

    def grant(
        self,
        profile_id: str,
        *purposes: str,
        channels: Sequence[str] = (),
        proof: pb.Proof | None = None,
        occurred_at: datetime | None = None,
        workspace: str | None = None,
        **request: Any,
    ) -> Written:
        message = pb.GrantConsentRequest(
            purpose_ids=list(purposes), channels=list(channels), proof=proof or self.proof(), **request
        )
        if occurred_at is not None:
            message.occurred_at.FromDatetime(occurred_at)
        return self.sync(self.app.ledger.grant(workspace or self.workspace, profile_id, message, self.actor))

    def withdraw(
        self,
        profile_id: str,
        *purposes: str,
        channels: Sequence[str] = (),
        occurred_at: datetime | None = None,
        workspace: str | None = None,
        **request: Any,
    ) -> Written:
        message = pb.WithdrawConsentRequest(purpose_ids=list(purposes), channels=list(channels), **request)
        if occurred_at is not None:
            message.occurred_at.FromDatetime(occurred_at)
        return self.sync(
            self.app.ledger.withdraw(workspace or self.workspace, profile_id, message, self.actor)
        )

    def object(self, profile_id: str, purpose_id: str, *, lift: bool = False) -> Written:
        request = pb.RecordObjectionRequest(purpose_id=purpose_id, lift=lift)
        return self.sync(self.app.ledger.record_objection(self.workspace, profile_id, request, self.actor))

    def check(
        self,
        profile_id: str,
        purpose_id: str,
        channel: str = "",
        *,
        at: datetime | None = None,
        jurisdiction: int = 0,
        workspace: str | None = None,
    ) -> ConsentDecision:
        return self.sync(
            self.app.checks.check(
                workspace or self.workspace, profile_id, purpose_id, channel, at=at, jurisdiction=jurisdiction
            )
        )[1]

    # -------------------------------------------------------------------------- upstream (identity)

    def deliver(self, *envelopes: Any) -> None:
        """One identity subscriber batch: one store transaction around the handler."""
        with self.store.transaction() as conn:
            self.app.identity.handle_identity(conn, list(envelopes))

    # -------------------------------------------------------------------------- reading back

    def ledger(self, profile_id: str, workspace: str | None = None) -> list[tuple[RecordedEvent, Message]]:
        """The subject's ledger events as stored, each with its decrypted message."""
        events = self.store.read_stream(ledger_stream(workspace or self.workspace, profile_id))
        return [(event, self.store.decode(event)) for event in events]

    def state_rows(self) -> list[tuple[Any, ...]]:
        """Every row of the consent_state read model, sorted (to compare live and rebuilt)."""
        from onefold.consent.adapters.read_model import state

        with self.store.engine.connect() as conn:
            return sorted(tuple(row) for row in conn.execute(sa.select(state)))

    def rebuild(self) -> int:
        """Drop the read models and fold the whole log into them again."""
        return self.log.projector.rebuild(self.projection)


def make_harness(url: str, keys: KeyEncryptionKey | None = None) -> ConsentHarness:
    """The service's log as the bootstrap builds it (ServiceLog), on `url`, with `keys` or a fresh
    key (a second harness on the same database with the first one's key is another replica)."""
    store = EventStore(
        create_engine(url), service="consent", registry=REGISTRY, keys=keys or KeyEncryptionKey.generate()
    )
    store.create_schema()
    projection = ConsentReadModel()
    log = ServiceLog(store, projections=[projection])
    clock = Clock()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="consent-harness", daemon=True).start()
    application = ConsentApplication(log, Peers({}, ""), clock=clock)
    return ConsentHarness(log, application, projection, clock, loop)


@pytest.fixture
def make_model() -> Callable[..., pb.ConsentModel]:
    return build_model


@pytest.fixture
def make_consent() -> Iterator[Callable[..., ConsentHarness]]:
    made: list[ConsentHarness] = []

    def make(url: str, keys: KeyEncryptionKey | None = None) -> ConsentHarness:
        harness = make_harness(url, keys)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def consent(tmp_path: Path, make_consent: Callable[[str], ConsentHarness]) -> ConsentHarness:
    """The application on a fresh SQLite file, the standard model set for `acme`."""
    harness = make_consent(f"sqlite:///{tmp_path / 'consent.db'}")
    harness.set_model()
    return harness


@pytest.fixture
def consent_on_both_databases(
    database_url: str, make_consent: Callable[[str], ConsentHarness]
) -> ConsentHarness:
    """As `consent`, once on SQLite and once on PostgreSQL (skipped without it)."""
    harness = make_consent(database_url)
    harness.set_model()
    return harness


def identity_envelope(
    message: Message, *, workspace: str = WORKSPACE, occurred_at: datetime | None = None
) -> Any:
    """An identity event as the subscriber hands it over (EventEnvelope with plaintext payload)."""
    import uuid

    from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope

    envelope = EventEnvelope(
        event_id=str(uuid.uuid4()),
        type=message.DESCRIPTOR.full_name,
        workspace=workspace,
        payload=message.SerializeToString(),
    )
    envelope.occurred_at.FromDatetime(occurred_at or datetime.now(UTC))
    return envelope


@pytest.fixture
def identity_event() -> Callable[..., Any]:
    """Build identity envelopes: `identity_event(identity_pb2.ProfilesMerged(...))`."""
    return identity_envelope
