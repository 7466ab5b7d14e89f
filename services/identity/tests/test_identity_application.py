"""The identity application in process, on a real SQLite file and a real PostgreSQL database: ingest's
EventAccepted envelopes are handed to `handle_accepted` exactly as the subscriber does (one store
transaction per batch), and the profile 360 is read back through the application's use cases."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from onefold.eventlog.service import ServiceLog
from onefold.identity.adapters.read_model import IdentityProjection
from onefold.identity.application import IdentityApplication
from onefold.identity.domain.events import REGISTRY
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


def service_log(engine: sa.Engine, kek: KeyEncryptionKey) -> ServiceLog:
    """The identity service's log on `engine` (its store, read model and writer thread), as the
    service's bootstrap builds it."""
    store = EventStore(engine, service="identity", registry=REGISTRY, keys=kek)
    store.create_schema()
    return ServiceLog(store, projections=[IdentityProjection(store)])


@dataclass
class Identity:
    """The identity application on a real database, fed like the ingest subscriber feeds it."""

    store: EventStore
    app: IdentityApplication
    kek: KeyEncryptionKey
    data_dir: Path
    logs: list[ServiceLog] = field(default_factory=list)
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

    async def profile(self, type_name: str, value: str, **kwargs: Any) -> pb.Profile:
        return await self.app.get_profile(WS, ref(type_name, value), **kwargs)

    async def owner(self, type_name: str, value: str, workspace: str = WS) -> str:
        answer = await self.app.resolve_identifier(workspace, pb.Identifier(type=type_name, value=value))
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
        log = service_log(self.store.engine, self.kek)
        self.logs.append(log)
        return IdentityApplication(log)


@pytest.fixture
async def identity(database_url: str, tmp_path: Path) -> AsyncIterator[Identity]:
    engine = create_engine(database_url)
    kek = KeyEncryptionKey.generate()
    log = service_log(engine, kek)
    identity = Identity(store=log.store, app=IdentityApplication(log), kek=kek, data_dir=tmp_path, logs=[log])
    yield identity
    for each in identity.logs:
        await each.writer.stop()
    engine.dispose()


def identifiers_of(profile: pb.Profile) -> set[tuple[str, str]]:
    return {(i.identifier.type, i.identifier.value) for i in profile.identifiers}


def traits_of(profile: pb.Profile) -> dict[str, Any]:
    return {t.name: MessageToDict(t.value) for t in profile.traits}


def history_kinds(records: Sequence[pb.MergeRecord]) -> list[str]:
    return [pb.MergeRecord.Kind.Name(r.kind).removeprefix("KIND_") for r in records]


async def all_timeline(
    app: IdentityApplication, profile: pb.ProfileRef, **filters: Any
) -> list[pb.TimelineEntry]:
    entries: list[pb.TimelineEntry] = []
    token = ""
    for _ in range(100):
        page, token = await app.timeline(
            WS, profile, page_size=filters.pop("page_size", 50), page_token=token, **filters
        )
        entries.extend(page)
        if not token:
            return entries
    raise AssertionError("the timeline never ended")


# ------------------------------------------------------------------------------------------ stories


async def test_the_classic_stitching_story_ends_in_one_profile(identity: Identity) -> None:
    # Anonymous browsing on a laptop: a cookie and a device id, nothing else.
    browse = identity.send(anonymous_id="cookie-laptop", context={"device": {"id": "laptop-1"}})
    laptop = await identity.owner("anonymous_id", "cookie-laptop")
    assert laptop and await identity.owner("device_id", "laptop-1") == laptop
    # She logs in: user id and e-mail (written sloppily) join the browsing profile.
    identity.send(
        type=IDENTIFY,
        anonymous_id="cookie-laptop",
        user_id="u-ann",
        traits={"email": "  Ann@Example.COM ", "name": "Ann", "phone": "138 0013 8000"},
    )
    assert await identity.owner("user_id", "u-ann") == laptop
    assert await identity.owner("email", "ann@example.com") == laptop
    # On her phone she browses anonymously first (a second profile) and then logs in there too.
    identity.send(anonymous_id="cookie-phone", context={"device": {"id": "phone-1"}}, name="Opened")
    phone_profile = await identity.owner("anonymous_id", "cookie-phone")
    assert phone_profile and phone_profile != laptop
    identity.send(anonymous_id="cookie-phone", user_id="u-ann", context={"device": {"id": "phone-1"}})
    assert await identity.owner("anonymous_id", "cookie-phone") == laptop
    # The store's till knew her member card only, from an earlier purchase (a third profile) ...
    identity.send(type=IDENTIFY, traits={"member_card": "MC-77"}, source_id="pos")
    card_profile = await identity.owner("member_card", "MC-77")
    assert card_profile not in ("", laptop)
    # ... until at the counter she gives the card and the phone number her login had.
    counter = identity.send(
        type=IDENTIFY, traits={"member_card": "MC-77", "phone": "+86 138-0013-8000"}, source_id="pos"
    )

    profile = await identity.profile("member_card", "MC-77")
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
    assert [i.identifier.type for i in profile.identifiers][:4] == [
        "user_id",
        "email",
        "phone",
        "member_card",
    ]
    by_value = {i.identifier.value: i for i in profile.identifiers}
    assert by_value["cookie-laptop"].evidence_event_id == browse
    assert by_value["cookie-phone"].original_profile_id == phone_profile
    assert by_value["MC-77"].original_profile_id == card_profile
    assert set(profile.merged_profile_ids) == {phone_profile, card_profile}
    assert profile.event_count == len(identity.sent) == 6
    # The traits hold the e-mail and phone as the identifiers do (the workspace's region is CN).
    assert traits_of(profile) == {
        "email": "ann@example.com",
        "name": "Ann",
        "phone": "+8613800138000",
        "member_card": "MC-77",
    }
    assert {t.name: t.source_id for t in profile.traits}["phone"] == "pos"
    # Every identifier, in any spelling, and every old profile id lead to the same profile.
    for type_name, value in identifiers_of(profile) | {
        ("phone", "13800138000"),
        ("email", "ANN@example.com"),
    }:
        assert await identity.owner(type_name, value) == laptop
    redirected = await identity.app.get_profile(WS, pid(phone_profile))
    assert redirected.profile_id == laptop and redirected.redirected_from == phone_profile
    history = await identity.app.merge_history(WS, pid(laptop))
    assert history_kinds(history) == ["MERGED", "MERGED"]
    assert [(r.merged_id, r.rule) for r in history] == [
        (phone_profile, "identifier:device_id"),
        (card_profile, "identifier:member_card"),
    ]
    assert history[1].evidence_event_id == counter
    assert len(await all_timeline(identity.app, pid(laptop))) == 6


