"""Identifiers: which types a workspace resolves on, where they are found in a tracked event, and how
their values are normalised. Pure functions over the rules; nothing here touches storage.

Defaults follow Segment Unify: `user_id` at most 1 per profile, every other type at most 5; priority
user_id > email > phone > the rest. A value that does not normalise (a phone number that is not
valid for its region, an email without a domain) is reported on the event and never linked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from onefold.contracts.identity.v1 import identity_pb2 as pb
from onefold.contracts.ingest.v1 import ingest_pb2

DEFAULT_LIMIT = 5
MAX_VALUE_CHARS = 256
NORMALISERS = ("email", "phone", "lower", "trim", "none")
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

# (type, priority, limit, normaliser, paths) of the built-in types.
_BUILT_IN: tuple[tuple[str, int, int, str, tuple[str, ...]], ...] = (
    ("user_id", 1, 1, "trim", ("user_id",)),
    ("email", 2, 5, "email", ("traits.email", "context.traits.email")),
    ("phone", 3, 5, "phone", ("traits.phone", "context.traits.phone")),
    ("wechat_unionid", 4, 5, "trim", ("traits.wechat_unionid", "context.traits.wechat_unionid")),
    ("member_card", 5, 5, "trim", ("traits.member_card", "context.traits.member_card")),
    ("wechat_openid", 6, 5, "trim", ("traits.wechat_openid", "context.traits.wechat_openid")),
    ("idfa", 7, 5, "lower", ("context.device.idfa",)),
    ("oaid", 8, 5, "lower", ("context.device.oaid",)),
    ("device_id", 9, 5, "trim", ("context.device.id",)),
    ("anonymous_id", 10, 5, "trim", ("anonymous_id", "previous_id")),
)
BUILT_IN_TYPES = tuple(name for name, *_ in _BUILT_IN)


class RulesError(ValueError):
    """Identity rules that cannot be applied; the message is one sentence naming the field."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TypeRule:
    type: str
    priority: int
    limit: int
    normalise: str
    paths: tuple[str, ...]
    blocked: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rules:
    """A workspace's resolution rules, validated; `types` is in priority order."""

    types: tuple[TypeRule, ...]
    default_phone_region: str = "CN"
    trait_source_precedence: tuple[str, ...] = ()
    version: int = 0
    by_type: Mapping[str, TypeRule] = field(init=False, repr=False, compare=False)
    # (rule, its paths split into (field, path inside the field)), compiled once for `extract`.
    plan: tuple[tuple[TypeRule, str, tuple[str, ...]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_type", {rule.type: rule for rule in self.types})
        object.__setattr__(self, "plan", tuple(_compile_paths(self.types)))

    def limit(self, type_name: str) -> int:
        rule = self.by_type.get(type_name)
        return rule.limit if rule is not None else DEFAULT_LIMIT

    def rank(self, type_name: str) -> int:
        rule = self.by_type.get(type_name)
        return rule.priority if rule is not None else 1 << 30


def default_rules() -> Rules:
    return Rules(
        types=tuple(
            TypeRule(name, priority, limit, normaliser, paths)
            for name, priority, limit, normaliser, paths in _BUILT_IN
        )
    )


def rules_from_proto(message: pb.IdentityRules) -> Rules:
    """Validate `IdentityRules` (from the API or `onefold apply`) on top of the defaults.

    Listed types override the built-in ones of the same name; custom types need a name of lower-case
    letters, digits and underscores. Raises RulesError with the offending field.
    """
    defaults = {rule.type: rule for rule in default_rules().types}
    merged: dict[str, TypeRule] = dict(defaults)
    for index, item in enumerate(message.identifiers):
        where = f"identifiers[{index}]"
        if not _TYPE_NAME.match(item.type):
            raise RulesError(
                f"{where}.type must be lower-case letters, digits and underscores (at most 64), starting with a letter",
                f"{where}.type",
            )
        base = defaults.get(item.type)
        normaliser = item.normalise or (base.normalise if base else "trim")
        if normaliser not in NORMALISERS:
            raise RulesError(
                f"{where}.normalise must be one of {', '.join(NORMALISERS)}", f"{where}.normalise"
            )
        for path in item.paths:
            if not path or len(path) > 200 or path.startswith(".") or path.endswith(".") or ".." in path:
                raise RulesError(f"{where}.paths has an invalid dotted path", f"{where}.paths")
        rule = TypeRule(
            type=item.type,
            priority=item.priority or (base.priority if base else 100),
            limit=item.limit or (base.limit if base else DEFAULT_LIMIT),
            normalise=normaliser,
            paths=tuple(item.paths) or (base.paths if base else ()),
        )
        blocked = set()
        for value in item.blocked_values:
            normalised = normalise_value(rule, value, message.default_phone_region or "CN")
            if isinstance(normalised, Invalid):
                raise RulesError(
                    f"{where}.blocked_values has a value that is not a valid {item.type}: {normalised.reason}",
                    f"{where}.blocked_values",
                )
            blocked.add(normalised)
        merged[item.type] = TypeRule(
            rule.type, rule.priority, rule.limit, rule.normalise, rule.paths, frozenset(blocked)
        )
    region = (message.default_phone_region or "CN").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise RulesError(
            "default_phone_region must be an ISO 3166 region phonenumbers knows, e.g. CN or DE",
            "default_phone_region",
        )
    ordered = tuple(sorted(merged.values(), key=lambda rule: (rule.priority, rule.type)))
    return Rules(
        types=ordered,
        default_phone_region=region,
        trait_source_precedence=tuple(message.trait_source_precedence),
        version=message.version,
    )


def rules_to_proto(rules: Rules) -> pb.IdentityRules:
    return pb.IdentityRules(
        version=rules.version,
        identifiers=[
            pb.IdentifierRule(
                type=rule.type,
                priority=rule.priority,
                limit=rule.limit,
                normalise=rule.normalise,
                blocked_values=sorted(rule.blocked),
                paths=list(rule.paths),
            )
            for rule in rules.types
        ],
        default_phone_region=rules.default_phone_region,
        trait_source_precedence=list(rules.trait_source_precedence),
    )


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


def normalise_value(rule: TypeRule, value: str, region: str) -> str | Invalid:
    """The canonical form of `value` for its type, or why it is not one. "" = absent."""
    text = value.strip()
    if not text:
        return ""
    if len(text) > MAX_VALUE_CHARS:
        return Invalid(f"longer than {MAX_VALUE_CHARS} characters")
    kind = rule.normalise
    if kind == "email":
        text = text.lower()
        if not _EMAIL.match(text):
            return Invalid("not an email address")
        return text
    if kind == "phone":
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            return Invalid("not a phone number")
        if not phonenumbers.is_valid_number(number):
            return Invalid(f"not a valid phone number (default region {region})")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if kind == "lower":
        return text.lower()
    if kind == "none":
        return value
    return text


@dataclass(frozen=True, slots=True)
class Ident:
    """A usable identifier of an event: type, normalised value and keyed hash."""

    type: str
    value: str
    key: str


@dataclass
class Extracted:
    identifiers: list[Ident]  # in priority order, distinct, blocked values removed
    invalid: list[pb.InvalidIdentifier]


def _struct_value(struct: struct_pb2.Struct, path: Sequence[str]) -> Any:
    """The scalar at `path` inside a Struct, read in place (MessageToDict would copy it all)."""
    node = struct
    last = len(path) - 1
    for depth, part in enumerate(path):
        if part not in node.fields:
            return None
        value = node.fields[part]
        kind = value.WhichOneof("kind")
        if depth == last:
            if kind == "string_value":
                return value.string_value
            if kind == "number_value":
                return value.number_value
            return None
        if kind != "struct_value":
            return None
        node = value.struct_value
    return None


_SCALAR_FIELDS = frozenset({"user_id", "anonymous_id", "previous_id", "group_id"})
_STRUCT_FIELDS = frozenset({"traits", "context", "properties", "extra"})


def _compile_paths(types: Sequence[TypeRule]) -> Iterator[tuple[TypeRule, str, tuple[str, ...]]]:
    """(rule, event field, path inside it) for every path of every type, in priority order; paths
    into fields that hold no identifiers (or unknown ones) are dropped here, once."""
    for rule in types:
        for path in rule.paths:
            head, _, rest = path.partition(".")
            if rest and head in _STRUCT_FIELDS:
                yield rule, head, tuple(rest.split("."))
            elif not rest and head in _SCALAR_FIELDS:
                yield rule, head, ()


def _read_for_the_user(user_traits: struct_pb2.Struct | None, head: str, rest: tuple[str, ...]) -> bool:
    """Whether a path into the event's structs names the user. `user_traits` is None on a group
    call, whose `traits` describe the group (its email is the company's). `context.traits.X` gives
    way to the user's own `traits.X`: top-level traits win per key, as in the traits ingest stores
    (docs/collection.md), so one event links one value of X."""
    if head == "traits":
        return user_traits is not None
    if head != "context" or rest[0] != "traits" or len(rest) < 2:
        return True
    if user_traits is None or not user_traits.fields:
        return True
    return _struct_value(user_traits, rest[1:]) is None


def extract(
    event: ingest_pb2.TrackingEvent,
    rules: Rules,
    key_of: Callable[[str, str], str],
) -> Extracted:
    """The identifiers of a tracked event under `rules`: from each type's paths, from
    `context.advertisingId` (idfa on iOS, else oaid) and from Segment's `context.externalIds`.
    `key_of(type, value)` is the keyed hash."""
    found: list[tuple[TypeRule, str]] = []
    structs: dict[str, struct_pb2.Struct | None] = {}
    user_traits = event.traits if event.type != ingest_pb2.EVENT_TYPE_GROUP else None
    for rule, head, rest in rules.plan:
        if not rest:
            value: Any = getattr(event, head)
        elif not _read_for_the_user(user_traits, head, rest):
            continue
        else:
            if head in structs:
                struct = structs[head]
            else:
                struct = getattr(event, head)
                struct = structs[head] = struct if struct.fields else None
            if struct is None:
                continue
            value = _struct_value(struct, rest)
            if isinstance(value, float):
                value = str(int(value)) if value.is_integer() else str(value)
        if value and isinstance(value, str):
            found.append((rule, value))
    if event.context.fields:
        context = event.context
        advertising = _struct_value(context, ("device", "advertisingId"))
        if isinstance(advertising, str) and advertising:
            os_name = (
                _struct_value(context, ("os", "name")) or _struct_value(context, ("device", "type")) or ""
            )
            kind = "idfa" if str(os_name).lower() in ("ios", "ipados") else "oaid"
            if kind in rules.by_type:
                found.append((rules.by_type[kind], advertising))
        if "externalIds" in context.fields:
            external = MessageToDict(context.fields["externalIds"])
            if isinstance(external, list):
                for item in external:
                    if (
                        isinstance(item, Mapping)
                        and isinstance(item.get("id"), str)
                        and isinstance(item.get("type"), str)
                    ):
                        external_rule = rules.by_type.get(item["type"])
                        if external_rule is not None:
                            found.append((external_rule, item["id"]))
    identifiers: list[Ident] = []
    invalid: list[pb.InvalidIdentifier] = []
    seen: set[str] = set()
    region = rules.default_phone_region
    for rule, raw in found:
        value = normalise_value(rule, raw, region)
        if isinstance(value, Invalid):
            invalid.append(pb.InvalidIdentifier(type=rule.type, reason=value.reason))
            continue
        if not value or value in rule.blocked:
            continue
        key = key_of(rule.type, value)
        if key in seen:
            continue
        seen.add(key)
        identifiers.append(Ident(rule.type, value, key))
    # `found` is already in priority order (rules.types is); advertising and external ids come last.
    identifiers.sort(key=lambda ident: rules.rank(ident.type))
    return Extracted(identifiers, invalid)
