"""The streams of the identity log and the data subject personal events are sealed for."""

from __future__ import annotations

_PROFILE = "identity-profile"
_EVENTS = "identity-events"


def profile_stream(workspace: str, profile_id: str) -> str:
    return f"{_PROFILE}:{workspace}:{profile_id}"


def events_stream(workspace: str, profile_id: str) -> str:
    return f"{_EVENTS}:{workspace}:{profile_id}"


def profile_of_stream(stream_id: str) -> str | None:
    """The profile a profile stream belongs to (None for any other stream)."""
    kind, _, rest = stream_id.partition(":")
    return rest.rpartition(":")[2] if kind == _PROFILE else None


def is_events_stream(stream_id: str) -> bool:
    return stream_id.startswith(_EVENTS + ":")


def rules_stream(workspace: str) -> str:
    return f"identity-rules:{workspace}"


def subject_of(workspace: str, profile_id: str) -> str:
    return f"{workspace}:p:{profile_id}"