async def test_a_second_user_id_never_merges_and_the_refusal_is_in_the_history(identity: Identity) -> None:
    identity.send(type=IDENTIFY, user_id="u1", traits={"email": "shared@example.com"})
    first = await identity.owner("user_id", "u1")
    evidence = identity.send(type=IDENTIFY, user_id="u2", traits={"email": "shared@example.com"})
    second = await identity.owner("user_id", "u2")
    assert second and second != first
    # The e-mail stays where it was; u2's profile has only its user id.
    assert await identity.owner("email", "shared@example.com") == first
    assert identifiers_of(await identity.app.get_profile(WS, pid(second))) == {("user_id", "u2")}
    assert identifiers_of(await identity.app.get_profile(WS, pid(first))) == {
        ("user_id", "u1"),
        ("email", "shared@example.com"),
    }
    [refused] = await identity.app.merge_history(WS, pid(second))
    assert refused.kind == pb.MergeRecord.KIND_LINK_REFUSED
    assert (refused.survivor_id, refused.merged_id, refused.rule) == (second, first, "merge_limit")
    assert refused.evidence_event_id == evidence
    [(_, logged)] = identity.log(pb.LinkRefused)
    assert (logged.identifier.type, logged.identifier.value) == ("email", "shared@example.com")
    # Per-type limits hold for new identifiers as well: a sixth e-mail is refused, not linked.
    for number in range(6):
        identity.send(type=IDENTIFY, user_id="u1", traits={"email": f"e{number}@example.com"})
    emails = [
        i
        for i in (await identity.app.get_profile(WS, pid(first))).identifiers
        if i.identifier.type == "email"
    ]
    assert len(emails) == 5 and await identity.owner("email", "e5@example.com") == ""
    assert history_kinds(await identity.app.merge_history(WS, pid(first)))[-1] == "LINK_REFUSED"
    # A manual merge of the two user ids is refused with the limit it would break.
    with pytest.raises(FailedPrecondition, match="2 user_id identifiers, limit 1"):
        await identity.app.merge(WS, pid(first), pid(second), "same person?", "op")


async def test_blocked_values_never_link(identity: Identity) -> None:
    rules = pb.IdentityRules(
        identifiers=[
            pb.IdentifierRule(type="email", blocked_values=[" Counter@Shop.example "]),
            pb.IdentifierRule(type="phone", blocked_values=["021 6888 8888"]),
        ],
        default_phone_region="CN",
    )
    stored = await identity.app.set_rules(WS, rules, "admin")
    assert stored.version == 1
    email_rule = next(r for r in stored.identifiers if r.type == "email")
    assert list(email_rule.blocked_values) == ["counter@shop.example"]  # normalised
    assert await identity.app.get_rules(WS) == stored
    assert (await identity.app.get_rules("another-workspace")).version == 0  # rules are per workspace
    for user in ("u1", "u2"):
        identity.send(
            type=IDENTIFY,
            user_id=user,
            traits={"email": "counter@shop.example", "phone": "+86 21 6888 8888"},
        )
    first, second = await identity.owner("user_id", "u1"), await identity.owner("user_id", "u2")
    assert first and second and first != second
    assert await identity.owner("email", "counter@shop.example") == ""
    assert await identity.owner("phone", "02168888888") == ""
    # An anonymous visitor who types the blocked e-mail is not folded into anyone either.
    identity.send(type=IDENTIFY, anonymous_id="c-9", traits={"email": "COUNTER@shop.example"})
    visitor = await identity.owner("anonymous_id", "c-9")
    assert visitor not in ("", first, second)
    assert identifiers_of(await identity.app.get_profile(WS, pid(visitor))) == {("anonymous_id", "c-9")}
    assert identity.log(pb.LinkRefused) == []  # blocked values are dropped, not refused
    # Rules that cannot work are refused with the field at fault.
    with pytest.raises(InvalidArgument, match="blocked_values"):
        await identity.app.set_rules(
            WS, pb.IdentityRules(identifiers=[pb.IdentifierRule(type="phone", blocked_values=["x"])]), "a"
        )
    with pytest.raises(InvalidArgument, match="default_phone_region"):
        await identity.app.set_rules(WS, pb.IdentityRules(default_phone_region="XX"), "a")
    assert (await identity.app.get_rules(WS)).version == 1
    # The same rules again (a re-run `onefold apply`) are no new version and no new event.
    assert await identity.app.set_rules(WS, rules, "admin") == stored
    assert len(identity.log(pb.IdentityRulesSet)) == 1
    changed = await identity.app.set_rules(WS, pb.IdentityRules(default_phone_region="CN"), "admin")
    assert changed.version == 2 and len(identity.log(pb.IdentityRulesSet)) == 2


async def test_a_device_shared_by_two_logged_in_users_does_not_merge_them(identity: Identity) -> None:
    tablet = {"device": {"id": "family-tablet"}}
    identity.send(user_id="mum", anonymous_id="c-1", context=tablet)
    identity.send(user_id="dad", anonymous_id="c-1", context=tablet)
    identity.send(anonymous_id="c-2", context=tablet)  # logged out: the tablet's first user has it
    mum, dad = await identity.owner("user_id", "mum"), await identity.owner("user_id", "dad")
    assert mum and dad and mum != dad
    assert await identity.owner("device_id", "family-tablet") == mum
    assert await identity.owner("anonymous_id", "c-2") == mum
    assert identifiers_of(await identity.app.get_profile(WS, pid(dad))) == {("user_id", "dad")}
    refusals = [r.rule for r in await identity.app.merge_history(WS, pid(dad))]
    assert refusals == ["merge_limit", "merge_limit"]  # the device id and the cookie
    # Dad's later events follow his user id only.
    identity.send(user_id="dad", context=tablet, name="Bought")
    assert (await identity.app.get_profile(WS, pid(dad))).event_count == 2
    assert (await identity.app.get_profile(WS, pid(mum))).event_count == 2


async def test_a_protected_profile_is_not_merged_by_a_shared_identifier(identity: Identity) -> None:
    identity.send(type=IDENTIFY, user_id="vip", traits={"email": "vip@example.com"})
    identity.send(anonymous_id="kiosk", context={"device": {"id": "kiosk-1"}})
    vip, kiosk = await identity.owner("user_id", "vip"), await identity.owner("anonymous_id", "kiosk")
    protected = await identity.app.set_protection(WS, ref("anonymous_id", "kiosk"), True, "ops")
    assert protected == kiosk and (await identity.app.get_profile(WS, pid(kiosk))).protected
    evidence = identity.send(type=IDENTIFY, anonymous_id="kiosk", traits={"email": "vip@example.com"})
    assert (
        await identity.owner("anonymous_id", "kiosk") == kiosk
        and await identity.owner("user_id", "vip") == vip
    )
    [refused] = await identity.app.merge_history(WS, pid(vip))
    assert (refused.kind, refused.rule, refused.merged_id, refused.evidence_event_id) == (
        pb.MergeRecord.KIND_LINK_REFUSED,
        "protected",
        kiosk,
        evidence,
    )
    # The protection survives a restart (the graph is loaded from the read model) ...
    restarted = identity.fresh_app()
    with identity.store.transaction() as conn:
        restarted.handle_accepted(conn, [identity.event(anonymous_id="kiosk", user_id="vip")])
    assert (
        await restarted.resolve_identifier(WS, pb.Identifier(type="anonymous_id", value="kiosk"))
    ).profile_id == kiosk
    # ... and once lifted, the next shared identifier merges as usual.
    await restarted.set_protection(WS, pid(kiosk), False, "ops")
    with identity.store.transaction() as conn:
        restarted.handle_accepted(conn, [identity.event(anonymous_id="kiosk", user_id="vip")])
    assert (
        await restarted.resolve_identifier(WS, pb.Identifier(type="anonymous_id", value="kiosk"))
    ).profile_id == vip


