"""The workspace's consent model: purposes, channels and notice versions (GetModel, SetModel)."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from onefold.consent.application.consent_log import ConsentLog
from onefold.consent.domain.model import ModelError, model_from_proto
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog.models import NewEvent
from onefold.platform.errors import FailedPrecondition, InvalidArgument


class ModelUseCases:
    def __init__(self, consent_log: ConsentLog) -> None:
        self.consent_log = consent_log

    async def get_model(self, workspace: str) -> pb.ConsentModel:
        """A copy of the workspace's model (the cached one must not be changed by callers)."""

        def read(conn: Connection) -> pb.ConsentModel:
            answer = pb.ConsentModel()
            answer.CopyFrom(self.consent_log.model(conn, workspace).proto)
            return answer

        return await self.consent_log.read(read)

    async def set_model(self, workspace: str, message: pb.ConsentModel, actor: str) -> pb.ConsentModel:
        try:
            proposed = model_from_proto(message)
        except ModelError as error:
            raise InvalidArgument(f"consent model: {error}", violations=[(error.field, str(error))]) from None

        def write(conn: Connection) -> pb.ConsentModel:
            current = self.consent_log.model(conn, workspace)
            stored = pb.ConsentModel()
            stored.CopyFrom(message)
            stored.version = current.version + 1
            # A notice version, once published, is evidence: it may not change or disappear — not its
            # text, nor the purposes it covers, its language, publication time or material flag.
            for key, old in current.notices.items():
                if proposed.notices.get(key) != old:
                    raise FailedPrecondition(
                        f"notice {key[0]} version {key[1]} was published and consents rest on it: publish a new "
                        "version instead of changing or removing it",
                        violations=[("notices", "published notice changed")],
                    )
            self.consent_log.record(
                conn,
                [
                    NewEvent(
                        stream_id=f"consent-model:{workspace}",
                        message=pb.ConsentModelSet(workspace=workspace, model=stored, actor=actor),
                        workspace=workspace,
                        metadata={"actor": actor},
                    )
                ],
            )
            return stored

        return await self.consent_log.write(write)
