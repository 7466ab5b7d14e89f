"""The identity application in process, on a real SQLite file and a real PostgreSQL database: ingest's
EventAccepted envelopes are handed to `handle_accepted` exactly as the subscriber does (one store
transaction per batch), and the profile 360 is read back through the application's use cases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.eventlog import ERASED, EventStore
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.models import RecordedEvent
from onefold.eventlog.projections import Projector
from onefold.identity.application import IdentityApplication, event_registry
from onefold.identity.projections import IdentityProjection
from onefold.platform.database import create_engine
from onefold.platform.errors import FailedPrecondition, InvalidArgument, NotFound

WS = "acme"
TRACK = ingest_pb2.EVENT_TYPE_TRACK
IDENTIFY = ingest_pb2.EVENT_TYPE_IDENTIFY
ACCEPTED = ingest_pb2.EventAccepted.DESCRIPTOR.full_name


def ref(type_name: str, value: str) -> pb.ProfileRef:
    return pb.ProfileRef(identifier=pb.Identifier(type=type_name, value=value))


def pid(profile_id: str) -> pb.ProfileRef:
    return pb.ProfileRef(profile_id=profile_id)


@dataclass
class Identity:
    """The identity application on a real database, fed like the ingest subscriber feeds it."""

    store: EventStore
    app: IdentityApplication
    kek: KeyEncryptionKey
    position: int = 0
    sent: list[EventEnvelope] = field(default_factory=list)

    def event(
        self,
        *,
        user_id: str = "",
        anonymous_id: str = "",
        traits: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        type: ingest_pb2.EventType.ValueType = TRACK,
        name: str = "Viewed",
        at: datetime | None = None,
        workspace: str = WS,
        source_id: str = "web",
    ) -> EventEnvelope:
        """An ingest EventAccepted envelope with the next upstream position (not delivered yet)."""
        self.position += 1
        tracked = ingest_pb2.TrackingEvent(
            type=type,
            message_id=str(uuid.uuid4()),
            user_id=user_id,
            anonymous_id=anonymous_id,
            event=name if type == TRACK else "",
        )
        if traits:
            tracked.traits.update(traits)
        if context:
            tracked.context.update(context)
        tracked.timestamp.FromDatetime(at or datetime.now(UTC))
        accepted = ingest_pb2.EventAccepted(event=tracked, workspace=workspace, source_id=source_id)
        envelope = EventEnvelope(
            event_id=str(uuid.uuid4()),
            type=ACCEPTED,
            position=self.position,
            workspace=workspace,
            payload=accepted.SerializeToString(),
        )
        self.sent.append(envelope)
        return envelope

    def deliver(self, *envelopes: EventEnvelope) -> None:
        """One subscriber batch: one store transaction around the handler."""
        with self.store.transaction() as conn:
            self.app.handle_accepted(conn, list(envelopes))

    def send(self, **kwargs: Any) -> str:
        """Make one event, deliver it alone, return its event id."""
        envelope = self.event(**kwargs)
        self.deliver(envelope)
        return envelope.event_id

    def profile(self, type_name: str, value: str, **kwargs: Any) -> pb.Profile:
        return self.app.get_profile(WS, ref(type_name, value), **kwargs)

    def owner(self, type_name: str, value: str, workspace: str = WS) -> str:
        answer = self.app.resolve_identifier(workspace, pb.Identifier(type=type_name, value=value))
        return answer.profile_id if answer.found else ""

    def log(self, message_type: type[Any]) -> list[tuple[RecordedEvent, Any]]:
        name = message_type.DESCRIPTOR.full_name
        return [(e, self.store.decode(e)) for e in self.store.iter_all() if e.type == name]

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every read-model table, sorted: to compare live and rebuilt contents."""
        with self.store.engine.connect() as conn:
            return {
                table.name: sorted(tuple(row) for row in conn.execute(sa.select(table)))
                for table in IdentityProjection.tables
            }

    def fresh_app(self) -> IdentityApplication:
        """A new application (a restarted process) on the same database and key."""
        store = EventStore(self.store.engine, service="identity", registry=event_registry(), keys=self.kek)
        return IdentityApplication(store, IdentityProjection())


@pytest.fixture
def identity(database_url: str) -> Iterator[Identity]:
    engine = create_engine(database_url)
    kek = KeyEncryptionKey.generate()
    store = EventStore(engine, service="identity", registry=event_registry(), keys=kek)
    store.create_schema()
    projection = IdentityProjection()
    Projector(store, [projection]).create_tables()
    yield Identity(store=store, app=IdentityApplication(store, projection), kek=kek)
    engine.dispose()


def identifiers_of(profile: pb.Profile) -> set[tuple[str, str]]:
    return {(i.identifier.type, i.identifier.value) for i in profile.identifiers}


