"""One test per article of PIPL and GDPR that the consent ledger enforces (docs/consent.md lists them), through
the application in process on a real SQLite file, with an injectable clock.

GDPR Art. 18 / PIPL Art. 44 (restriction) are not here: a restriction is only set through a
data-subject request (requests.py), whose tests cover it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from onefold.consent.domain.model import ModelError, model_from_proto
from onefold.contracts.common.v1.envelope_pb2 import Actor
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.platform.errors import FailedPrecondition, InvalidArgument

ALLOW, DENY = pb.DECISION_ALLOW, pb.DECISION_DENY
US = timedelta(microseconds=1)


def _model_error(model: pb.ConsentModel) -> ModelError:
    with pytest.raises(ModelError) as caught:
        model_from_proto(model)
    return caught.value


def _purpose(model: pb.ConsentModel, purpose_id: str) -> tuple[int, pb.Purpose]:
    return next((i, p) for i, p in enumerate(model.purposes) if p.purpose_id == purpose_id)


# --------------------------------------------------------------------------------------- lawful bases


def test_pipl_art13_non_consent_basis_allows_and_is_recorded(consent, make_model) -> None:
    # "orders" rests on contract under PIPL: no consent check, but the answer says why.
    outcome = consent.check("p1", "orders", "email", jurisdiction=pb.JURISDICTION_PIPL)
    assert (outcome.decision, outcome.reason) == (ALLOW, pb.DECISION_REASON_NON_CONSENT_BASIS)
    assert "contract" in outcome.explanation and "PIPL Art. 13" in outcome.explanation
    assert outcome.evidence is None
    # The basis is recorded per jurisdiction in the model.
    stored = consent.sync(consent.app.model.get_model(consent.workspace))
    assert dict(_purpose(stored, "orders")[1].legal_bases) == {
        "PIPL": pb.LEGAL_BASIS_CONTRACT,
        "GDPR": pb.LEGAL_BASIS_CONTRACT,
    }
    # A purpose resting on consent still needs it.
    assert consent.check("p1", "marketing", "email").reason == pb.DECISION_REASON_NO_CONSENT

    # A GDPR-only basis is not a lawful basis under PIPL, and the model says which field.
    model = make_model()
    index, fraud = _purpose(model, "fraud")
    fraud.legal_bases["PIPL"] = pb.LEGAL_BASIS_LEGITIMATE_INTERESTS
    error = _model_error(model)
    assert error.field == f"purposes[{index}].legal_bases" and "PIPL Art. 13" in str(error)
    with pytest.raises(InvalidArgument) as caught:
        consent.set_model(model)
    assert caught.value.violations[0][0] == f"purposes[{index}].legal_bases"
    # Sensitive information cannot rest on another basis under PIPL (Art. 29: separate consent).
    model = make_model()
    index, health = _purpose(model, "health")
    health.legal_bases["PIPL"] = pb.LEGAL_BASIS_CONTRACT
    assert "PIPL Art. 29" in str(_model_error(model))


def test_gdpr_art6_lawful_basis_per_jurisdiction(consent, make_model) -> None:
    # "fraud": legitimate interests under GDPR, consent under PIPL.
    gdpr = consent.check("p1", "fraud", "email", jurisdiction=pb.JURISDICTION_GDPR)
    assert (gdpr.decision, gdpr.reason) == (ALLOW, pb.DECISION_REASON_NON_CONSENT_BASIS)
    assert "legitimate_interests" in gdpr.explanation and "GDPR Art. 6" in gdpr.explanation
    pipl = consent.check("p1", "fraud", "email", jurisdiction=pb.JURISDICTION_PIPL)
    assert (pipl.decision, pipl.reason) == (DENY, pb.DECISION_REASON_NO_CONSENT)
    # Unset, the jurisdiction is the subject's latest consent's.
    consent.grant("p2", "marketing", proof=consent.proof(jurisdiction=pb.JURISDICTION_GDPR))
    assert consent.check("p2", "fraud", "email").reason == pb.DECISION_REASON_NON_CONSENT_BASIS
    # A PIPL-only basis is not one of GDPR's six.
    model = make_model()
    index, fraud = _purpose(model, "fraud")
    fraud.legal_bases["GDPR"] = pb.LEGAL_BASIS_NEWS_REPORTING
    error = _model_error(model)
    assert error.field == f"purposes[{index}].legal_bases" and "GDPR Art. 6" in str(error)
    # Unknown jurisdictions and unspecified bases are refused too.
    model = make_model()
    _purpose(model, "fraud")[1].legal_bases["CCPA"] = pb.LEGAL_BASIS_CONSENT
    assert "unknown jurisdiction" in str(_model_error(model))
    model = make_model()
    _purpose(model, "fraud")[1].legal_bases["GDPR"] = pb.LEGAL_BASIS_UNSPECIFIED
    assert "unspecified" in str(_model_error(model))


# --------------------------------------------------------------------------------------- notices


def test_pipl_art14_material_notice_change_requires_reconsent(consent) -> None:
    now = datetime.now(UTC)
    granted = consent.grant(
        "p1", "marketing", "analytics", channels=["email"], occurred_at=now - timedelta(days=10)
    )
    # Version 2 changes marketing materially (analytics not named), published 5 days ago.
    changed_at = now - timedelta(days=5)
    consent.publish(consent.notice("privacy", "2", ["marketing"], changed_at, material=True))

    outcome = consent.check("p1", "marketing", "email")
    assert (outcome.decision, outcome.reason) == (DENY, pb.DECISION_REASON_RECONSENT_REQUIRED)
    assert "PIPL Art. 14" in outcome.explanation and "version 2" in outcome.explanation
    assert outcome.evidence is not None and outcome.evidence.event_id == granted.recorded[0].event_id
    # Before the change was published the consent counted; a purpose the change does not name still does.
    assert consent.check("p1", "marketing", "email", at=changed_at - US).decision == ALLOW
    assert (
        consent.check("p1", "marketing", "email", at=changed_at).reason
        == pb.DECISION_REASON_RECONSENT_REQUIRED
    )
    assert consent.check("p1", "analytics", "email").decision == ALLOW

    # Re-granting under the new version: allowed again, resting on the new grant.
    again = consent.grant("p1", "marketing", channels=["email"], proof=consent.proof(version="2"))
    outcome = consent.check("p1", "marketing", "email")
    assert (outcome.decision, outcome.reason) == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert outcome.evidence is not None and outcome.evidence.event_id == again.recorded[0].event_id
    # Showing the outdated version again is not informed consent to the changed purpose.
    consent.grant("p2", "marketing", channels=["email"], proof=consent.proof(version="1"))
    assert consent.check("p2", "marketing", "email").reason == pb.DECISION_REASON_RECONSENT_REQUIRED

    # A published version is evidence: it cannot be edited or removed, only superseded.
    edits = [
        lambda n: setattr(n, "text_sha256", consent.text_sha256("something else")),
        lambda n: n.purpose_ids.append("orders"),
        lambda n: setattr(n, "material_change", True),
        lambda n: n.published_at.FromDatetime(now),
        None,  # removed
    ]
    for edit in edits:
        edited = consent.sync(consent.app.model.get_model(consent.workspace))
        if edit is None:
            del edited.notices[0]
        else:
            edit(edited.notices[0])
        with pytest.raises(FailedPrecondition, match="publish a new version"):
            consent.set_model(edited)
    # The same model again is fine (re-applying a file).
    consent.set_model(consent.sync(consent.app.model.get_model(consent.workspace)))


def test_pipl_art14_non_material_notice_change_keeps_consent(consent) -> None:
    now = datetime.now(UTC)
    consent.grant("p1", "marketing", channels=["email"], occurred_at=now - timedelta(days=10))
    consent.publish(consent.notice("privacy", "2", ["marketing"], now - timedelta(days=5), material=False))
    outcome = consent.check("p1", "marketing", "email")
    assert (outcome.decision, outcome.reason) == (ALLOW, pb.DECISION_REASON_GRANTED)
    # A material change to another notice's purposes only does not touch marketing either.
    consent.publish(consent.notice("privacy", "3", ["analytics"], now - timedelta(days=1), material=True))
    assert consent.check("p1", "marketing", "email").decision == ALLOW


# --------------------------------------------------------------------------------------- withdrawal


def test_pipl_art15_withdrawal_is_immediate(consent) -> None:
    now = datetime.now(UTC)
    consent.grant("p1", "marketing", channels=["email"], occurred_at=now - timedelta(days=2))
    instant = consent.clock.freeze(now)
    withdrawn = consent.withdraw("p1", "marketing", channels=["email"])
    # Checked at the very instant of the withdrawal: denied, resting on the withdrawal.
    outcome = consent.check("p1", "marketing", "email")
    assert (outcome.decision, outcome.reason) == (DENY, pb.DECISION_REASON_WITHDRAWN)
    assert outcome.evidence is not None and outcome.evidence.event_id == withdrawn.recorded[0].event_id
    assert outcome.evidence.occurred_at == instant
    assert "PIPL Art. 15" in outcome.explanation
    # The same through the as-of fold at that instant.
    assert consent.check("p1", "marketing", "email", at=instant).reason == pb.DECISION_REASON_WITHDRAWN
    # Earlier processing stays lawful: before the withdrawal the consent counted.
    assert consent.check("p1", "marketing", "email", at=instant - US).decision == ALLOW
    # The write's answer already shows the new state.
    assert [s.status for s in withdrawn.state.states()] == [pb.CONSENT_STATUS_WITHDRAWN]


def test_gdpr_art7_3_withdrawal_as_easy_as_grant(consent) -> None:
    grant_fields = set(pb.GrantConsentRequest.DESCRIPTOR.fields_by_name)
    withdraw_fields = set(pb.WithdrawConsentRequest.DESCRIPTOR.fields_by_name)
    # The same shape: who, what, which channels, proof, when.
    assert {"subject", "purpose_ids", "channels", "proof", "occurred_at"} <= grant_fields & withdraw_fields

    instant = consent.clock.freeze()
    consent.grant("p1", "marketing", "analytics")  # purpose-wide, every channel
    assert consent.check("p1", "marketing", "sms").decision == ALLOW
    # No notice, no proof at all: a withdrawal needs nothing the person does not have at hand.
    withdrawn = consent.withdraw("p1", "marketing")
    assert withdrawn.recorded[0].occurred_at == instant
    for channel in ("", "email", "sms"):
        outcome = consent.check("p1", "marketing", channel)
        assert (outcome.decision, outcome.reason) == (DENY, pb.DECISION_REASON_WITHDRAWN)
    # Withdrawing one channel leaves the others to the purpose-wide grant.
    consent.clock.unfreeze()
    consent.withdraw("p1", "analytics", channels=["sms"])
    assert consent.check("p1", "analytics", "sms").reason == pb.DECISION_REASON_WITHDRAWN
    assert consent.check("p1", "analytics", "email").decision == ALLOW


def test_gdpr_art7_4_purposes_are_independent(consent) -> None:
    consent.grant("p1", "marketing", "analytics", channels=["email"])
    consent.withdraw("p1", "marketing")
    assert consent.check("p1", "marketing", "email").decision == DENY
    assert consent.check("p1", "analytics", "email").decision == ALLOW


# --------------------------------------------------------------------------------------- objections


def test_pipl_art24_refusal_of_personalised_marketing(consent) -> None:
    consent.grant("p1", "marketing", "personalisation", channels=["push"])
    assert consent.check("p1", "personalisation", "push").decision == ALLOW
    refused = consent.object("p1", "personalisation")
    outcome = consent.check("p1", "personalisation", "push")
    assert (outcome.decision, outcome.reason) == (DENY, pb.DECISION_REASON_OBJECTION)
    assert "PIPL Art. 24" in outcome.explanation
    assert outcome.evidence is not None and outcome.evidence.event_id == refused.recorded[0].event_id
    # The non-personalised option stays: marketing itself is still allowed.
    assert consent.check("p1", "marketing", "push").decision == ALLOW


def test_gdpr_art21_objection_to_direct_marketing_is_absolute(consent) -> None:
    consent.grant(
        "p1", "marketing", channels=["email"], proof=consent.proof(jurisdiction=pb.JURISDICTION_GDPR)
    )
    objection = consent.object("p1", "marketing")
    assert objection.state.objections.keys() == {"marketing"}
    # Denied despite the grant, on every channel.
    for channel in ("email", "sms", ""):
        outcome = consent.check("p1", "marketing", channel)
        assert (outcome.decision, outcome.reason) == (DENY, pb.DECISION_REASON_OBJECTION)
        assert "GDPR Art. 21(3)" in outcome.explanation
    # A new grant is refused while the objection stands, and nothing is recorded.
    before = consent.store.head_position()
    with pytest.raises(FailedPrecondition) as caught:
        consent.grant("p1", "marketing", channels=["email"])
    assert caught.value.violations == [("purpose_ids", "objection stands")]
    assert consent.store.head_position() == before
    # The subject lifts it: the grant from before the objection does not come back by itself...
    consent.object("p1", "marketing", lift=True)
    outcome = consent.check("p1", "marketing", "email")
    assert (outcome.decision, outcome.reason) == (DENY, pb.DECISION_REASON_WITHDRAWN)
    # ...but granting works again and counts.
    consent.grant("p1", "marketing", channels=["email"])
    outcome = consent.check("p1", "marketing", "email")
    assert (outcome.decision, outcome.reason) == (ALLOW, pb.DECISION_REASON_GRANTED)


# --------------------------------------------------------------------------------------- separate consent


def test_pipl_art28_29_sensitive_purpose_needs_separate_consent(consent, make_model) -> None:
    before = consent.store.head_position()
    with pytest.raises(FailedPrecondition) as caught:
        consent.grant("p1", "health", "marketing", proof=consent.proof("sensitive"))
    assert "PIPL Art. 29" in str(caught.value)
    assert caught.value.violations == [("purpose_ids", "separate consent required")]
    assert consent.store.head_position() == before  # nothing of the bundle was recorded
    # Under a notice that does not cover it: refused as well.
    with pytest.raises(InvalidArgument, match="does not cover health"):
        consent.grant("p1", "health")
    # Granted alone, under its own notice: allowed.
    consent.grant("p1", "health", proof=consent.proof("sensitive"))
    outcome = consent.check("p1", "health", "email")
    assert (outcome.decision, outcome.reason) == (ALLOW, pb.DECISION_REASON_GRANTED)
    assert "sensitive" in outcome.explanation
    assert consent.check("p1", "marketing", "email").reason == pb.DECISION_REASON_NO_CONSENT
    # A sensitive purpose is marked as such in the model (its kind) and keeps consent as its basis.
    assert (
        _purpose(consent.sync(consent.app.model.get_model(consent.workspace)), "health")[1].kind
        == pb.PURPOSE_KIND_SENSITIVE
    )


def test_pipl_art31_under_14_needs_guardian_consent(consent) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        consent.grant("kid", "marketing", subject_age=13)
    assert "PIPL Art. 31" in str(caught.value) and caught.value.violations[0][0] == "guardian"
    # Guardian evidence must be complete: a name alone is not verified consent.
    with pytest.raises(FailedPrecondition):
        consent.grant("kid", "marketing", subject_age=13, guardian=pb.Guardian(name="Li Na"))
    guardian = pb.Guardian(name="Li Na", relation="parent", verified_by="id_card_check")
    written = consent.grant("kid", "marketing", channels=["sms"], subject_age=13, guardian=guardian)
    assert [s.guardian_given for s in written.state.states()] == [True]
    assert consent.check("kid", "marketing", "sms").decision == ALLOW
    ((event, message),) = consent.ledger("kid")
    assert message.guardian_given and message.guardian.relation == "parent" and message.subject_age == 13
    assert message.guardian.name == "Li Na"  # decrypted with the subject's key...
    assert b"Li Na" not in event.payload  # ...and stored encrypted
    # At 14 no guardian is needed under PIPL.
    written = consent.grant("teen", "marketing", subject_age=14)
    assert [s.guardian_given for s in written.state.states()] == [False]


def test_gdpr_art8_guardian_age_per_member_state(consent, make_model) -> None:
    def gdpr(country: str = "") -> pb.Proof:
        return consent.proof(jurisdiction=pb.JURISDICTION_GDPR, country=country)

    # The standard model: GDPR:FR = 15, GDPR:DE = 16, the GDPR default 16.
    consent.grant("fr15", "marketing", subject_age=15, proof=gdpr("FR"))
    assert consent.check("fr15", "marketing", "email").decision == ALLOW
    for profile, country in (("de15", "DE"), ("eu15", "")):
        with pytest.raises(FailedPrecondition) as caught:
            consent.grant(profile, "marketing", subject_age=15, proof=gdpr(country))
        assert "GDPR Art. 8" in str(caught.value) and "under 16" in str(caught.value)
    consent.grant("de16", "marketing", subject_age=16, proof=gdpr("de"))  # country codes in any case
    guardian = pb.Guardian(name="Anna", relation="parent", verified_by="payment_card")
    written = consent.grant("de15", "marketing", subject_age=15, proof=gdpr("DE"), guardian=guardian)
    assert written.state.states()[0].guardian_given

    # Member states may set 13 to 16; the model refuses anything else.
    for key, age in (("GDPR:IT", 12), ("GDPR", 17), ("GDPR:AT", 0)):
        assert "GDPR Art. 8(1)" in str(_model_error(make_model(guardian_age={key: age})))
    assert "PIPL Art. 31" in str(_model_error(make_model(guardian_age={"PIPL": 13})))
    # A member state is named by its upper-case ISO code, the way checks look it up.
    for key in ("GDPR:fr", "GDPR:France", "PIPL:CN", "EU:FR"):
        assert _model_error(make_model(guardian_age={key: 15})).field == "guardian_age"
    model_from_proto(make_model(guardian_age={"GDPR:IT": 13, "GDPR:AT": 14, "GDPR": 16}))


# --------------------------------------------------------------------------------------- cross-border


def test_pipl_art38_39_cross_border_needs_recipient_and_separate_consent(consent, make_model) -> None:
    # The model requires the recipient's details on a cross-border purpose.
    model = make_model()
    index, transfer = _purpose(model, "transfer")
    transfer.ClearField("recipient")
    error = _model_error(model)
    assert error.field == f"purposes[{index}].recipient" and "PIPL Art. 39" in str(error)
    for name in ("name", "country", "contact", "purpose", "method", "data_types"):
        model = make_model()
        transfer = _purpose(model, "transfer")[1]
        transfer.recipient.ClearField(name)
        assert name in str(_model_error(model))
    stored = _purpose(consent.sync(consent.app.model.get_model(consent.workspace)), "transfer")[1]
    assert stored.recipient.country == "DE" and list(stored.recipient.data_types)

    # Separate consent: never bundled.
    with pytest.raises(FailedPrecondition, match=r"PIPL Art\. 39"):
        consent.grant("p1", "transfer", "marketing", proof=consent.proof("transfer"))
    assert consent.check("p1", "transfer", "email").reason == pb.DECISION_REASON_NO_CONSENT
    consent.grant("p1", "transfer", proof=consent.proof("transfer"))
    assert consent.check("p1", "transfer", "email").decision == ALLOW


# --------------------------------------------------------------------------------------- expiry


def test_pipl_art47_consent_expires_after_its_validity(consent) -> None:
    now = datetime.now(UTC)
    given = now - timedelta(days=40)
    written = consent.grant("p1", "newsletter", channels=["email"], occurred_at=given)
    expires = given + timedelta(days=30)  # consent_validity_days = 30
    assert written.state.states()[0].expires_at.ToDatetime(tzinfo=UTC) == expires
    outcome = consent.check("p1", "newsletter", "email")
    assert (outcome.decision, outcome.reason) == (DENY, pb.DECISION_REASON_EXPIRED)
    assert outcome.evidence is not None and outcome.evidence.event_id == written.recorded[0].event_id
    # Within the validity, at its last instant, and from the expiry on (checked with `at`).
    assert consent.check("p1", "newsletter", "email", at=given + timedelta(days=29)).decision == ALLOW
    assert consent.check("p1", "newsletter", "email", at=expires - US).decision == ALLOW
    assert consent.check("p1", "newsletter", "email", at=expires).reason == pb.DECISION_REASON_EXPIRED
    # A purpose without a validity does not expire.
    consent.grant("p1", "marketing", channels=["email"], occurred_at=given)
    assert consent.check("p1", "marketing", "email").decision == ALLOW
    # A fresh grant starts a fresh validity.
    consent.grant("p1", "newsletter", channels=["email"])
    assert consent.check("p1", "newsletter", "email").decision == ALLOW


# --------------------------------------------------------------------------------------- proof


def test_gdpr_art7_1_every_consent_event_carries_proof(consent) -> None:
    ip, agent = "203.0.113.77", "Mozilla/5.0 (ProofTest; rv:7.1)"
    proof = consent.proof(
        language="en-GB",
        source="preference_centre",
        collection_point="https://shop.example/preferences",
        country="CN",
        actor=Actor(kind=Actor.KIND_USER, id="p1"),
        ip_address=ip,
        user_agent=agent,
    )
    instant = consent.clock.freeze()
    consent.grant("p1", "marketing", channels=["email", "sms"], proof=proof)
    consent.withdraw("p1", "marketing", channels=["sms"], proof=proof, reason="too many texts")
    consent.object("p1", "personalisation")

    events = consent.ledger("p1")
    assert [type(m).__name__ for _, m in events] == [
        "ConsentGranted",
        "ConsentGranted",
        "ConsentWithdrawn",
        "ObjectionRecorded",
    ]
    expected_hash = consent.text_sha256(consent.notice_text("privacy", "1"))
    for event, message in events[:2]:
        # What was shown (notice version and the hash of its exact text, filled in from the model),
        # where, when and by whom.
        recorded = message.proof
        assert (recorded.notice_id, recorded.notice_version, recorded.text_sha256) == (
            "privacy",
            "1",
            expected_hash,
        )
        assert (message.notice_id, message.notice_version) == ("privacy", "1")
        assert recorded.collection_point == "https://shop.example/preferences"
        assert recorded.source == "preference_centre" and recorded.language == "en-GB"
        assert recorded.jurisdiction == pb.JURISDICTION_PIPL and recorded.country == "CN"
        assert (recorded.actor.kind, recorded.actor.id) == (Actor.KIND_USER, "p1")
        assert (recorded.ip_address, recorded.user_agent) == (ip, agent)
        assert event.occurred_at == instant
        assert event.metadata.get("actor") == consent.actor  # the credential that recorded it
    withdrawal = events[2][1]
    assert (
        withdrawal.proof.collection_point == proof.collection_point and withdrawal.reason == "too many texts"
    )
    assert events[3][0].metadata.get("actor") == consent.actor
    # A proof naming another text than the notice's is refused.
    with pytest.raises(InvalidArgument, match="text_sha256"):
        consent.grant("p1", "analytics", proof=consent.proof(text_sha256=consent.text_sha256("other text")))

    # Personal proof is encrypted: neither the payloads nor the database file hold it in clear.
    for event, _ in events:
        assert ip.encode() not in event.payload and agent.encode() not in event.payload
    consent.store.checkpoint_wal()
    database = consent.store.engine.url.database
    assert database is not None
    raw = Path(database).read_bytes()
    assert ip.encode() not in raw and agent.encode() not in raw and b"too many texts" not in raw
    # The hash chain still verifies over what is stored.
    assert consent.store.verify().ok


def test_gdpr_art7_1_history_shows_proof_for_auditors(consent) -> None:
    consent.grant("p1", "marketing", channels=["email"], proof=consent.proof(collection_point="pos:store-17"))
    consent.withdraw("p1", "marketing", channels=["email"])
    live, history = consent.sync(consent.app.history.ledger_history(consent.workspace, "p1"))
    assert live == "p1"
    assert [m.proof.collection_point for _, m in history] == ["pos:store-17", ""]
    assert [e.position for e, _ in history] == sorted(e.position for e, _ in history)


def test_history_is_rendered_by_the_service_from_its_fold(consent) -> None:
    """The audit history's rows (type, summary, proof in words) and each answer's timeline come from
    the service — clients print them (the CLI keeps no fold of its own)."""
    consent.grant("p1", "marketing", channels=["email"], proof=consent.proof(collection_point="pos:store-17"))
    consent.grant("p1", "analytics")
    consent.withdraw("p1", "marketing", channels=["email"])
    consent.object("p1", "analytics")
    answer = consent.sync(consent.app.history.history(consent.workspace, "p1"))
    assert answer.profile_id == "p1"
    assert [e.type for e in answer.entries] == [
        "ConsentGranted",
        "ConsentGranted",
        "ConsentWithdrawn",
        "ObjectionRecorded",
    ]
    first = answer.entries[0]
    assert first.summary.startswith("granted marketing on email (notice privacy v1, PIPL")
    assert "collected via api at pos:store-17" in first.proof and "under PIPL" in first.proof
    assert first.evidence.event_type == "onefold.consent.v1.ConsentGranted"
    timeline = {row.key: (row.label, [c.status for c in row.changes]) for row in answer.timeline}
    assert timeline == {
        "consent|marketing|email": ("Marketing (marketing) · email", ["granted", "withdrawn"]),
        # an objection ends the grant for the purpose, as the fold does
        "consent|analytics|": ("Analytics (analytics) · all channels", ["granted", "withdrawn"]),
        "objection|analytics": ("objection to Analytics (analytics)", ["objection"]),
    }
    assert [row.key.split("|")[0] for row in answer.timeline] == ["consent", "consent", "objection"]
