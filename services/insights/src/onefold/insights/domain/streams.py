"""Where the insights service's events live, and whose key seals a profile's model tags."""

from __future__ import annotations


def profile_stream(workspace: str, profile_id: str) -> str:
    """A profile's model tags, as they changed."""
    return f"insights-profile:{workspace}:{profile_id}"


def model_stream(workspace: str, model: str) -> str:
    """A workspace's versions of one model, as they were trained."""
    return f"insights-model:{workspace}:{model}"


def subject_of(workspace: str, profile_id: str) -> str:
    """The data subject of a profile (the same naming as identity's and segments': one person, one
    key per service), so an erasure by profile id shreds the model tags with the rest."""
    return f"{workspace}:p:{profile_id}"
