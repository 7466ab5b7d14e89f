"""The profile 360 and the merge history, folded from a profile family's streams (pure: the
application reads and decodes the events, these decide what they say about the live profile)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from google.protobuf.message import Message

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent, to_micros
from onefold.identity.domain.identifiers import Rules

# Traits corrected at a data subject's request carry this source (and outrank every other source).
RECTIFICATION_SOURCE = "rectification:"
# Traits a journey step set (TraitUpdateRequested): the source names the journey.
JOURNEY_SOURCE = "journey:"


def belongs(
    keys: Sequence[str], resolved_to: str, owners: dict[str, str], live: str, live_of: Callable[[str], str]
) -> bool:
    """An event (and the traits it set) goes with the live profile holding its first identifier that
    anyone still holds; with none held any more (erased), with the profile it was resolved into."""
    for key in keys:
        owner = owners.get(key)
        if owner is not None:
            return owner == live
    return live_of(resolved_to) == live


# The events that change other profiles than the one whose stream holds them.
NAMING_OTHER_PROFILES = (pb.ProfilesMerged, pb.ProfileUnmerged, pb.ProfileErased)


def profiles_named(message: Message) -> list[str]:
    """The profiles an event of NAMING_OTHER_PROFILES changes besides its stream's: the one merged
    away, an unmerge's parts, every profile id an erasure covers."""
    if isinstance(message, pb.ProfilesMerged):
        return [message.survivor_id, message.merged_id]
    if isinstance(message, pb.ProfileUnmerged):
        return [message.profile_id, *(part.profile_id for part in message.parts)]
    if isinstance(message, pb.ProfileErased):
        return [message.profile_id, *message.profile_ids]
    return []


def keys_in(messages: Iterable[Message]) -> set[str]:
    """The identifiers (keyed hashes) a profile history names: whose owners the assembly asks."""
    keys: set[str] = set()
    for message in messages:
        if isinstance(message, pb.IdentifierLinked):
            keys.add(message.key)
        elif isinstance(message, pb.TraitsUpdated):
            keys.update(message.keys)
    return keys


class ProfileAssembly(Handlers):
    """The profile 360 of `live` from its family's profile streams: the identifiers it still holds,
    each trait's winning value (source precedence, then the latest), the profiles merged into it.
    `owners`: key -> live profile holding it; `live_of(id)`: the profile that id lives on as."""

    def __init__(
        self,
        workspace: str,
        live: str,
        rules: Rules,
        owners: dict[str, str],
        live_of: Callable[[str], str],
    ) -> None:
        self.live = live
        self.rules = rules
        self.owners = owners
        self.live_of = live_of
        self.profile = pb.Profile(profile_id=live, workspace=workspace)
        self._linked: dict[str, tuple[RecordedEvent, pb.IdentifierLinked]] = {}
        self._traits: dict[str, tuple[tuple[int, int, int], pb.Trait]] = {}
        self._precedence = {source: rank for rank, source in enumerate(rules.trait_source_precedence)}

    def fold(self, event: RecordedEvent, message: Message) -> None:
        self.dispatch(message, event, message)

    @handles(pb.IdentifierLinked)
    def _linked_identifier(self, event: RecordedEvent, message: pb.IdentifierLinked) -> None:
        if self.owners.get(message.key) == self.live:
            self._linked[message.key] = (event, message)

    @handles(pb.TraitsUpdated)
    def _traits_updated(self, event: RecordedEvent, message: pb.TraitsUpdated) -> None:
        if not belongs(message.keys, message.profile_id, self.owners, self.live, self.live_of):
            return
        moment = to_micros(event.occurred_at)
        rank = (
            0  # a rectification ranks with the most trusted source
            if message.source_id.startswith(RECTIFICATION_SOURCE)
            else -self._precedence.get(message.source_id, len(self._precedence))
        )
        traits = self._traits
        for name, value in message.traits.fields.items():
            order = (rank, moment, event.position)
            if name not in traits or traits[name][0] <= order:
                trait = pb.Trait(name=name, source_id=message.source_id)
                trait.value.CopyFrom(value)
                trait.updated_at.FromDatetime(event.occurred_at)
                traits[name] = (order, trait)

    @handles(pb.ProfilesMerged)
    def _merged_in(self, event: RecordedEvent, message: pb.ProfilesMerged) -> None:
        profile = self.profile
        if (
            message.merged_id != self.live
            and message.merged_id not in profile.merged_profile_ids
            and self.live_of(message.merged_id) == self.live  # not split off again by an unmerge since
        ):
            profile.merged_profile_ids.append(message.merged_id)

    def assembled(self) -> pb.Profile:
        profile = self.profile
        linked = self._linked
        for key in sorted(linked, key=lambda k: self.rules.rank(linked[k][1].type)):
            event, message = linked[key]
            item = profile.identifiers.add(
                evidence_event_id=message.evidence_event_id, original_profile_id=message.profile_id
            )
            item.identifier.CopyFrom(message.identifier)
            item.linked_at.FromDatetime(event.occurred_at)
        for name in sorted(self._traits):
            profile.traits.append(self._traits[name][1])
        return profile


class MergeHistory(Handlers):
    """A profile's merge history: each merge, unmerge and refused link as a MergeRecord."""

    def record(self, event: RecordedEvent, message: Message) -> pb.MergeRecord:
        record = pb.MergeRecord(position=event.position)
        record.recorded_at.FromDatetime(event.recorded_at)
        self.dispatch(message, record, message)
        return record

    @handles(pb.ProfilesMerged)
    def _merged(self, record: pb.MergeRecord, message: pb.ProfilesMerged) -> None:
        record.kind = pb.MergeRecord.KIND_MERGED
        record.survivor_id, record.merged_id, record.rule = (
            message.survivor_id,
            message.merged_id,
            message.rule,
        )
        record.evidence_event_id, record.reason, record.actor = (
            message.evidence_event_id,
            message.reason,
            message.actor,
        )

    @handles(pb.ProfileUnmerged)
    def _unmerged(self, record: pb.MergeRecord, message: pb.ProfileUnmerged) -> None:
        record.kind = pb.MergeRecord.KIND_UNMERGED
        record.survivor_id, record.reason, record.actor = message.profile_id, message.reason, message.actor
        record.evidence_event_id = message.split_event_id
        record.parts.extend(message.parts)

    @handles(pb.LinkRefused)
    def _refused(self, record: pb.MergeRecord, message: pb.LinkRefused) -> None:
        record.kind = pb.MergeRecord.KIND_LINK_REFUSED
        record.survivor_id, record.merged_id, record.rule = (
            message.profile_id,
            message.other_profile_id,
            message.reason,
        )
        record.evidence_event_id = message.evidence_event_id
