"""How the columns of a CSV import become the fields of Segment identify and track calls (docs/import.md).

Pure: a header (and the --map / --map-file choices) in, a `ColumnMapping` out, decided before any row
is read or sent. Columns the rules cannot place are refused as a whole, with the reason, rather than
guessed row by row: a wrong guess (a `name` column sent as a top-level field, not a trait) is stored
on the event and silently missing from the profile.

The rules, per column (an explicit mapping first):
- Segment's top-level fields of the call (userId, anonymousId, messageId, timestamp, type, and event
  for track) stay top-level, matched ignoring case, '_', '-' and spaces (User_ID is userId);
- dotted columns `traits.*` (identify), `properties.*` (track) and `context.*` go into those objects;
- other plain columns are traits of an identify call (Segment's reserved trait names in Segment's
  spelling: first_name is traits.firstName) and properties of a track call, like the free-form
  traits and properties objects of the calls themselves;
- fields of other calls (groupId, previousId, event in an identify import), fields the service sets
  (receivedAt, writeKey), whole objects (a plain `traits` column), unnamed and repeated columns, and
  columns that land on the same field are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

SKIP = "-"  # `--map COLUMN=-`: the column is not sent


class CallType(StrEnum):
    identify = "identify"
    track = "track"


class MappingError(Exception):
    """A mapping the user gave (--map, --map-file) that is malformed; one sentence."""


COMMON_TOP_LEVEL = ("userId", "anonymousId", "messageId", "timestamp", "originalTimestamp", "sentAt", "type")
TOP_LEVEL = {
    CallType.identify: COMMON_TOP_LEVEL,
    CallType.track: (*COMMON_TOP_LEVEL, "event"),
}
OBJECTS = {CallType.identify: ("traits", "context"), CallType.track: ("properties", "context")}
# Segment's reserved traits (the Identify spec): written in Segment's spelling whatever the column's.
RESERVED_TRAITS = (
    "address",
    "age",
    "avatar",
    "birthday",
    "company",
    "createdAt",
    "description",
    "email",
    "firstName",
    "gender",
    "id",
    "lastName",
    "name",
    "phone",
    "title",
    "username",
    "website",
)
# Plain columns that name something an identify or track CSV row cannot carry, and why.
NOT_IN_A_ROW = {
    "groupId": "groupId belongs to group calls",
    "previousId": "previousId belongs to alias calls",
    "receivedAt": "receivedAt is set by the service",
    "writeKey": "writeKey is set by the service",
    "traits": "a whole object cannot come from one cell; use traits.KEY columns",
    "properties": "a whole object cannot come from one cell; use properties.KEY columns",
    "context": "a whole object cannot come from one cell; use context.KEY columns",
    "integrations": "integrations cannot come from a CSV file",
}


def loose(name: str) -> str:
    """A column name as matched against Segment's field names: case, '_', '-' and spaces ignored."""
    return "".join(ch for ch in name.strip().lower() if ch not in "_- ")


LOOSE_TOP_LEVEL = {call: {loose(name): name for name in names} for call, names in TOP_LEVEL.items()}
LOOSE_RESERVED_TRAITS = {loose(name): name for name in RESERVED_TRAITS}
LOOSE_NOT_IN_A_ROW = {loose(name): reason for name, reason in NOT_IN_A_ROW.items()}


@dataclass(frozen=True)
class ColumnField:
    """Where one column's cells go: a dotted field (`traits.email`), or None when skipped."""

    column: str
    field: str | None
    rule: str  # why, for --dry-run and the docs: "top-level field", "reserved trait", "--map", …


@dataclass(frozen=True)
class RefusedColumn:
    column: str
    reason: str


