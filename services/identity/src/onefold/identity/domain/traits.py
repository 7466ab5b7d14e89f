"""Profile traits as identity stores them: the identify call's traits, with the two reserved traits
that are also identifiers in the form identity matches them by.

Ingest already merges `context.traits` into an identify call's `traits` (top-level wins per key) and
normalises Segment's reserved traits (docs/collection.md), so an accepted identify event's `traits`
are the ones to store. Two things only identity can finish, so they happen here, for traits from
events and from rectifications alike:

- `phone` in E.164 when it is a valid number for the workspace's default region (the region is in
  the identity rules, which ingest does not know); otherwise it is kept as sent, since a trait is
  what the person gave even when it is not a usable identifier;
- `email` trimmed and lower-cased, as the identifier is, so the trait and the identifier agree.
"""

from __future__ import annotations

from google.protobuf import struct_pb2

from onefold.identity.domain.identifiers import Invalid, TypeRule, normalise_value

_PHONE = TypeRule(type="phone", priority=0, limit=0, normalise="phone", paths=())


def profile_traits(traits: struct_pb2.Struct, region: str) -> struct_pb2.Struct:
    """A copy of `traits` with `email` and `phone` normalised (see the module docstring)."""
    out = struct_pb2.Struct()
    out.CopyFrom(traits)
    fields = out.fields
    if "email" in fields and fields["email"].WhichOneof("kind") == "string_value":
        fields["email"].string_value = fields["email"].string_value.strip().lower()
    if "phone" in fields:
        phone = _e164(fields["phone"], region)
        if phone is not None:
            fields["phone"].string_value = phone
    return out


def _e164(value: struct_pb2.Value, region: str) -> str | None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
    elif kind == "number_value" and value.number_value.is_integer():
        text = str(int(value.number_value))  # a number sent as a JSON number, e.g. 13800138000
    else:
        return None
    normalised = normalise_value(_PHONE, text, region)
    return normalised if normalised and not isinstance(normalised, Invalid) else None
