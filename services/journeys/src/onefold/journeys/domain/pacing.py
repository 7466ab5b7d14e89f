"""Pacing: whether a message may go to a person now, later, or not at all. Pure: no I/O, no clock.

Two rules, combined by `pace`:

- **quiet hours**, in the person's own time zone: a message due inside them is deferred to the
  moment they end, never dropped;
- **frequency caps** per channel, over the last 24 hours and the last 7 days (rolling windows, so
  a cap of one a day means never two within 24 hours, whatever the time zones or midnight): a
  message over a cap is not sent.

Quiet hours are judged first. A deferred message is paced again when its moment comes, so its caps
are judged against the sends of that moment rather than of now (sends older than the window by
then no longer count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class FrequencyCap:
    """At most `per_day` sends in any 24 hours and `per_week` in any 7 days (None = no limit)."""

    per_day: int | None = None
    per_week: int | None = None

    def __post_init__(self) -> None:
        for name, limit in (("per_day", self.per_day), ("per_week", self.per_week)):
            if limit is not None and limit < 0:
                raise ValueError(f"a frequency cap's {name} must be >= 0")


@dataclass(frozen=True)
class QuietHours:
    """From `start` to `end` in the person's local time; `start` later than `end` spans midnight
    (22:00-08:00). Applies to `channels` only: an email waits in an inbox, a text message wakes."""

    start: time
    end: time
    channels: frozenset[str] = frozenset({"sms", "push", "wechat"})

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("quiet hours need a start different from their end")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are local wall-clock times, without a time zone")


@dataclass(frozen=True)
class PacingPolicy:
    caps: Mapping[str, FrequencyCap] = field(default_factory=dict)  # by channel
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True)
class SendNow:
    pass


@dataclass(frozen=True)
class DeferUntil:
    at: datetime  # aware, UTC


@dataclass(frozen=True)
class Capped:
    reason: str  # names the channel, the window and the cap; nothing about the person


Pacing = SendNow | DeferUntil | Capped


def pace(
    now: datetime, tz: tzinfo, channel: str, history: Iterable[datetime], policy: PacingPolicy
) -> Pacing:
    """The decision for one message on `channel` to a person living in `tz`.

    `now` and `history` (this person's past sends on this channel) are aware datetimes."""
    _require_aware(now, "now")
    quiet = policy.quiet_hours
    if quiet is not None and channel in quiet.channels:
        ends = quiet_hours_end(now, tz, quiet)
        if ends is not None:
            return DeferUntil(ends)
    cap = policy.caps.get(channel)
    if cap is not None:
        reason = _over_cap(now, channel, history, cap)
        if reason:
            return Capped(reason)
    return SendNow()


def quiet_hours_end(now: datetime, tz: tzinfo, quiet: QuietHours) -> datetime | None:
    """When the quiet hours `now` falls in end (UTC), or None when `now` is outside them."""
    _require_aware(now, "now")
    local = now.astimezone(tz)
    wall = local.time().replace(tzinfo=None)
    spans_midnight = quiet.start > quiet.end
    inside = (wall >= quiet.start or wall < quiet.end) if spans_midnight else quiet.start <= wall < quiet.end
    if not inside:
        return None
    end_day = local.date() + timedelta(days=1) if spans_midnight and wall >= quiet.start else local.date()
    # A wall time the clocks skip (a DST gap) resolves to the instant after the gap, still later
    # than now; one they repeat resolves to its first occurrence.
    ends = datetime.combine(end_day, quiet.end, tzinfo=tz).astimezone(UTC)
    return max(ends, now.astimezone(UTC))


def _over_cap(now: datetime, channel: str, history: Iterable[datetime], cap: FrequencyCap) -> str:
    past = [sent for sent in history if _require_aware(sent, "history") <= now]
    for window, limit, label in ((DAY, cap.per_day, "24 hours"), (WEEK, cap.per_week, "7 days")):
        if limit is None:
            continue
        sent = sum(1 for at in past if now - at < window)
        if sent >= limit:
            return f"{sent} {channel} sends in the last {label} (cap {limit})"
    return ""


def _require_aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"pacing needs aware datetimes ({what} has no time zone)")
    return moment
