"""Tracking plans: allow / flag / block, unplanned events, identify traits, compile-once caching."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from onefold.contracts.ingest.v1 import ingest_pb2 as pb
from onefold.ingest.domain import (
    CanonicalEvent,
    Disposition,
    FailureKind,
    PlanCache,
    PlanMode,
    TrackingPlan,
    Violation,
    decide,
    parse_event,
    plan_from_proto,
)
from onefold.ingest.domain import tracking_plan as tracking_plan_module
from onefold.platform.errors import InvalidArgument

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
ORDER_COMPLETED = {
    "type": "object",
    "required": ["order_id", "total"],
    "properties": {
        "order_id": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "default": "EUR"},
        "products": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
}
TRAITS = {
    "type": "object",
    "properties": {"email": {"type": "string", "format": "email"}},
    "required": ["email"],
}


def event(body: dict[str, object]) -> CanonicalEvent:
    intake = parse_event({"userId": "u1", **body}, received_at=NOW)
    assert intake.event is not None, intake.verdict
    return intake.event


def plan(mode: PlanMode, unplanned: PlanMode = PlanMode.ALLOW, version: int = 1) -> TrackingPlan:
    return TrackingPlan(
        source_id="web",
        version=version,
        mode=mode,
        unplanned_mode=unplanned,
        event_schemas={"Order Completed": ORDER_COMPLETED},
        identify_traits_schema=TRAITS,
    )


BAD_ORDER = {"type": "track", "event": "Order Completed", "properties": {"order_id": "o1", "total": -5}}
GOOD_ORDER = {"type": "track", "event": "Order Completed", "properties": {"order_id": "o1", "total": 5}}


def test_allow_accepts_without_checking() -> None:
    assert PlanCache().get(plan(PlanMode.ALLOW)).check(event(BAD_ORDER)).disposition is Disposition.ACCEPTED


def test_flag_accepts_with_violations_attached() -> None:
    verdict = PlanCache().get(plan(PlanMode.FLAG)).check(event(BAD_ORDER))
    assert verdict.disposition is Disposition.FLAGGED and verdict.kind is None
    assert verdict.violations == (
        Violation("/properties/total", "properties.total must be bigger than or equal to 0", "minimum"),
    )


def test_block_quarantines_with_the_reason() -> None:
    verdict = PlanCache().get(plan(PlanMode.BLOCK)).check(event(BAD_ORDER))
    assert verdict.disposition is Disposition.QUARANTINED and verdict.kind is FailureKind.SCHEMA_VIOLATION
    assert verdict.violations[0].path == "/properties/total"


def test_valid_events_pass_in_every_mode() -> None:
    for mode in PlanMode:
        assert PlanCache().get(plan(mode)).check(event(GOOD_ORDER)).disposition is Disposition.ACCEPTED


def test_nested_paths_are_json_pointers() -> None:
    bad = {
        **GOOD_ORDER,
        "properties": {"order_id": "o1", "total": 1, "products": [{"sku": "a"}, {"name": "b"}]},
    }
    (violation,) = PlanCache().get(plan(PlanMode.BLOCK)).check(event(bad)).violations
    assert (violation.path, violation.rule) == ("/properties/products/1", "required")


def test_missing_required_property() -> None:
    bad = {**GOOD_ORDER, "properties": {"total": 1}}
    (violation,) = PlanCache().get(plan(PlanMode.FLAG)).check(event(bad)).violations
    assert violation.rule == "required" and "order_id" in violation.message


def test_validation_never_fills_defaults_into_the_event() -> None:
    good = event(GOOD_ORDER)
    PlanCache().get(plan(PlanMode.BLOCK)).check(good)
    assert "currency" not in good.properties


@pytest.mark.parametrize(
    ("unplanned", "disposition", "kind"),
    [
        (PlanMode.ALLOW, Disposition.ACCEPTED, None),
        (PlanMode.FLAG, Disposition.FLAGGED, None),
        (PlanMode.BLOCK, Disposition.QUARANTINED, FailureKind.UNPLANNED_EVENT),
    ],
)
def test_unplanned_events(unplanned: PlanMode, disposition: Disposition, kind: FailureKind | None) -> None:
    verdict = (
        PlanCache().get(plan(PlanMode.BLOCK, unplanned)).check(event({"type": "track", "event": "Mystery"}))
    )
    assert (verdict.disposition, verdict.kind) == (disposition, kind)
    if disposition is not Disposition.ACCEPTED:
        assert verdict.violations[0].path == "/event"


def test_event_names_are_case_sensitive_as_in_segment() -> None:
    lower = {**GOOD_ORDER, "event": "order completed"}
    verdict = PlanCache().get(plan(PlanMode.BLOCK, PlanMode.BLOCK)).check(event(lower))
    assert verdict.kind is FailureKind.UNPLANNED_EVENT


def test_identify_traits_schema() -> None:
    compiled = PlanCache().get(plan(PlanMode.BLOCK))
    bad = compiled.check(event({"type": "identify", "traits": {"email": "not-an-email"}}))
    assert bad.kind is FailureKind.SCHEMA_VIOLATION and bad.violations[0].path == "/traits/email"
    assert bad.violations[0].message == "traits.email must be email"
    good = compiled.check(event({"type": "identify", "traits": {"email": "pgibbons@example.com"}}))
    assert good.disposition is Disposition.ACCEPTED


def test_other_call_types_are_not_checked() -> None:
    compiled = PlanCache().get(plan(PlanMode.BLOCK, PlanMode.BLOCK))
    for body in (
        {"type": "page"},
        {"type": "screen"},
        {"type": "group", "groupId": "g"},
        {"type": "alias", "previousId": "p"},
    ):
        assert compiled.check(event(body)).disposition is Disposition.ACCEPTED


def test_decide_keeps_parse_failures_and_defers_to_the_plan_otherwise() -> None:
    compiled = PlanCache().get(plan(PlanMode.BLOCK))
    broken = parse_event({"type": "track"}, received_at=NOW)
    assert decide(broken, compiled) is broken.verdict
    parsed = parse_event({"userId": "u", **BAD_ORDER}, received_at=NOW)
    assert decide(parsed, compiled).kind is FailureKind.SCHEMA_VIOLATION
    assert decide(parsed, None).disposition is Disposition.ACCEPTED


def test_plans_compile_once_per_version(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = tracking_plan_module.fastjsonschema.compile

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tracking_plan_module.fastjsonschema, "compile", counting)
    cache = PlanCache(max_plans=2)
    first = cache.get(plan(PlanMode.FLAG, version=1))
    assert cache.get(plan(PlanMode.FLAG, version=1)) is first
    assert len(calls) == 2  # the event schema and the traits schema, once
    assert cache.get(plan(PlanMode.FLAG, version=2)) is not first
    assert len(calls) == 4
    cache.get(plan(PlanMode.FLAG, version=3))
    assert len(cache) == 2  # the oldest version aged out


def test_remote_refs_are_refused_so_validation_stays_io_free() -> None:
    remote = TrackingPlan(
        "web", 1, PlanMode.BLOCK, event_schemas={"E": {"$ref": "https://example.com/s.json"}}
    )
    with pytest.raises(InvalidArgument, match="not a usable JSON Schema") as caught:
        PlanCache().get(remote)
    assert caught.value.violations[0][0] == 'event_schemas["E"]'


def test_local_refs_work() -> None:
    schema = {
        "definitions": {"money": {"type": "number", "minimum": 0}},
        "properties": {"total": {"$ref": "#/definitions/money"}},
    }
    compiled = PlanCache().get(TrackingPlan("web", 1, PlanMode.BLOCK, event_schemas={"E": schema}))
    assert (
        compiled.check(event({"type": "track", "event": "E", "properties": {"total": -1}})).kind
        is FailureKind.SCHEMA_VIOLATION
    )


def test_invalid_schema_definitions_are_rejected_when_applied() -> None:
    with pytest.raises(InvalidArgument):
        PlanCache().get(TrackingPlan("web", 1, PlanMode.BLOCK, event_schemas={"E": {"type": "banana"}}))


def test_plan_from_proto() -> None:
    msg = pb.TrackingPlan(
        version=7,
        mode=pb.PLAN_MODE_BLOCK,
        unplanned_mode=pb.PLAN_MODE_FLAG,
        event_schemas={"Order Completed": orjson.dumps(ORDER_COMPLETED).decode(), "Anything": "true"},
        identify_traits_schema=orjson.dumps(TRAITS).decode(),
    )
    domain_plan = plan_from_proto("web", msg)
    assert (domain_plan.version, domain_plan.mode, domain_plan.unplanned_mode) == (
        7,
        PlanMode.BLOCK,
        PlanMode.FLAG,
    )
    compiled = PlanCache().get(domain_plan)
    assert compiled.check(event(BAD_ORDER)).kind is FailureKind.SCHEMA_VIOLATION
    assert (
        compiled.check(event({"type": "track", "event": "Anything", "properties": {"x": 1}})).disposition
        is Disposition.ACCEPTED
    )
    assert compiled.check(event({"type": "track", "event": "Else"})).disposition is Disposition.FLAGGED


def test_plan_from_proto_names_bad_json() -> None:
    msg = pb.TrackingPlan(version=1, event_schemas={"A": "{", "B": "[1]"}, identify_traits_schema="nope")
    with pytest.raises(InvalidArgument) as caught:
        plan_from_proto("web", msg)
    assert {f for f, _ in caught.value.violations} == {
        'event_schemas["A"]',
        'event_schemas["B"]',
        "identify_traits_schema",
    }


def test_unspecified_modes_mean_allow() -> None:
    domain_plan = plan_from_proto(
        "web", pb.TrackingPlan(version=1, event_schemas={"E": '{"type": "object", "required": ["x"]}'})
    )
    assert domain_plan.mode is PlanMode.ALLOW
    assert (
        PlanCache().get(domain_plan).check(event({"type": "track", "event": "E"})).disposition
        is Disposition.ACCEPTED
    )
