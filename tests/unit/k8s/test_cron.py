"""Cron ticks as a CronJob has them: five fields or a macro, in a time zone, across DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flotilla.api.cron import cron_fields, latest_tick, next_tick


def utc(*parts: int) -> datetime:
    return datetime(*parts).replace(tzinfo=UTC)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("macro", "fields"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ],
)
def test_macros_stand_for_their_five_fields(macro: str, fields: str) -> None:
    assert cron_fields(macro) == fields
    assert next_tick(macro, None, utc(2026, 3, 4, 5, 6)) == next_tick(
        fields, None, utc(2026, 3, 4, 5, 6)
    )


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("61 * * * *", "bad minute"),
        ("* * * *", "must have 5 fields"),
        ("0 * * * * *", "must have 5 fields"),  # seconds: not CronJob's
        ("@reboot", "unknown macro"),
        ("@every 5m", "unknown macro"),
        ("CRON_TZ=UTC 0 * * * *", "timeZone"),
        ("0 0 31 2 *", "bad day-of-month"),
        ("0 0 * * MON-XYZ", "bad day-of-week"),
    ],
)
def test_a_bad_expression_says_what_is_wrong(expression: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        cron_fields(expression)


def test_next_tick_is_strictly_after_and_latest_tick_is_at_or_before() -> None:
    hourly = "0 * * * *"
    assert next_tick(hourly, None, utc(2026, 1, 1, 12, 0)) == utc(2026, 1, 1, 13, 0)
    assert next_tick(hourly, None, utc(2026, 1, 1, 12, 0, 1)) == utc(2026, 1, 1, 13, 0)
    assert latest_tick(hourly, None, utc(2026, 1, 1, 12, 0)) == utc(2026, 1, 1, 12, 0)
    assert latest_tick(hourly, None, utc(2026, 1, 1, 12, 59, 59, 999)) == utc(2026, 1, 1, 12, 0)
    assert latest_tick("*/15 * * * *", "UTC", utc(2025, 12, 31, 23, 59)) == utc(
        2025, 12, 31, 23, 45
    )


def test_a_time_zone_moves_the_ticks() -> None:
    # 02:30 in Berlin is 01:30 UTC in winter (CET) and 00:30 UTC in summer (CEST).
    assert next_tick("30 2 * * *", "Europe/Berlin", utc(2026, 1, 10)) == utc(2026, 1, 10, 1, 30)
    assert next_tick("30 2 * * *", "Europe/Berlin", utc(2026, 7, 10)) == utc(2026, 7, 10, 0, 30)


def test_a_local_time_the_clocks_skip_runs_once_at_the_first_minute_that_exists() -> None:
    # 2026-03-29: Berlin's clocks go from 02:00 CET to 03:00 CEST; 02:30 does not exist.
    after = utc(2026, 3, 28, 12)
    first = next_tick("30 2 * * *", "Europe/Berlin", after)
    assert first == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert next_tick("30 2 * * *", "Europe/Berlin", first) == utc(2026, 3, 30, 0, 30)


def test_a_local_time_the_clocks_repeat_runs_once() -> None:
    # 2026-10-25: Berlin's clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    first = next_tick("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12))
    assert first == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert next_tick("30 2 * * *", "Europe/Berlin", first) == utc(2026, 10, 26, 1, 30)
    # Seen from the second 02:30 (CET), the tick of that night is still the first one.
    assert latest_tick("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 40)) == first


def test_a_wildcard_hour_follows_the_clock_through_the_repeated_hour() -> None:
    ticks = []
    moment = utc(2026, 10, 24, 23, 59)
    for _ in range(4):
        moment = next_tick("0 * * * *", "Europe/Berlin", moment)
        ticks.append(moment)
    # 02:00 CEST, 02:00 CET, 03:00 CET, ...: every hour of real time, none skipped.
    assert ticks == [utc(2026, 10, 25, hour) for hour in range(4)]


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="IANA time zone"):
        next_tick("0 * * * *", "Mars/Olympus_Mons", utc(2026, 1, 1))
