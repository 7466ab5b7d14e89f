"""The consent service's use cases, one module each, built on the service's log (see consent_log):

- model: the workspace's consent model (GetModel, SetModel);
- ledger_writes: grant, withdraw, object, set preferences, erase;
- checks: CheckConsent, now or at a time;
- identity_events: consent carried in tracked events, profile merges (the identity subscriber);
- as_of_history: the state as of a time, GetConsents, the history rendered for people;
- subject_requests: data-subject requests, carried out across the services (a saga);
- duties: the deletion duties the service acts on by itself (expiry, retention).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from onefold.consent.application.as_of_history import AsOfHistory
from onefold.consent.application.checks import Checks
from onefold.consent.application.consent_log import ConsentLog, Written
from onefold.consent.application.duties import run_duties
from onefold.consent.application.identity_events import IdentityEvents
from onefold.consent.application.ledger_writes import LedgerWrites
from onefold.consent.application.model import ModelUseCases
from onefold.consent.application.subject_requests import SubjectRequests, Timings
from onefold.eventlog.service import ServiceLog
from onefold.platform.client import Peers


class ConsentApplication:
    """Every use case of the service, on one log, one clock and one channel set to the others."""

    def __init__(
        self,
        log: ServiceLog,
        peers: Peers,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        timings: Timings | None = None,
    ) -> None:
        self.consent_log = ConsentLog(log, clock)
        self.model = ModelUseCases(self.consent_log)
        self.history = AsOfHistory(self.consent_log)
        self.checks = Checks(self.consent_log, self.history)
        self.ledger = LedgerWrites(self.consent_log)
        self.identity = IdentityEvents(self.consent_log)
        self.requests = SubjectRequests(self.consent_log, self.ledger, self.history, peers, timings=timings)

    async def close(self) -> None:
        """Let go of what the checks hold open (at stop)."""
        self.checks.states.close()

    async def run_duties(self, leading: Callable[[], bool]) -> None:
        """The PIPL Art. 47 deletion duties, until cancelled (only while `leading`)."""
        await run_duties(self.consent_log, self.requests, leading)


__all__ = ["ConsentApplication", "Timings", "Written"]