@dataclass(frozen=True)
class ColumnMapping:
    call_type: CallType
    columns: tuple[ColumnField, ...]  # in header order, one per column
    refused: tuple[RefusedColumn, ...]
    missing: tuple[str, ...]  # what every row of this call type needs and no column gives

    @property
    def ok(self) -> bool:
        return not self.refused and not self.missing

    def problem(self) -> str:
        """The one sentence that refuses this mapping (column names only, never cell values)."""
        parts = [f"{r.column!r} ({r.reason})" for r in self.refused]
        sentence = ""
        if parts:
            sentence = (
                f"{len(parts)} column{'s' if len(parts) > 1 else ''} cannot be mapped to "
                f"{self.call_type.value} fields: {'; '.join(parts)}. Map each with --map COLUMN=FIELD "
                f"(e.g. --map 'COLUMN={OBJECTS[self.call_type][0]}.KEY') or skip it with --map COLUMN=-"
            )
        if self.missing:
            sentence += ("; " if sentence else "") + "; ".join(self.missing)
        return sentence + "; nothing was sent (see docs/import.md)"

    def document(self, row: list[str]) -> dict[str, Any]:
        """One row as a Segment call; empty cells are absent fields. Raises ValueError (the row is a
        bad line) when its type cell names another call type."""
        document: dict[str, Any] = {}
        for mapped, value in zip(self.columns, row, strict=True):
            if mapped.field is None or value == "":
                continue
            if "." not in mapped.field:
                document[mapped.field] = value.strip()
                continue
            node = document
            *parents, leaf = mapped.field.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        given_type = document.get("type", self.call_type.value).lower()
        if given_type != self.call_type.value:
            raise ValueError(
                f"the type column names another call type than this {self.call_type.value} import; "
                "import each call type from its own file"
            )
        document["type"] = self.call_type.value
        return document


def parse_map_options(options: list[str]) -> dict[str, str]:
    """`--map COLUMN=FIELD` options (the last '=' separates: column names may hold '=' but fields not)."""
    explicit: dict[str, str] = {}
    for option in options:
        column, equals, target = option.rpartition("=")
        if not equals or not column.strip():
            raise MappingError(f"--map {option!r} must be COLUMN=FIELD (FIELD - skips the column)")
        explicit[column.strip()] = target.strip()
    return explicit


def parse_map_document(document: Any, where: str) -> dict[str, str]:
    """A --map-file's YAML: a mapping of column name to field (`-` or null skips the column)."""
    if not isinstance(document, Mapping):
        raise MappingError(
            f"{where} must be a YAML mapping of column name to field, e.g. 'Full Name: traits.name'"
        )
    explicit: dict[str, str] = {}
    for column, target in document.items():
        if not isinstance(column, str) or not (target is None or isinstance(target, str)):
            raise MappingError(f"{where}: every key must be a column name and every value a field name or -")
        explicit[column.strip()] = SKIP if target is None else target.strip()
    return explicit


def infer_call_type(header: list[str], explicit: Mapping[str, str]) -> CallType:
    """Without --type: track when a column gives the event name, else identify."""
    for column in header:
        if loose(explicit.get(column, column)) == "event":
            return CallType.track
    return CallType.identify


def map_columns(
    header: list[str], call_type: CallType | None, explicit: Mapping[str, str] | None = None
) -> ColumnMapping:
    explicit = explicit or {}
    call = call_type or infer_call_type(header, explicit)
    fields: list[ColumnField] = []
    refused: list[RefusedColumn] = []
    unknown = sorted(set(explicit) - set(header))
    refused.extend(RefusedColumn(c, "--map names it but the header has no such column") for c in unknown)
    seen: set[str] = set()
    for position, column in enumerate(header, start=1):
        if not column:
            refused.append(RefusedColumn(f"column {position}", "it has no name in the header row"))
            fields.append(ColumnField(f"column {position}", None, "refused"))
            continue
        if column in seen:
            refused.append(RefusedColumn(column, "the header names it twice"))
            fields.append(ColumnField(column, None, "refused"))
            continue
        seen.add(column)
        if column in explicit:
            mapped, reason = _explicit_field(column, explicit[column], call)
        else:
            mapped, reason = _automatic_field(column, call)
        if reason is not None:
            refused.append(RefusedColumn(column, reason))
            fields.append(ColumnField(column, None, "refused"))
        else:
            fields.append(mapped)
    refused.extend(_overlaps(fields))
    return ColumnMapping(call, tuple(fields), tuple(refused), _missing(fields, call))


