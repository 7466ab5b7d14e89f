"""Definitions as code: set (validated, versioned, backfilled), archive, read, and preview."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.eventlog.models import NewEvent, from_micros
from onefold.eventlog.service import ServiceLog
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from onefold.segments.adapters.profile_states import ProfileStates
from onefold.segments.application.profiles import BACKFILL_PAGE, ProfileFolds
from onefold.segments.application.workspaces import Workspaces
from onefold.segments.domain import fold
from onefold.segments.domain.definitions import (
    Workspace,
    compile_workspace,
    feature_key,
    validate,
    validate_all,
)
from onefold.segments.domain.streams import definition_stream

PREVIEW_SAMPLE = 10


def _latest(stored: Sequence[pb.Definition], name: str) -> pb.Definition | None:
    return next((d for d in stored if d.name == name), None)


def _unchanged(current: pb.Definition | None, definition: pb.Definition) -> bool:
    """Applying it again changes nothing (an archived one is set anew, as a new version)."""
    return current is not None and not current.archived and _content(current) == _content(definition)


def _content(definition: pb.Definition) -> bytes:
    """A definition without what the server sets: equal content means nothing changed."""
    copy = pb.Definition()
    copy.CopyFrom(definition)
    copy.ClearField("version")
    copy.ClearField("archived")
    copy.ClearField("updated_at")
    copy.ClearField("updated_by")
    return copy.SerializeToString(deterministic=True)


class Definitions:
    def __init__(
        self, log: ServiceLog, states: ProfileStates, workspaces: Workspaces, profiles: ProfileFolds
    ) -> None:
        self.log = log
        self.states = states
        self.workspaces = workspaces
        self.profiles = profiles

    # -------------------------------------------------------------------------- reads

    def _stored(self, workspace: str) -> list[pb.Definition]:
        with self.log.store.engine.connect() as conn:
            return self.workspaces.load(conn, workspace)[1]

    async def listed(self, workspace: str, include_archived: bool) -> list[pb.Definition]:
        stored = await asyncio.to_thread(self._stored, workspace)
        return [d for d in stored if include_archived or not d.archived]

    async def get(self, workspace: str, name: str) -> pb.Definition:
        for d in await asyncio.to_thread(self._stored, workspace):
            if d.name == name:
                return d
        raise NotFound(f"no definition named {name!r} in this workspace")

    # -------------------------------------------------------------------------- writes

    async def apply(
        self, workspace: str, definition: pb.Definition, actor: str, *, dry_run: bool = False
    ) -> pb.ApplyDefinitionResponse:
        """One definition (ApplyDefinition): `apply_all` of it, its problems under `definition.`."""
        return (
            await self.apply_all(workspace, [definition], actor, dry_run=dry_run, prefixes=["definition"])
        )[0]

    async def apply_all(
        self,
        workspace: str,
        definitions: Sequence[pb.Definition],
        actor: str,
        *,
        dry_run: bool = False,
        prefixes: Sequence[str] = (),
    ) -> list[pb.ApplyDefinitionResponse]:
        """Validate together against the workspace's other definitions; unless `dry_run`, store
        every changed one as a new version in one transaction and start its backfill (history for
        new features, then every profile re-evaluated). A dry run answers with preview sizes."""
        stored = await asyncio.to_thread(self._stored, workspace)
        compiled = validate_all(definitions, stored, prefixes)
        if dry_run:
            return [await self._dry_run(workspace, compiled, stored, d) for d in definitions]
        work = functools.partial(
            self._set_all, workspace=workspace, definitions=definitions, actor=actor, prefixes=prefixes
        )
        responses = await self.log.writer.run(self.log.projector.write, work)
        self.profiles.wake_backfills()
        return responses

    async def _dry_run(
        self, workspace: str, compiled: Workspace, stored: Sequence[pb.Definition], definition: pb.Definition
    ) -> pb.ApplyDefinitionResponse:
        current = _latest(stored, definition.name)
        if _unchanged(current, definition):
            return pb.ApplyDefinitionResponse(definition=current, changed=False)
        size, _ = await asyncio.to_thread(self._preview, workspace, compiled, definition.name)
        shown = pb.Definition()
        shown.CopyFrom(definition)
        return pb.ApplyDefinitionResponse(definition=shown, changed=True, preview_size=size)

    def _set_all(
        self,
        conn: Connection,
        *,
        workspace: str,
        definitions: Sequence[pb.Definition],
        actor: str,
        prefixes: Sequence[str],
    ) -> list[pb.ApplyDefinitionResponse]:
        before, stored = self.workspaces.load(conn, workspace)
        validate_all(definitions, stored, prefixes)  # again: another write may have landed since the check
        responses: list[pb.ApplyDefinitionResponse] = []
        for definition in definitions:
            current = _latest(stored, definition.name)
            if _unchanged(current, definition):
                responses.append(pb.ApplyDefinitionResponse(definition=current, changed=False))
                continue
            saved = pb.Definition()
            saved.CopyFrom(definition)
            saved.version = (current.version if current is not None else 0) + 1
            saved.archived = False
            saved.updated_by = actor
            saved.updated_at.FromMicroseconds(self.profiles.clock())
            self.log.projector.record(
                conn,
                [
                    NewEvent(
                        stream_id=definition_stream(workspace, saved.name),
                        message=pb.DefinitionSet(workspace=workspace, definition=saved),
                        workspace=workspace,
                        occurred_at=from_micros(self.profiles.clock()),
                        metadata={"actor": actor},
                    )
                ],
            )
            responses.append(pb.ApplyDefinitionResponse(definition=saved, changed=True))
        after = self.workspaces.compiled(conn, workspace)
        rebuilt = set(before.features)  # a feature two new definitions read is rebuilt once
        for response in responses:
            if not response.changed:
                continue
            saved = response.definition
            new_features = [f for f in after.definitions[saved.name].features if f not in rebuilt]
            rebuilt.update(new_features)
            backfill = self.profiles.start_backfill(
                conn,
                workspace,
                saved.name,
                saved.version,
                [feature_key(f) for f in new_features],
                [saved.name],
            )
            response.backfill_id = backfill.backfill_id
        return responses

    async def archive(self, workspace: str, name: str, actor: str) -> pb.Definition:
        """Archive a definition no other live definition reads; every profile's output of it is
        withdrawn (SegmentExited / TagChanged "" with why "archived") by a pass over the profiles."""
        work = functools.partial(self._archive, workspace=workspace, name=name, actor=actor)
        archived = await self.log.writer.run(self.log.projector.write, work)
        self.profiles.wake_backfills()
        return archived

    def _archive(self, conn: Connection, *, workspace: str, name: str, actor: str) -> pb.Definition:
        _, stored = self.workspaces.load(conn, workspace)
        current = next((d for d in stored if d.name == name), None)
        if current is None:
            raise NotFound(f"no definition named {name!r} in this workspace")
        if current.archived:
            return current
        others = [d for d in stored if d.name != name]
        try:
            compile_workspace(others, prefixes={d.name: d.name for d in others})  # paths name the reader
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"{name!r} is still read by other definitions; archive or change them first",
                violations=[(path, f"reads {name!r}") for path, _ in exc.violations],
            ) from None
        version = current.version + 1
        self.log.projector.record(
            conn,
            [
                NewEvent(
                    stream_id=definition_stream(workspace, name),
                    message=pb.DefinitionArchived(
                        workspace=workspace, name=name, version=version, actor=actor
                    ),
                    workspace=workspace,
                    occurred_at=from_micros(self.profiles.clock()),
                    metadata={"actor": actor},
                )
            ],
        )
        self.profiles.start_backfill(conn, workspace, name, version, [], [])
        archived = pb.Definition()
        archived.CopyFrom(current)
        archived.archived, archived.version, archived.updated_by = True, version, actor
        archived.updated_at.FromMicroseconds(self.profiles.clock())
        return archived

    # -------------------------------------------------------------------------- preview

    async def preview(self, workspace: str, definition: pb.Definition) -> tuple[int, list[str]]:
        """How many profiles the definition would hold now (a member, or any tag or computed value),
        with a sample: evaluated over every profile's state, new features rebuilt from history, in
        memory only."""
        stored = await asyncio.to_thread(self._stored, workspace)
        compiled = validate(definition, stored)
        return await asyncio.to_thread(self._preview, workspace, compiled, definition.name)

    def _preview(self, workspace: str, compiled: Workspace, name: str) -> tuple[int, list[str]]:
        with self.log.store.engine.connect() as conn:
            existing = set(self.workspaces.compiled(conn, workspace).features)
            new_features = [f for f in compiled.features if f not in existing]
            size, cursor = 0, ""
            sample: list[str] = []
            while True:
                profile_ids = self.states.page(conn, workspace, cursor, BACKFILL_PAGE)
                if not profile_ids:
                    return size, sample
                cursor = profile_ids[-1]
                states = self.states.load(conn, workspace, profile_ids)
                histories = self.states.read_history(conn, workspace, profile_ids) if new_features else {}
                now = self.profiles.clock()
                for profile_id, state in states.items():
                    events = [
                        r.event
                        for r in (fold.from_record(x) for x in histories.get(profile_id, []))
                        if isinstance(r, fold.Resolved)
                    ]
                    fold.backfill(compiled, state, events, new_features, now, [name])
                    if name in state.outputs:
                        size += 1
                        if len(sample) < PREVIEW_SAMPLE:
                            sample.append(profile_id)
