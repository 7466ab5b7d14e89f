"""Journeys and templates as code: applied together (all or none), published, paused, archived,
read; and the compiled journeys the runs work with.

A version's code never changes once saved, so its compiled graph is cached for the life of the
process; which version of which journey is running in a workspace is read from the catalog table
each time it is needed by a batch (one indexed query), so a publish is seen by the next batch.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.models import NewEvent
from onefold.eventlog.service import ServiceLog
from onefold.journeys.adapters.read_model import catalog, templates, versions
from onefold.journeys.adapters.templates import EmailTemplate, Templates
from onefold.journeys.domain import catalog as lifecycle
from onefold.journeys.domain import templates as template_versions
from onefold.journeys.domain.catalog import Catalog, definition_stream
from onefold.journeys.domain.definitions import (
    CompiledJourney,
    InvalidJourney,
    Known,
    Problem,
    compile_journey,
    validate,
)
from onefold.journeys.domain.templates import TemplateVersions, template_stream
from onefold.platform.errors import InvalidArgument, NotFound

Clock = Callable[[], datetime]
# A workspace's live segments and consent purposes, asked of those services (templates are ours).
KnownLookup = Callable[[str], Awaitable[Known]]


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Running:
    """A journey people enter and whose instances advance, with its published version compiled."""

    name: str
    journey: CompiledJourney


class Journeys:
    def __init__(self, log: ServiceLog, renderer: Templates, known: KnownLookup, clock: Clock) -> None:
        self.log = log
        self.renderer = renderer
        self.known = known
        self.clock = clock
        self._compiled: dict[tuple[str, str, int], CompiledJourney] = {}

    # -------------------------------------------------------------------------- compiled, for runs

    def compiled(self, conn: Connection, workspace: str, name: str, version: int) -> CompiledJourney:
        key = (workspace, name, version)
        found = self._compiled.get(key)
        if found is None:
            row = conn.execute(
                sa.select(versions.c.journey).where(
                    (versions.c.workspace == workspace)
                    & (versions.c.name == name)
                    & (versions.c.version == version)
                )
            ).first()
            if row is None:
                raise NotFound(f"journey {name!r} has no version {version}")
            # Stored versions were checked when applied; what they name may have changed since
            # (an archived segment), which must not strand the people already in them.
            found = self._compiled[key] = compile_journey(pb.Journey.FromString(bytes(row[0])))
        return found

    def running(self, conn: Connection, workspace: str) -> list[Running]:
        rows = conn.execute(
            sa.select(catalog.c.name, catalog.c.published).where(
                (catalog.c.workspace == workspace) & (catalog.c.status == pb.JOURNEY_STATUS_PUBLISHED)
            )
        ).all()
        return [Running(str(name), self.compiled(conn, workspace, str(name), int(v))) for name, v in rows]

    def status(self, conn: Connection, workspace: str, name: str) -> int:
        found = conn.execute(
            sa.select(catalog.c.status).where((catalog.c.workspace == workspace) & (catalog.c.name == name))
        ).scalar()
        return int(found) if found is not None else pb.JOURNEY_STATUS_UNSPECIFIED

    def template(self, conn: Connection, workspace: str, name: str) -> pb.Template | None:
        row = conn.execute(
            sa.select(templates.c.template).where(
                (templates.c.workspace == workspace) & (templates.c.name == name)
            )
        ).first()
        return None if row is None else pb.Template.FromString(bytes(row[0]))

    # -------------------------------------------------------------------------- apply

    async def apply(
        self,
        workspace: str,
        journeys: Sequence[pb.Journey],
        new_templates: Sequence[pb.Template],
        actor: str,
        *,
        publish: bool = False,
        dry_run: bool = False,
    ) -> pb.ApplyJourneysResponse:
        """Check every template and journey together (a journey may name a template of the same
        request), then, unless `dry_run`, store the changed ones in one transaction: all or none."""
        known = await self.known(workspace)
        await asyncio.to_thread(self._check, workspace, journeys, new_templates, known)
        if dry_run:
            return pb.ApplyJourneysResponse(
                journeys=[pb.ApplyJourneysResponse.Applied(journey=j, changed=True) for j in journeys],
                templates=[
                    pb.ApplyJourneysResponse.AppliedTemplate(template=t, changed=True) for t in new_templates
                ],
            )
        work = functools.partial(
            self._apply,
            workspace=workspace,
            journeys=journeys,
            new_templates=new_templates,
            actor=actor,
            publish=publish,
            known=known,
        )
        return await self.log.writer.run(self.log.projector.write, work)

    def _check(
        self,
        workspace: str,
        journeys: Sequence[pb.Journey],
        new_templates: Sequence[pb.Template],
        known: Known,
    ) -> Known:
        problems: list[Problem] = []
        names: set[str] = set()
        for i, template in enumerate(new_templates):
            path = f"templates[{i}]"
            problems += template_versions.problems(template, path)
            if template.name in names:
                problems.append(Problem(f"{path}.name", "the request sets this template twice"))
            names.add(template.name)
            if template.channel == pb.CHANNEL_EMAIL and not problems:
                # The renderer's own checks: Jinja syntax, sizes; it names the part and the line.
                self.renderer.compile_email(
                    EmailTemplate(template.name, template.subject, template.text, template.html)
                )
            elif not problems:
                self.renderer.compile_text(template.name, "text", template.text)
        with self.log.store.engine.connect() as conn:
            stored = {
                str(n): int(c)
                for n, c in conn.execute(
                    sa.select(templates.c.name, templates.c.channel).where(templates.c.workspace == workspace)
                )
            }
        stored.update({t.name: t.channel for t in new_templates})
        checked = Known(known.segments, known.purposes, stored)
        journey_names: set[str] = set()
        for i, journey in enumerate(journeys):
            if journey.name in journey_names:
                problems.append(Problem(f"journeys[{i}].name", "the request sets this journey twice"))
            journey_names.add(journey.name)
            problems += [Problem(f"journeys[{i}].{p.path}", p.reason) for p in validate(journey, checked)]
        if problems:
            listed = "; ".join(str(p) for p in problems)
            raise InvalidArgument(
                f"nothing was applied: {listed}"[:4000], violations=[(p.path, p.reason) for p in problems]
            )
        return checked

    def _apply(
        self,
        conn: Connection,
        *,
        workspace: str,
        journeys: Sequence[pb.Journey],
        new_templates: Sequence[pb.Template],
        actor: str,
        publish: bool,
        known: Known,
    ) -> pb.ApplyJourneysResponse:
        now = self.clock()
        events: list[NewEvent] = []
        response = pb.ApplyJourneysResponse()
        for template in new_templates:
            stream = template_stream(workspace, template.name)
            stored = TemplateVersions.fold(self._messages(conn, stream))
            saved = template_versions.save(stored, workspace, template, actor, now)
            events += [self._event(workspace, stream, m, actor, now) for m in saved]
            for message in saved:
                stored.apply(message)
            response.templates.add(template=stored.latest, changed=bool(saved))
        for journey in journeys:
            stream = definition_stream(workspace, journey.name)
            current = Catalog.fold(self._messages(conn, stream))
            decided: list[Message] = lifecycle.save(current, workspace, journey, actor, now)
            for message in decided:
                current.apply(message)
            if publish:
                published = lifecycle.publish(current, workspace, journey.name, 0, actor)
                for message in published:
                    current.apply(message)
                decided += published
            events += [self._event(workspace, stream, m, actor, now) for m in decided]
            response.journeys.add(journey=current.version(), changed=bool(decided))
        self.log.projector.record(conn, events)
        return response

    def _messages(self, conn: Connection, stream: str) -> list[Message]:
        store = self.log.store
        return [store.decode(e, conn=conn) for e in store.read_streams([stream], conn=conn)]

    @staticmethod
    def _event(workspace: str, stream: str, message: Message, actor: str, now: datetime) -> NewEvent:
        return NewEvent(
            stream_id=stream, message=message, workspace=workspace, occurred_at=now, metadata={"actor": actor}
        )

    # -------------------------------------------------------------------------- lifecycle

    async def publish(self, workspace: str, name: str, version: int, actor: str) -> pb.Journey:
        return await self._lifecycle(
            workspace, name, actor, lambda c: lifecycle.publish(c, workspace, name, version, actor)
        )

    async def pause(self, workspace: str, name: str, actor: str) -> pb.Journey:
        return await self._lifecycle(
            workspace, name, actor, lambda c: lifecycle.pause(c, workspace, name, actor)
        )

    async def archive(
        self, workspace: str, name: str, actor: str, on_archived: Callable[[Connection], None]
    ) -> pb.Journey:
        """Archive; `on_archived` (in the same transaction) stops the instances in flight."""

        def decide(current: Catalog) -> list[Message]:
            return lifecycle.archive(current, workspace, name, actor)

        return await self._lifecycle(workspace, name, actor, decide, after=on_archived)

    async def _lifecycle(
        self,
        workspace: str,
        name: str,
        actor: str,
        decide: Callable[[Catalog], list[Message]],
        after: Callable[[Connection], None] | None = None,
    ) -> pb.Journey:
        def work(conn: Connection) -> pb.Journey:
            stream = definition_stream(workspace, name)
            current = Catalog.fold(self._messages(conn, stream))
            if not current.versions:
                raise NotFound(f"no journey named {name!r}")
            decided = decide(current)
            now = self.clock()
            self.log.projector.record(conn, [self._event(workspace, stream, m, actor, now) for m in decided])
            for message in decided:
                current.apply(message)
            if decided and after is not None:
                after(conn)
            return current.version()

        return await self.log.writer.run(self.log.projector.write, work)

    # -------------------------------------------------------------------------- reads

    async def get(self, workspace: str, name: str, version: int) -> pb.Journey:
        def read() -> pb.Journey:
            with self.log.store.engine.connect() as conn:
                current = Catalog.fold(self._messages(conn, definition_stream(workspace, name)))
            if not current.versions:
                raise NotFound(f"no journey named {name!r}")
            return current.version(version)

        return await asyncio.to_thread(read)

    async def listed(self, workspace: str, include_archived: bool) -> list[pb.Journey]:
        def read() -> list[pb.Journey]:
            query = (
                sa.select(catalog.c.status, versions.c.journey)
                .join(
                    versions,
                    (versions.c.workspace == catalog.c.workspace)
                    & (versions.c.name == catalog.c.name)
                    & (versions.c.version == catalog.c.latest),
                )
                .where(catalog.c.workspace == workspace)
                .order_by(catalog.c.name)
            )
            if not include_archived:
                query = query.where(catalog.c.status != pb.JOURNEY_STATUS_ARCHIVED)
            with self.log.store.engine.connect() as conn:
                rows = conn.execute(query).all()
            found = []
            for status, data in rows:
                journey = pb.Journey.FromString(bytes(data))
                journey.status = int(status)  # type: ignore[assignment]
                found.append(journey)
            return found

        return await asyncio.to_thread(read)

    async def listed_templates(self, workspace: str) -> list[pb.Template]:
        def read() -> list[pb.Template]:
            query = (
                sa.select(templates.c.template)
                .where(templates.c.workspace == workspace)
                .order_by(templates.c.name)
            )
            with self.log.store.engine.connect() as conn:
                return [pb.Template.FromString(bytes(row[0])) for row in conn.execute(query)]

        return await asyncio.to_thread(read)


__all__ = ["InvalidJourney", "Journeys", "Running", "wall_clock"]
