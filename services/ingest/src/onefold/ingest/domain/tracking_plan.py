"""Tracking plans: per source, a JSON Schema per track event name (validating `properties`) and one
for identify `traits`, applied in mode allow / flag / block. Schemas are compiled once per plan
version with fastjsonschema (code generation: fast per event, slow to build, hence the cache)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import fastjsonschema
import orjson

from onefold.ingest.domain.model import (
    CallType,
    CanonicalEvent,
    FailureKind,
    Intake,
    JsonObject,
    Verdict,
    Violation,
    pointer,
)
from onefold.platform.errors import InvalidArgument

Validator = Callable[[Any], Any]


class PlanMode(StrEnum):
    ALLOW = "allow"  # accept without checking
    FLAG = "flag"  # accept, with the violations attached
    BLOCK = "block"  # quarantine, with the violations as reasons


@dataclass(frozen=True)
class TrackingPlan:
    source_id: str
    version: int
    mode: PlanMode = PlanMode.ALLOW
    unplanned_mode: PlanMode = PlanMode.ALLOW  # for track events the plan does not name
    event_schemas: Mapping[str, JsonObject] = field(default_factory=dict)
    identify_traits_schema: JsonObject | None = None

    @staticmethod
    def from_json_texts(
        source_id: str,
        version: int,
        *,
        mode: PlanMode = PlanMode.ALLOW,
        unplanned_mode: PlanMode = PlanMode.ALLOW,
        event_schemas: Mapping[str, str] = {},
        identify_traits_schema: str = "",
    ) -> TrackingPlan:
        """From schemas stored as JSON text (the proto's form); bad JSON names the schema at fault."""
        problems: list[tuple[str, str]] = []

        def load(text: str, path: str) -> JsonObject | None:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as error:
                problems.append((path, f"is not valid JSON: {error.msg}"))
                return None
            if not isinstance(value, dict | bool):
                problems.append((path, "must be a JSON Schema object"))
                return None
            return value if isinstance(value, dict) else {} if value else {"not": {}}

        schemas = {name: load(text, f'event_schemas["{name}"]') for name, text in event_schemas.items()}
        traits = load(identify_traits_schema, "identify_traits_schema") if identify_traits_schema else None
        if problems:
            raise InvalidArgument("the tracking plan has invalid schemas", violations=problems)
        return TrackingPlan(
            source_id=source_id,
            version=version,
            mode=mode,
            unplanned_mode=unplanned_mode,
            event_schemas={name: schema for name, schema in schemas.items() if schema is not None},
            identify_traits_schema=traits,
        )


def _no_remote_refs(uri: str) -> Any:
    # A `$ref` to a URL would make validation do network or file I/O (fastjsonschema's default
    # handler is urlopen); plans must be self-contained.
    raise fastjsonschema.JsonSchemaDefinitionException(f"remote $ref '{uri[:100]}' is not allowed")


_NO_REMOTE = {scheme: _no_remote_refs for scheme in ("", "http", "https", "file", "ftp", "data")}


def compile_schema(schema: JsonObject, where: str) -> Validator:
    """fastjsonschema validator; `use_default=False` so validation never writes defaults into events."""
    try:
        return fastjsonschema.compile(schema, handlers=_NO_REMOTE, use_default=False)
    except (fastjsonschema.JsonSchemaDefinitionException, ValueError, TypeError, RecursionError) as error:
        raise InvalidArgument(
            f"{where} is not a usable JSON Schema", violations=[(where, str(error)[:300])]
        ) from None


class CompiledPlan:
    def __init__(self, plan: TrackingPlan) -> None:
        self.plan = plan
        self._events = {
            name: compile_schema(schema, f'event_schemas["{name}"]')
            for name, schema in plan.event_schemas.items()
        }
        self._traits = (
            compile_schema(plan.identify_traits_schema, "identify_traits_schema")
            if plan.identify_traits_schema is not None
            else None
        )

    def check(self, event: CanonicalEvent) -> Verdict:
        """The plan's verdict on one parsed event."""
        if event.type is CallType.TRACK:
            validator = self._events.get(event.event)
            if validator is None:
                return _apply(
                    self.plan.unplanned_mode,
                    [Violation("/event", "is not in the tracking plan", "unplanned_event")],
                    FailureKind.UNPLANNED_EVENT,
                )
            return self._validate(validator, event.properties, "properties")
        if event.type is CallType.IDENTIFY and self._traits is not None:
            return self._validate(self._traits, event.traits, "traits")
        return Verdict.accepted()

    def _validate(self, validator: Validator, value: JsonObject, member: str) -> Verdict:
        if self.plan.mode is PlanMode.ALLOW:
            return Verdict.accepted()
        try:
            validator(value)
        except fastjsonschema.JsonSchemaValueException as error:
            return _apply(self.plan.mode, [_violation(error, member)], FailureKind.SCHEMA_VIOLATION)
        return Verdict.accepted()


def _violation(error: fastjsonschema.JsonSchemaValueException, member: str) -> Violation:
    # fastjsonschema names the value "data"; the event calls it `properties` / `traits`.
    tokens = [str(t) for t in (error.path or ["data"])[1:]]
    message = error.message
    if message.startswith("data"):
        message = member + message[4:]
    return Violation(pointer(member, *tokens), message, error.rule or "schema")


def _apply(mode: PlanMode, violations: list[Violation], kind: FailureKind) -> Verdict:
    if mode is PlanMode.BLOCK:
        return Verdict.quarantined(kind, violations)
    if mode is PlanMode.FLAG:
        return Verdict.flagged(violations)
    return Verdict.accepted()


class PlanCache:
    """Compiled plans by (source, version): a new version compiles once, old ones age out."""

    def __init__(self, max_plans: int = 256) -> None:
        self._plans: OrderedDict[tuple[str, int], CompiledPlan] = OrderedDict()
        self._max = max_plans

    def get(self, plan: TrackingPlan) -> CompiledPlan:
        key = (plan.source_id, plan.version)
        compiled = self._plans.get(key)
        if compiled is None:
            compiled = self._plans[key] = CompiledPlan(plan)
            while len(self._plans) > self._max:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return compiled

    def __len__(self) -> int:
        return len(self._plans)


def decide(intake: Intake, plan: CompiledPlan | None) -> Verdict:
    """The final verdict on one event: a parse failure stands; otherwise the plan (if any) decides."""
    if intake.event is None or intake.verdict.is_quarantined or plan is None:
        return intake.verdict
    return plan.check(intake.event)
