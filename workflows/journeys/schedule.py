"""Member-local time: quiet hours, the next local hour, the local day a send counts against.

Pure functions of an instant and a zone, so the send activity and its tests agree on what "21:00
for this member" is across zones and daylight-saving changes (a local time that does not exist on
a given day, skipped by a DST jump, lands on the instant the zone's rules map it to).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from workflows.journeys.definition import QuietHours


def zone(name: str, default: str) -> ZoneInfo:
    """The member's zone, or `default` when they named none or one this machine does not know."""
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


def _clock(text: str) -> dt.time:
    hour, minute = text.split(":")
    return dt.time(int(hour), int(minute))


def _at(day: dt.date, time: dt.time, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, time, tzinfo=tz).astimezone(dt.UTC)


def local_day(now: dt.datetime, tz: ZoneInfo) -> dt.date:
    return now.astimezone(tz).date()


def next_local_midnight(now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    return _at(local_day(now, tz) + dt.timedelta(days=1), dt.time(), tz)


def next_local_time(now: dt.datetime, tz: ZoneInfo, hour: int, minute: int) -> dt.datetime:
    """The first instant at or after `now` whose local time is hour:minute."""
    today = local_day(now, tz)
    target = _at(today, dt.time(hour, minute), tz)
    return target if target >= now else _at(today + dt.timedelta(days=1), dt.time(hour, minute), tz)


def quiet_until(now: dt.datetime, tz: ZoneInfo, quiet: QuietHours | None) -> dt.datetime | None:
    """When the quiet hours around `now` end, or None when `now` is not in them."""
    if quiet is None:
        return None
    start, end = _clock(quiet.start), _clock(quiet.end)
    local = now.astimezone(tz)
    today, clock = local.date(), local.time()
    if start < end:
        return _at(today, end, tz) if start <= clock < end else None
    # The window wraps midnight (21:00-09:00).
    if clock >= start:
        return _at(today + dt.timedelta(days=1), end, tz)
    if clock < end:
        return _at(today, end, tz)
    return None
