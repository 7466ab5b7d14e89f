"""PIPL Art. 47: the processor deletes on its own initiative — expired consents are recorded as such,
and subjects past their purposes' retention get an erasure request (tracked like any other)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from onefold.consent.adapters.read_model import request_rows
from onefold.consent.application import duties
from onefold.contracts.consent.v1 import consent_pb2 as pb


@pytest.fixture
def retained(tmp_path: Path, make_consent):
    """The standard model plus a purpose `offers` whose data is kept `days` after consent ends."""

    def make(days: int):
        harness = make_consent(f"sqlite:///{tmp_path / f'retained-{days}.db'}")
        offers = pb.Purpose(
            purpose_id="offers",
            name="Offers",
            kind=pb.PURPOSE_KIND_MARKETING,
            legal_bases={"PIPL": pb.LEGAL_BASIS_CONSENT, "GDPR": pb.LEGAL_BASIS_CONSENT},
            retention_days=days,
        )
        harness.set_model(harness.build_model(extra_purposes=[offers]))
        return harness

    return make


def test_pipl_art47_expired_consents_are_recorded_by_the_duty(consent) -> None:
    given = datetime.now(UTC) - timedelta(days=40)
    written = consent.grant("p1", "newsletter", channels=["email"], occurred_at=given)
    consent.grant("p2", "marketing", channels=["email"])  # no validity: never expires
    assert consent.sync(duties.expire_due(consent.app.consent_log, datetime.now(UTC))) == 1
    assert consent.sync(duties.expire_due(consent.app.consent_log, datetime.now(UTC))) == 0  # done once
    expired = [m for _, m in consent.ledger("p1") if isinstance(m, pb.ConsentExpired)]
    assert [(m.purpose_id, m.grant_event_id) for m in expired] == [
        ("newsletter", written.recorded[0].event_id)
    ]
    event = next(e for e, m in consent.ledger("p1") if isinstance(m, pb.ConsentExpired))
    assert event.occurred_at == given + timedelta(days=30)  # dated when it expired
    assert consent.check("p1", "newsletter", "email").reason == pb.DECISION_REASON_EXPIRED
    assert consent.check("p2", "marketing", "email").reason == pb.DECISION_REASON_GRANTED


def test_pipl_art47_retention_past_withdrawal_opens_an_erasure_request(retained) -> None:
    consent = retained(30)
    long_ago = datetime.now(UTC) - timedelta(days=60)
    consent.grant("gone", "offers", channels=["email"], occurred_at=long_ago - timedelta(days=1))
    consent.withdraw("gone", "offers", channels=["email"], occurred_at=long_ago)
    consent.grant("recent", "offers", channels=["email"], occurred_at=long_ago)
    consent.withdraw("recent", "offers", channels=["email"])  # ended today: kept 30 days more
    consent.grant("holding", "offers", channels=["email"], occurred_at=long_ago)  # still consents
    consent.grant("unlimited", "marketing", channels=["email"], occurred_at=long_ago)
    consent.withdraw("unlimited", "marketing", channels=["email"], occurred_at=long_ago)  # no retention set
    now = datetime.now(UTC)
    assert [d.profile_id for d in consent.sync(duties.retention_due(consent.app.consent_log, now))] == [
        "gone"
    ]
    # Thirty days later the second one is due too.
    assert {
        d.profile_id
        for d in consent.sync(duties.retention_due(consent.app.consent_log, now + timedelta(days=31)))
    } == {
        "gone",
        "recent",
    }


def test_pipl_art47_the_duty_loop_opens_one_request_per_subject(retained) -> None:
    consent = retained(1)
    consent.grant("gone", "offers", channels=["email"], occurred_at=datetime.now(UTC) - timedelta(days=3))
    consent.withdraw("gone", "offers", channels=["email"], occurred_at=datetime.now(UTC) - timedelta(days=2))

    async def two_rounds() -> None:
        task = asyncio.create_task(
            duties.run_duties(consent.app.consent_log, consent.app.requests, lambda: True, interval_seconds=0)
        )
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            with consent.store.engine.connect() as conn:
                if conn.execute(sa.select(sa.func.count()).select_from(request_rows)).scalar():
                    break
        await asyncio.sleep(0.2)  # further rounds must not open a second request
        task.cancel()

    asyncio.run(two_rounds())
    with consent.store.engine.connect() as conn:
        rows = conn.execute(sa.select(request_rows.c.profile_id, request_rows.c.type)).all()
    assert [(r.profile_id, r.type) for r in rows] == [("gone", pb.REQUEST_TYPE_ERASURE)]
    opened = [m for _, m in consent.ledger("gone") if isinstance(m, pb.ConsentSubjectErased)]
    assert opened  # consent's own step of the erasure ran: the subject's checks now deny
    assert consent.check("gone", "offers", "email").reason == pb.DECISION_REASON_ERASED
