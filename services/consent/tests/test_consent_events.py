"""Every event the consent service declares (consent.proto) is handled by its ledger fold, the
request fold or the read model — and each of those handles only declared events."""

from __future__ import annotations

from onefold.consent.adapters.read_model import ConsentReadModel
from onefold.consent.domain.events import REGISTRY
from onefold.consent.domain.ledger import LedgerState
from onefold.consent.domain.subject_request import RequestFold
from onefold.testing.events import assert_events_handled


def test_every_declared_consent_event_is_handled() -> None:
    assert_events_handled(REGISTRY, LedgerState, RequestFold, ConsentReadModel)
