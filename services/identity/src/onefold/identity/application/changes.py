"""Changes made by hand: merging and unmerging profiles, merge protection, and rectifying a
profile's traits at a data subject's request. Each is one write transaction on the writer thread,
decided against the graph and the read model as committed."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sqlalchemy as sa
from google.protobuf import struct_pb2
from sqlalchemy.engine import Connection

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.journeys.v1 import journeys_pb2
from onefold.eventlog.streams import PARTITION_KEY
from onefold.identity.adapters.read_model import profiles
from onefold.identity.application.state import IdentityState, new_profile_id
from onefold.identity.domain.graph import Merged
from onefold.identity.domain.profile import JOURNEY_SOURCE, RECTIFICATION_SOURCE
from onefold.identity.domain.streams import events_stream, profile_stream
from onefold.identity.domain.traits import profile_traits
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound

_RESOLVED = [pb.EventResolved.DESCRIPTOR.full_name]
_TRAIT_REQUESTED = journeys_pb2.TraitUpdateRequested.DESCRIPTOR.full_name
_CREATED = [pb.ProfileCreated.DESCRIPTOR.full_name]


class ProfileChanges(IdentityState):
    async def merge(
        self, workspace: str, survivor: pb.ProfileRef, merged: pb.ProfileRef, reason: str, actor: str
    ) -> str:
        """Merge `merged` into `survivor` by hand; returns the survivor's id."""
        if not reason.strip():
            raise InvalidArgument("a manual merge needs a reason", violations=[("reason", "required")])
        return await self.write(functools.partial(self._merge, workspace, survivor, merged, reason, actor))

    def _merge(
        self,
        workspace: str,
        survivor: pb.ProfileRef,
        merged: pb.ProfileRef,
        reason: str,
        actor: str,
        conn: Connection,
    ) -> str:
        keep, _ = self.locate(conn, workspace, survivor)
        gone, _ = self.locate(conn, workspace, merged)
        if keep == gone:
            raise FailedPrecondition("both references name the same profile")
        graph = self.graph(conn, workspace)
        if keep in graph.erased or gone in graph.erased:
            raise FailedPrecondition("an erased profile cannot be merged")
        if not graph.fits(keep, gone):
            over = graph.limits_broken(keep, gone)
            raise FailedPrecondition(
                f"merging would break the workspace's limits: {over}; unmerge or change the rules first",
                violations=[("merged", over)],
            )
        new = self.operation_event(
            workspace,
            Merged(keep, gone, "manual", ""),
            None,
            {"actor": actor, PARTITION_KEY: keep},
            keep,
            reason=reason,
            actor=actor,
        )
        assert new is not None
        self.record_change(conn, workspace, [new])
        return keep

    async def set_protection(self, workspace: str, ref: pb.ProfileRef, protected: bool, actor: str) -> str:
        """Protect the profile from automatic merges (or lift that); returns the live profile's id."""
        return await self.write(functools.partial(self._set_protection, workspace, ref, protected, actor))

    def _set_protection(
        self, workspace: str, ref: pb.ProfileRef, protected: bool, actor: str, conn: Connection
    ) -> str:
        live, _ = self.locate(conn, workspace, ref)
        message = pb.ProfileProtectionSet(
            profile_id=live, workspace=workspace, protected=protected, actor=actor
        )
        self.record_change(conn, workspace, [self.manual_event(workspace, live, message, actor)])
        return live

    async def unmerge(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        *,
        identifier: pb.Identifier | None,
        event_id: str,
        reason: str,
        actor: str,
    ) -> list[str]:
        """Split the profile along an identifier or an event; returns the parts' ids."""
        if not reason.strip():
            raise InvalidArgument("an unmerge needs a reason", violations=[("reason", "required")])
        if identifier is None and not event_id:
            raise InvalidArgument(
                "name the identifier or the event to split along", violations=[("split", "required")]
            )
        return await self.write(
            functools.partial(self._unmerge, workspace, ref, identifier, event_id, reason, actor)
        )

    def _unmerge(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        identifier: pb.Identifier | None,
        event_id: str,
        reason: str,
        actor: str,
        conn: Connection,
    ) -> list[str]:
        live, _ = self.locate(conn, workspace, ref)
        graph = self.graph(conn, workspace)
        split_key = ""
        if identifier is not None:
            split_key = self.normalised(conn, workspace, identifier).key
            if graph.owner.get(split_key) != live:
                raise NotFound("the profile does not hold that identifier")
        members = self.family(conn, live)
        resolved = self.store.read_streams(
            [events_stream(workspace, m) for m in members], types=_RESOLVED, conn=conn
        )
        link_sets = []
        for _, message in self.decoded(conn, resolved):
            assert isinstance(message, pb.EventResolved)
            link_sets.append((message.event_id, tuple(message.keys)))
        if event_id and all(evidence != event_id for evidence, _ in link_sets):
            raise NotFound(f"no event {event_id} was resolved into this profile")
        created_by = {}
        creations = self.store.read_streams(
            [profile_stream(workspace, m) for m in members], types=_CREATED, conn=conn
        )
        for _, created in self.decoded(conn, creations):
            assert isinstance(created, pb.ProfileCreated)
            created_by[created.evidence_event_id] = created.profile_id
        parts = graph.plan_unmerge(
            live, link_sets, created_by, split_key=split_key, split_event=event_id, new_id=new_profile_id
        )
        if len(parts) == 1:
            raise FailedPrecondition(
                "splitting along that leaves the profile whole: other events link the same identifiers"
            )
        unmerged = pb.ProfileUnmerged(
            profile_id=live,
            workspace=workspace,
            parts=[pb.ProfileUnmerged.Part(profile_id=p.profile_id, keys=p.keys) for p in parts],
            split_key=split_key,
            split_event_id=event_id,
            reason=reason,
            actor=actor,
        )
        self.record_change(
            conn, workspace, [self.manual_event(workspace, live, unmerged, actor, personal=True)]
        )
        return [part.profile_id for part in parts]

    async def rectify(
        self, workspace: str, ref: pb.ProfileRef, traits: struct_pb2.Struct, request_id: str, actor: str
    ) -> str:
        """Record corrected trait values (GDPR Art. 16, PIPL Art. 46) on the live profile."""
        if not traits.fields:
            raise InvalidArgument("name the traits to correct", violations=[("traits", "required")])
        if not request_id or len(request_id) > 64:
            raise InvalidArgument(
                "a rectification names the request it carries out", violations=[("request_id", "required")]
            )
        return await self.write(functools.partial(self._rectify, workspace, ref, traits, request_id, actor))

    def _rectify(
        self,
        workspace: str,
        ref: pb.ProfileRef,
        traits: struct_pb2.Struct,
        request_id: str,
        actor: str,
        conn: Connection,
    ) -> str:
        live, _ = self.locate(conn, workspace, ref)
        if conn.execute(sa.select(profiles.c.erased).where(profiles.c.profile_id == live)).scalar():
            raise FailedPrecondition("the profile was erased; there is nothing to correct")
        traits = profile_traits(traits, self.rules(conn, workspace).default_phone_region)
        message = pb.TraitsUpdated(
            profile_id=live,
            workspace=workspace,
            traits=traits,
            source_id=RECTIFICATION_SOURCE + request_id,
            trait_keys=self.trait_keys(traits),
        )
        self.record_change(
            conn, workspace, [self.manual_event(workspace, live, message, actor, personal=True)]
        )
        return live

    def handle_journeys(self, conn: Connection, envelopes: Sequence[EventEnvelope]) -> None:
        """The journeys subscriber's handler: a journey step's trait (TraitUpdateRequested) recorded
        on the live profile as TraitsUpdated from source "journey:<name>", with the request's event
        id as its evidence. A profile unknown here, erased, or whose value was shredded before it
        arrived (the person was erased in journeys) is passed over."""
        for envelope in envelopes:
            if envelope.type != _TRAIT_REQUESTED:
                continue
            request = journeys_pb2.TraitUpdateRequested.FromString(envelope.payload)
            workspace = request.instance.workspace
            if not request.trait or request.value.WhichOneof("kind") is None:
                continue
            try:
                live, _ = self.locate(conn, workspace, pb.ProfileRef(profile_id=request.instance.profile_id))
            except NotFound:
                continue
            if conn.execute(sa.select(profiles.c.erased).where(profiles.c.profile_id == live)).scalar():
                continue
            traits = struct_pb2.Struct()
            *parents, leaf = request.trait.split(".")
            holder = traits
            for parent in parents:  # "address.city" sets city inside the address object
                holder = holder.fields[parent].struct_value
            holder.fields[leaf].CopyFrom(request.value)
            traits = profile_traits(traits, self.rules(conn, workspace).default_phone_region)
            message = pb.TraitsUpdated(
                profile_id=live,
                workspace=workspace,
                traits=traits,
                source_id=JOURNEY_SOURCE + request.instance.journey,
                evidence_event_id=envelope.event_id,
                trait_keys=self.trait_keys(traits),
            )
            self.record_change(
                conn, workspace, [self.manual_event(workspace, live, message, "journeys", personal=True)]
            )