async def _two_people(identity: Identity) -> tuple[str, str]:
    """Ann (user id, e-mail, laptop cookie, traits) and Bob (an anonymous phone with traits)."""
    day = datetime(2026, 1, 5, 9, tzinfo=UTC)
    identity.send(anonymous_id="c-ann", context={"device": {"id": "d-ann"}}, at=day)
    identity.send(
        type=IDENTIFY,
        anonymous_id="c-ann",
        user_id="ann",
        traits={"email": "ann@example.com", "plan": "pro"},
        at=day + timedelta(minutes=1),
    )
    identity.send(anonymous_id="c-bob", context={"device": {"id": "d-bob"}}, at=day + timedelta(minutes=2))
    identity.send(
        type=IDENTIFY,
        anonymous_id="c-bob",
        traits={"plan": "free", "city": "Lyon"},
        at=day + timedelta(minutes=3),
    )
    return await identity.owner("user_id", "ann"), await identity.owner("anonymous_id", "c-bob")


def _wrong_merge(identity: Identity) -> str:
    """Ann logs in on Bob's phone: his cookie comes with her user id, and the two are merged."""
    return identity.send(
        anonymous_id="c-bob", user_id="ann", name="Logged In", at=datetime(2026, 1, 5, 10, tzinfo=UTC)
    )


