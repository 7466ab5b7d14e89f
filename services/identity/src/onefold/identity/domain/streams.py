"""The streams of the identity log and the data subject personal events are sealed for."""

from __future__ import annotations


def profile_stream(workspace: str, profile_id: str) -> str:
    return f"identity-profile:{workspace}:{profile_id}"


def events_stream(workspace: str, profile_id: str) -> str:
    return f"identity-events:{workspace}:{profile_id}"


def profile_of_stream(stream_id: str) -> str | None:
    """The profile a profile or events stream belongs to (None for any other stream)."""
    kind, _, rest = stream_id.partition(":")
    if kind not in ("identity-profile", "identity-events"):
        return None
    return rest.rpartition(":")[2]


def rules_stream(workspace: str) -> str:
    return f"identity-rules:{workspace}"


def subject_of(workspace: str, profile_id: str) -> str:
    return f"{workspace}:p:{profile_id}"