def _explicit_field(column: str, target: str, call: CallType) -> tuple[ColumnField, str | None]:
    if target == SKIP:
        return ColumnField(column, None, "skipped (--map)"), None
    field, reason = _check_target(target, call)
    return ColumnField(column, field, "--map"), reason and f"--map {column}={target}: {reason}"


def _automatic_field(column: str, call: CallType) -> tuple[ColumnField, str | None]:
    name = column.strip()
    if "." in name:
        field, reason = _check_target(name, call)
        return ColumnField(column, field, "dotted column"), reason
    key = loose(name)
    if key in LOOSE_TOP_LEVEL[call]:
        return ColumnField(column, LOOSE_TOP_LEVEL[call][key], "top-level field"), None
    if key == "event":  # only reached in an identify import
        return ColumnField(column, None, "refused"), "event names track calls; this is an identify import"
    if key in LOOSE_NOT_IN_A_ROW:
        return ColumnField(column, None, "refused"), LOOSE_NOT_IN_A_ROW[key]
    if call is CallType.track:
        return ColumnField(column, f"properties.{name}", "property"), None
    if key in LOOSE_RESERVED_TRAITS:
        return ColumnField(column, f"traits.{LOOSE_RESERVED_TRAITS[key]}", "reserved trait"), None
    return ColumnField(column, f"traits.{name}", "custom trait"), None


def _check_target(target: str, call: CallType) -> tuple[str | None, str | None]:
    """A field named by a dotted column or --map: the canonical field, or the reason it cannot be."""
    root, dot, rest = target.partition(".")
    if not dot:
        canonical = LOOSE_TOP_LEVEL[call].get(loose(target))
        if canonical is not None:
            return canonical, None
        return None, (
            f"{target!r} is not a top-level field of {call.value} calls "
            f"({', '.join(TOP_LEVEL[call])}); for a nested field write e.g. {OBJECTS[call][0]}.{target}"
        )
    root = root.strip().lower()
    if root not in OBJECTS[call]:
        if root in ("traits", "properties", "context", "integrations"):
            hint = " (a track call's user traits go in context.traits.KEY)" if root == "traits" else ""
            return None, f"{call.value} calls carry no {root} from a CSV file{hint}"
        return None, f"{root!r} is not an object of {call.value} calls ({', '.join(OBJECTS[call])})"
    parts = [part.strip() for part in rest.split(".")]
    if not all(parts):
        return None, f"{target!r} has an empty part between its dots"
    return ".".join((root, *parts)), None


def _overlaps(fields: list[ColumnField]) -> list[RefusedColumn]:
    """Columns that land on the same field, or on a field inside another column's field."""
    refused = []
    claimed: dict[str, str] = {}
    for mapped in fields:
        if mapped.field is None:
            continue
        for other_field, other_column in claimed.items():
            if (
                mapped.field == other_field
                or (mapped.field + ".").startswith(other_field + ".")
                or (other_field + ".").startswith(mapped.field + ".")
            ):
                refused.append(
                    RefusedColumn(
                        mapped.column, f"it maps to {mapped.field}, as does column {other_column!r}"
                    )
                )
                break
        else:
            claimed[mapped.field] = mapped.column
    return refused


def _missing(fields: list[ColumnField], call: CallType) -> tuple[str, ...]:
    given = {mapped.field for mapped in fields if mapped.field is not None}
    missing = []
    if not given & {"userId", "anonymousId"}:
        missing.append("no column gives the userId or anonymousId every call needs")
    if call is CallType.track and "event" not in given:
        missing.append("a track import needs an event column (the event name)")
    return tuple(missing)
