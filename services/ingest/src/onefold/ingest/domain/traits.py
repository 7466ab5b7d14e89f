"""The traits an identify call sets on a profile: one merged, normalised view of what SDKs send.

SDK families put identify traits in different places. Segment's libraries send them as the
top-level `traits`; RudderStack's server SDKs (rudder-sdk-python among them) send them only in
`context.traits`; browser and mobile SDKs of both families often send some in each. The Segment and
RudderStack specs agree that top-level `traits` are the identify call's own, so they win per key over
`context.traits`:

    identify_traits(traits={"plan": "pro"}, context={"traits": {"plan": "free", "email": "a@x.io"}})
    == {"plan": "pro", "email": "a@x.io"}

Ingest stores this merged view as the event's `traits` (the tracking plan judges it, identity builds
the profile from it); `context` is kept exactly as sent. Only identify calls merge: on track, page
and screen calls `context.traits` describe the user at the time of the event, and a group call's
`traits` describe the group, so neither is a profile update.

Segment's reserved traits are normalised whichever of the two places they came from:

- a key spelled another way (`first_name`, `FirstName`, `created-at`) becomes the reserved spelling
  (`firstName`, `createdAt`); when one object holds several spellings, the reserved spelling wins,
  else the first of the others in sorted order, so the outcome never depends on key order;
- text values of reserved traits lose surrounding white space, and `email` is lower-cased (as
  identity matches it), so `" Ann@Example.COM "` and `"ann@example.com"` are one trait value.

Custom traits are kept exactly as sent. Normalising is idempotent: merging the stored view with the
event's `context` again gives the same traits (a replayed or re-parsed event does not change).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onefold.ingest.domain.model import JsonObject

# Segment's reserved identify traits (the Identify spec's list).
RESERVED_TRAITS = (
    "address", "age", "avatar", "birthday", "company", "createdAt", "description", "email",
    "firstName", "gender", "id", "lastName", "name", "phone", "title", "username", "website",
)  # fmt: skip
_SEPARATORS = str.maketrans("", "", "_- ")
# Spelling-insensitive key -> reserved spelling: "firstname" -> "firstName".
_RESERVED_BY_FOLDED = {name.lower(): name for name in RESERVED_TRAITS}


def identify_traits(traits: Mapping[str, Any], context: Mapping[str, Any]) -> JsonObject:
    """The traits an identify call sets: `context.traits` overlaid by the top-level `traits`, per
    key, both normalised. A `context.traits` that is not an object is context only and ignored here."""
    context_traits = context.get("traits")
    if not isinstance(context_traits, Mapping) or not context_traits:
        return normalise_traits(traits)
    return {**normalise_traits(context_traits), **normalise_traits(traits)}


def normalise_traits(traits: Mapping[str, Any]) -> JsonObject:
    """Reserved traits under their reserved spelling with normalised values; the rest as sent."""
    out: JsonObject = {}
    # Sorted so the reserved spelling (or else the first variant) is the one that stays.
    chosen: dict[str, str] = {}
    for key in sorted(traits):
        reserved = reserved_name(key)
        if reserved is None:
            out[key] = traits[key]
        elif reserved not in chosen or key == reserved:
            chosen[reserved] = key
    for reserved, key in chosen.items():
        out[reserved] = _normalise_value(reserved, traits[key])
    return out


def reserved_name(key: str) -> str | None:
    """The reserved trait `key` spells, ignoring case, `_`, `-` and spaces; None for a custom trait."""
    return _RESERVED_BY_FOLDED.get(key.translate(_SEPARATORS).lower())


def _normalise_value(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    value = value.strip()
    return value.lower() if name == "email" else value
