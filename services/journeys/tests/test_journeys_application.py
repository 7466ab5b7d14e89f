"""The journeys application on a real SQLite log with a controllable clock, the real channels and the
real consent service (conftest.py): upstream events in as the subscribers hand them over, timers
fired and messages sent as the loops do, and what a person got (or did not, and why) read back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import grpc
import pytest
from channel_servers import Answer, http_server
from journeys_harness import (
    WORKSPACE,
    JourneysFactory,
    JourneysHarness,
    envelope,
    journey,
)
from sqlalchemy.engine import Connection

from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.contracts.segments.v1 import segments_pb2
from onefold.eventlog import RecordedEvent
from onefold.eventlog.folded import FoldedStreams
from onefold.eventlog.mapper import ERASED
from onefold.journeys.adapters.providers.base import Message
from onefold.journeys.adapters.providers.settings import ChannelsSettings, HttpChannel
from onefold.journeys.domain.instance import Instance, instance_stream, subject_of
from onefold.journeys.domain.pacing import PacingPolicy, QuietHours
from onefold.platform.errors import InvalidArgument, NotFound
from onefold.platform.ports import free_port
from onefold.testing.consent import ConsentService

SHANGHAI = "Asia/Shanghai"  # UTC+8, no daylight saving
TEMPLATES = (
    pb.Template(
        name="cart_reminder",
        channel=pb.CHANNEL_EMAIL,
        subject="Your cart is waiting",
        text="{{ traits.firstName }}, cart {{ event.cart_id }} is still waiting.",
    ),
    pb.Template(name="cart_sms", channel=pb.CHANNEL_SMS, text="Cart {{ event.cart_id }} is still waiting."),
)
# Text messages wait for the morning in the person's own zone: 21:00-08:00 there.
QUIET_NIGHTS = PacingPolicy(quiet_hours=QuietHours(start=time(21, 0), end=time(8, 0)))


def send(step: str, template: str, channel: str = "CHANNEL_EMAIL", next_step: str = "") -> dict[str, Any]:
    return {
        "name": step,
        "send": {"channel": channel, "template": template, "purpose": "marketing", "next": next_step},
    }


def cart_journey() -> pb.Journey:
    """The abandoned cart of docs/journeys.md: an hour after a product is added, an email; a day
    later without an order, a text message. An order of the same cart ends it wherever it is."""
    return journey(
        {
            "name": "abandoned_cart",
            "entry": {
                "event": {"event": {"event": "Product Added"}, "entity_key": "cart_id"},
                "reentry": "REENTRY_AFTER_EXIT",
            },
            "steps": [
                {"name": "pause", "wait": {"duration": "3600s", "next": "email_reminder"}},
                send("email_reminder", "cart_reminder", next_step="wait_for_order"),
                {
                    "name": "wait_for_order",
                    "wait_for_event": {
                        "event": {"event": "Order Completed"},
                        "timeout": "86400s",
                        "on_event": "ordered",
                        "on_timeout": "sms_reminder",
                    },
                },
                send("sms_reminder", "cart_sms", channel="CHANNEL_SMS"),
                {"name": "ordered", "exit": {"reason": "ordered"}},
            ],
            "exit_rules": [{"event": {"event": "Order Completed"}, "reason": "ordered"}],
            "goals": [
                {
                    "name": "purchase",
                    "event": {"event": "Order Completed"},
                    "conversion_window": "604800s",
                    "revenue_property": "total",
                }
            ],
        }
    )


def one_send(name: str, channel: str, template: str, **entry: Any) -> pb.Journey:
    """A journey entered through the API (unless `entry` says otherwise) that sends one message."""
    return journey(
        {"name": name, "entry": entry or {"api": {}}, "steps": [send("message", template, channel)]}
    )


async def shopper(journeys: JourneysHarness, consent: ConsentService, profile_id: str) -> set[str]:
    """A person who consented to marketing by email and text, in Shanghai; the consent ledger's
    event ids."""
    granted = await consent.grant(profile_id)
    await journeys.traits(
        profile_id,
        email=f"{profile_id}@example.com",
        phone="+8613800000000",
        firstName="Ada",
        timezone=SHANGHAI,
    )
    return granted


def statuses(instance: pb.Instance) -> list[str]:
    return [message.status for message in instance.messages]


# ------------------------------------------------------------------------------------------------
# The abandoned cart, end to end.


async def test_a_purchase_before_the_wait_ends_sends_nothing_and_exits_by_the_exit_rule(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.advance(timedelta(minutes=30))
    order = await journeys.track("p-1", "Order Completed", cart_id="c-1", total=42.5)
    await journeys.advance(timedelta(hours=2))
    await journeys.advance(timedelta(days=2))

    instance = await journeys.instance("abandoned_cart", "p-1", "c-1")
    assert instance.status == pb.INSTANCE_STATUS_EXITED
    assert instance.exit_reason == "exit_rule: ordered"
    assert list(instance.goals) == ["purchase"]
    assert not instance.messages
    assert journeys.outbox("p-1") == []
    assert await journeys.sandbox("p-1") == []
    exited = [e for e in journeys.events("abandoned_cart", "p-1", "c-1") if isinstance(e, pb.JourneyExited)]
    assert [(e.reason, e.cause_event_id) for e in exited] == [("exit_rule: ordered", order)]
    stats = await journeys.stats("abandoned_cart")
    assert (stats.entered, stats.exited, stats.converted, stats.revenue) == (1, 1, 1, 42.5)
    assert dict(stats.exits_by_reason) == {"exit_rule: ordered": 1}


async def test_the_instances_kept_between_passes_are_the_folds_of_their_streams(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    """Passes keep the instances they moved (and those they read) for the next pass; the sender and
    the timers write to the same streams in between. What is kept is what the log folds to."""
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    for profile_id in ("p-1", "p-2"):
        await shopper(journeys, consent, profile_id)
        await journeys.track(profile_id, "Product Added", cart_id=f"{profile_id}-c-1")
    await journeys.track("p-1", "Product Added", cart_id="p-1-c-2")
    await journeys.advance(timedelta(hours=1))  # the timers fire, the reminders are sent
    await journeys.track("p-1", "Order Completed", cart_id="p-1-c-1", total=12.0)
    await journeys.track("p-2", "Page Viewed")
    await journeys.advance(timedelta(days=2))

    store = journeys.app.log.store
    streams = [
        instance_stream(WORKSPACE, "abandoned_cart", profile_id, cart)
        for profile_id, cart in (("p-1", "p-1-c-1"), ("p-1", "p-1-c-2"), ("p-2", "p-2-c-1"))
    ]

    def states(conn: Connection, folded: FoldedStreams[Instance]) -> dict[str, Instance]:
        def fold(events: Sequence[RecordedEvent]) -> Instance:
            return Instance.fold((e.occurred_at, store.decode(e, conn=conn)) for e in events)

        return {stream: found.state for stream, found in folded.load(conn, streams, fold).items()}

    with store.transaction() as conn:
        kept = states(conn, journeys.app.runs.folded)
        assert kept == states(conn, FoldedStreams(store)) and len(kept) == 3
        assert kept[streams[0]].exit_reason == "exit_rule: ordered"


async def test_an_order_of_another_cart_does_not_end_this_one(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    granted = await shopper(journeys, consent, "p-1")
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.track("p-1", "Order Completed", cart_id="c-2", total=10)
    await journeys.advance(timedelta(hours=1))

    instance = await journeys.instance("abandoned_cart", "p-1", "c-1")
    assert instance.status == pb.INSTANCE_STATUS_ACTIVE
    assert instance.step == "wait_for_order"
    assert statuses(instance) == ["delivered"]
    [kept] = await journeys.sandbox("p-1")
    assert (kept.to, kept.subject, kept.text) == (
        "p-1@example.com",
        "Your cart is waiting",
        "Ada, cart c-1 is still waiting.",
    )
    # Why it went: the consent ledger event CheckConsent rested on.
    [sent] = [e for e in await journeys.history("abandoned_cart", "p-1", "c-1") if e.event == "MessageSent"]
    assert sent.detail == "sent: consent allowed it"
    assert sent.consent_evidence_id in granted


async def test_consent_withdrawn_during_the_wait_suppresses_the_send_with_the_ledger_evidence(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.advance(timedelta(minutes=20))
    withdrawal = await consent.withdraw("p-1", "email")
    await journeys.consent_event(consent.envelope_of(withdrawal))
    await journeys.advance(timedelta(minutes=40))

    instance = await journeys.instance("abandoned_cart", "p-1", "c-1")
    assert statuses(instance) == ["suppressed"]
    assert instance.status == pb.INSTANCE_STATUS_ACTIVE  # the journey goes on: the text may still go
    assert instance.step == "wait_for_order"
    [suppressed] = [
        e for e in journeys.events("abandoned_cart", "p-1", "c-1") if isinstance(e, pb.MessageSuppressed)
    ]
    assert suppressed.reason == "consent: withdrawn"
    assert suppressed.consent_evidence_id == withdrawal
    [told] = [
        e for e in await journeys.history("abandoned_cart", "p-1", "c-1") if e.event == "MessageSuppressed"
    ]
    assert (told.detail, told.consent_evidence_id) == ("suppressed: consent: withdrawn", withdrawal)
    assert await journeys.sandbox("p-1") == []


async def test_quiet_hours_defer_the_text_to_their_end_in_the_persons_zone(
    make_journeys: JourneysFactory, consent: ConsentService
) -> None:
    journeys = make_journeys(policy=QUIET_NIGHTS)
    journeys.clock.now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 20:00 in Shanghai
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.advance(timedelta(hours=1))  # 21:00 there: quiet, but email is not held back
    assert [s.channel for s in await journeys.sandbox("p-1")] == ["email"]

    await journeys.advance(timedelta(days=1))  # no order: the text is due at 21:00 there
    end_of_night = datetime(2026, 3, 4, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
    [deferred] = [
        e for e in journeys.events("abandoned_cart", "p-1", "c-1") if isinstance(e, pb.MessageDeferred)
    ]
    assert deferred.until.ToDatetime(tzinfo=UTC) == end_of_night
    assert deferred.reason == "quiet hours"
    assert journeys.outbox("p-1") == ["delivered", "queued"]

    await journeys.advance(end_of_night - journeys.clock.now - timedelta(seconds=1))
    assert journeys.outbox("p-1") == ["delivered", "queued"]
    await journeys.advance(timedelta(seconds=1))
    assert journeys.outbox("p-1") == ["delivered", "delivered"]
    texts = [s for s in await journeys.sandbox("p-1") if s.channel == "sms"]
    assert [(s.to, s.text) for s in texts] == [("+8613800000000", "Cart c-1 is still waiting.")]
    instance = await journeys.instance("abandoned_cart", "p-1", "c-1")
    [text_id] = [m.message_id for m in instance.messages if m.channel == pb.CHANNEL_SMS]
    sent_at = [
        e.at.ToDatetime(tzinfo=UTC)
        for e in await journeys.history("abandoned_cart", "p-1", "c-1")
        if e.event == "MessageSent" and e.message_id == text_id
    ]
    assert sent_at == [end_of_night]
    assert (instance.status, instance.exit_reason) == (pb.INSTANCE_STATUS_EXITED, "completed")


async def test_consent_withdrawn_while_a_text_waits_out_the_night_stops_it(
    make_journeys: JourneysFactory, consent: ConsentService
) -> None:
    journeys = make_journeys(policy=QUIET_NIGHTS)
    journeys.clock.now = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
    await journeys.apply(one_send("night_text", "CHANNEL_SMS", "cart_sms"), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await journeys.app.runs.enter_by_api(WORKSPACE, "night_text", "p-1", "", {"cart_id": "c-9"})
    await journeys.send_due()
    assert journeys.outbox("p-1") == ["queued"]  # deferred to the morning

    email_withdrawn = await consent.withdraw("p-1", "email")
    await journeys.consent_event(consent.envelope_of(email_withdrawn))
    assert journeys.outbox("p-1") == ["queued"]  # another channel: the text is still to go
    withdrawal = await consent.withdraw("p-1", "sms")
    await journeys.consent_event(consent.envelope_of(withdrawal))
    await journeys.advance(timedelta(hours=12))

    assert journeys.outbox("p-1") == ["suppressed"]
    [suppressed] = [e for e in journeys.events("night_text", "p-1") if isinstance(e, pb.MessageSuppressed)]
    assert (suppressed.reason, suppressed.consent_evidence_id) == ("consent withdrawn", withdrawal)
    assert await journeys.sandbox("p-1") == []


# ------------------------------------------------------------------------------------------------
# Exactly once, and a provider that is down.


async def test_a_send_made_before_a_crash_is_not_made_again_after_the_restart(
    make_journeys: JourneysFactory, consent: ConsentService
) -> None:
    first = make_journeys()
    await first.apply(one_send("welcome", "CHANNEL_EMAIL", "cart_reminder"), templates=TEMPLATES)
    await shopper(first, consent, "p-1")
    entered = await first.app.runs.enter_by_api(WORKSPACE, "welcome", "p-1", "", {"cart_id": "c-1"})
    [queued] = entered.instance.messages
    # The first process decided to send and the provider took the message; it died before the
    # answer was recorded, so its log still holds the message as queued.
    taken = await first.app.channels.send(
        Message(queued.message_id, WORKSPACE, "p-1", "email", "p-1@example.com", "Your cart", "c-1")
    )
    assert taken.provider_message_id
    await first.close()
    assert first.outbox("p-1") == ["queued"]

    restarted = make_journeys(clock=first.clock)  # the same files: the service started again
    assert await restarted.send_due() == 1
    assert await restarted.send_due() == 0

    kept = await restarted.sandbox("p-1")
    assert [s.message_id for s in kept] == [queued.message_id]
    assert restarted.outbox("p-1") == ["delivered"]
    outcomes = [
        e.event for e in await restarted.history("welcome", "p-1") if e.message_id == queued.message_id
    ]
    assert outcomes == ["MessageQueued", "MessageSent", "MessageDelivered"]


async def test_nothing_is_sent_unchecked_while_consent_is_unreachable(
    make_journeys: JourneysFactory, consent: ConsentService
) -> None:
    journeys = make_journeys()
    await journeys.apply(one_send("welcome", "CHANNEL_EMAIL", "cart_reminder"), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await journeys.app.runs.enter_by_api(WORKSPACE, "welcome", "p-1", "", {"cart_id": "c-1"})
    await journeys.close()

    # Restarted where consent cannot be reached (nobody listens at that address).
    cut_off = make_journeys(clock=journeys.clock, consent_target=f"127.0.0.1:{free_port()}")
    with pytest.raises(grpc.aio.AioRpcError) as unreachable:
        await cut_off.send_due()
    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cut_off.outbox("p-1") == ["queued"]
    assert await cut_off.sandbox("p-1") == []
    await cut_off.close()

    reconnected = make_journeys(clock=cut_off.clock)
    assert await reconnected.send_due() == 1
    assert reconnected.outbox("p-1") == ["delivered"]


async def test_a_provider_outage_is_retried_then_recorded_as_failed_with_its_error(
    make_journeys: JourneysFactory, consent: ConsentService
) -> None:
    with http_server() as provider:
        provider.default = Answer(503, {"error": "maintenance"})
        down = HttpChannel(
            kind="http", url=provider.url, auth="none", retry_base_delay_seconds=0, retry_max_delay_seconds=0
        )
        journeys = make_journeys(channels=ChannelsSettings(sms=down))
        await journeys.apply(one_send("text", "CHANNEL_SMS", "cart_sms"), templates=TEMPLATES)
        await shopper(journeys, consent, "p-1")
        await journeys.app.runs.enter_by_api(WORKSPACE, "text", "p-1", "", {"cart_id": "c-1"})
        assert await journeys.send_due() == 1

    attempts = down.retry_attempts
    assert len(provider.received) == attempts
    assert {r.body["message_id"] for r in provider.received} == {provider.received[0].body["message_id"]}
    error = f"gave up after {attempts} attempts: HTTP 503"
    [failed] = [e for e in journeys.events("text", "p-1") if isinstance(e, pb.MessageFailed)]
    assert failed.provider_error == error
    instance = await journeys.instance("text", "p-1")
    assert statuses(instance) == ["failed"]
    assert [e.detail for e in await journeys.history("text", "p-1") if e.event == "MessageFailed"] == [
        f"failed: {error}"
    ]
    assert journeys.outbox("p-1") == ["failed"]
    assert await journeys.send_due() == 0  # a failure is final: not tried again
    [step] = (await journeys.stats("text")).steps
    assert (step.step, step.queued, step.sent, step.failed) == ("message", 1, 0, 1)


# ------------------------------------------------------------------------------------------------
# Entering: a segment, the API; re-entry and cooldown.


async def test_entering_a_segment_enters_its_journey_once(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    vip_welcome = one_send("vip_welcome", "CHANNEL_EMAIL", "cart_reminder", segment={"segment": "vip"})
    await journeys.apply(vip_welcome, templates=TEMPLATES)
    await journeys.segment_entered("p-1", "vip")
    await journeys.segment_entered("p-2", "cart_abandoners")
    await journeys.segment_exited("p-1", "vip")
    await journeys.segment_entered("p-1", "vip")  # back in the segment: re-entry is "never"

    instance = await journeys.instance("vip_welcome", "p-1")
    assert instance.ref.entry_seq == 1
    entered = [e for e in journeys.events("vip_welcome", "p-1") if isinstance(e, pb.JourneyEntered)]
    assert [e.trigger for e in entered] == ["segment_entry"]
    with pytest.raises(NotFound):
        await journeys.instance("vip_welcome", "p-2")


async def test_a_batch_of_tags_and_memberships_enters_and_refuses_as_one_input_at_a_time_would(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    """A segments batch reads the instances only of the profiles it may enter: one already in the
    journey among tags and other memberships is still refused by its re-entry rule."""
    vip_welcome = one_send("vip_welcome", "CHANNEL_EMAIL", "cart_reminder", segment={"segment": "vip"})
    await journeys.apply(vip_welcome, templates=TEMPLATES)
    await journeys.segment_entered("p-1", "vip")

    def tag(profile_id: str) -> segments_pb2.TagChanged:
        return segments_pb2.TagChanged(profile_id=profile_id, workspace=WORKSPACE, tag="tier", value="gold")

    def entered(profile_id: str, segment: str) -> segments_pb2.SegmentEntered:
        return segments_pb2.SegmentEntered(profile_id=profile_id, workspace=WORKSPACE, segment=segment)

    batch = [tag("p-1"), entered("p-2", "cart_abandoners"), entered("p-1", "vip"), entered("p-3", "vip")]
    await journeys.deliver(
        journeys.app.runs.handle_segments, *(envelope(m, journeys.clock.now) for m in batch)
    )

    for profile_id in ("p-1", "p-3"):
        instance = await journeys.instance("vip_welcome", profile_id)
        assert instance.ref.entry_seq == 1
        entries = [e for e in journeys.events("vip_welcome", profile_id) if isinstance(e, pb.JourneyEntered)]
        assert [e.trigger for e in entries] == ["segment_entry"]
    with pytest.raises(NotFound):
        await journeys.instance("vip_welcome", "p-2")


async def test_api_entry_follows_the_reentry_rule_and_the_cooldown(journeys: JourneysHarness) -> None:
    nudge = journey(
        {
            "name": "nudge",
            "entry": {"api": {}, "reentry": "REENTRY_AFTER_EXIT", "cooldown": "86400s"},
            "steps": [{"name": "pause", "wait": {"duration": "3600s"}}],
        }
    )
    await journeys.apply(nudge)
    enter = journeys.app.runs.enter_by_api

    first = await enter(WORKSPACE, "nudge", "p-1", "", {})
    assert (first.entered, first.instance.ref.entry_seq) == (True, 1)
    still_in = await enter(WORKSPACE, "nudge", "p-1", "", {})
    assert (still_in.entered, still_in.refused) == (False, "reentry: after exit (still in the journey)")

    await journeys.advance(timedelta(hours=2))
    assert (await journeys.instance("nudge", "p-1")).exit_reason == "completed"
    cooling = await enter(WORKSPACE, "nudge", "p-1", "", {})
    assert (cooling.entered, cooling.refused) == (
        False,
        f"cooldown until {(journeys.clock.now + timedelta(hours=22)).isoformat()}",
    )

    journeys.clock.advance(timedelta(hours=22))
    again = await enter(WORKSPACE, "nudge", "p-1", "", {})
    assert (again.entered, again.instance.ref.entry_seq) == (True, 2)
    assert (await journeys.stats("nudge")).entered == 2


async def test_the_same_cart_added_to_again_does_not_enter_twice_while_it_runs(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(cart_journey(), templates=TEMPLATES)  # re-entry: after exit
    await shopper(journeys, consent, "p-1")
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.advance(timedelta(minutes=30))
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.track("p-1", "Product Added", cart_id="c-2")  # another cart: its own instance
    await journeys.advance(timedelta(minutes=30))

    first_cart = await journeys.instance("abandoned_cart", "p-1", "c-1")
    assert (first_cart.ref.entry_seq, first_cart.step, statuses(first_cart)) == (
        1,
        "wait_for_order",
        ["delivered"],
    )
    second_cart = await journeys.instance("abandoned_cart", "p-1", "c-2")
    assert (second_cart.ref.entry_seq, second_cart.step) == (1, "pause")


async def test_reentry_always_restarts_a_running_instance_and_stops_what_it_had_not_sent(
    make_journeys: JourneysFactory, consent: ConsentService
) -> None:
    journeys = make_journeys(policy=QUIET_NIGHTS)
    journeys.clock.now = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai: texts wait
    restarting = journey(
        {
            "name": "cart_text",
            "entry": {
                "event": {"event": {"event": "Product Added"}, "entity_key": "cart_id"},
                "reentry": "REENTRY_ALWAYS",
            },
            "steps": [
                send("text", "cart_sms", "CHANNEL_SMS", next_step="pause"),
                {"name": "pause", "wait": {"duration": "86400s"}},
            ],
        }
    )
    await journeys.apply(restarting, templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.send_due()
    added_again = await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.advance(timedelta(hours=12))  # morning there

    instance = await journeys.instance("cart_text", "p-1", "c-1")
    assert instance.ref.entry_seq == 2
    events = journeys.events("cart_text", "p-1", "c-1")
    [restarted] = [e for e in events if isinstance(e, pb.JourneyExited) and e.reason == "restarted"]
    assert (restarted.instance.entry_seq, restarted.cause_event_id) == (1, added_again)
    [stopped] = [e for e in events if isinstance(e, pb.MessageSuppressed)]
    assert (stopped.instance.entry_seq, stopped.reason) == (1, "stopped: restarted")
    assert journeys.outbox("p-1") == ["suppressed", "delivered"]
    assert [s.message_id for s in await journeys.sandbox("p-1")] == [instance.messages[0].message_id]


async def test_api_entry_of_an_unknown_or_unpublished_journey_is_refused(journeys: JourneysHarness) -> None:
    await journeys.apply(
        one_send("draft_only", "CHANNEL_EMAIL", "cart_reminder"), templates=TEMPLATES, publish=False
    )
    with pytest.raises(NotFound):
        await journeys.app.runs.enter_by_api(WORKSPACE, "no_such_journey", "p-1", "", {})
    refused = await journeys.app.runs.enter_by_api(WORKSPACE, "draft_only", "p-1", "", {})
    assert (refused.entered, refused.refused) == (False, "not published")


async def test_a_paused_journey_enters_nobody_and_holds_its_timers_until_published_again(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await journeys.track("p-1", "Product Added", cart_id="c-1")
    await journeys.app.journeys.pause(WORKSPACE, "abandoned_cart", "cred-test")
    await journeys.track("p-1", "Product Added", cart_id="c-2")
    await journeys.advance(timedelta(hours=3))

    with pytest.raises(NotFound):
        await journeys.instance("abandoned_cart", "p-1", "c-2")
    held = await journeys.instance("abandoned_cart", "p-1", "c-1")
    assert (held.status, held.step, list(held.messages)) == (pb.INSTANCE_STATUS_ACTIVE, "pause", [])

    await journeys.app.journeys.publish(WORKSPACE, "abandoned_cart", 0, "cred-test")
    await journeys.advance(timedelta(0))  # the timer that came due meanwhile fires now
    resumed = await journeys.instance("abandoned_cart", "p-1", "c-1")
    assert (resumed.step, statuses(resumed)) == ("wait_for_order", ["delivered"])


# ------------------------------------------------------------------------------------------------
# The control group.


async def test_the_uplift_over_the_control_group_matches_a_hand_count(journeys: JourneysHarness) -> None:
    offer = journey(
        {
            "name": "offer",
            "entry": {"api": {}},
            "steps": [
                {
                    "name": "holdout",
                    "split": {
                        "arms": [
                            {"name": "control", "percent": 30, "control": True},
                            {"name": "treated", "percent": 70, "next": "pause"},
                        ]
                    },
                },
                {"name": "pause", "wait": {"duration": "86400s"}},
            ],
            "goals": [
                {
                    "name": "purchase",
                    "event": {"event": "Order Completed"},
                    "conversion_window": "604800s",
                    "revenue_property": "total",
                }
            ],
        }
    )
    await journeys.apply(offer)
    people = [f"p-{n:02d}" for n in range(60)]
    held_out = {}
    for person in people:
        entered = await journeys.app.runs.enter_by_api(WORKSPACE, "offer", person, "", {})
        held_out[person] = entered.instance.control
    journeys.clock.advance(timedelta(days=2))  # the treated have completed, the control exited at once
    buyers = people[::3] + people[1::7]
    for person in buyers:
        await journeys.track(person, "Order Completed", total=10)
    journeys.clock.advance(timedelta(days=6))  # after the window: no longer a conversion
    await journeys.track(people[2], "Order Completed", total=10)

    control = [p for p in people if held_out[p]]
    treated = [p for p in people if not held_out[p]]
    assert control and treated
    converted = set(buyers)
    treated_converted = len(converted & set(treated))
    control_converted = len(converted & set(control))
    stats = await journeys.stats("offer")
    assert (stats.uplift.treated, stats.uplift.treated_converted) == (len(treated), treated_converted)
    assert (stats.uplift.control, stats.uplift.control_converted) == (len(control), control_converted)
    assert stats.uplift.uplift == pytest.approx(
        treated_converted / len(treated) - control_converted / len(control)
    )
    assert stats.uplift.ci_low < stats.uplift.uplift < stats.uplift.ci_high
    assert (stats.entered, stats.converted, stats.revenue) == (60, len(converted), 10.0 * len(converted))


# ------------------------------------------------------------------------------------------------
# Archive and erasure.


async def test_archiving_stops_the_instances_in_flight_and_their_unsent_messages(
    make_journeys: JourneysFactory, consent: ConsentService
) -> None:
    journeys = make_journeys(policy=QUIET_NIGHTS)
    night_text = journey(
        {
            "name": "night_text",
            "entry": {"api": {}},
            "steps": [
                send("text", "cart_sms", "CHANNEL_SMS", next_step="pause"),
                {"name": "pause", "wait": {"duration": "3600s"}},
            ],
        }
    )
    await journeys.apply(night_text, templates=TEMPLATES)
    journeys.clock.now = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai
    for person in ("p-1", "p-2"):
        await shopper(journeys, consent, person)
    await journeys.app.runs.enter_by_api(WORKSPACE, "night_text", "p-1", "", {"cart_id": "c-1"})
    await journeys.advance(timedelta(hours=1))
    await journeys.app.runs.enter_by_api(WORKSPACE, "night_text", "p-2", "", {"cart_id": "c-2"})
    await journeys.send_due()
    # p-1 has completed and p-2 waits; both texts are deferred to the morning.
    assert (await journeys.instance("night_text", "p-1")).exit_reason == "completed"
    assert (await journeys.instance("night_text", "p-2")).status == pb.INSTANCE_STATUS_ACTIVE
    assert journeys.outbox("p-1") == journeys.outbox("p-2") == ["queued"]

    archived = await journeys.app.archive(WORKSPACE, "night_text", "cred-test")
    assert archived.status == pb.JOURNEY_STATUS_ARCHIVED
    await journeys.advance(timedelta(hours=12))

    for person, exit_reason in (("p-1", "completed"), ("p-2", "archived")):
        assert journeys.outbox(person) == ["suppressed"]
        assert await journeys.sandbox(person) == []
        instance = await journeys.instance("night_text", person)
        assert (instance.status, instance.exit_reason) == (pb.INSTANCE_STATUS_EXITED, exit_reason)
        [suppressed] = [
            e for e in journeys.events("night_text", person) if isinstance(e, pb.MessageSuppressed)
        ]
        assert suppressed.reason == "stopped: archived"
    refused = await journeys.app.runs.enter_by_api(WORKSPACE, "night_text", "p-3", "", {})
    assert refused.entered is False


async def test_erasure_stops_instances_deletes_facts_and_sends_and_leaves_their_events_erased(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await shopper(journeys, consent, "p-2")
    for person in ("p-1", "p-2"):
        await journeys.track(person, "Product Added", cart_id=f"cart-of-{person}")
    await journeys.advance(timedelta(hours=1))  # each got the email and waits for an order

    before = await journeys.app.export_subject(WORKSPACE, ["p-1"])
    assert dict(before) == {"journey_instances": 1, "messages": 1, "profile_facts": 1, "sandbox_sends": 1}
    erased = await journeys.app.erase_subject(WORKSPACE, ["p-1"])
    assert dict(erased) == {"instances_stopped": 1, "sandbox_sends_erased": 1, "profiles_erased": 1}

    after = await journeys.app.export_subject(WORKSPACE, ["p-1"])
    assert (after["profile_facts"], after["sandbox_sends"]) == (0, 0)
    instance = await journeys.instance("abandoned_cart", "p-1", "cart-of-p-1")
    assert (instance.status, instance.exit_reason) == (pb.INSTANCE_STATUS_EXITED, "erased")
    events = journeys.events("abandoned_cart", "p-1", "cart-of-p-1")
    [entered] = [e for e in events if isinstance(e, pb.JourneyEntered)]
    [sent] = [e for e in events if isinstance(e, pb.MessageSent)]
    assert dict(entered.properties) == {ERASED: ERASED}
    assert sent.recipient == ERASED
    assert sent.consent_evidence_id  # what is not personal stays: why it was sent

    await journeys.advance(timedelta(days=2))  # the text of the timeout never goes to p-1
    assert journeys.outbox("p-1") == ["delivered"]
    assert await journeys.sandbox("p-1") == []
    # Nobody else is touched.
    assert journeys.outbox("p-2") == ["delivered", "delivered"]
    assert len(await journeys.sandbox("p-2")) == 2


async def test_events_of_an_erased_profile_still_in_flight_are_set_aside_not_recorded(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(cart_journey(), templates=TEMPLATES)
    await shopper(journeys, consent, "p-1")
    await shopper(journeys, consent, "p-2")
    await journeys.app.erase_subject(WORKSPACE, ["p-1"])
    log_head = journeys.store.head_position()

    # Identity's batch, published before it learnt of the erasure, holds both people's events.
    await journeys.deliver(
        journeys.app.runs.handle_identity,
        journeys.resolved("p-1", "Product Added", cart_id="c-1"),
        journeys.resolved("p-2", "Product Added", cart_id="c-2"),
    )
    with pytest.raises(NotFound):
        await journeys.instance("abandoned_cart", "p-1", "c-1")
    assert (await journeys.instance("abandoned_cart", "p-2", "c-2")).status == pb.INSTANCE_STATUS_ACTIVE
    assert {e.subject for e in journeys.store.read(after_position=log_head)} == {subject_of(WORKSPACE, "p-2")}
    refused = await journeys.app.runs.enter_by_api(WORKSPACE, "abandoned_cart", "p-1", "c-3", {})
    assert (refused.entered, refused.refused) == (False, "the profile was erased")


# ------------------------------------------------------------------------------------------------
# Invalid definitions.


async def test_an_invalid_journey_is_refused_naming_each_field_path(journeys: JourneysHarness) -> None:
    broken = journey(
        {
            "name": "broken",
            "entry": {"api": {}},
            "steps": [
                {"name": "pause", "wait": {"duration": "3600s", "next": "nowhere"}},
                {
                    "name": "mail",
                    "send": {"channel": "CHANNEL_EMAIL", "template": "missing", "purpose": "health"},
                },
            ],
        }
    )
    badly_named = pb.Template(name="Cart Reminder", channel=pb.CHANNEL_EMAIL, subject="Hi", text="Hi")
    with pytest.raises(InvalidArgument) as refused:
        await journeys.apply(broken, templates=(*TEMPLATES, badly_named))
    assert dict(refused.value.violations) == {
        "templates[2].name": "must match [a-z][a-z0-9_]{0,62}",
        "journeys[0].steps[0].wait.next": 'no step named "nowhere"',
        "journeys[0].steps[1].send.template": 'no template named "missing"',
        "journeys[0].steps[1].send.purpose": 'no consent purpose named "health"',  # consent's model
        "journeys[0].steps[1]": 'step "mail" is unreachable from "pause"',
    }
    assert refused.value.message.startswith("nothing was applied: ")
    assert await journeys.app.journeys.listed(WORKSPACE, include_archived=True) == []
    assert await journeys.app.journeys.listed_templates(WORKSPACE) == []  # all or none


# ------------------------------------------------------------------------------------------------
# Merges and schedules.


async def test_a_merge_gives_the_survivor_the_address_journeys_knew_of_the_merged_profile(
    journeys: JourneysHarness, consent: ConsentService
) -> None:
    await journeys.apply(one_send("welcome", "CHANNEL_EMAIL", "cart_reminder"), templates=TEMPLATES)
    await consent.grant("p-known")
    # The email was given while anonymous; identity then merges that profile into the known one.
    await journeys.traits("p-anonymous", email="ada@example.com", firstName="Ada")
    merged = identity_pb2.ProfilesMerged(survivor_id="p-known", merged_id="p-anonymous", workspace=WORKSPACE)
    await journeys.deliver(journeys.app.runs.handle_identity, envelope(merged, journeys.clock.now))

    entered = await journeys.app.runs.enter_by_api(WORKSPACE, "welcome", "p-known", "", {"cart_id": "c-1"})
    assert entered.entered
    await journeys.send_due()
    assert journeys.outbox("p-known") == ["delivered"]
    [kept] = await journeys.sandbox("p-known")
    assert kept.to == "ada@example.com" and kept.text == "Ada, cart c-1 is still waiting."
    assert (await journeys.app.export_subject(WORKSPACE, ["p-anonymous"]))["profile_facts"] == 0


async def test_a_scheduled_journey_enters_everyone_known_at_its_moment_and_once(
    journeys: JourneysHarness,
) -> None:
    moment = journeys.clock.now + timedelta(hours=2)
    scheduled = journey(
        {
            "name": "monthly_digest",
            "entry": {"schedule": {"once_at": moment.isoformat()}},
            "steps": [{"name": "mark", "update_trait": {"trait": "digest_sent", "value": True}}],
        }
    )
    await journeys.apply(scheduled)
    for person in ("p-1", "p-2", "p-3"):
        await journeys.traits(person, firstName=person)

    assert await journeys.app.schedules.run_once() == moment  # not yet: the next moment is said
    journeys.clock.advance(timedelta(hours=2))
    await journeys.app.schedules.run_once()
    stats = await journeys.app.queries.stats(WORKSPACE, "monthly_digest", 0)
    assert (stats.entered, dict(stats.exits_by_reason)) == (3, {"completed": 3})
    requested = [
        e for e in journeys.events("monthly_digest", "p-2") if isinstance(e, pb.TraitUpdateRequested)
    ]
    assert [(r.trait, r.value.bool_value) for r in requested] == [("digest_sent", True)]

    journeys.clock.advance(timedelta(days=1))
    assert await journeys.app.schedules.run_once() is None  # a one-off runs once
    assert (await journeys.app.queries.stats(WORKSPACE, "monthly_digest", 0)).entered == 3
