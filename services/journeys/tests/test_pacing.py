"""Pacing decisions: quiet hours in the person's time zone defer, frequency caps refuse."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from onefold.journeys.domain.pacing import (
    Capped,
    DeferUntil,
    FrequencyCap,
    PacingPolicy,
    QuietHours,
    SendNow,
    pace,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")  # UTC+8, no daylight saving
BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = QuietHours(start=time(22, 0), end=time(8, 0))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_a_text_due_at_night_local_time_waits_for_the_morning_of_that_zone() -> None:
    now = utc(2026, 3, 2, 15, 30)  # 23:30 in Shanghai
    decision = pace(now, SHANGHAI, "sms", [], PacingPolicy(quiet_hours=NIGHT))
    assert decision == DeferUntil(utc(2026, 3, 3, 0, 0))  # 08:00 on the 3rd in Shanghai


def test_after_midnight_the_quiet_hours_end_the_same_local_morning() -> None:
    now = utc(2026, 3, 2, 18, 0)  # 02:00 on the 3rd in Shanghai
    decision = pace(now, SHANGHAI, "push", [], PacingPolicy(quiet_hours=NIGHT))
    assert decision == DeferUntil(utc(2026, 3, 3, 0, 0))


def test_the_same_moment_is_daytime_elsewhere_and_sends_now() -> None:
    now = utc(2026, 3, 2, 15, 30)  # 16:30 in Berlin
    assert pace(now, BERLIN, "sms", [], PacingPolicy(quiet_hours=NIGHT)) == SendNow()


def test_quiet_hours_end_exactly_at_their_end_and_start_exactly_at_their_start() -> None:
    policy = PacingPolicy(quiet_hours=NIGHT)
    assert pace(utc(2026, 3, 3, 0, 0), SHANGHAI, "sms", [], policy) == SendNow()  # 08:00
    assert isinstance(pace(utc(2026, 3, 2, 14, 0), SHANGHAI, "sms", [], policy), DeferUntil)  # 22:00


def test_quiet_hours_within_one_day() -> None:
    lunch = QuietHours(start=time(12, 0), end=time(14, 0))
    now = utc(2026, 3, 2, 12, 30)  # 13:30 in Berlin (UTC+1 in March before the switch)
    assert pace(now, BERLIN, "sms", [], PacingPolicy(quiet_hours=lunch)) == DeferUntil(utc(2026, 3, 2, 13, 0))


def test_email_is_not_held_by_quiet_hours_unless_they_name_it() -> None:
    now = utc(2026, 3, 2, 15, 30)  # 23:30 in Shanghai
    assert pace(now, SHANGHAI, "email", [], PacingPolicy(quiet_hours=NIGHT)) == SendNow()
    every_channel = QuietHours(start=time(22, 0), end=time(8, 0), channels=frozenset({"email"}))
    assert isinstance(pace(now, SHANGHAI, "email", [], PacingPolicy(quiet_hours=every_channel)), DeferUntil)


def test_an_end_inside_the_spring_forward_gap_resolves_to_after_the_gap() -> None:
    # Berlin skips 02:00-03:00 on 2026-03-29; quiet hours ending at 02:30 end when the clocks read 03:30.
    quiet = QuietHours(start=time(1, 0), end=time(2, 30))
    now = utc(2026, 3, 29, 0, 30)  # 01:30 CET
    decision = pace(now, BERLIN, "sms", [], PacingPolicy(quiet_hours=quiet))
    assert decision == DeferUntil(utc(2026, 3, 29, 1, 30))
    assert isinstance(decision, DeferUntil)
    assert decision.at > now


def test_a_daily_cap_counts_the_last_24_hours_of_that_channel() -> None:
    policy = PacingPolicy(caps={"sms": FrequencyCap(per_day=2)})
    now = utc(2026, 3, 2, 12, 0)
    two_today = [now - timedelta(hours=1), now - timedelta(hours=23, minutes=59)]
    decision = pace(now, BERLIN, "sms", two_today, policy)
    assert decision == Capped("2 sms sends in the last 24 hours (cap 2)")
    one_expired = [now - timedelta(hours=1), now - timedelta(hours=24)]
    assert pace(now, BERLIN, "sms", one_expired, policy) == SendNow()


def test_a_weekly_cap_counts_seven_days() -> None:
    policy = PacingPolicy(caps={"email": FrequencyCap(per_day=5, per_week=3)})
    now = utc(2026, 3, 9, 12, 0)
    history = [now - timedelta(days=d) for d in (1, 3, 6)]
    assert pace(now, BERLIN, "email", history, policy) == Capped("3 email sends in the last 7 days (cap 3)")
    assert pace(now, BERLIN, "email", history[:2], policy) == SendNow()


def test_caps_belong_to_their_channel_and_ignore_sends_recorded_after_now() -> None:
    policy = PacingPolicy(caps={"sms": FrequencyCap(per_day=1)})
    now = utc(2026, 3, 2, 12, 0)
    assert pace(now, BERLIN, "push", [now - timedelta(hours=1)], policy) == SendNow()
    assert pace(now, BERLIN, "sms", [now + timedelta(hours=1)], policy) == SendNow()


def test_a_cap_of_zero_turns_a_channel_off() -> None:
    policy = PacingPolicy(caps={"wechat": FrequencyCap(per_week=0)})
    assert pace(utc(2026, 3, 2), BERLIN, "wechat", [], policy) == Capped(
        "0 wechat sends in the last 7 days (cap 0)"
    )


def test_quiet_hours_defer_before_caps_are_judged_at_the_deferred_moment() -> None:
    policy = PacingPolicy(caps={"sms": FrequencyCap(per_day=1)}, quiet_hours=NIGHT)
    now = utc(2026, 3, 2, 15, 30)  # 23:30 in Shanghai, a text sent 20 hours ago
    history = [now - timedelta(hours=20)]
    decision = pace(now, SHANGHAI, "sms", history, policy)
    assert decision == DeferUntil(utc(2026, 3, 3, 0, 0))
    assert isinstance(decision, DeferUntil)
    # 28.5 hours after that send, it no longer counts against the daily cap.
    assert pace(decision.at, SHANGHAI, "sms", history, policy) == SendNow()


def test_naive_datetimes_are_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="aware"):
        pace(datetime(2026, 3, 2, 12, 0), BERLIN, "sms", [], PacingPolicy())
    with pytest.raises(ValueError, match="history"):
        pace(
            utc(2026, 3, 2),
            BERLIN,
            "sms",
            [datetime(2026, 3, 1)],
            PacingPolicy(caps={"sms": FrequencyCap(per_day=1)}),
        )


def test_policies_refuse_meaningless_values() -> None:
    with pytest.raises(ValueError, match="per_day"):
        FrequencyCap(per_day=-1)
    with pytest.raises(ValueError, match="different"):
        QuietHours(start=time(8, 0), end=time(8, 0))