async def test_unmerge_by_event_restores_both_profiles_exactly(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    before = {p: await identity.app.get_profile(WS, pid(p)) for p in (ann, bob)}
    wrong = _wrong_merge(identity)
    merged = await identity.app.get_profile(WS, pid(bob))
    assert merged.profile_id == ann and merged.redirected_from == bob and merged.event_count == 5
    assert list(merged.merged_profile_ids) == [bob]

    parts = await identity.app.unmerge(
        WS, pid(ann), identifier=None, event_id=wrong, reason="shared phone", actor="op"
    )
    assert parts == [ann, bob]
    after = {p: await identity.app.get_profile(WS, pid(p)) for p in (ann, bob)}
    # Bob is exactly as he was; Ann too, plus the wrong event itself: it carried her user id, so it is hers.
    assert after[bob] == before[bob]
    wrong_entry = (await all_timeline(identity.app, pid(ann)))[0]
    assert wrong_entry.event_id == wrong
    restored = pb.Profile()
    restored.CopyFrom(after[ann])
    restored.event_count -= 1
    restored.last_seen.CopyFrom(before[ann].last_seen)
    assert restored == before[ann]
    assert after[ann].last_seen == wrong_entry.occurred_at
    assert wrong not in {e.event_id for e in await all_timeline(identity.app, pid(bob))}
    history = await identity.app.merge_history(WS, pid(ann))
    assert history_kinds(history) == ["MERGED", "UNMERGED"]
    assert (history[1].reason, history[1].actor, history[1].evidence_event_id) == (
        "shared phone",
        "op",
        wrong,
    )
    assert [p.profile_id for p in history[1].parts] == [ann, bob]
    # Unmerging again along the same event has nothing left to split.
    with pytest.raises(FailedPrecondition):
        await identity.app.unmerge(WS, pid(ann), identifier=None, event_id=wrong, reason="again", actor="op")
    with pytest.raises(NotFound):
        await identity.app.unmerge(
            WS, pid(ann), identifier=None, event_id="no-such-event", reason="x", actor="op"
        )
    with pytest.raises(InvalidArgument):
        await identity.app.unmerge(WS, pid(ann), identifier=None, event_id=wrong, reason=" ", actor="op")


async def test_unmerge_by_identifier_splits_it_off_for_good(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    before = await identity.app.get_profile(WS, pid(bob))
    _wrong_merge(identity)
    split = pb.Identifier(type="anonymous_id", value="c-bob")
    with pytest.raises(NotFound):  # the identifier must be on the profile named
        await identity.app.unmerge(
            WS,
            pid(ann),
            identifier=pb.Identifier(type="user_id", value="x"),
            event_id="",
            reason="r",
            actor="op",
        )
    parts = await identity.app.unmerge(
        WS, ref("user_id", "ann"), identifier=split, event_id="", reason="r", actor="op"
    )
    assert parts == [ann, bob]
    assert await identity.app.get_profile(WS, pid(bob)) == before
    # The split identifier never merges anything again, whatever comes with it.
    identity.send(anonymous_id="c-bob", user_id="ann")
    identity.send(type=IDENTIFY, anonymous_id="c-bob", traits={"email": "ann@example.com"})
    assert (
        await identity.owner("anonymous_id", "c-bob") == bob and await identity.owner("user_id", "ann") == ann
    )
    assert await identity.app.get_profile(WS, pid(bob)) == before  # both events resolved to Ann
    assert (await identity.app.get_profile(WS, pid(ann))).event_count == 2 + 3
    assert [r.rule for r in await identity.app.merge_history(WS, pid(ann))][-2:] == ["split", "split"]
    # A restarted service keeps it split (the flag is part of the read model).
    restarted = identity.fresh_app()
    with identity.store.transaction() as conn:
        restarted.handle_accepted(conn, [identity.event(anonymous_id="c-bob", user_id="ann")])
    assert (await restarted.resolve_identifier(WS, split)).profile_id == bob


async def test_manual_merge_redirects_and_can_be_undone(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    bob_before = await identity.app.get_profile(WS, pid(bob))
    with pytest.raises(InvalidArgument, match="reason"):
        await identity.app.merge(WS, pid(ann), pid(bob), "", "op")
    with pytest.raises(FailedPrecondition):
        await identity.app.merge(WS, pid(ann), ref("email", "ann@example.com"), "same", "op")
    with pytest.raises(NotFound):
        await identity.app.merge(WS, pid(ann), pid("no-such-profile"), "r", "op")
    survivor = await identity.app.merge(
        WS, pid(ann), ref("anonymous_id", "c-bob"), "called the shop: same person", "op"
    )
    assert survivor == ann
    redirected = await identity.app.get_profile(WS, pid(bob))
    assert (redirected.profile_id, redirected.redirected_from) == (ann, bob)
    assert redirected.event_count == 4 and list(redirected.merged_profile_ids) == [bob]
    assert await identity.owner("device_id", "d-bob") == ann
    [record] = await identity.app.merge_history(WS, pid(bob))
    assert (record.kind, record.rule, record.reason, record.actor) == (
        pb.MergeRecord.KIND_MERGED,
        "manual",
        "called the shop: same person",
        "op",
    )
    # The merge joined no identifiers on an event, so splitting along any of Bob's undoes it.
    parts = await identity.app.unmerge(
        WS,
        pid(ann),
        identifier=pb.Identifier(type="device_id", value="d-bob"),
        event_id="",
        reason="no",
        actor="op",
    )
    assert parts == [ann, bob]
    assert await identity.app.get_profile(WS, pid(bob)) == bob_before


async def _partition(
    identity: Identity, workspace: str, identifiers: Sequence[tuple[str, str]]
) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for type_name, value in identifiers:
        owner = await identity.owner(type_name, value, workspace)
        assert owner, (workspace, type_name, value)
        groups.setdefault(owner, set()).add(f"{type_name}:{value}")
    return {frozenset(group) for group in groups.values()}


async def test_events_out_of_order_end_in_the_same_profiles(identity: Identity) -> None:
    def story(workspace: str) -> list[EventEnvelope]:
        base = datetime(2026, 2, 1, tzinfo=UTC)
        return [
            identity.event(workspace=workspace, anonymous_id="c1", context={"device": {"id": "d1"}}, at=base),
            identity.event(
                workspace=workspace, anonymous_id="c2", user_id="u1", at=base + timedelta(hours=1)
            ),
            identity.event(
                workspace=workspace,
                type=IDENTIFY,
                anonymous_id="c1",
                traits={"email": "x@example.com"},
                at=base + timedelta(hours=2),
            ),
            identity.event(
                workspace=workspace,
                type=IDENTIFY,
                user_id="u1",
                traits={"email": "x@example.com"},
                at=base + timedelta(hours=3),
            ),
            identity.event(workspace=workspace, anonymous_id="c9", at=base + timedelta(hours=4)),
        ]

    in_order, reversed_ = story("ordered"), story("reversed")
    for envelope in in_order:
        identity.deliver(envelope)
    identity.deliver(*reversed(reversed_[2:]))  # a batch in reverse order ...
    for envelope in reversed(reversed_[:2]):  # ... then the oldest events, late
        identity.deliver(envelope)
    identifiers = [
        ("anonymous_id", "c1"),
        ("device_id", "d1"),
        ("anonymous_id", "c2"),
        ("user_id", "u1"),
        ("email", "x@example.com"),
        ("anonymous_id", "c9"),
    ]
    expected = {
        frozenset(
            {"anonymous_id:c1", "device_id:d1", "anonymous_id:c2", "user_id:u1", "email:x@example.com"}
        ),
        frozenset({"anonymous_id:c9"}),
    }
    assert (
        await _partition(identity, "ordered", identifiers)
        == await _partition(identity, "reversed", identifiers)
        == expected
    )
    for workspace in ("ordered", "reversed"):
        profile = await identity.app.get_profile(workspace, ref("user_id", "u1"))
        assert profile.event_count == 4
        # First and last seen follow when things happened, not the order they arrived in.
        assert profile.first_seen.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 1, tzinfo=UTC)
        assert profile.last_seen.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 1, 3, tzinfo=UTC)
    # Workspaces never share profiles, even with the same identifier values.
    assert await identity.owner("user_id", "u1", "ordered") != await identity.owner(
        "user_id", "u1", "reversed"
    )


async def test_the_same_event_delivered_twice_counts_once(identity: Identity) -> None:
    first = identity.event(type=IDENTIFY, user_id="u1", traits={"email": "u1@example.com"})
    second = identity.event(user_id="u1")
    identity.deliver(first, second)
    identity.deliver(first)  # a redelivery, in a later batch
    assert len(identity.log(pb.EventResolved)) == 2
    assert (await identity.profile("user_id", "u1")).event_count == 2


async def _workload(identity: Identity) -> None:
    """Every kind of identity event: creations, links, merges, refusals, traits, rules, protection,
    manual merge, both kinds of unmerge and an erasure."""
    await identity.app.set_rules(
        WS,
        pb.IdentityRules(
            identifiers=[pb.IdentifierRule(type="email", blocked_values=["test@example.com"])],
            trait_source_precedence=["crm"],
        ),
        "admin",
    )
    ann, bob = await _two_people(identity)
    wrong = _wrong_merge(identity)
    identity.send(type=IDENTIFY, user_id="ann", traits={"plan": "enterprise"}, source_id="crm")
    identity.send(type=IDENTIFY, user_id="ann", traits={"plan": "free"})  # the CRM's value wins
    identity.send(type=IDENTIFY, user_id="zoe", traits={"email": "ann@example.com", "phone": "13800138000"})
    await identity.app.unmerge(WS, pid(ann), identifier=None, event_id=wrong, reason="wrong", actor="op")
    identity.send(
        anonymous_id="c-carl", context={"device": {"id": "d-carl"}}, traits={"email": "test@example.com"}
    )
    await identity.app.merge(WS, pid(bob), ref("anonymous_id", "c-carl"), "same household", "op")
    await identity.app.unmerge(
        WS,
        pid(bob),
        identifier=pb.Identifier(type="device_id", value="d-carl"),
        event_id="",
        reason="no",
        actor="op",
    )
    await identity.app.set_protection(WS, ref("user_id", "zoe"), True, "op")
    identity.send(anonymous_id="c-zoe", user_id="zoe", name="Checkout")
    identity.send(type=IDENTIFY, user_id="dan", traits={"email": "dan@example.com", "phone": "not a phone"})
    identity.deliver(
        identity.event(anonymous_id="c-eve", context={"device": {"id": "d-eve"}}),
        identity.event(
            type=IDENTIFY, anonymous_id="c-eve", user_id="eve", traits={"email": "eve@example.com"}
        ),
        identity.event(anonymous_id="c-bob", user_id="eve"),  # Bob's old phone cookie: a merge
    )
    await identity.app.erase_subject(WS, [pb.Identifier(type="user_id", value="dan")], "dsr-1", "op")
    identity.send(type=IDENTIFY, traits={"phone": "123"})  # no usable identifier at all


async def _all_profiles(identity: Identity, app: IdentityApplication) -> dict[str, pb.Profile]:
    from onefold.identity.adapters.read_model import profiles

    with identity.store.engine.connect() as conn:
        ids = [
            row[0] for row in conn.execute(sa.select(profiles.c.profile_id).order_by(profiles.c.profile_id))
        ]
    return {profile_id: await app.get_profile(WS, pid(profile_id)) for profile_id in ids}


async def test_a_rebuilt_read_model_equals_the_live_one(identity: Identity) -> None:
    await _workload(identity)
    live_tables = identity.tables()
    live_profiles = await _all_profiles(identity, identity.app)
    assert len(live_profiles) >= 6 and live_tables["identity_trait_index"]
    assert any(p.erased for p in live_profiles.values()) and any(p.protected for p in live_profiles.values())
    # The counters of the read model agree with the timelines the log gives.
    for profile in live_profiles.values():
        if not profile.redirected_from and not profile.erased:
            assert profile.event_count == len(await all_timeline(identity.app, pid(profile.profile_id))), (
                profile
            )
    projection = IdentityProjection(identity.store)
    folded = Projector(identity.store, [projection]).rebuild(projection, batch_size=7)
    assert folded == identity.store.head_position()
    assert identity.tables() == live_tables
    # A restarted service (its graph loaded from the rebuilt tables) answers exactly the same.
    restarted = identity.fresh_app()
    assert await _all_profiles(identity, restarted) == live_profiles
    for profile_id in live_profiles:
        assert await restarted.merge_history(WS, pid(profile_id)) == await identity.app.merge_history(
            WS, pid(profile_id)
        )
    # ... and goes on resolving the same way as the live one would.
    with identity.store.transaction() as conn:
        restarted.handle_accepted(conn, [identity.event(anonymous_id="c-new", user_id="ann")])
    assert (
        await restarted.resolve_identifier(WS, pb.Identifier(type="anonymous_id", value="c-new"))
    ).profile_id == (await identity.owner("user_id", "ann"))


def _recorded_at(identity: Identity, event_id: str) -> datetime:
    [(event, _)] = [(e, m) for e, m in identity.log(pb.EventResolved) if m.event_id == event_id]
    return event.recorded_at


async def test_as_of_shows_the_earlier_profile_on_both_time_axes(identity: Identity) -> None:
    jan, feb, mar = (datetime(2026, month, 1, tzinfo=UTC) for month in (1, 2, 3))
    identity.send(anonymous_id="c1", context={"device": {"id": "d1"}}, at=jan)
    login = identity.send(type=IDENTIFY, anonymous_id="c1", user_id="u1", traits={"plan": "free"}, at=mar)
    knew_then = _recorded_at(identity, login)
    # Recorded later, occurred earlier: an offline purchase in February with a phone number and a plan.
    late = identity.send(
        type=IDENTIFY, anonymous_id="c1", traits={"phone": "13800138000", "plan": "trial"}, at=feb
    )
    assert _recorded_at(identity, late) > knew_then
    identity.send(anonymous_id="c2", context={"device": {"id": "d2"}}, at=feb)  # a second profile ...
    merge = identity.send(anonymous_id="c2", user_id="u1", at=mar + timedelta(days=1))  # ... merged later
    profile_now = await identity.profile("user_id", "u1")
    assert identifiers_of(profile_now) >= {("phone", "+8613800138000"), ("anonymous_id", "c2")}
    assert traits_of(profile_now)["plan"] == "free"  # the latest by occurred time

    # Recorded axis: what the service knew when the login was recorded (no phone, no second cookie).
    then = await identity.profile("user_id", "u1", as_of=knew_then)
    assert identifiers_of(then) == {("anonymous_id", "c1"), ("device_id", "d1"), ("user_id", "u1")}
    assert traits_of(then) == {"plan": "free"} and then.event_count == 2
    assert then.profile_id == profile_now.profile_id
    # Occurred axis: what had happened by mid-February, as known now: no login yet, the phone already.
    mid_feb = feb + timedelta(days=14)
    world = await identity.profile("anonymous_id", "c1", as_of=mid_feb, occurred_axis=True)
    assert identifiers_of(world) == {("anonymous_id", "c1"), ("device_id", "d1"), ("phone", "+8613800138000")}
    assert traits_of(world) == {"plan": "trial", "phone": "+8613800138000"} and world.event_count == 2
    assert world.first_seen.ToDatetime(tzinfo=UTC) == jan and world.last_seen.ToDatetime(tzinfo=UTC) == feb
    # Before the merge the second cookie was a profile of its own; the user id did not exist yet.
    separate = await identity.profile("anonymous_id", "c2", as_of=mid_feb, occurred_axis=True)
    assert separate.profile_id != profile_now.profile_id and separate.event_count == 1
    assert list(separate.merged_profile_ids) == []
    with pytest.raises(NotFound):
        await identity.profile("user_id", "u1", as_of=mid_feb, occurred_axis=True)
    with pytest.raises(NotFound):
        await identity.profile("user_id", "u1", as_of=jan - timedelta(days=1))
    merged_then = await identity.profile("anonymous_id", "c2", as_of=_recorded_at(identity, merge))
    assert merged_then.profile_id == profile_now.profile_id and list(merged_then.merged_profile_ids) == [
        separate.profile_id
    ]


async def test_invalid_identifiers_are_reported_on_the_event_and_never_linked(identity: Identity) -> None:
    event_id = identity.send(
        type=IDENTIFY,
        user_id="u1",
        traits={"phone": "12345", "email": "no-at-sign", "member_card": "M-1"},
    )
    [(_, resolved)] = identity.log(pb.EventResolved)
    assert resolved.event_id == event_id and resolved.profile_id == await identity.owner("user_id", "u1")
    reported = {(i.type, i.reason) for i in resolved.invalid_identifiers}
    assert reported == {
        ("phone", "not a valid phone number (default region CN)"),
        ("email", "not an email address"),
    }
    assert identifiers_of(await identity.profile("user_id", "u1")) == {
        ("user_id", "u1"),
        ("member_card", "M-1"),
    }
    # Asking for a profile by an invalid identifier is a clear refusal, not "not found".
    with pytest.raises(InvalidArgument, match="phone"):
        await identity.app.resolve_identifier(WS, pb.Identifier(type="phone", value="12345"))
    with pytest.raises(InvalidArgument, match="unknown identifier type 'shoe_size'"):
        await identity.app.resolve_identifier(WS, pb.Identifier(type="shoe_size", value="42"))
    with pytest.raises(InvalidArgument):
        await identity.app.get_profile(WS, pb.ProfileRef())
    # An event with nothing usable is resolved to no profile, with its problems recorded.
    nothing = identity.send(type=IDENTIFY, traits={"phone": "999"})
    [(event, unresolved)] = [(e, m) for e, m in identity.log(pb.EventResolved) if m.event_id == nothing]
    assert unresolved.profile_id == "" and event.stream_id.endswith(":unresolved")
    assert [i.type for i in unresolved.invalid_identifiers] == ["phone"]
    # A phone number with its country code is valid whatever the default region.
    identity.send(user_id="u2", traits={"phone": "+49 30 901820"})
    assert await identity.owner("phone", "+4930901820") == await identity.owner("user_id", "u2") != ""


async def test_timeline_pages_newest_first_and_filters(identity: Identity) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    names = ["Viewed", "Added", "Viewed", "Bought", "Viewed", "Added", "Bought"]
    sent = [
        identity.send(user_id="u1", name=name, at=start + timedelta(hours=i)) for i, name in enumerate(names)
    ]
    identify = identity.send(
        type=IDENTIFY, user_id="u1", traits={"plan": "pro"}, at=start + timedelta(hours=7)
    )
    identity.send(user_id="someone-else", name="Bought", at=start)
    profile = ref("user_id", "u1")

    pages: list[list[str]] = []
    token = ""
    while True:
        page, token = await identity.app.timeline(WS, profile, page_size=3, page_token=token)
        pages.append([entry.event_id for entry in page])
        if not token:
            break
        assert len(page) == 3
    flat = [event_id for page in pages for event_id in page]
    assert flat == [identify, *reversed(sent)]  # newest first, no gaps, nothing twice
    assert [len(page) for page in pages if page] == [3, 3, 2]

    bought = await all_timeline(identity.app, profile, names=["Bought"], page_size=1)
    assert [e.event_id for e in bought] == [sent[6], sent[3]]
    assert all(e.event.event == "Bought" and e.resolved_profile_id for e in bought)
    identifies = await all_timeline(identity.app, profile, types=[IDENTIFY])
    assert [e.event_id for e in identifies] == [identify]
    window = await all_timeline(
        identity.app, profile, since=start + timedelta(hours=2), until=start + timedelta(hours=4), page_size=2
    )
    assert [e.event_id for e in window] == [sent[4], sent[3], sent[2]]
    assert window[0].occurred_at.ToDatetime(tzinfo=UTC) == start + timedelta(hours=4)
    assert await all_timeline(identity.app, profile, names=["Refunded"]) == []
    with pytest.raises(InvalidArgument, match="page_token"):
        await identity.app.timeline(WS, profile, page_size=3, page_token="not-a-token")
    with pytest.raises(NotFound):
        await identity.app.timeline(WS, ref("user_id", "nobody"), page_size=3, page_token="")


async def test_search_by_trait_finds_the_live_profile_with_that_value_now(identity: Identity) -> None:
    identity.send(type=IDENTIFY, user_id="u1", traits={"plan": "pro", "seats": 5, "beta": True})
    identity.send(type=IDENTIFY, user_id="u2", traits={"plan": "pro"})
    identity.send(type=IDENTIFY, anonymous_id="c3", traits={"plan": "free"})
    u1, u2, c3 = (
        await identity.owner("user_id", "u1"),
        await identity.owner("user_id", "u2"),
        await identity.owner("anonymous_id", "c3"),
    )
    value = struct_pb2.Value

    assert sorted(await identity.app.search(WS, "plan", value(string_value="pro"), 10)) == sorted([u1, u2])
    assert await identity.app.search(WS, "seats", value(number_value=5), 10) == [u1]
    assert await identity.app.search(WS, "beta", value(bool_value=True), 10) == [u1]
    assert await identity.app.search(WS, "plan", value(string_value="PRO"), 10) == []  # exact values only
    assert len(await identity.app.search(WS, "plan", value(string_value="pro"), 1)) == 1
    assert await identity.app.search("other-workspace", "plan", value(string_value="pro"), 10) == []
    assert await identity.app.search(WS, "plan", value(string_value="free"), 10) == [c3]
    # u2 changes plan: the old value no longer finds it.
    identity.send(type=IDENTIFY, user_id="u2", traits={"plan": "free"})
    assert await identity.app.search(WS, "plan", value(string_value="pro"), 10) == [u1]
    assert sorted(await identity.app.search(WS, "plan", value(string_value="free"), 10)) == sorted([u2, c3])
    # The anonymous free profile is merged into u2's: search answers the survivor, once.
    identity.send(anonymous_id="c3", user_id="u2")
    assert await identity.owner("anonymous_id", "c3") == u2
    assert await identity.app.search(WS, "plan", value(string_value="free"), 10) == [u2]
    with pytest.raises(InvalidArgument):
        await identity.app.search(WS, "", value(string_value="pro"), 10)
    with pytest.raises(InvalidArgument):
        await identity.app.search(
            WS, "plan", value(list_value=struct_pb2.ListValue(values=[value(string_value="pro")])), 10
        )


async def test_export_gives_everything_about_a_data_subject(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    wrong = _wrong_merge(identity)
    exported = await identity.app.export_subject(
        WS,
        [pb.Identifier(type="email", value="ANN@example.com"), pb.Identifier(type="user_id", value="nobody")],
    )
    [profile] = exported.profiles
    assert profile == await identity.app.get_profile(WS, pid(ann))
    assert [e.event_id for e in exported.events] == [
        e.event_id for e in await all_timeline(identity.app, pid(ann))
    ]
    assert len(exported.events) == 5 and exported.events[0].event_id == wrong
    assert exported.events[-1].event.anonymous_id == "c-ann"
    assert history_kinds(exported.history) == ["MERGED"]
    assert await identity.app.export_subject(WS, [pb.Identifier(type="user_id", value="nobody")]) == (
        pb.SubjectExport()
    )
    with pytest.raises(InvalidArgument):
        await identity.app.export_subject(WS, [])
    assert bob


async def test_erasure_shreds_the_profile_and_its_identifiers_never_resolve_again(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    identity.send(anonymous_id="c-ann2", user_id="ann")  # a second cookie, linked
    identity.send(anonymous_id="c-old", name="Old visit")
    old = await identity.owner("anonymous_id", "c-old")
    identity.send(anonymous_id="c-old", user_id="ann")  # an old profile merged into Ann's
    assert await identity.owner("anonymous_id", "c-old") == ann
    erased_ids, unlinked = await identity.app.erase_subject(
        WS, [pb.Identifier(type="email", value="ann@example.com")], "dsr-7", "dpo"
    )
    assert sorted(erased_ids) == sorted([ann, old]) and unlinked == 6
    # Her identifiers resolve to nothing; asking by them is "not found".
    for type_name, value in [
        ("user_id", "ann"),
        ("email", "ann@example.com"),
        ("anonymous_id", "c-ann"),
        ("anonymous_id", "c-old"),
        ("device_id", "d-ann"),
    ]:
        assert await identity.owner(type_name, value) == ""
        with pytest.raises(NotFound):
            await identity.profile(type_name, value)
    # By id the profile says it is erased, with no identifier left on it.
    profile = await identity.app.get_profile(WS, pid(ann))
    assert profile.erased and list(profile.identifiers) == []
    assert (await identity.app.get_profile(WS, pid(old))).redirected_from == old
    # In the log, the values are unreadable: identifiers, traits, the events themselves. (Personal
    # string and Struct fields decode as the ERASED marker; personal message fields come back empty.)
    linked = [m for _, m in identity.log(pb.IdentifierLinked) if m.profile_id in (ann, old)]
    assert len(linked) == 6
    assert all(not m.HasField("identifier") and m.key for m in linked)
    resolved = [m for _, m in identity.log(pb.EventResolved) if m.profile_id in (ann, old)]
    assert len(resolved) == 5
    assert all(not m.HasField("event") and m.keys for m in resolved)
    traits = [m for _, m in identity.log(pb.TraitsUpdated) if m.profile_id == ann]
    assert [MessageToDict(m.traits) for m in traits] == [{ERASED: ERASED}]
    if identity.store.is_sqlite:
        identity.store.checkpoint_wal()
        raw = Path(str(identity.store.engine.url.database)).read_bytes()
        assert b"ann@example.com" not in raw and b"c-ann" not in raw
    # Bob is untouched.
    assert (await identity.profile("anonymous_id", "c-bob")).profile_id == bob
    assert traits_of(await identity.app.get_profile(WS, pid(bob))) == {"plan": "free", "city": "Lyon"}
    # New events with her old identifiers do not bring her back.
    identity.send(type=IDENTIFY, user_id="ann", traits={"email": "ann@example.com"})
    identity.send(user_id="ann", anonymous_id="c-new")
    assert await identity.owner("user_id", "ann") == await identity.owner("email", "ann@example.com") == ""
    fresh = await identity.owner("anonymous_id", "c-new")
    assert fresh not in ("", ann) and identifiers_of(await identity.app.get_profile(WS, pid(fresh))) == {
        ("anonymous_id", "c-new")
    }
    assert (await identity.app.get_profile(WS, pid(ann))).erased
    # Erasing again is harmless and finds nothing new; a restarted service still refuses the keys.
    _, unlinked_again = await identity.app.erase_subject(
        WS, [pb.Identifier(type="user_id", value="ann")], "dsr-7", "dpo"
    )
    assert unlinked_again <= 6
    restarted = identity.fresh_app()
    with identity.store.transaction() as conn:
        restarted.handle_accepted(conn, [identity.event(user_id="ann", anonymous_id="c-ann")])
    assert not (await restarted.resolve_identifier(WS, pb.Identifier(type="user_id", value="ann"))).found
    assert len(identity.log(pb.ProfileErased)) == 1


async def test_counts_and_timelines_agree_after_repeated_unmerges_and_an_erasure(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    wrong = _wrong_merge(identity)  # carries Ann's user id and Bob's cookie
    await identity.app.unmerge(WS, pid(ann), identifier=None, event_id=wrong, reason="r", actor="op")
    # Bob's profile is merged by hand with a third one and split again: the wrong event, in the
    # family's streams, still belongs to Ann (it carries her user id), not to Bob.
    identity.send(anonymous_id="c-carl", context={"device": {"id": "d-carl"}})
    await identity.app.merge(WS, pid(bob), ref("anonymous_id", "c-carl"), "household", "op")
    await identity.app.unmerge(
        WS,
        pid(bob),
        identifier=pb.Identifier(type="anonymous_id", value="c-carl"),
        event_id="",
        reason="r",
        actor="op",
    )
    for profile_id in (ann, bob, await identity.owner("anonymous_id", "c-carl")):
        profile = await identity.app.get_profile(WS, pid(profile_id))
        timeline = await all_timeline(identity.app, pid(profile_id))
        assert profile.event_count == len(timeline), profile_id
        assert list(profile.merged_profile_ids) == []
    assert (await identity.app.get_profile(WS, pid(ann))).event_count == 3
    assert (await identity.app.get_profile(WS, pid(bob))).event_count == 2
    # Erasing Bob leaves nothing of his in Ann's profile or timeline, though his streams stay in
    # her family (they were one profile once).
    ann_before = await identity.app.get_profile(WS, pid(ann))
    await identity.app.erase_subject(WS, [pb.Identifier(type="anonymous_id", value="c-bob")], "dsr", "dpo")
    assert await identity.app.get_profile(WS, pid(ann)) == ann_before
    assert len(await all_timeline(identity.app, pid(ann))) == 3
    assert ERASED not in traits_of(await identity.app.get_profile(WS, pid(ann)))


async def test_concurrent_use_cases_write_one_at_a_time_and_read_beside_the_writer(
    identity: Identity,
) -> None:
    """Manual changes and subscriber batches all run on the one writer thread; reads run beside
    them. Started together, every change lands and the graph stays the fold of the log."""
    for n in range(8):
        # People 4 and 5 are anonymous (two user ids would never merge).
        user_id = "" if n in (4, 5) else f"u{n}"
        identity.send(type=IDENTIFY, user_id=user_id, anonymous_id=f"c-u{n}", traits={"n": n})
    owners = [await identity.owner("anonymous_id", f"c-u{n}") for n in range(8)]

    def batch(first: int) -> None:
        with identity.store.transaction() as conn:
            identity.app.handle_accepted(conn, [identity.event(anonymous_id=f"c-u{first}", name="Again")])

    writes = [identity.app.set_protection(WS, pid(owner), True, "op") for owner in owners[:4]]
    writes += [identity.app.merge(WS, pid(owners[4]), pid(owners[5]), "same person", "op")]
    writes += [identity.app.log.writer.run(batch, n) for n in range(6, 8)]
    reads = [identity.app.get_profile(WS, pid(owner)) for owner in owners]
    await asyncio.gather(*writes, *reads)

    for owner in owners[:4]:
        assert (await identity.app.get_profile(WS, pid(owner))).protected
    assert (await identity.app.get_profile(WS, pid(owners[5]))).redirected_from == owners[5]
    for n in (6, 7):
        assert (await identity.app.get_profile(WS, pid(owners[n]))).event_count == 2
    # The graph holds the protections set concurrently: a shared identifier merges neither profile.
    identity.send(anonymous_id="c-u0", user_id="u1")
    assert await identity.owner("user_id", "u1") == owners[1]
    assert await identity.owner("anonymous_id", "c-u0") == owners[0]


# ------------------------------------------------------------------------------- reads and the cache


def cached(identity: Identity, profile_id: str, app: IdentityApplication | None = None) -> bool:
    return (app or identity.app).profile_cache.get((WS, profile_id)) is not None


async def test_a_cached_profile_shows_a_trait_update_at_the_next_read(identity: Identity) -> None:
    ann, _ = await _two_people(identity)
    assert traits_of(await identity.profile("user_id", "ann"))["plan"] == "pro"
    assert cached(identity, ann)
    identity.send(type=IDENTIFY, user_id="ann", traits={"plan": "enterprise"})
    assert traits_of(await identity.profile("user_id", "ann"))["plan"] == "enterprise"
    # A rectification (a data subject request) too.
    await identity.app.rectify(WS, pid(ann), _struct({"city": "Oslo"}), "dsr-1", "dpo")
    assert traits_of(await identity.app.get_profile(WS, pid(ann)))["city"] == "Oslo"
    # Counters move with every event resolved into the profile, which stays cached meanwhile.
    before = await identity.app.get_profile(WS, pid(ann))
    identity.send(user_id="ann", name="Again", at=datetime(2030, 2, 1, tzinfo=UTC))
    assert cached(identity, ann)
    after = await identity.app.get_profile(WS, pid(ann))
    assert after.event_count == before.event_count + 1
    assert after.last_seen.ToDatetime(tzinfo=UTC) == datetime(2030, 2, 1, tzinfo=UTC)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def test_a_cached_profile_merged_away_answers_as_its_survivor(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    for profile_id in (ann, bob):
        await identity.app.get_profile(WS, pid(profile_id))
        assert cached(identity, profile_id)
    uncached = await _uncached_copy(identity)
    # A merge decided by resolution: one event carries both people's identifiers.
    identity.send(anonymous_id="c-bob", user_id="ann")
    merged = await identity.app.get_profile(WS, pid(bob))
    assert (merged.profile_id, merged.redirected_from) == (ann, bob)
    assert merged == await uncached.get_profile(WS, pid(bob))
    survivor = await identity.profile("user_id", "ann")
    assert ("anonymous_id", "c-bob") in identifiers_of(survivor) and list(survivor.merged_profile_ids) == [
        bob
    ]
    assert survivor == await uncached.get_profile(WS, ref("user_id", "ann"))
    # And undone: both answer as before the merge again.
    [record] = [r for r in await identity.app.merge_history(WS, pid(ann)) if r.merged_id == bob]
    await identity.app.get_profile(WS, pid(ann))
    parts = await identity.app.unmerge(
        WS, pid(ann), identifier=None, event_id=record.evidence_event_id, reason="no", actor="op"
    )
    assert sorted(parts) == sorted([ann, bob])
    for profile_id in (ann, bob):
        answer = await identity.app.get_profile(WS, pid(profile_id))
        assert answer.profile_id == profile_id and not answer.redirected_from
        assert answer == await uncached.get_profile(WS, pid(profile_id))


async def _uncached_copy(identity: Identity) -> IdentityApplication:
    """Another application on the same database whose cache keeps nothing: the answers as read
    from the log and the read model."""
    app = identity.fresh_app()
    app.profile_cache.max_profiles = 0
    return app


async def test_an_erased_profile_is_never_answered_from_the_cache(identity: Identity) -> None:
    ann, bob = await _two_people(identity)
    await identity.app.get_profile(WS, pid(ann))
    await identity.app.get_profile(WS, pid(bob))
    assert cached(identity, ann) and cached(identity, bob)
    await identity.app.erase_subject(WS, [pb.Identifier(type="user_id", value="ann")], "dsr-2", "dpo")
    with pytest.raises(NotFound):
        await identity.profile("user_id", "ann")
    for _ in range(2):  # read twice: the second read would be the cached one
        profile = await identity.app.get_profile(WS, pid(ann))
        assert profile.erased and list(profile.identifiers) == []
        assert "ann@example.com" not in str(profile)
        assert not cached(identity, ann)
    # The erasure emptied the cache (a destroyed key may have sealed parts of other profiles too).
    assert not cached(identity, bob)
    assert traits_of(await identity.app.get_profile(WS, pid(bob))) == {"plan": "free", "city": "Lyon"}


async def test_a_change_written_by_another_replica_is_seen_by_the_next_read(identity: Identity) -> None:
    ann, _ = await _two_people(identity)
    await identity.app.get_profile(WS, pid(ann))
    assert cached(identity, ann)
    other = identity.fresh_app()  # another process on the same database
    with identity.store.transaction() as conn:
        other.handle_accepted(
            conn, [identity.event(type=IDENTIFY, user_id="ann", traits={"plan": "enterprise"})]
        )
    await other.set_protection(WS, pid(ann), True, "op")
    profile = await identity.app.get_profile(WS, pid(ann))
    assert traits_of(profile)["plan"] == "enterprise" and profile.protected


async def test_reads_are_answered_while_the_writer_holds_a_transaction_open(identity: Identity) -> None:
    """A write transaction is held open on the writer thread until reads (of every kind) have been
    answered beside it: they never queue behind the writer, its thread or its lock, and see what
    was committed before it."""
    ann, _ = await _two_people(identity)
    loop = asyncio.get_running_loop()
    opened = asyncio.Event()
    reads_done = threading.Event()
    order: list[str] = []

    def long_write() -> None:
        with identity.store.transaction() as conn:
            identity.app.handle_accepted(
                conn, [identity.event(type=IDENTIFY, user_id="ann", traits={"plan": "enterprise"})]
            )
            order.append("write open")
            loop.call_soon_threadsafe(opened.set)
            # Bounds a hang only: the reads below end this wait long before.
            reads_done.wait(timeout=120)
        order.append("write committed")

    writing = asyncio.ensure_future(identity.app.log.writer.run(long_write))
    await opened.wait()
    profile, resolved, timeline, history, rules = await asyncio.gather(
        identity.profile("user_id", "ann"),
        identity.app.resolve_identifier(WS, pb.Identifier(type="email", value="ann@example.com")),
        all_timeline(identity.app, pid(ann)),
        identity.app.merge_history(WS, pid(ann)),
        identity.app.get_rules(WS),
    )
    order.append("reads answered")
    reads_done.set()
    await writing
    assert order == ["write open", "reads answered", "write committed"]
    assert traits_of(profile)["plan"] == "pro"  # the open transaction is not seen
    assert resolved.profile_id == ann and len(timeline) == 2 and rules.identifiers
    assert traits_of(await identity.profile("user_id", "ann"))["plan"] == "enterprise"
    assert history == await identity.app.merge_history(WS, pid(ann))


async def test_two_worker_processes_resolve_in_turn_each_folding_in_what_the_other_wrote(
    identity: Identity,
) -> None:
    """Two worker processes of identity on one database apply batches in turn: each sees the
    identifiers the other linked (folded into its loaded graph, not reloaded) and resolves as one
    process would."""
    ann, _ = await _two_people(identity)
    graph = identity.app._graphs[WS]
    other = identity.fresh_app()
    with identity.store.transaction() as conn:  # the other worker links a new cookie to Ann
        other.handle_accepted(
            conn, [identity.event(type=IDENTIFY, anonymous_id="c-ann-phone", user_id="ann", traits={})]
        )
    identity.send(anonymous_id="c-ann-phone", context={"device": {"id": "d-ann-phone"}})
    assert identity.app._graphs[WS] is graph  # folded in, not loaded again
    assert await identity.owner("device_id", "d-ann-phone") == ann
    assert await identity.owner("anonymous_id", "c-ann-phone") == ann
    assert len(identity.log(pb.ProfileCreated)) == 2  # Ann and Bob: nobody new
