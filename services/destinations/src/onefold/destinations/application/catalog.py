"""Destinations as code: applied together (all or none), paused, resumed, archived, read; their
signing secrets; and the active destinations routing reads.

A webhook destination gets a signing secret when it is first applied (`SigningSecretIssued`,
sealed under the destination's own key); it is shown in that answer and by `SigningSecret`, and
rotating it replaces it at once. Archiving shreds that key.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.read_model import catalog
from onefold.destinations.domain import definitions as rules
from onefold.destinations.domain.definitions import (
    DestinationVersions,
    Known,
    definition_stream,
    secret_subject,
)
from onefold.eventlog.models import NewEvent, from_micros
from onefold.eventlog.service import ServiceLog
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound

Clock = Callable[[], datetime]
KnownLookup = Callable[[str], Awaitable[Known]]
SECRET_BYTES = 32


def wall_clock() -> datetime:
    return datetime.now(UTC)


def secret_stream(workspace: str, name: str) -> str:
    return f"destinations-secret:{workspace}:{name}"


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class Destinations:
    def __init__(self, log: ServiceLog, known: KnownLookup, clock: Clock, environ: Mapping[str, str]) -> None:
        self.log = log
        self.known = known
        self.clock = clock
        self.environ = environ  # the service's: where url_env and header_envs are read
        self._decoded: dict[tuple[str, str, int], pb.Destination] = {}

    # -------------------------------------------------------------------------- for routing

    def receiving(self, conn: Connection, workspace: str) -> list[pb.Destination]:
        """The destinations deliveries are queued for (active or paused: a paused one delivers later)."""
        rows = conn.execute(
            sa.select(catalog.c.name, catalog.c.latest, catalog.c.destination).where(
                (catalog.c.workspace == workspace) & (catalog.c.status != pb.DESTINATION_STATUS_ARCHIVED)
            )
        ).all()
        return [self.decoded(workspace, str(name), int(version), data) for name, version, data in rows]

    def decoded(self, workspace: str, name: str, version: int, data: bytes) -> pb.Destination:
        """A catalog row's definition, parsed once per version (routing and every delivery round
        read it; any thread: at worst two threads parse the same version)."""
        key = (workspace, name, version)
        destination = self._decoded.get(key)
        if destination is None:
            destination = self._decoded[key] = pb.Destination.FromString(bytes(data))
        return destination

    def status_of(self, conn: Connection, workspace: str, name: str) -> int:
        found = conn.execute(
            sa.select(catalog.c.status).where((catalog.c.workspace == workspace) & (catalog.c.name == name))
        ).scalar()
        return int(found) if found is not None else pb.DESTINATION_STATUS_UNSPECIFIED

    def signing_secret(self, conn: Connection, workspace: str, name: str) -> tuple[int, str]:
        """(the position it was issued at, the secret); (0, "") when none was issued."""
        store = self.log.store
        issued = store.read_streams([secret_stream(workspace, name)], newest_first=True, limit=1, conn=conn)
        if not issued or store.erased_subjects(conn, [secret_subject(workspace, name)]):
            return 0, ""  # none issued, or shredded when the destination was archived
        message = store.decode(issued[0], conn=conn)
        assert isinstance(message, pb.SigningSecretIssued)
        return issued[0].position, message.secret

    # -------------------------------------------------------------------------- apply

    async def apply(
        self, workspace: str, destinations: Sequence[pb.Destination], actor: str, *, dry_run: bool = False
    ) -> pb.ApplyDestinationsResponse:
        """Check every destination, then, unless `dry_run`, store the changed ones in one
        transaction: all or none."""
        known = await self.known(workspace)
        checked = [rules.with_defaults(d) for d in destinations]
        problems: list[rules.Problem] = []
        names: set[str] = set()
        for i, destination in enumerate(checked):
            if destination.name in names:
                problems.append(
                    rules.Problem(f"destinations[{i}].name", "the request sets this destination twice")
                )
            names.add(destination.name)
            problems += [
                rules.Problem(f"destinations[{i}].{p.path}", p.reason)
                for p in rules.problems(destination, known)
            ]
            problems += [
                rules.Problem(
                    f"destinations[{i}].{path}",
                    f"the destinations service has no environment variable {variable}: set it where the "
                    "service runs (and restart it), then apply again",
                )
                for path, variable in rules.environment_variables(destination).items()
                if not self.environ.get(variable)
            ]
        if problems:
            listed = "; ".join(str(p) for p in problems)
            raise InvalidArgument(
                f"nothing was applied: {listed}"[:4000], violations=[(p.path, p.reason) for p in problems]
            )
        if dry_run:
            return pb.ApplyDestinationsResponse(
                applied=[pb.AppliedDestination(name=d.name, changed=True) for d in checked]
            )
        work = functools.partial(self._apply, workspace=workspace, destinations=checked, actor=actor)
        return await self.log.writer.run(self.log.projector.write, work)

    def _apply(
        self, conn: Connection, *, workspace: str, destinations: Sequence[pb.Destination], actor: str
    ) -> pb.ApplyDestinationsResponse:
        now = self.clock()
        events: list[NewEvent] = []
        response = pb.ApplyDestinationsResponse()
        for destination in destinations:
            stream = definition_stream(workspace, destination.name)
            current = self._fold(conn, stream)
            named_before = set(current.versions[current.latest].segments) if current.versions else set()
            decided = rules.save(current, workspace, destination, actor)
            for message in decided:
                current.apply(message, now)
            newly_named = [s for s in destination.segments if s not in named_before]
            if decided and newly_named:  # their current members are queued too (backfills.py)
                decided.append(
                    pb.AudienceBackfillRequested(
                        workspace=workspace,
                        destination=destination.name,
                        version=current.latest,
                        segments=newly_named,
                    )
                )
            events += [self._event(workspace, stream, m, actor, now) for m in decided]
            applied = response.applied.add(
                name=destination.name, version=current.latest, changed=bool(decided)
            )
            first_webhook = (
                destination.HasField("webhook")
                and not self.signing_secret(conn, workspace, destination.name)[1]
            )
            if first_webhook:
                applied.signing_secret = new_signing_secret()
                events.append(
                    self._secret_event(workspace, destination.name, applied.signing_secret, actor, now)
                )
        self.log.projector.record(conn, events)
        return response

    def _secret_event(self, workspace: str, name: str, secret: str, actor: str, now: datetime) -> NewEvent:
        return NewEvent(
            stream_id=secret_stream(workspace, name),
            message=pb.SigningSecretIssued(workspace=workspace, name=name, secret=secret, actor=actor),
            subject=secret_subject(workspace, name),
            workspace=workspace,
            occurred_at=now,
            metadata={"actor": actor},
        )

    def _fold(self, conn: Connection, stream: str) -> DestinationVersions:
        store = self.log.store
        return DestinationVersions.fold(
            (store.decode(e, conn=conn), e.occurred_at) for e in store.read_streams([stream], conn=conn)
        )

    @staticmethod
    def _event(workspace: str, stream: str, message: Message, actor: str, now: datetime) -> NewEvent:
        return NewEvent(
            stream_id=stream, message=message, workspace=workspace, occurred_at=now, metadata={"actor": actor}
        )

    # -------------------------------------------------------------------------- lifecycle, secrets

    async def set_status(self, workspace: str, name: str, status: int, actor: str) -> pb.Destination:
        """Pause, resume or archive; archiving drops what was queued and shreds the signing secret."""

        def work(conn: Connection) -> pb.Destination:
            now = self.clock()
            current = self._fold(conn, definition_stream(workspace, name))
            decided = rules.set_status(current, workspace, name, status, actor)
            stream = definition_stream(workspace, name)
            self.log.projector.record(conn, [self._event(workspace, stream, m, actor, now) for m in decided])
            for message in decided:
                current.apply(message, now)
            if decided and status == pb.DESTINATION_STATUS_ARCHIVED:
                self.log.store.erase_subject(secret_subject(workspace, name), conn=conn)
            return current.current()

        return await self.log.writer.run(self.log.projector.write, work)

    async def secret(self, workspace: str, name: str, actor: str, *, rotate: bool) -> str:
        def work(conn: Connection) -> str:
            current = self._fold(conn, definition_stream(workspace, name))
            if not current.versions:
                raise NotFound(f"no destination named {name!r}")
            if not current.versions[current.latest].HasField("webhook"):
                raise FailedPrecondition(f"destination {name!r} is not a webhook: it signs nothing")
            if current.status == pb.DESTINATION_STATUS_ARCHIVED:
                raise FailedPrecondition(f"destination {name!r} is archived")
            _, found = self.signing_secret(conn, workspace, name)
            if rotate or not found:
                found = new_signing_secret()
                event = self._secret_event(workspace, name, found, actor, self.clock())
                self.log.projector.record(conn, [event])
            return found

        if not rotate:
            # Read without the writer: only a destination without one yet needs it.
            def read() -> str:
                with self.log.store.engine.connect() as conn:
                    return self.signing_secret(conn, workspace, name)[1]

            if found := await asyncio.to_thread(read):
                return found
        return await self.log.writer.run(self.log.projector.write, work)

    # -------------------------------------------------------------------------- reads

    async def get(self, workspace: str, name: str) -> pb.Destination:
        def read() -> pb.Destination:
            with self.log.store.engine.connect() as conn:
                current = self._fold(conn, definition_stream(workspace, name))
            if not current.versions:
                raise NotFound(f"no destination named {name!r}")
            return current.current()

        return await asyncio.to_thread(read)

    async def listed(self, workspace: str, include_archived: bool) -> list[pb.Destination]:
        def read() -> list[pb.Destination]:
            query = sa.select(catalog.c.status, catalog.c.destination, catalog.c.updated_at_us).where(
                catalog.c.workspace == workspace
            )
            if not include_archived:
                query = query.where(catalog.c.status != pb.DESTINATION_STATUS_ARCHIVED)
            with self.log.store.engine.connect() as conn:
                rows = conn.execute(query.order_by(catalog.c.name)).all()
            found = []
            for status, data, updated_at in rows:
                destination = pb.Destination.FromString(bytes(data))
                destination.status = int(status)  # type: ignore[assignment]
                destination.updated_at.FromDatetime(from_micros(int(updated_at)))
                found.append(destination)
            return found

        return await asyncio.to_thread(read)
