"""CheckConsent: may this subject be processed for this purpose on this channel, now or at a time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.engine import Connection

from onefold.consent.adapters.read_model import CheckState
from onefold.consent.adapters.state_cache import ConsentStateCache
from onefold.consent.application.as_of_history import AsOfHistory
from onefold.consent.application.consent_log import CLOCK_SKEW, ConsentLog, check_profile_id
from onefold.consent.domain.ledger import ConsentDecision, decide
from onefold.consent.domain.model import Model
from onefold.platform.errors import InvalidArgument

Check = tuple[str, str, str, datetime | None, int]  # profile, purpose, channel, at, jurisdiction


class Checks:
    def __init__(self, consent_log: ConsentLog, history: AsOfHistory) -> None:
        self.consent_log = consent_log
        self.history = history
        self.states = ConsentStateCache(consent_log.store)

    def _model(self, conn: Connection | None, workspace: str, version: int | None) -> Model:
        model = self.consent_log.cached_model(workspace, version)
        if model is not None:
            return model
        if conn is not None:
            return self.consent_log.model(conn, workspace, version=version)
        with self.consent_log.store.engine.connect() as own:
            return self.consent_log.model(own, workspace, version=version)

    def _check(
        self,
        conn: Connection | None,
        workspace: str,
        profile_id: str,
        current: CheckState,
        purpose_id: str,
        channel: str,
        at: datetime | None,
        jurisdiction: int,
    ) -> tuple[str, ConsentDecision]:
        """The decision on `current` (`profile_id`'s state); `conn` is needed for a check at a time."""
        live = current.live
        model = self._model(conn, workspace, current.model_version)
        purpose = model.purpose(purpose_id)
        if purpose is None:
            raise InvalidArgument(
                f"unknown purpose {purpose_id!r}; the workspace defines "
                + (", ".join(sorted(model.purposes)) or "no purposes yet (onefold apply -f consent.yaml)"),
                violations=[("purpose_id", "unknown purpose")],
            )
        if channel and channel not in model.channels:
            raise InvalidArgument(
                f"unknown channel {channel!r}; the workspace has {', '.join(model.channels)}",
                violations=[("channel", "unknown channel")],
            )
        now = self.consent_log.clock()
        if at is not None and at > now + CLOCK_SKEW:
            raise InvalidArgument(
                "a check cannot be made for a time in the future", violations=[("at", "in the future")]
            )
        if at is None:
            state = current.ledger
        else:
            assert conn is not None, "a check at a time replays the ledger"
            ledger = self.history.ledger_at(conn, workspace, profile_id, live, as_of=at, known_at=None)
            state = self.history.replay(conn, workspace, ledger, as_of=at, known_at=None)
        return live, decide(model, state, purpose, channel, at or now, jurisdiction)

    async def check(
        self,
        workspace: str,
        profile_id: str,
        purpose_id: str,
        channel: str,
        *,
        at: datetime | None = None,
        jurisdiction: int = 0,
    ) -> tuple[str, ConsentDecision]:
        """The decision and the live profile. A check of the current state is answered from memory
        after one small read of the log's head (ConsentStateCache): it runs inline rather than pay a
        thread hop on every send; a check at a time replays, in a thread."""
        check_profile_id(profile_id)
        if at is not None:

            def replay(conn: Connection) -> tuple[str, ConsentDecision]:
                current = self.states.states(workspace, [profile_id])[profile_id]
                return self._check(
                    conn, workspace, profile_id, current, purpose_id, channel, at, jurisdiction
                )

            return await self.consent_log.read(replay)
        current = self.states.states(workspace, [profile_id])[profile_id]
        return self._check(None, workspace, profile_id, current, purpose_id, channel, None, jurisdiction)

    async def check_batch(self, workspace: str, checks: Sequence[Check]) -> list[tuple[str, ConsentDecision]]:
        """One look at the log's head for the whole batch, in a worker thread (its misses are read
        from the database)."""
        for profile, *_ in checks:
            check_profile_id(profile)

        def read(conn: Connection) -> list[tuple[str, ConsentDecision]]:
            current = self.states.states(workspace, {profile for profile, *_ in checks})
            return [
                self._check(conn, workspace, profile, current[profile], purpose, channel, at, where)
                for profile, purpose, channel, at, where in checks
            ]

        return await self.consent_log.read(read)
