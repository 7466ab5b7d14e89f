"""A workspace's identity resolution rules: read them, and set a new version."""

from __future__ import annotations

import functools

from sqlalchemy.engine import Connection

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.eventlog.models import NewEvent
from onefold.identity.application.state import IdentityState
from onefold.identity.domain.identifiers import RulesError, rules_from_proto, rules_to_proto
from onefold.identity.domain.streams import rules_stream
from onefold.platform.errors import InvalidArgument


class RulesUseCases(IdentityState):
    async def get_rules(self, workspace: str) -> pb.IdentityRules:
        return await self.read(self._get_rules, workspace)

    def _get_rules(self, workspace: str) -> pb.IdentityRules:
        with self.store.engine.connect() as conn:
            return rules_to_proto(self.rules(conn, workspace))

    async def set_rules(self, workspace: str, message: pb.IdentityRules, actor: str) -> pb.IdentityRules:
        try:
            validated = rules_from_proto(message)
        except RulesError as error:
            raise InvalidArgument(
                f"identity rules: {error}", violations=[(error.field, str(error))]
            ) from None
        return await self.write(
            functools.partial(self._set_rules, workspace, rules_to_proto(validated), actor)
        )

    def _set_rules(
        self, workspace: str, wanted: pb.IdentityRules, actor: str, conn: Connection
    ) -> pb.IdentityRules:
        current = self.rules(conn, workspace)
        stored = pb.IdentityRules()
        stored.CopyFrom(wanted)  # a copy: a retried transaction starts from the rules asked for
        if current.version:
            # The same rules again (`onefold apply` re-run) are no new version: nothing to record.
            unchanged = rules_to_proto(current)
            stored.version = unchanged.version
            if stored == unchanged:
                return unchanged
        stored.version = current.version + 1
        event = NewEvent(
            stream_id=rules_stream(workspace),
            message=pb.IdentityRulesSet(workspace=workspace, rules=stored, actor=actor),
            workspace=workspace,
            metadata={"actor": actor},
        )
        self.record_change(conn, workspace, [event])
        return stored
