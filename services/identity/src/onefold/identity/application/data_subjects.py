"""Identity's data-subject duties: export everything held about the person some identifiers lead to,
and erase it (crypto-shred the profiles and retire their identifiers)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.identity.adapters.read_model import identifiers, profiles
from onefold.identity.application.profiles import MAX_PAGE, ProfileReads
from onefold.identity.domain.streams import subject_of
from onefold.platform.errors import InvalidArgument

# (live profile id, the profile ids that live on as it, the keys of its identifiers)
ErasurePlan = list[tuple[str, list[str], list[str]]]


class DataSubjects(ProfileReads):
    async def export_subject(self, workspace: str, identifiers_: Sequence[pb.Identifier]) -> pb.SubjectExport:
        return await self.read(self._export_subject, workspace, identifiers_)

    def _subject_profiles(
        self, conn: Connection, workspace: str, identifiers_: Sequence[pb.Identifier]
    ) -> list[str]:
        if not identifiers_:
            raise InvalidArgument("name at least one identifier", violations=[("identifiers", "required")])
        found: list[str] = []
        for identifier in identifiers_:
            key = self.normalised(conn, workspace, identifier).key
            row = conn.execute(
                sa.select(identifiers.c.profile_id).where(
                    identifiers.c.workspace == workspace, identifiers.c.key == key
                )
            ).first()
            if row is None or not row.profile_id:
                continue
            live = self.live(conn, workspace, row.profile_id)
            if live not in found:
                found.append(live)
        return found

    def _export_subject(self, workspace: str, identifiers_: Sequence[pb.Identifier]) -> pb.SubjectExport:
        with self.store.engine.connect() as conn:
            found = self._subject_profiles(conn, workspace, identifiers_)
        answer = pb.SubjectExport()
        for profile_id in found:
            ref = pb.ProfileRef(profile_id=profile_id)
            answer.profiles.append(self.read_profile(workspace, ref))
            token = ""
            while True:
                entries, token = self.read_timeline(workspace, ref, page_size=MAX_PAGE, page_token=token)
                answer.events.extend(entries)
                if not token:
                    break
            answer.history.extend(self.read_merge_history(workspace, ref))
        return answer

    async def erase_subject(
        self, workspace: str, identifiers_: Sequence[pb.Identifier], request_id: str, actor: str
    ) -> tuple[list[str], int]:
        """Crypto-shred every profile the identifiers lead to (with everything merged into it), then
        retire its identifiers so they never resolve again: (the profile ids erased, identifiers
        unlinked). Idempotent: a repeated request finds the same profiles (retired identifiers still
        name them) and completes what is missing."""
        plan = await self.read(self._erasure_plan, workspace, identifiers_)
        erased_ids: list[str] = []
        unlinked = 0
        for profile_id, members, keys in plan:
            # First retire the identifiers (no new event can reach the profile from then on), then
            # destroy the keys. A crash in between is completed by repeating the request.
            await self.write(
                functools.partial(self._retire, workspace, profile_id, members, keys, request_id, actor)
            )
            for member in members:
                await self.log.writer.run(self.store.erase_subject, subject_of(workspace, member))
            erased_ids.extend(members)
            unlinked += len(keys)
        return erased_ids, unlinked

    def _erasure_plan(self, workspace: str, identifiers_: Sequence[pb.Identifier]) -> ErasurePlan:
        with self.store.engine.connect() as conn:
            plan = []
            for profile_id in self._subject_profiles(conn, workspace, identifiers_):
                # Only the ids that live on as this profile: a family member that is a live profile
                # of its own again (split off by an unmerge) is another person.
                members = [
                    m for m in self.family(conn, profile_id) if self.live(conn, workspace, m) == profile_id
                ]
                keys = [
                    key
                    for (key,) in conn.execute(
                        sa.select(identifiers.c.key).where(
                            identifiers.c.workspace == workspace, identifiers.c.profile_id == profile_id
                        )
                    )
                ]
                plan.append((profile_id, members, keys))
            return plan

    def _retire(
        self,
        workspace: str,
        profile_id: str,
        members: list[str],
        keys: list[str],
        request_id: str,
        actor: str,
        conn: Connection,
    ) -> None:
        if conn.execute(sa.select(profiles.c.erased).where(profiles.c.profile_id == profile_id)).scalar():
            return
        erased = pb.ProfileErased(
            profile_id=profile_id,
            workspace=workspace,
            profile_ids=members,
            keys=keys,
            request_id=request_id,
            actor=actor,
        )
        self.record_change(conn, workspace, [self.manual_event(workspace, profile_id, erased, actor)])
