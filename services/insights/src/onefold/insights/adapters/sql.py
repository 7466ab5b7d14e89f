"""Specifications' conditions as DuckDB SQL fragments: the text holds only identifiers taken from the
specs' enums and `?` placeholders; the values go, in order, into the parameter list beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onefold.insights.domain.specs import EventMatch, Filter, Op

_COMPARISONS = {Op.EQ: "=", Op.NE: "<>", Op.GT: ">", Op.GE: ">=", Op.LT: "<", Op.LE: "<="}


@dataclass
class Fragment:
    """SQL text and the parameters its placeholders take, in order."""

    sql: str
    params: list[Any] = field(default_factory=list)


def filter_sql(condition: Filter, alias: str = "") -> Fragment:
    """One filter: a column compared directly; a JSON property extracted as text (compared as a
    number when the value is one, so 'price gt 10' reads '12.5' as 12.5). NULL (a missing value)
    never matches, `ne` included."""
    prefix = f"{alias}." if alias else ""
    params: list[Any] = []
    numeric = not isinstance(condition.values[0], str | bool)
    if condition.column is not None:
        target = f"{prefix}{condition.column.value}"
    else:
        params.append("$." + condition.property_path)
        target = f"json_extract_string({prefix}properties, ?)"
        if numeric:
            target = f"TRY_CAST({target} AS DOUBLE)"
    values: list[Any] = [
        (str(v).lower() if isinstance(v, bool) else float(v) if numeric else v) for v in condition.values
    ]
    if condition.op is Op.IN:
        kind = "DOUBLE" if numeric else "VARCHAR"
        return Fragment(f"list_contains(?::{kind}[], {target})", [values, *params])
    return Fragment(f"{target} {_COMPARISONS[Op(condition.op)]} ?", [*params, values[0]])


def match_sql(match: EventMatch, alias: str = "") -> Fragment:
    """The event's name and every filter, as one condition that is never NULL."""
    prefix = f"{alias}." if alias else ""
    parts = [f"{prefix}event = ?"]
    params: list[Any] = [match.event]
    for condition in match.filters:
        fragment = filter_sql(condition, alias)
        parts.append(fragment.sql)
        params.extend(fragment.params)
    return Fragment(f"coalesce({' AND '.join(parts)}, false)", params)