def traits_of(profile: pb.Profile) -> dict[str, Any]:
    return {t.name: MessageToDict(t.value) for t in profile.traits}


def history_kinds(records: Sequence[pb.MergeRecord]) -> list[str]:
    return [pb.MergeRecord.Kind.Name(r.kind).removeprefix("KIND_") for r in records]


def all_timeline(app: IdentityApplication, profile: pb.ProfileRef, **filters: Any) -> list[pb.TimelineEntry]:
    entries: list[pb.TimelineEntry] = []
    token = ""
    for _ in range(100):
        page, token = app.timeline(WS, profile, page_size=filters.pop("page_size", 50), page_token=token, **filters)
        entries.extend(page)
        if not token:
            return entries
    raise AssertionError("the timeline never ended")


# ------------------------------------------------------------------------------------------ stories


def test_the_classic_stitching_story_ends_in_one_profile(identity: Identity) -> None:
    # Anonymous browsing on a laptop: a cookie and a device id, nothing else.
    browse = identity.send(anonymous_id="cookie-laptop", context={"device": {"id": "laptop-1"}})
    laptop = identity.owner("anonymous_id", "cookie-laptop")
    assert laptop and identity.owner("device_id", "laptop-1") == laptop
    # She logs in: user id and e-mail (written sloppily) join the browsing profile.
    identity.send(
        type=IDENTIFY,
        anonymous_id="cookie-laptop",
        user_id="u-ann",
        traits={"email": "  Ann@Example.COM ", "name": "Ann", "phone": "138 0013 8000"},
    )
    assert identity.owner("user_id", "u-ann") == laptop
    assert identity.owner("email", "ann@example.com") == laptop
    # On her phone she browses anonymously first (a second profile) and then logs in there too.
    identity.send(anonymous_id="cookie-phone", context={"device": {"id": "phone-1"}}, name="Opened")
    phone_profile = identity.owner("anonymous_id", "cookie-phone")
    assert phone_profile and phone_profile != laptop
    identity.send(anonymous_id="cookie-phone", user_id="u-ann", context={"device": {"id": "phone-1"}})
    assert identity.owner("anonymous_id", "cookie-phone") == laptop
    # The store's till knew her member card only, from an earlier purchase (a third profile) ...
    identity.send(type=IDENTIFY, traits={"member_card": "MC-77"}, source_id="pos")
    card_profile = identity.owner("member_card", "MC-77")
    assert card_profile not in ("", laptop)
    # ... until at the counter she gives the card and the phone number her login had.
    counter = identity.send(
        type=IDENTIFY, traits={"member_card": "MC-77", "phone": "+86 138-0013-8000"}, source_id="pos"
    )

    profile = identity.profile("member_card", "MC-77")
    assert profile.profile_id == laptop and not profile.redirected_from
    assert identifiers_of(profile) == {
        ("user_id", "u-ann"),
        ("email", "ann@example.com"),
        ("phone", "+8613800138000"),
        ("member_card", "MC-77"),
        ("device_id", "laptop-1"),
        ("device_id", "phone-1"),
        ("anonymous_id", "cookie-laptop"),
        ("anonymous_id", "cookie-phone"),
    }
    # Identifiers come in priority order; each remembers the event and profile it first came with.
    assert [i.identifier.type for i in profile.identifiers][:4] == ["user_id", "email", "phone", "member_card"]
    by_value = {i.identifier.value: i for i in profile.identifiers}
    assert by_value["cookie-laptop"].evidence_event_id == browse
    assert by_value["cookie-phone"].original_profile_id == phone_profile
    assert by_value["MC-77"].original_profile_id == card_profile
    assert set(profile.merged_profile_ids) == {phone_profile, card_profile}
    assert profile.event_count == len(identity.sent) == 6
    assert traits_of(profile) == {"email": "  Ann@Example.COM ", "name": "Ann", "phone": "+86 138-0013-8000",
                                  "member_card": "MC-77"}
    assert {t.name: t.source_id for t in profile.traits}["phone"] == "pos"
    # Every identifier, in any spelling, and every old profile id lead to the same profile.
    for type_name, value in identifiers_of(profile) | {("phone", "13800138000"), ("email", "ANN@example.com")}:
        assert identity.owner(type_name, value) == laptop
    redirected = identity.app.get_profile(WS, pid(phone_profile))
    assert redirected.profile_id == laptop and redirected.redirected_from == phone_profile
    history = identity.app.merge_history(WS, pid(laptop))
    assert history_kinds(history) == ["MERGED", "MERGED"]
    assert [(r.merged_id, r.rule) for r in history] == [
        (phone_profile, "identifier:device_id"),
        (card_profile, "identifier:member_card"),
    ]
    assert history[1].evidence_event_id == counter
    assert len(all_timeline(identity.app, pid(laptop))) == 6
