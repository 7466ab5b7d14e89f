"""Which protobuf messages a service records as events, their schema versions and upcasters.

An event's type is its protobuf full name (`DESCRIPTOR.full_name`), never a Python import path, so
renaming a module never orphans stored events. Each registered type also carries its personal-data
plan: which fields are marked `[(onefold.options.v1.pii) = true]` (directly, or inside a singular
nested message), so the mapper can encrypt exactly those.

Upcasting covers two kinds of change:

- same type, new meaning: `register(Cls, schema_version=3, upcasters={1: v1_to_v2, 2: v2_to_v3})`;
  stored events keep the version they were written with and are upcast one step at a time on read;
- a type replaced by another (e.g. `x.v1.NameSet` -> `x.v2.ProfileUpdated`):
  `register_legacy(OldCls, upcast=old_to_new)`; old events are read with the old class, decrypted
  with its own plan, then converted. Legacy types are read-only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from google.protobuf.message import Message

from onefold.contracts.options.v1 import options_pb2
from onefold.eventlog.errors import InvalidEvent, UnknownEventType

Upcaster = Callable[[Message], Message]
STRUCT_FULL_NAME = "google.protobuf.Struct"


@dataclass(frozen=True)
class PiiPlan:
    """The personal-data fields of one message type.

    `fields` are marked pii themselves (whole value encrypted); `nested` are singular message
    fields that are not marked but whose type has pii fields inside.
    """

    fields: tuple[FieldDescriptor, ...] = ()
    nested: tuple[tuple[FieldDescriptor, PiiPlan], ...] = ()
    # (field name, COPY_* kind) per marked field, precomputed: descriptor look-ups are slow per event.
    copy_steps: tuple[tuple[str, int], ...] = ()
    names: tuple[str, ...] = ()
    # When every personal field is a plain string/bytes or a singular message field, possibly
    # inside singular nested messages: (kind, name, encoded tag, inner steps) per field in
    # field-number order, so the mapper can write the personal part's bytes directly (each
    # message field serialised once) instead of copying it into a second message. See DIRECT_*.
    direct_steps: tuple[DirectStep, ...] | None = None

    @property
    def has_pii(self) -> bool:
        return bool(self.fields or self.nested)


def _is_marked(fd: FieldDescriptor, option: object) -> bool:
    return bool(fd.GetOptions().Extensions[option])  # type: ignore[index]


def pii_plan(descriptor: Any, _seen: frozenset[str] = frozenset()) -> PiiPlan:
    if descriptor.full_name in _seen:  # recursive message types: no deeper plan
        return PiiPlan()
    seen = _seen | {descriptor.full_name}
    marked: list[FieldDescriptor] = []
    nested: list[tuple[FieldDescriptor, PiiPlan]] = []
    for fd in descriptor.fields:
        if _is_marked(fd, options_pb2.pii):
            marked.append(fd)
        elif fd.message_type is not None and not fd.is_repeated:
            inner = pii_plan(fd.message_type, seen)
            if inner.has_pii:
                nested.append((fd, inner))
        elif (
            fd.message_type is not None
            and not fd.message_type.GetOptions().map_entry
            and pii_plan(fd.message_type, seen).has_pii
        ):
            # Merging split halves of repeated messages cannot line them up again.
            raise InvalidEvent(
                f"{descriptor.full_name}.{fd.name} is a repeated message with personal fields inside; "
                "mark the whole field pii instead"
            )
    return PiiPlan(
        fields=tuple(marked),
        nested=tuple(nested),
        copy_steps=tuple((fd.name, _copy_kind(fd)) for fd in marked),
        names=tuple(fd.name for fd in marked),
        direct_steps=_direct_steps(marked, nested),
    )


DIRECT_STRING = 0  # proto3 string without presence: written when non-empty
DIRECT_BYTES = 1  # proto3 bytes without presence: written when non-empty
DIRECT_MESSAGE = 2  # singular message field, marked whole: written (serialised once) when set
DIRECT_NESTED = 3  # singular message field holding personal fields: its own steps, when any is set
DirectStep = tuple[int, str, bytes, tuple[Any, ...]]


def _direct_steps(
    marked: list[FieldDescriptor], nested: list[tuple[FieldDescriptor, PiiPlan]]
) -> tuple[DirectStep, ...] | None:
    steps: list[tuple[int, DirectStep]] = []
    for fd in marked:
        tag = _VarintBytes((fd.number << 3) | 2)
        if _is_plain(fd):
            kind = DIRECT_STRING if fd.type == FieldDescriptor.TYPE_STRING else DIRECT_BYTES
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated:  # not a group
            kind = DIRECT_MESSAGE
        else:
            return None
        steps.append((fd.number, (kind, fd.name, tag, ())))
    for fd, inner in nested:
        if inner.direct_steps is None or fd.type != FieldDescriptor.TYPE_MESSAGE:
            return None
        tag = _VarintBytes((fd.number << 3) | 2)
        steps.append((fd.number, (DIRECT_NESTED, fd.name, tag, inner.direct_steps)))
    return tuple(step for _number, step in sorted(steps, key=lambda item: item[0]))


def _is_plain(fd: FieldDescriptor) -> bool:
    """A singular proto3 string/bytes field without presence: written only when non-empty."""
    return (
        fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
        and not fd.is_repeated
        and not fd.has_presence
    )


COPY_SCALAR = 0  # proto3 scalar without presence: copy when not the default
COPY_PRESENT_SCALAR = 1  # optional scalar: copy when set
COPY_MESSAGE = 2
COPY_CONTAINER = 3  # repeated field or map


def _copy_kind(fd: FieldDescriptor) -> int:
    if fd.is_repeated:
        return COPY_CONTAINER
    if fd.message_type is not None:
        return COPY_MESSAGE
    return COPY_PRESENT_SCALAR if fd.has_presence else COPY_SCALAR


_HEX_DIGEST = re.compile(r"[0-9a-f]{16,}")


def blind_index_fields(descriptor: Any) -> tuple[str, ...]:
    """The top-level fields marked `blind_index`; a mark that cannot hold a keyed hash is refused."""
    names = []
    for fd in descriptor.fields:
        if not _is_marked(fd, options_pb2.blind_index):
            continue
        if fd.type != FieldDescriptor.TYPE_STRING or _is_marked(fd, options_pb2.pii):
            raise InvalidEvent(
                f"{descriptor.full_name}.{fd.name} is marked blind_index: it must be a string (or repeated "
                "string) holding a keyed hash, and not also pii"
            )
        names.append(fd.name)
    return tuple(names)


def check_blind_indexes(event_type: EventType, message: Message) -> None:
    """Refuse an event whose blind-index fields hold anything but keyed hashes (lower-case hex, as
    `EventStore.blind_index` returns): the value itself there would be personal data in clear."""
    for name in event_type.blind_index:
        value = getattr(message, name)
        for item in (value,) if isinstance(value, str) else value:
            if item and _HEX_DIGEST.fullmatch(item) is None:
                # The value is never echoed: it may be the very personal data the mark protects.
                raise InvalidEvent(
                    f"{event_type.name}.{name} is a blind index and must hold a keyed hash from "
                    "EventStore.blind_index, not a value"
                )


@dataclass(frozen=True)
class EventType:
    name: str
    message_class: type[Message]
    schema_version: int
    pii: PiiPlan
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)
    # For read-only legacy types: the conversion to the type that replaced it.
    legacy_upcast: Upcaster | None = None
    # Encoded once: the chain hashes the type name of every event.
    name_bytes: bytes = field(init=False, repr=False, compare=False)
    # Fields that must hold keyed hashes only (checked on append).
    blind_index: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name_bytes", self.name.encode())
        object.__setattr__(self, "blind_index", blind_index_fields(self.message_class.DESCRIPTOR))

    @property
    def appendable(self) -> bool:
        return self.legacy_upcast is None


class EventRegistry:
    def __init__(self) -> None:
        self._types: dict[str, EventType] = {}
        self._by_class: dict[type[Message], EventType] = {}

    @classmethod
    def declared_in(
        cls, *proto_modules: Any, upcasters: Mapping[str, Mapping[int, Upcaster]] | None = None
    ) -> EventRegistry:
        """The registry of a service's `domain/events.py`: every message of these generated
        modules that declares `option (onefold.options.v1.event_schema_version) = N;`, at version
        N, with `upcasters[full name]` for versions below N."""
        upcasters = dict(upcasters or {})
        registry = cls()
        for module in proto_modules:
            for descriptor in module.DESCRIPTOR.message_types_by_name.values():
                version = descriptor.GetOptions().Extensions[options_pb2.event_schema_version]
                if version:
                    registry.register(
                        getattr(module, descriptor.name),
                        schema_version=version,
                        upcasters=upcasters.pop(descriptor.full_name, None),
                    )
        if upcasters:
            raise InvalidEvent(f"upcasters for types that are not declared events: {sorted(upcasters)}")
        return registry

    def register(
        self,
        message_class: type[Message],
        *,
        schema_version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
    ) -> EventType:
        """Record `message_class` as an event type; `upcasters[v]` turns version v into v+1."""
        upcasters = dict(upcasters or {})
        if schema_version < 1:
            raise InvalidEvent("schema_version starts at 1")
        missing = [v for v in range(1, schema_version) if v not in upcasters]
        if missing:
            raise InvalidEvent(
                f"{message_class.DESCRIPTOR.full_name} is at schema version {schema_version} but has no "
                f"upcaster from version(s) {', '.join(map(str, missing))}"
            )
        return self._add(
            EventType(
                name=message_class.DESCRIPTOR.full_name,
                message_class=message_class,
                schema_version=schema_version,
                pii=pii_plan(message_class.DESCRIPTOR),
                upcasters=upcasters,
            )
        )

    def register_legacy(self, message_class: type[Message], *, upcast: Upcaster) -> EventType:
        """A type no longer written but still stored: read with its class, then `upcast`."""
        return self._add(
            EventType(
                name=message_class.DESCRIPTOR.full_name,
                message_class=message_class,
                schema_version=1,
                pii=pii_plan(message_class.DESCRIPTOR),
                legacy_upcast=upcast,
            )
        )

    def _add(self, event_type: EventType) -> EventType:
        existing = self._types.get(event_type.name)
        if existing is not None and existing.message_class is not event_type.message_class:
            raise InvalidEvent(f"event type '{event_type.name}' is already registered with another class")
        self._types[event_type.name] = event_type
        self._by_class[event_type.message_class] = event_type
        return event_type

    def for_name(self, type_name: str) -> EventType:
        try:
            return self._types[type_name]
        except KeyError:
            raise UnknownEventType(type_name) from None

    def for_message(self, message: Message) -> EventType:
        try:
            return self._by_class[type(message)]
        except KeyError:
            if not isinstance(message, Message):
                raise InvalidEvent(
                    f"an event must be a protobuf message, not {type(message).__name__}"
                ) from None
            raise UnknownEventType(message.DESCRIPTOR.full_name) from None

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)
