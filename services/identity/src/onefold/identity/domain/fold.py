"""The identity log folded into an in-memory IdentityGraph: on every write the service makes by
hand (merge, unmerge, protection, erasure, rules), for as-of reads, and for rebuilds and benches.
Resolution decides and folds in one step (`IdentityGraph.resolve`), so its events are not folded
again."""

from __future__ import annotations

from google.protobuf.message import Message

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent
from onefold.identity.domain.graph import IdentityGraph, Part
from onefold.identity.domain.identifiers import rules_from_proto


class GraphFold(Handlers):
    def __init__(self, graph: IdentityGraph) -> None:
        self.graph = graph

    def fold(self, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, event, message)

    @handles(pb.ProfileCreated)
    def _created(self, event: RecordedEvent, message: pb.ProfileCreated) -> None:
        self.graph.create(message.profile_id, event.position)

    @handles(pb.IdentifierLinked)
    def _linked(self, event: RecordedEvent, message: pb.IdentifierLinked) -> None:
        self.graph.link(message.profile_id, message.key, message.type)

    @handles(pb.ProfilesMerged)
    def _merged(self, event: RecordedEvent, message: pb.ProfilesMerged) -> None:
        self.graph.merge(message.survivor_id, message.merged_id)

    @handles(pb.ProfileUnmerged)
    def _unmerged(self, event: RecordedEvent, message: pb.ProfileUnmerged) -> None:
        self.graph.split(
            [Part(p.profile_id, tuple(p.keys)) for p in message.parts], message.split_key, event.position
        )

    @handles(pb.ProfileProtectionSet)
    def _protection(self, event: RecordedEvent, message: pb.ProfileProtectionSet) -> None:
        self.graph.set_protected(message.profile_id, message.protected)

    @handles(pb.ProfileErased)
    def _erased(self, event: RecordedEvent, message: pb.ProfileErased) -> None:
        self.graph.erase(message.profile_ids, message.keys)

    @handles(pb.IdentityRulesSet)
    def _rules(self, event: RecordedEvent, message: pb.IdentityRulesSet) -> None:
        self.graph.rules = rules_from_proto(message.rules)
