"""Properties of the consent ledger, through the application in process on real databases:

- replay equals live: for random sequences of grants, withdrawals (some recorded late, with an earlier
  occurred time) and objections, the live answer equals the as-of fold's, GetConsents equals
  ConsentAsOf, and the read model rebuilt from the log equals the live one (Hypothesis);
- as-of answers at each boundary, on both time axes (occurred / recorded);
- malformed requests get clear errors naming the field, and never change the log;
- merges of profiles (identity's ProfilesMerged) combine consent conservatively; consent carried in
  tracked events (identity's EventResolved) is recorded with the notice version it was given under.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.platform.errors import FailedPrecondition, InvalidArgument

ALLOW, DENY = pb.DECISION_ALLOW, pb.DECISION_DENY
US = timedelta(microseconds=1)
DAY = timedelta(days=1)


def _answer(outcome) -> tuple[int, int, str]:
    return outcome.decision, outcome.reason, outcome.evidence.event_id if outcome.evidence else ""


# ------------------------------------------------------------------------------------ replay = live

PROFILES = ("p1", "p2")
PURPOSES = ("marketing", "analytics", "personalisation", "newsletter")
CHANNELS = ("", "email", "sms")

operation = st.one_of(
    st.tuples(
        st.just("grant"),
        st.sampled_from(PROFILES),
        st.sampled_from(PURPOSES),
        st.sampled_from(CHANNELS),
        st.integers(0, 60),  # occurred this many days before now (recorded now: late when > 0)
    ),
    st.tuples(
        st.just("withdraw"),
        st.sampled_from(PROFILES),
        st.sampled_from(PURPOSES),
        st.sampled_from(CHANNELS),
        st.integers(0, 60),
    ),
    st.tuples(
        st.just("object"), st.sampled_from(PROFILES), st.sampled_from(PURPOSES), st.just(""), st.just(0)
    ),
    st.tuples(st.just("lift"), st.sampled_from(PROFILES), st.sampled_from(PURPOSES), st.just(""), st.just(0)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    operations=st.lists(operation, min_size=1, max_size=14),
    merge_after=st.none() | st.integers(0, 14),
)
def test_replay_gives_the_same_answers_as_live(make_consent, identity_event, operations, merge_after) -> None:
    # A fresh database per example; in memory-backed /dev/shm where there is one (no fsync cost).
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as directory:
        consent = make_consent(f"sqlite:///{Path(directory) / 'c.db'}")
        try:
            if merge_after is None:
                _replay_equals_live(consent, operations)
            else:
                _replay_equals_live_with_a_merge(consent, identity_event, operations, merge_after)
        finally:
            consent.store.engine.dispose()


def _apply(
    consent, now: datetime, kind: str, profile: str, purpose: str, channel: str, days_ago: int
) -> None:
    channels = [channel] if channel else []
    when = now - timedelta(days=days_ago)
    if kind == "grant":
        with contextlib.suppress(FailedPrecondition):  # refused while an objection stands
            consent.grant(profile, purpose, channels=channels, occurred_at=when)
    elif kind == "withdraw":
        consent.withdraw(profile, purpose, channels=channels, occurred_at=when)
    else:
        consent.object(profile, purpose, lift=kind == "lift")


def _replay_equals_live_with_a_merge(consent, identity_event, operations, merge_after: int) -> None:
    """p2 is merged into p1 part-way (a grant recorded after the merge may have happened before it)."""
    consent.set_model()
    now = consent.clock.freeze()
    for index, step in enumerate(operations):
        if index == merge_after:
            _merge(consent, identity_event, "p1", "p2", occurred_at=now - 30 * DAY)
        _apply(consent, now, *step)
    _assert_replay_equals_live(consent, now)


def _replay_equals_live(consent, operations) -> None:
    consent.set_model()
    now = consent.clock.freeze()
    # An oracle: per (profile, purpose, channel) the latest answer by (occurred, order), objections.
    answers: dict[tuple[str, str, str], tuple[datetime, int, str]] = {}
    objections: set[tuple[str, str]] = set()
    for order, (kind, profile, purpose, channel, days_ago) in enumerate(operations):
        channels = [channel] if channel else []
        when = now - timedelta(days=days_ago)
        if kind == "grant":
            if (profile, purpose) in objections:
                with pytest.raises(FailedPrecondition):  # refused while an objection stands
                    consent.grant(profile, purpose, channels=channels, occurred_at=when)
                continue
            consent.grant(profile, purpose, channels=channels, occurred_at=when)
        elif kind == "withdraw":
            consent.withdraw(profile, purpose, channels=channels, occurred_at=when)
        else:
            consent.object(profile, purpose, lift=kind == "lift")
            (objections.add if kind == "object" else objections.discard)((profile, purpose))
            if kind == "object":  # an objection ends the purpose's grants (as of now, when it was made)
                for key, answer in list(answers.items()):
                    if key[:2] == (profile, purpose) and answer[2] == "grant":
                        answers[key] = (now, order, "withdraw")
            continue
        key = (profile, purpose, channel)
        answers[key] = max(answers.get(key, (when, -1, "")), (when, order, kind))

    def expected(profile: str, purpose: str, channel: str) -> int:
        if (profile, purpose) in objections:
            return pb.DECISION_REASON_OBJECTION
        own = answers.get((profile, purpose, channel))
        wide = answers.get((profile, purpose, "")) if channel else None
        latest = max((a for a in (own, wide) if a is not None), default=None)
        if latest is None:
            return pb.DECISION_REASON_NO_CONSENT
        if latest[2] == "withdraw":
            return pb.DECISION_REASON_WITHDRAWN
        if purpose == "newsletter" and latest[0] + timedelta(days=30) <= now:
            return pb.DECISION_REASON_EXPIRED
        return pb.DECISION_REASON_GRANTED

    for profile in PROFILES:
        for purpose, channel in itertools.product(PURPOSES, CHANNELS):
            assert consent.check(profile, purpose, channel).reason == expected(profile, purpose, channel), (
                profile,
                purpose,
                channel,
            )
    _assert_replay_equals_live(consent, now)


def _assert_replay_equals_live(consent, now: datetime) -> None:
    for profile in PROFILES:
        for purpose, channel in itertools.product(PURPOSES, CHANNELS):
            live = consent.check(profile, purpose, channel)
            folded = consent.check(profile, purpose, channel, at=now)
            assert _answer(live) == _answer(folded), (profile, purpose, channel)
        current = consent.sync(consent.app.history.consents(consent.workspace, profile))
        _, replayed = consent.sync(
            consent.app.history.as_of(consent.workspace, profile, as_of=None, known_at=None)
        )
        _, as_of_now = consent.sync(
            consent.app.history.as_of(consent.workspace, profile, as_of=now, known_at=None)
        )
        assert list(current.states) == replayed.states() == as_of_now.states()
        assert list(current.objections) == sorted(replayed.objections) == sorted(as_of_now.objections)

    live_rows = consent.state_rows()
    consent.rebuild()
    assert consent.state_rows() == live_rows
    # ...and the rebuilt read model answers as before.
    for profile in PROFILES:
        for purpose in PURPOSES:
            assert _answer(consent.check(profile, purpose, "email")) == _answer(
                consent.check(profile, purpose, "email", at=now)
            )


def test_replay_equals_live_on_both_databases(consent_on_both_databases) -> None:
    consent = consent_on_both_databases
    now = datetime.now(UTC)
    consent.grant("p1", "marketing", channels=["email"], occurred_at=now - 3 * DAY)
    consent.withdraw("p1", "marketing", channels=["email"], occurred_at=now - 5 * DAY)  # late, earlier
    consent.grant("p1", "analytics", occurred_at=now - 2 * DAY)
    consent.withdraw("p1", "analytics", channels=["sms"])
    consent.object("p2", "personalisation")
    consent.grant("p2", "newsletter", channels=["sms"], occurred_at=now - 40 * DAY)
    answers = {
        (p, purpose, c): _answer(consent.check(p, purpose, c))
        for p in PROFILES
        for purpose in PURPOSES
        for c in CHANNELS
    }
    at = consent.clock()
    for (p, purpose, c), answer in answers.items():
        assert _answer(consent.check(p, purpose, c, at=at)) == answer
    # The withdrawal recorded late happened before the grant: the grant is the latest answer.
    assert answers[("p1", "marketing", "email")][:2] == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert answers[("p1", "analytics", "sms")][:2] == (DENY, pb.DECISION_REASON_WITHDRAWN)
    assert answers[("p1", "analytics", "email")][:2] == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert answers[("p2", "newsletter", "sms")][:2] == (DENY, pb.DECISION_REASON_EXPIRED)
    live = consent.state_rows()
    assert consent.rebuild() == consent.store.head_position()
    assert consent.state_rows() == live
    for (p, purpose, c), answer in answers.items():
        assert _answer(consent.check(p, purpose, c)) == answer


# ------------------------------------------------------------------------------------ as-of boundaries


def _states(state) -> dict[tuple[str, str], int]:
    return {(s.purpose_id, s.channel): s.status for s in state.states()}


def test_as_of_answers_at_each_boundary_on_both_axes(consent) -> None:
    now = datetime.now(UTC)
    t_grant, t_withdraw, t_late = now - 3 * DAY, now - 2 * DAY, now - 10 * DAY
    grant = consent.grant("p1", "marketing", channels=["email"], occurred_at=t_grant).recorded[0]
    withdrawal = consent.withdraw("p1", "marketing", channels=["email"], occurred_at=t_withdraw).recorded[0]
    # Recorded last, occurred first: a paper form entered late.
    late = consent.grant("p1", "analytics", channels=["sms"], occurred_at=t_late).recorded[0]
    assert (grant.occurred_at, withdrawal.occurred_at, late.occurred_at) == (t_grant, t_withdraw, t_late)
    assert grant.recorded_at < withdrawal.recorded_at < late.recorded_at

    def occurred(at: datetime) -> dict[tuple[str, str], int]:
        return _states(
            consent.sync(consent.app.history.as_of(consent.workspace, "p1", as_of=at, known_at=None))[1]
        )

    def known(at: datetime) -> dict[tuple[str, str], int]:
        return _states(
            consent.sync(consent.app.history.as_of(consent.workspace, "p1", as_of=None, known_at=at))[1]
        )

    marketing, analytics = ("marketing", "email"), ("analytics", "sms")
    granted, withdrawn = pb.CONSENT_STATUS_GRANTED, pb.CONSENT_STATUS_WITHDRAWN
    # Occurred axis (what was true in the world): the late event counts from when it happened.
    assert occurred(t_late - US) == {}
    assert occurred(t_late) == occurred(t_late + US) == {analytics: granted}
    assert occurred(t_grant - US) == {analytics: granted}
    assert occurred(t_grant) == occurred(t_grant + US) == {analytics: granted, marketing: granted}
    assert occurred(t_withdraw - US) == {analytics: granted, marketing: granted}
    assert occurred(t_withdraw) == occurred(t_withdraw + US) == {analytics: granted, marketing: withdrawn}
    # Recorded axis (what the ledger knew): the late event is unknown until it was recorded.
    assert known(grant.recorded_at - US) == {}
    assert known(grant.recorded_at) == known(grant.recorded_at + US) == {marketing: granted}
    assert known(withdrawal.recorded_at - US) == {marketing: granted}
    assert known(withdrawal.recorded_at) == {marketing: withdrawn}
    assert known(late.recorded_at - US) == {marketing: withdrawn}
    assert known(late.recorded_at) == {marketing: withdrawn, analytics: granted}
    # Both axes: true at t_late, but not known before it was recorded.
    both = consent.sync(
        consent.app.history.as_of(consent.workspace, "p1", as_of=t_late, known_at=late.recorded_at - US)
    )[1]
    assert _states(both) == {} and both.events == 0
    both = consent.sync(
        consent.app.history.as_of(consent.workspace, "p1", as_of=t_late, known_at=late.recorded_at)
    )[1]
    assert _states(both) == {analytics: granted} and both.events == 1

    # Checks at a time answer on the occurred axis, at each boundary.
    def decided(at: datetime) -> tuple[int, int]:
        outcome = consent.check("p1", "marketing", "email", at=at)
        return outcome.decision, outcome.reason

    assert decided(t_grant - US) == (DENY, pb.DECISION_REASON_NO_CONSENT)
    assert decided(t_grant) == decided(t_withdraw - US) == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert decided(t_withdraw) == decided(t_withdraw + US) == (DENY, pb.DECISION_REASON_WITHDRAWN)
    assert consent.check("p1", "analytics", "sms", at=t_late).decision == ALLOW
    assert consent.check("p1", "analytics", "sms", at=t_late - US).decision == DENY


# ------------------------------------------------------------------------------------ malformed requests


def test_malformed_requests_get_clear_errors_and_change_nothing(consent) -> None:
    now = datetime.now(UTC)
    consent.grant("p1", "marketing", channels=["email"])
    head = consent.store.head_position()
    future = now + timedelta(hours=1)

    def refused(call, field: str, words: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            call()
        assert field in [f for f, _ in caught.value.violations], caught.value.violations
        assert words in str(caught.value)
        assert consent.store.head_position() == head

    refused(lambda: consent.grant("p1", "lottery"), "purpose_ids", "unknown purpose 'lottery'")
    refused(lambda: consent.withdraw("p1", "lottery"), "purpose_ids", "unknown purpose")
    refused(lambda: consent.object("p1", "lottery"), "purpose_ids", "unknown purpose")
    refused(
        lambda: consent.check("p1", "lottery", "email"), "purpose_id", "marketing"
    )  # names the known ones
    refused(lambda: consent.grant("p1", "marketing", channels=["fax"]), "channels", "unknown channel 'fax'")
    refused(lambda: consent.withdraw("p1", "marketing", channels=["fax"]), "channels", "unknown channel")
    refused(lambda: consent.check("p1", "marketing", "fax"), "channel", "unknown channel")
    refused(lambda: consent.grant("p1"), "purpose_ids", "name the purposes")
    refused(lambda: consent.withdraw("p1"), "purpose_ids", "name the purposes")
    refused(
        lambda: consent.grant("p1", "marketing", proof=consent.proof(version="9")),
        "proof.notice_version",
        "no version '9'",
    )
    refused(
        lambda: consent.grant("p1", "marketing", proof=consent.proof(notice_id="cookies")),
        "proof.notice_version",
        "notice cookies",
    )
    refused(
        lambda: consent.grant("p1", "marketing", proof=pb.Proof()),
        "proof.notice_version",
        "notice version shown",
    )
    refused(
        lambda: consent.grant("p1", "marketing", proof=consent.proof(text_sha256="ab" * 32)),
        "proof.text_sha256",
        "does not match",
    )
    refused(lambda: consent.grant("p1", "marketing", occurred_at=future), "occurred_at", "in the future")
    refused(lambda: consent.withdraw("p1", "marketing", occurred_at=future), "occurred_at", "in the future")
    refused(lambda: consent.check("p1", "marketing", "email", at=future), "at", "future")
    refused(
        lambda: consent.sync(consent.app.history.as_of(consent.workspace, "p1", as_of=future, known_at=None)),
        "as_of",
        "in the future",
    )
    refused(
        lambda: consent.sync(consent.app.history.as_of(consent.workspace, "p1", as_of=None, known_at=future)),
        "known_at",
        "in the future",
    )
    # Consent given before the notice version existed cannot rest on it.
    consent.publish(consent.notice("privacy", "2", ["marketing"], now - DAY))
    head = consent.store.head_position()
    refused(
        lambda: consent.grant("p1", "marketing", proof=consent.proof(version="2"), occurred_at=now - 2 * DAY),
        "proof.notice_version",
        "published after",
    )
    refused(lambda: consent.grant("", "marketing"), "subject.profile_id", "not a profile id")
    refused(lambda: consent.check("p 1", "marketing", "email"), "subject.profile_id", "not a profile id")
    refused(lambda: consent.check("x" * 65, "marketing", "email"), "subject.profile_id", "not a profile id")
    # A workspace without a model says so.
    refused(
        lambda: consent.check("p1", "marketing", "email", workspace="empty"),
        "purpose_id",
        "no purposes yet",
    )
    # The state is as it was.
    assert consent.check("p1", "marketing", "email").decision == ALLOW


# ------------------------------------------------------------------------------------ identity: merges


def _merge(consent, identity_event, survivor: str, merged: str, **kwargs):
    envelope = identity_event(
        identity_pb2.ProfilesMerged(
            survivor_id=survivor, merged_id=merged, workspace=consent.workspace, rule="identifier:email"
        ),
        **kwargs,
    )
    consent.deliver(envelope)
    return envelope


def test_merge_combines_consent_conservatively(consent, identity_event) -> None:
    now = datetime.now(UTC)
    # Survivor S: marketing/email granted, analytics withdrawn, newsletter expiring late.
    consent.grant("s", "marketing", "analytics", channels=["email"], occurred_at=now - 5 * DAY)
    consent.withdraw("s", "analytics", channels=["email"], occurred_at=now - 4 * DAY)
    consent.grant("s", "newsletter", channels=["email"], occurred_at=now - DAY)
    # Merged M: marketing/email withdrawn (before S granted), analytics granted later than S withdrew,
    # newsletter expiring sooner, personalisation objected, sms marketing granted only here.
    consent.grant("m", "marketing", "analytics", channels=["email"], occurred_at=now - 8 * DAY)
    consent.withdraw("m", "marketing", channels=["email"], occurred_at=now - 7 * DAY)
    consent.grant("m", "newsletter", channels=["email"], occurred_at=now - 20 * DAY)
    consent.grant("m", "marketing", channels=["sms"], occurred_at=now - 3 * DAY)
    consent.object("m", "personalisation")
    m_newsletter = consent.check("m", "newsletter", "email").evidence

    envelope = _merge(consent, identity_event, "s", "m")
    ((_, merged_event),) = consent.ledger("s")[-1:]
    assert isinstance(merged_event, pb.ConsentsMerged)
    assert merged_event.evidence_event_id == envelope.event_id and merged_event.merged_profile_id == "m"
    assert list(merged_event.objections) == ["personalisation"]

    def decided(profile: str, purpose: str, channel: str) -> tuple[int, int]:
        outcome = consent.check(profile, purpose, channel)
        return outcome.decision, outcome.reason

    for profile in ("s", "m"):  # the merged id now answers for the survivor
        assert (
            consent.sync(consent.app.checks.check(consent.workspace, profile, "marketing", "email"))[0] == "s"
        )
        # A withdrawal on either side wins over a grant on the other, whichever came later.
        assert decided(profile, "marketing", "email") == (DENY, pb.DECISION_REASON_WITHDRAWN)
        assert decided(profile, "analytics", "email") == (DENY, pb.DECISION_REASON_WITHDRAWN)
        # A grant only one side had is kept.
        assert decided(profile, "marketing", "sms") == (ALLOW, pb.DECISION_REASON_GRANTED)
        # Objections carry over.
        assert decided(profile, "personalisation", "email") == (DENY, pb.DECISION_REASON_OBJECTION)
    # Of two grants, the one expiring first stands.
    assert consent.check("s", "newsletter", "email").evidence == m_newsletter
    assert consent.sync(consent.app.history.consents(consent.workspace, "m")).profile_id == "s"

    # A later grant on the merged subject counts (it is recorded on the survivor's ledger).
    written = consent.grant("m", "marketing", channels=["email"])
    assert written.profile_id == "s"
    assert decided("s", "marketing", "email") == (ALLOW, pb.DECISION_REASON_GRANTED)
    # ...but the carried objection still refuses personalisation grants until lifted.
    with pytest.raises(FailedPrecondition):
        consent.grant("m", "personalisation")

    # Merging again changes nothing; a chain of merges redirects to the last survivor.
    head = consent.store.head_position()
    _merge(consent, identity_event, "s", "m")
    assert consent.store.head_position() == head
    _merge(consent, identity_event, "x", "s")
    assert consent.sync(consent.app.checks.check(consent.workspace, "m", "marketing", "email"))[0] == "x"
    assert decided("m", "marketing", "email") == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert decided("m", "personalisation", "email") == (DENY, pb.DECISION_REASON_OBJECTION)

    # The read model rebuilt from the log (aliases included) answers the same.
    live = consent.state_rows()
    answers = {(p, q): decided(p, q, "email") for p in ("s", "m", "x") for q in PURPOSES}
    consent.rebuild()
    assert consent.state_rows() == live
    assert {(p, q): decided(p, q, "email") for p in ("s", "m", "x") for q in PURPOSES} == answers
    # The history of the survivor shows the merged profile's ledger too.
    _, history = consent.sync(consent.app.history.ledger_history(consent.workspace, "x"))
    assert {e.stream_id.rsplit(":", 1)[1] for e, _ in history} == {"s", "m", "x"}


def test_merge_keeps_a_withdrawal_on_the_survivor_against_a_grant_of_the_merged(
    consent, identity_event
) -> None:
    consent.grant("s", "marketing", channels=["email"])
    consent.withdraw("s", "marketing", channels=["email"])
    consent.grant("m", "marketing", channels=["email"])  # later than the survivor's withdrawal
    _merge(consent, identity_event, "s", "m")
    assert consent.check("s", "marketing", "email").reason == pb.DECISION_REASON_WITHDRAWN


def test_as_of_before_a_merge_answers_from_the_merged_profiles_own_ledger(consent, identity_event) -> None:
    now = datetime.now(UTC)
    consent.grant("m", "marketing", channels=["email"], occurred_at=now - 10 * DAY)
    consent.grant("s", "analytics", channels=["email"], occurred_at=now - 10 * DAY)
    consent.withdraw("s", "marketing", channels=["email"], occurred_at=now - 9 * DAY)
    merged_at = now - 5 * DAY
    _merge(consent, identity_event, "s", "m", occurred_at=merged_at)
    _merge(consent, identity_event, "x", "s", occurred_at=now - 2 * DAY)
    merge_recorded = consent.ledger("s")[-1][0].recorded_at

    def states(profile: str, **at) -> dict[tuple[str, str], int]:
        return _states(
            consent.sync(
                consent.app.history.as_of(
                    consent.workspace, profile, **{"as_of": None, "known_at": None, **at}
                )
            )[1]
        )

    # Before the merge, m's consents were its own: an auditor sees its grant, not s's withdrawal.
    before = merged_at - US
    assert states("m", as_of=before) == {("marketing", "email"): pb.CONSENT_STATUS_GRANTED}
    assert consent.check("m", "marketing", "email", at=before).decision == ALLOW
    assert states("s", as_of=before) == {
        ("analytics", "email"): pb.CONSENT_STATUS_GRANTED,
        ("marketing", "email"): pb.CONSENT_STATUS_WITHDRAWN,
    }
    # From the merge on, the combination counts (conservatively: the withdrawal wins)...
    assert consent.check("m", "marketing", "email", at=merged_at).reason == pb.DECISION_REASON_WITHDRAWN
    assert states("m", as_of=merged_at) == states("s", as_of=merged_at)
    # ...on the recorded axis too: before the ledger learnt of the merge, m answered for itself.
    assert states("m", known_at=merge_recorded - US) == {("marketing", "email"): pb.CONSENT_STATUS_GRANTED}
    assert states("m", known_at=merge_recorded) == states("s", known_at=merge_recorded)
    # A chain: between the two merges m answered through s, afterwards through x.
    assert states("m", as_of=now - 3 * DAY) == states("s", as_of=now - 3 * DAY)
    assert states("m") == states("x") and consent.check("m", "analytics", "email").decision == ALLOW


def test_unmerge_survives_a_rebuild(consent, identity_event) -> None:
    consent.grant("m", "analytics", channels=["email"])
    _merge(consent, identity_event, "s", "m")
    consent.deliver(
        identity_event(
            identity_pb2.ProfileUnmerged(
                profile_id="s",
                workspace=consent.workspace,
                parts=[
                    identity_pb2.ProfileUnmerged.Part(profile_id="s"),
                    identity_pb2.ProfileUnmerged.Part(profile_id="m"),
                ],
            )
        )
    )
    assert consent.sync(consent.app.checks.check(consent.workspace, "m", "analytics", "email"))[0] == "m"
    consent.rebuild()
    assert consent.sync(consent.app.checks.check(consent.workspace, "m", "analytics", "email"))[0] == "m"


# ------------------------------------------------------------------------------------ identity: tracked consent


def _resolved(consent, identity_event, profile: str, at: datetime, **context) -> identity_pb2.EventResolved:
    tracked = ingest_pb2.TrackingEvent(
        type=ingest_pb2.EVENT_TYPE_TRACK,
        message_id=f"msg-{profile}-{at.timestamp()}",
        user_id=profile,
        event="Cookie Banner Answered",
        consent=ingest_pb2.ConsentContext(**context),
    )
    tracked.timestamp.FromDatetime(at)
    resolved = identity_pb2.EventResolved(
        profile_id=profile,
        workspace=consent.workspace,
        event_id=f"ev-{profile}-{at.timestamp()}",
        event=tracked,
    )
    consent.deliver(identity_event(resolved))
    return resolved


def test_consent_in_tracked_events_is_recorded_with_the_inferred_notice(consent, identity_event) -> None:
    now = datetime.now(UTC)
    consent.publish(consent.notice("privacy", "2", ["marketing", "analytics"], now - 5 * DAY))
    # A banner 10 days ago (before version 2): recorded under version 1, by purpose name or id.
    old = _resolved(
        consent,
        identity_event,
        "p1",
        now - 10 * DAY,
        purposes_granted=["Marketing", "analytics", "Health", "tarot"],
        purposes_denied=["personalisation"],
        source="cmp:onetrust",
    )
    ledger = consent.ledger("p1")
    assert [(type(m).__name__, m.purpose_id) for _, m in ledger] == [
        ("ConsentGranted", "marketing"),
        ("ConsentGranted", "analytics"),
        ("ConsentWithdrawn", "personalisation"),
    ]  # the sensitive purpose needs its own consent via the API; unknown categories are skipped
    for event, message in ledger:
        assert message.proof.evidence_event_id == old.event_id and message.proof.source == "cmp:onetrust"
        assert event.occurred_at == now - 10 * DAY
    granted = ledger[0][1]
    assert (granted.notice_id, granted.notice_version) == ("privacy", "1")
    assert granted.proof.text_sha256 == consent.text_sha256(consent.notice_text("privacy", "1"))
    assert consent.check("p1", "marketing", "email").decision == ALLOW
    assert consent.check("p1", "personalisation", "email").reason == pb.DECISION_REASON_WITHDRAWN

    # Today: the current version (2); a notice the event names is used as named.
    _resolved(consent, identity_event, "p2", now, purposes_granted=["marketing"])
    assert consent.ledger("p2")[0][1].notice_version == "2"
    _resolved(
        consent,
        identity_event,
        "p3",
        now,
        purposes_granted=["marketing"],
        notice_id="privacy",
        notice_version="1",
    )
    assert consent.ledger("p3")[0][1].notice_version == "1"
    # A notice named by id only: its version current then. A notice the model does not have, one
    # that does not cover the purpose, or one not yet published: no proof, nothing recorded.
    _resolved(
        consent, identity_event, "p5", now - 10 * DAY, purposes_granted=["marketing"], notice_id="privacy"
    )
    assert consent.ledger("p5")[0][1].notice_version == "1"
    for named in (("privacy", "9"), ("cookies", "1"), ("sensitive", "1"), ("transfer", "")):
        _resolved(
            consent,
            identity_event,
            "p6",
            now,
            purposes_granted=["marketing"],
            notice_id=named[0],
            notice_version=named[1],
        )
    _resolved(
        consent,
        identity_event,
        "p6",
        now - 10 * DAY,
        purposes_granted=["marketing"],
        notice_id="privacy",
        notice_version="2",
    )
    assert consent.ledger("p6") == []

    # An objection is not overridden by a banner; it is lifted only by the subject, via the API.
    consent.object("p1", "marketing")
    _resolved(consent, identity_event, "p1", now, purposes_granted=["marketing"])
    assert consent.check("p1", "marketing", "email").reason == pb.DECISION_REASON_OBJECTION
    assert len(consent.ledger("p1")) == 4  # the objection only
    # A withdrawal carried in an event is effective like an API one.
    _resolved(consent, identity_event, "p2", now, purposes_denied=["Marketing"])
    assert consent.check("p2", "marketing", "email").reason == pb.DECISION_REASON_WITHDRAWN
    # Events of a merged profile are recorded on the survivor.
    _merge(consent, identity_event, "p3", "p4")
    _resolved(consent, identity_event, "p4", now, purposes_granted=["analytics"])
    assert consent.check("p3", "analytics", "email").decision == ALLOW
