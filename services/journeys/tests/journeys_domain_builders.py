"""Short constructors of journeys, events and instances for the domain tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.journeys.domain.definitions import CompiledJourney, Known, Observed, compile_journey
from onefold.journeys.domain.instance import Facts, Instance, Timed, enter

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday
KNOWN = Known(
    segments=frozenset({"vip", "cart_abandoners"}),
    purposes=frozenset({"marketing"}),
    templates={
        "cart_reminder": pb.CHANNEL_EMAIL,
        "cart_sms": pb.CHANNEL_SMS,
        "welcome": pb.CHANNEL_EMAIL,
        "welcome_wechat": pb.CHANNEL_WECHAT,
        "vip_offer": pb.CHANNEL_EMAIL,
    },
)
NO_FACTS = Facts()


def journey(data: dict[str, Any], version: int = 1) -> pb.Journey:
    """A Journey from its JSON form (the shape YAML files have), e.g. durations as "3600s"."""
    message = ParseDict(data, pb.Journey())
    message.version = version
    return message


def compiled(data: dict[str, Any], version: int = 1) -> CompiledJourney:
    return compile_journey(journey(data, version), KNOWN)


def track(name: str, at: datetime, event_id: str = "e-1", **properties: Any) -> Observed:
    return Observed("track", name, properties, event_id, at)


def send(step: str, template: str, next_step: str = "", channel: str = "CHANNEL_EMAIL") -> dict[str, Any]:
    return {
        "name": step,
        "send": {"channel": channel, "template": template, "purpose": "marketing", "next": next_step},
    }


def wait(step: str, seconds: int, next_step: str = "") -> dict[str, Any]:
    return {"name": step, "wait": {"duration": f"{seconds}s", "next": next_step}}


def cart_journey(**overrides: Any) -> dict[str, Any]:
    """An abandoned-cart journey: a cart per instance; one hour, then an email unless the order came."""
    data: dict[str, Any] = {
        "name": "abandoned_cart",
        "entry": {
            "event": {"event": {"event": "Cart Updated"}, "entity_key": "cart_id"},
            "reentry": "REENTRY_AFTER_EXIT",
        },
        "steps": [
            {
                "name": "hold",
                "wait_for_event": {
                    "event": {"event": "Checkout Started"},
                    "timeout": "3600s",
                    "on_event": "",
                    "on_timeout": "remind",
                },
            },
            send("remind", "cart_reminder", "later"),
            wait("later", 86_400, "sms"),
            send("sms", "cart_sms", channel="CHANNEL_SMS"),
        ],
        "exit_rules": [{"event": {"event": "Order Completed"}, "reason": "ordered"}],
        "goals": [
            {
                "name": "purchase",
                "event": {"event": "Order Completed"},
                "conversion_window": "604800s",
                "revenue_property": "revenue",
            }
        ],
    }
    data.update(overrides)
    return data


def types(events: Iterable[Message]) -> list[str]:
    return [event.DESCRIPTOR.name for event in events]


class Run:
    """An instance driven through decisions, keeping its timed events (what the log would hold)."""

    def __init__(self, graph: CompiledJourney, profile_id: str = "p-1") -> None:
        self.graph = graph
        self.profile_id = profile_id
        self.log: list[Timed] = []
        self.instance = Instance()

    def record(self, at: datetime, events: Iterable[Message]) -> list[Message]:
        events = list(events)
        for event in events:
            self.instance.apply(at, event)
            self.log.append((at, event))
        return events

    def enter(
        self, at: datetime, facts: Facts = NO_FACTS, entity_key: str = "", **properties: Any
    ) -> list[Message]:
        return self.record(
            at,
            enter(
                self.instance,
                self.graph,
                at,
                facts,
                workspace="acme",
                profile_id=self.profile_id,
                entity_key=entity_key,
                trigger="event",
                properties=properties,
            ),
        )
