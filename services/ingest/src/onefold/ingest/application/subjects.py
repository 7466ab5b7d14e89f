"""Who an event is about: the subject (and blind indexes) of its person, as ingest files it."""

from __future__ import annotations

from onefold.eventlog import EventStore

_SUBJECT_INDEX_CHARS = 32  # 128 bits of the HMAC in subjects and stream ids


def person(store: EventStore, workspace: str, user_id: str, anonymous_id: str) -> tuple[str, str, str]:
    """(subject, user_id_index, anonymous_id_index) of an event's person; subject "" if none.

    The subject is `<workspace>:u:<hmac of user_id>`, else `<workspace>:a:<hmac of anonymous_id>`:
    identifiers never appear in clear outside the encrypted payload."""
    user_index = (
        store.blind_index(user_id, field=f"{workspace}:user_id", case_sensitive=True) if user_id else ""
    )
    anonymous_index = (
        store.blind_index(anonymous_id, field=f"{workspace}:anonymous_id", case_sensitive=True)
        if anonymous_id
        else ""
    )
    if user_index:
        subject = f"{workspace}:u:{user_index[:_SUBJECT_INDEX_CHARS]}"
    elif anonymous_index:
        subject = f"{workspace}:a:{anonymous_index[:_SUBJECT_INDEX_CHARS]}"
    else:
        subject = ""
    return subject, user_index, anonymous_index
