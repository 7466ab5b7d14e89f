"""What the use cases check in a request before asking the database: page sizes and tokens, ids."""

from __future__ import annotations

import time
from typing import Any

from onefold.platform.errors import InvalidArgument

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
_MAX_MISSING = 10_000  # entries per negative cache of unknown write keys / source ids


def holds_nul(text: str) -> bool:
    """Whether `text` holds NUL, which PostgreSQL text can neither store nor be compared with (a
    query with such a parameter fails). No id this service issues holds one, so a request naming one
    names nothing: answered as not found, without asking the database."""
    return "\x00" in text


def remember_missing(missing: dict[Any, float], key: Any) -> None:
    # Bounded: random keys must not grow memory; forgetting them all only costs queries again.
    if len(missing) >= _MAX_MISSING:
        missing.clear()
    missing[key] = time.monotonic()


def capped_page_size(requested: int) -> int:
    return min(requested, MAX_PAGE_SIZE) if requested > 0 else DEFAULT_PAGE_SIZE


def position_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 19:
        raise InvalidArgument("the page token is not valid", violations=[("page.page_token", "is not valid")])
    return int(token)
