"""What of a resolved event enters the analytical copy: the analysed fields, never a personal one."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.insights.domain.facts import TEXT_LIMIT, EventFact, event_fact


def _struct(values: dict[str, object]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _resolved(event: ingest_pb2.TrackingEvent) -> identity_pb2.EventResolved:
    return identity_pb2.EventResolved(profile_id="p-1", workspace="acme", event_id="e-1", event=event)


def test_an_order_keeps_its_revenue_product_and_campaign_and_nothing_personal() -> None:
    at = Timestamp()
    at.FromDatetime(datetime(2026, 3, 1, 12, 30))
    order = ingest_pb2.TrackingEvent(
        type=ingest_pb2.EVENT_TYPE_TRACK,
        event="Order Completed",
        user_id="ann@example.com",
        anonymous_id="cookie-1",
        timestamp=at,
        properties=_struct(
            {
                "revenue": "49.90",
                "currency": "EUR",
                "product_id": 1234,
                "category": "Shoes",
                "coupon": "SPRING",
                "shipping_address": "1 Rue de Rivoli",
                "items": [{"sku": "a"}],
            }
        ),
        traits=_struct({"email": "ann@example.com"}),
        context=_struct(
            {
                "campaign": {"source": "newsletter", "medium": "email", "name": "spring_sale"},
                "channel": "web",
                "ip": "203.0.113.7",
            }
        ),
    )
    fact = event_fact(_resolved(order), allowed_properties=["coupon", "items", "missing"])
    assert fact == EventFact(
        workspace="acme",
        event_id="e-1",
        profile_id="p-1",
        ts=datetime(2026, 3, 1, 12, 30),
        type="track",
        event="Order Completed",
        revenue=49.9,
        currency="EUR",
        product_id="1234",
        category="Shoes",
        campaign_source="newsletter",
        campaign_medium="email",
        campaign_name="spring_sale",
        channel="web",
        properties='{"coupon":"SPRING"}',  # allowed and scalar only
    )
    for personal in ("ann@example.com", "cookie-1", "Rivoli", "203.0.113.7"):
        assert personal not in repr(fact)


def test_a_page_is_named_by_its_name_and_category_and_long_texts_are_cut() -> None:
    at = Timestamp()
    at.FromDatetime(datetime(2026, 3, 2))
    page = ingest_pb2.TrackingEvent(
        type=ingest_pb2.EVENT_TYPE_PAGE,
        name="x" * (TEXT_LIMIT + 50),
        category="Docs",
        received_at=at,  # no event time: the arrival time stands for it
        properties=_struct({"total": 10, "currency": ["not", "text"]}),
    )
    fact = event_fact(_resolved(page))
    assert fact.type == "page" and fact.event == "x" * TEXT_LIMIT and fact.category == "Docs"
    assert fact.ts == datetime(2026, 3, 2) and fact.revenue == 10.0 and fact.currency is None
    assert fact.campaign_name is None and fact.properties is None
