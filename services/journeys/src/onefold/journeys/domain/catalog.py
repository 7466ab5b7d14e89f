"""One journey's versions and lifecycle, folded from its definition stream, and the decisions on it.

A journey is code: each applied change is a new version, saved as a draft
(`JourneyDraftSaved`); publishing names the version people enter from then on. The lifecycle is

    draft ──publish──▶ published ──pause──▶ paused ──publish──▶ published
      └──────────────────────┴──────archive───────┴──▶ archived (final)

Versions are never edited or dropped: an instance keeps the version it entered with (its events
carry it), so publishing version 3 while people are in version 2 changes nothing for them, and
their definition can always be looked up here. Pausing holds the whole journey: nobody enters and
no instance advances; timers that came due meanwhile fire once it is published again. Archiving is
final: instances in flight exit (`instance.archive`), and the name cannot be applied again, so an
old instance's events never meet a different journey of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import Message

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.journeys.domain.definitions import quoted
from onefold.platform.errors import FailedPrecondition, NotFound


def definition_stream(workspace: str, name: str) -> str:
    return f"journeys-definition:{workspace}:{name}"


@dataclass
class Catalog(Handlers):
    """A journey's stored versions (by number) and where its lifecycle stands."""

    versions: dict[int, pb.Journey] = field(default_factory=dict)
    published: int = 0  # the version people enter (0: never published)
    paused: bool = False
    archived: bool = False

    @staticmethod
    def fold(messages: Iterable[Message]) -> Catalog:
        catalog = Catalog()
        for message in messages:
            catalog.apply(message)
        return catalog

    def apply(self, message: Message) -> None:
        self.dispatch(message, message)

    @handles(pb.JourneyDraftSaved)
    def _saved(self, message: pb.JourneyDraftSaved) -> None:
        self.versions[message.journey.version] = message.journey

    @handles(pb.JourneyPublished)
    def _published(self, message: pb.JourneyPublished) -> None:
        self.published = message.version
        self.paused = False

    @handles(pb.JourneyPaused)
    def _paused(self, message: pb.JourneyPaused) -> None:
        self.paused = True

    @handles(pb.JourneyArchived)
    def _archived(self, message: pb.JourneyArchived) -> None:
        self.archived = True

    @property
    def latest(self) -> int:
        return max(self.versions, default=0)

    @property
    def status(self) -> pb.JourneyStatus.ValueType:
        if self.archived:
            return pb.JOURNEY_STATUS_ARCHIVED
        if self.paused:
            return pb.JOURNEY_STATUS_PAUSED
        if self.published:
            return pb.JOURNEY_STATUS_PUBLISHED
        return pb.JOURNEY_STATUS_DRAFT

    @property
    def running(self) -> bool:
        """People enter it and its instances advance."""
        return self.status == pb.JOURNEY_STATUS_PUBLISHED

    def version(self, number: int = 0) -> pb.Journey:
        """A stored version (0: the latest) with the journey's status as of now."""
        chosen = number or self.latest
        if chosen not in self.versions:
            raise NotFound(f"the journey has no version {chosen}" if number else "no such journey")
        journey = pb.Journey()
        journey.CopyFrom(self.versions[chosen])
        journey.status = self.status
        return journey


def save(catalog: Catalog, workspace: str, journey: pb.Journey, actor: str, now: datetime) -> list[Message]:
    """A new draft version, unless the journey is unchanged since the latest version (re-applying the
    same file is a no-op). `journey` has been validated; its server-set fields are ignored."""
    if catalog.archived:
        raise FailedPrecondition(f"journey {quoted(journey.name)} is archived; apply it under another name")
    code = _code_of(journey)
    if catalog.versions and _code_of(catalog.versions[catalog.latest]) == code:
        return []
    code.version = catalog.latest + 1
    code.updated_by = actor
    code.updated_at.FromDatetime(now)
    return [pb.JourneyDraftSaved(workspace=workspace, journey=code, actor=actor)]


def publish(catalog: Catalog, workspace: str, name: str, version: int, actor: str) -> list[Message]:
    """Make `version` (0: the latest) the one people enter; publishing a paused journey resumes it."""
    if catalog.archived:
        raise FailedPrecondition(f"journey {quoted(name)} is archived")
    chosen = version or catalog.latest
    if chosen not in catalog.versions:
        raise NotFound(f"journey {quoted(name)} has no version {chosen}")
    if catalog.running and catalog.published == chosen:
        return []
    return [pb.JourneyPublished(workspace=workspace, name=name, version=chosen, actor=actor)]


def pause(catalog: Catalog, workspace: str, name: str, actor: str) -> list[Message]:
    if catalog.archived:
        raise FailedPrecondition(f"journey {quoted(name)} is archived")
    if not catalog.published:
        raise FailedPrecondition(f"journey {quoted(name)} was never published: there is nothing to pause")
    if catalog.paused:
        return []
    return [pb.JourneyPaused(workspace=workspace, name=name, actor=actor)]


def archive(catalog: Catalog, workspace: str, name: str, actor: str) -> list[Message]:
    if not catalog.versions:
        raise NotFound(f"no journey {quoted(name)}")
    if catalog.archived:
        return []
    return [pb.JourneyArchived(workspace=workspace, name=name, actor=actor)]


def _code_of(journey: pb.Journey) -> pb.Journey:
    code = pb.Journey()
    code.CopyFrom(journey)
    # The fields the server sets: two applies differing only there are the same code.
    code.ClearField("version")
    code.ClearField("status")
    code.ClearField("updated_at")
    code.ClearField("updated_by")
    return code
