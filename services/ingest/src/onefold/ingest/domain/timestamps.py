"""Timestamps as SDKs send them, and Segment's clock-skew correction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from onefold.ingest.domain.model import Limits

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampError(ValueError):
    """A value that is not a timestamp; the message says why without quoting the value."""


def parse_timestamp(value: object) -> datetime:
    """ISO-8601 (with or without a zone; none means UTC) or epoch milliseconds, as an aware UTC datetime."""
    if isinstance(value, bool):  # bool is an int subclass; True is not 1 ms after the epoch
        raise TimestampError("must be an ISO-8601 string or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        try:
            return _EPOCH + timedelta(milliseconds=value)
        except (OverflowError, ValueError):
            raise TimestampError("epoch milliseconds out of range") from None
    if not isinstance(value, str):
        raise TimestampError("must be an ISO-8601 string or epoch milliseconds")
    text = value.strip()
    # fromisoformat also reads week dates and compact forms; demand the calendar date SDKs send.
    if len(text) < 10 or text[4] != "-" or text[7] != "-":
        raise TimestampError("must be an ISO-8601 date-time, e.g. 2024-05-01T12:30:00.000Z")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError("must be an ISO-8601 date-time, e.g. 2024-05-01T12:30:00.000Z") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise TimestampError("out of range once converted to UTC") from None


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, milliseconds unless finer precision is present (stable round trip)."""
    spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def correct_skew(original: datetime, sent_at: datetime | None, received_at: datetime) -> datetime:
    """Segment's correction: the device says the event happened `sentAt - timestamp` before it sent
    the batch, and the server knows when the batch arrived, so timestamp = receivedAt - (sentAt - timestamp).
    Without sentAt there is nothing to correct against and the device's time stands."""
    if sent_at is None:
        return original
    try:
        return received_at - (sent_at - original)
    except OverflowError:
        raise TimestampError("clock-skew correction leaves the representable range") from None


def sanity_problem(timestamp: datetime, received_at: datetime, limits: Limits) -> str | None:
    """Why a corrected timestamp cannot be right, or None."""
    if timestamp - received_at > limits.max_future:
        return f"is more than {_human(limits.max_future)} in the future"
    if received_at - timestamp > limits.max_age:
        return f"is more than {_human(limits.max_age)} in the past"
    return None


def _human(delta: timedelta) -> str:
    if delta.days >= 365 and delta.days % 365 == 0:
        return f"{delta.days // 365} year(s)"
    if delta.days and not delta.seconds:
        return f"{delta.days} day(s)"
    return f"{int(delta.total_seconds())} seconds"
