"""Cron schedules as CronJob reads them: five fields or a macro, in an IANA time zone. Pure.

``cronsim`` does the calendar arithmetic, Debian cron's way across daylight saving time: a
job at a fixed local time (``30 2 * * *``) runs once on the day the clocks skip that time
(at the first minute that exists, 03:00) and once on the day they repeat it (the first
02:30); a job with a wildcard minute or hour runs by the clock as it passes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = 5


def cron_fields(expression: str) -> str:
    """The five fields `expression` stands for; ValueError saying what is wrong."""
    text = " ".join(expression.split())
    if text.startswith("@"):
        fields = MACROS.get(text.lower())
        if fields is None:
            raise ValueError(f"unknown macro {text!r}: use one of {', '.join(MACROS)}")
        return fields
    if "TZ=" in text.upper():
        raise ValueError("set the time zone in timeZone, not in the schedule")
    count = len(text.split())
    if count != FIELDS:
        raise ValueError(
            f"must have 5 fields (minute hour day-of-month month day-of-week), not {count}"
        )
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except (CronSimError, ValueError) as error:
        raise ValueError(f"{str(error).lower() or 'not a cron expression'}") from None
    return text


def time_zone(name: str | None) -> tzinfo:
    """The IANA zone `name` names (None: UTC); ValueError if there is none by that name."""
    if name is None or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone, e.g. 'Europe/Berlin' or 'UTC'") from None


def next_tick(expression: str, zone: str | None, after: datetime) -> datetime:
    """The first tick strictly after `after` (aware), in UTC."""
    start = after.astimezone(time_zone(zone))
    return next(CronSim(cron_fields(expression), start)).astimezone(UTC)


def latest_tick(expression: str, zone: str | None, at: datetime) -> datetime:
    """The last tick at or before `at` (aware, to the second), in UTC."""
    # cronsim going backwards takes a time with microseconds as its own first candidate.
    start = at.astimezone(time_zone(zone)).replace(microsecond=0) + timedelta(microseconds=1)
    return next(CronSim(cron_fields(expression), start, reverse=True)).astimezone(UTC)
