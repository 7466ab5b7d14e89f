"""Where the segments service's events live, and whose key seals a profile's personal values."""

from __future__ import annotations


def definition_stream(workspace: str, name: str) -> str:
    return f"segments-definition:{workspace}:{name}"


def profile_stream(workspace: str, profile_id: str) -> str:
    """A profile's memberships, tags and computed traits, as they changed."""
    return f"segments-profile:{workspace}:{profile_id}"


def subject_of(workspace: str, profile_id: str) -> str:
    """The data subject of a profile (the same naming as identity's: one person, one key per service)."""
    return f"{workspace}:p:{profile_id}"
