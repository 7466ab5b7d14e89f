"""CheckConsent answers from memory (ConsentStateCache), never from a state older than the log when
the check began: each test first makes the answer cached, then changes it — through this process,
through a second replica on the same database, by erasure, merge, a new model or a rebuild — and
the very next check must see the change. On SQLite and PostgreSQL, against real databases.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from onefold.consent.adapters.state_cache import ConsentStateCache
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.platform.errors import Unavailable

ALLOW, DENY = pb.DECISION_ALLOW, pb.DECISION_DENY


def _answer(
    harness, profile_id: str, purpose_id: str = "marketing", channel: str = "email"
) -> tuple[int, int]:
    decision = harness.check(profile_id, purpose_id, channel)
    return decision.decision, decision.reason


def _cached(harness, profile_id: str) -> bool:
    cache: ConsentStateCache = harness.app.checks.states
    return (harness.workspace, profile_id) in cache._states


def test_a_withdrawal_is_seen_by_the_next_check(consent_on_both_databases) -> None:
    consent = consent_on_both_databases
    assert _answer(consent, "p1") == (DENY, pb.DECISION_REASON_NO_CONSENT)
    consent.grant("p1", "marketing", channels=["email"])
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert _cached(consent, "p1")
    consent.withdraw("p1", "marketing", channels=["email"])
    assert _answer(consent, "p1") == (DENY, pb.DECISION_REASON_WITHDRAWN)
    consent.object("p1", "analytics")
    assert _answer(consent, "p1", "analytics", "") == (DENY, pb.DECISION_REASON_OBJECTION)


def test_a_write_by_another_replica_is_seen_by_the_next_check(database_url, make_consent) -> None:
    here = make_consent(database_url)
    here.set_model()
    there = make_consent(database_url, here.kek)  # another process on the same database
    here.grant("p1", "marketing", channels=["email"])
    assert _answer(here, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert _cached(here, "p1")
    there.withdraw("p1", "marketing", channels=["email"])
    assert _answer(here, "p1") == (DENY, pb.DECISION_REASON_WITHDRAWN)
    there.grant("p1", "marketing", channels=["email"])
    assert _answer(here, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)


def test_an_erased_subject_is_not_answered_from_the_cache(consent_on_both_databases) -> None:
    consent = consent_on_both_databases
    consent.grant("p1", "marketing", channels=["email"])
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert _cached(consent, "p1")
    consent.sync(consent.app.ledger.erase_subject(consent.workspace, "p1", "req-1"))
    assert _answer(consent, "p1") == (DENY, pb.DECISION_REASON_ERASED)


def test_a_merge_is_seen_through_either_profile(consent, identity_event) -> None:
    consent.grant("survivor", "marketing", channels=["email"])
    consent.grant("merged", "analytics")
    assert _answer(consent, "merged") == (DENY, pb.DECISION_REASON_NO_CONSENT)
    assert _answer(consent, "survivor", "analytics", "") == (DENY, pb.DECISION_REASON_NO_CONSENT)
    assert _cached(consent, "merged") and _cached(consent, "survivor")
    consent.deliver(
        identity_event(
            identity_pb2.ProfilesMerged(
                survivor_id="survivor",
                merged_id="merged",
                workspace=consent.workspace,
                rule="identifier:email",
            )
        )
    )
    assert consent.check("merged", "marketing", "email").decision == ALLOW
    assert consent.check("survivor", "analytics").decision == ALLOW
    consent.withdraw("merged", "marketing", channels=["email"])  # recorded on the survivor's ledger
    assert _answer(consent, "survivor") == (DENY, pb.DECISION_REASON_WITHDRAWN)
    assert _answer(consent, "merged") == (DENY, pb.DECISION_REASON_WITHDRAWN)


def test_a_new_model_is_seen_by_the_next_check(consent) -> None:
    consent.grant("p1", "marketing", channels=["email"])
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    now = datetime.now(UTC)
    consent.publish(consent.notice("privacy", "2", ["marketing"], now - timedelta(seconds=1), material=True))
    assert _answer(consent, "p1") == (DENY, pb.DECISION_REASON_RECONSENT_REQUIRED)


def test_a_rebuild_leaves_the_answers_and_later_writes_are_seen(consent) -> None:
    consent.grant("p1", "marketing", channels=["email"])
    consent.grant("p2", "marketing", channels=["email"])
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    consent.rebuild()
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    consent.withdraw("p1", "marketing", channels=["email"])
    assert _answer(consent, "p1") == (DENY, pb.DECISION_REASON_WITHDRAWN)
    assert _answer(consent, "p2") == (ALLOW, pb.DECISION_REASON_GRANTED)


def test_half_rebuilt_rows_are_never_answered_from(consent) -> None:
    """While the read model is rebuilt (another process's `onefold replay`), a cached answer still
    stands (it follows the log, which a rebuild does not change) and a miss is UNAVAILABLE, not an
    answer from incomplete rows."""
    consent.grant("p1", "marketing", channels=["email"])
    consent.grant("p2", "marketing", channels=["email"])
    consent.withdraw("p2", "marketing", channels=["email"])
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    with consent.store.transaction() as conn:  # what a rebuild commits first
        consent.projection.reset(conn)
        consent.store.record_tracking(conn, "projection:consent", 0, "")
    assert _answer(consent, "p1") == (ALLOW, pb.DECISION_REASON_GRANTED)
    with pytest.raises(Unavailable):
        consent.check("p2", "marketing", "email")
    assert not _cached(consent, "p2")
    consent.log.projector.catch_up()
    assert _answer(consent, "p2") == (DENY, pb.DECISION_REASON_WITHDRAWN)
    assert _cached(consent, "p2")


def test_checks_during_writes_see_each_write_once_it_returned(consent_on_both_databases) -> None:
    """Writers and readers at once: every check made after a write returned reflects it, whatever
    checks (single ones and batches, in other threads) ran in between."""
    consent = consent_on_both_databases
    profiles = [f"p{i}" for i in range(5)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_checking() -> None:
        try:
            while not stop.is_set():
                for profile in profiles:
                    consent.check(profile, "marketing", "email")
                consent.sync(
                    consent.app.checks.check_batch(
                        consent.workspace, [(p, "marketing", "email", None, 0) for p in profiles]
                    )
                )
        except BaseException as error:  # surfaced below: a reader must never fail
            failures.append(error)

    readers = [threading.Thread(target=keep_checking) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for round_ in range(8):
            for profile in profiles:
                consent.grant(profile, "marketing", channels=["email"])
                assert _answer(consent, profile) == (ALLOW, pb.DECISION_REASON_GRANTED), (round_, profile)
                consent.withdraw(profile, "marketing", channels=["email"])
                assert _answer(consent, profile) == (DENY, pb.DECISION_REASON_WITHDRAWN), (round_, profile)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert failures == []
