"""The pure rules: a definition's checks and defaults, what flows where, backoff and the breaker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.json_format import ParseDict
from hypothesis import given
from hypothesis import strategies as st

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.domain import retry, routing
from onefold.destinations.domain.definitions import Known, problems, with_defaults

KNOWN = Known(purposes=frozenset({"crm_sync"}), segments=frozenset({"vip"}))


def destination(**data: object) -> pb.Destination:
    base = {
        "name": "crm",
        "purpose": "crm_sync",
        "webhook": {"url": "https://crm.example.com/h"},
        "segments": ["vip"],
    }
    return with_defaults(ParseDict({**base, **data}, pb.Destination()))


def paths(d: pb.Destination) -> list[str]:
    return [p.path for p in problems(d, KNOWN)]


def test_a_good_definition_has_no_problems_and_gets_its_defaults() -> None:
    d = destination()
    assert paths(d) == []
    assert (d.webhook.batch_size, d.webhook.timeout_seconds, d.webhook.max_in_flight) == (1, 10.0, 16)
    assert (d.retry.max_attempts, d.retry.initial_backoff_seconds, d.retry.max_backoff_seconds) == (
        8,
        1.0,
        600.0,
    )


def test_every_problem_is_named_by_its_path() -> None:
    bad = destination(
        name="CRM!",
        purpose="ads",
        webhook={"url": "ftp://x", "batchSize": 5000},
        segments=["nope"],
        events=[
            {"type": "click", "where": [{"field": "properties.total", "op": "FILTER_OP_IN", "value": 3}]}
        ],
    )
    assert paths(bad) == [
        "name",
        "purpose",
        "webhook.url",
        "webhook.batch_size",
        "events[0].type",
        "events[0].where[0].value",
        "segments[0]",
    ]


def test_a_database_url_with_a_password_is_refused_and_nothing_flowing_is_named() -> None:
    d = with_defaults(
        ParseDict(
            {"name": "wh", "purpose": "crm_sync", "table": {"url": "postgresql://u:pw@h/db", "table": "crm"}},
            pb.Destination(),
        )
    )
    found = problems(d, KNOWN)
    assert [p.path for p in found] == ["table.url", "events"]
    assert all("pw" not in p.reason for p in found)


def test_events_route_by_type_name_and_filters_and_send_their_mapping() -> None:
    d = destination(
        events=[
            {
                "type": "track",
                "name": "Order Completed",
                "where": [{"field": "properties.total", "op": "FILTER_OP_GTE", "value": 100}],
                "mapping": {
                    "order": "properties.order_id",
                    "total": "properties.total",
                    "missing": "properties.nope",
                },
            }
        ]
    )
    big = {"type": "track", "event": "Order Completed", "properties": {"order_id": "o-1", "total": 120}}
    small = {**big, "properties": {"order_id": "o-2", "total": 20}}
    other = {**big, "event": "Cart Viewed"}
    [routed] = routing.route_event([d], big)
    assert (routed.destination, routed.kind, routed.name) == (
        "crm",
        pb.DELIVERY_KIND_EVENT,
        "Order Completed",
    )
    assert routed.data == {"order": "o-1", "total": 120}
    assert routing.route_event([d], small) == []
    assert routing.route_event([d], other) == []


@given(
    flow_type=st.sampled_from(["track", "page", "identify"]),
    flow_name=st.sampled_from(["", "Order Completed", "Home"]),
    event_type=st.sampled_from(["track", "page", "screen", "identify"]),
    event_name=st.sampled_from(["", "Order Completed", "Home", "Cart Viewed"]),
    name_field=st.sampled_from(["event", "name"]),
)
def test_an_event_the_prefilter_skips_is_never_routed(
    flow_type: str, flow_name: str, event_type: str, event_name: str, name_field: str
) -> None:
    """may_route (on the type and name alone) agrees with route_event for flows without conditions,
    so it never skips an event some flow would take."""
    d = destination(events=[{"type": flow_type, "name": flow_name}] if flow_name else [{"type": flow_type}])
    event = {"type": event_type, **({name_field: event_name} if event_name else {})}
    assert routing.may_route([d], event_type, event_name) == bool(routing.route_event([d], event))


def test_an_event_without_a_mapping_is_sent_whole() -> None:
    d = destination(events=[{"type": "page"}])
    page = {"type": "page", "name": "Home", "context": {"page": {"url": "https://x/"}}}
    [routed] = routing.route_event([d], page)
    assert routed.data == page


def test_filter_operators() -> None:
    event = {"properties": {"n": 5, "s": "spring sale", "tags": ["a", "b"]}}

    def holds(op: str, value: object, path: str = "properties.n") -> bool:
        return routing.holds(ParseDict({"field": path, "op": op, "value": value}, pb.Filter()), event)

    assert holds("FILTER_OP_EQ", 5) and not holds("FILTER_OP_NE", 5)
    assert holds("FILTER_OP_GT", 4) and not holds("FILTER_OP_LT", 5) and holds("FILTER_OP_LTE", 5)
    assert holds("FILTER_OP_IN", [1, 5]) and not holds("FILTER_OP_IN", [1])
    assert holds("FILTER_OP_CONTAINS", "sale", "properties.s") and holds(
        "FILTER_OP_CONTAINS", "b", "properties.tags"
    )
    assert holds("FILTER_OP_EXISTS", None) and not holds("FILTER_OP_EXISTS", None, "properties.none")
    assert holds("FILTER_OP_NE", 1, "properties.none") and not holds("FILTER_OP_EQ", 1, "properties.none")
    assert not holds("FILTER_OP_GT", "x")  # a number and a string do not compare


def test_memberships_and_traits_go_to_the_destinations_naming_them() -> None:
    vip = destination(traits=["email"])
    every = destination(name="all", segments=[], traits=["*"])
    assert [r.destination for r in routing.route_membership([vip, every], "vip", entered=True)] == ["crm"]
    routed = routing.route_traits([vip, every], {"email": "a@example.com", "plan": "pro"})
    assert [(r.destination, r.data) for r in routed] == [
        ("crm", {"email": "a@example.com"}),
        ("all", {"email": "a@example.com", "plan": "pro"}),
    ]
    assert routing.route_traits([vip], {"plan": "pro"}) == []


def test_a_delivery_id_is_stable_and_distinct() -> None:
    one = routing.delivery_id("acme", "crm", pb.DELIVERY_KIND_EVENT, "e-1")
    assert one == routing.delivery_id("acme", "crm", pb.DELIVERY_KIND_EVENT, "e-1")
    assert (
        len(
            {
                one,
                routing.delivery_id("acme", "erp", pb.DELIVERY_KIND_EVENT, "e-1"),
                routing.delivery_id("acme", "crm", pb.DELIVERY_KIND_TRAITS, "e-1"),
            }
        )
        == 3
    )


@given(st.integers(min_value=1, max_value=60))
def test_backoff_stays_within_its_ceiling(attempts: int) -> None:
    policy = pb.RetryPolicy(max_attempts=8, initial_backoff_seconds=1, max_backoff_seconds=600)
    waited = retry.backoff(policy, attempts).total_seconds()
    assert 0 <= waited <= min(600, 2 ** (attempts - 1))
    assert retry.backoff(policy, attempts, uniform=lambda low, high: high).total_seconds() == min(
        600, 2 ** (attempts - 1)
    )


def test_the_breaker_opens_after_failures_probes_and_closes() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    breaker = retry.CircuitBreaker()
    for _ in range(retry.FAILURES_TO_OPEN):
        assert breaker.allows(now)
        breaker.failed(now)
    assert breaker.state(now) == "open" and not breaker.allows(now + timedelta(seconds=29))
    later = now + timedelta(seconds=30)
    assert breaker.allows(later) and breaker.state(later) == "half-open"
    breaker.failed(later)  # the probe failed: open again, for twice as long
    assert not breaker.allows(later + timedelta(seconds=59)) and breaker.allows(later + timedelta(seconds=60))
    breaker.succeeded()
    assert breaker.state(later) == "closed" and breaker.allows(later)
