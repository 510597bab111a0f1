"""Member-local time: quiet hours, the next local hour, the local day a send counts against.

Pure functions of an instant and a zone, so the send activity and its tests agree on what "21:00
for this member" is across zones and daylight-saving changes (a local time that does not exist on
a given day, skipped by a DST jump, lands on the instant the zone's rules map it to; one that the
clock shows twice, in the hour a fall-back repeats, is either instant, whichever comes next).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from runtime import zones
from workflows.journeys.definition import QuietHours

# The tag dimension a member's own send hour is read from (a model tag every tenant has, "00".."23").
PREFERRED_SEND_HOUR = "preferred_send_hour"


def zone(name: str, default: str) -> ZoneInfo:
    """The member's zone, or `default` when they named none or one this machine does not know."""
    found = zones.find(name) or zones.find(default)
    if found is None:
        raise ValueError(f"the default time zone {default!r} is not an IANA zone")
    return found


def _clock(text: str) -> dt.time:
    hour, minute = text.split(":")
    return dt.time(int(hour), int(minute))


def _at(day: dt.date, time: dt.time, tz: ZoneInfo, fold: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, time, tzinfo=tz).replace(fold=fold).astimezone(dt.UTC)


def _instants(day: dt.date, time: dt.time, tz: ZoneInfo) -> list[dt.datetime]:
    """The instants of `day` at which the local clock shows `time`: two in the hour a fall-back
    repeats (during the second, the first has passed: a deferral to it would end before it began),
    the zone's mapping of it when a DST jump skips it, else one."""
    first = _at(day, time, tz)
    if first.astimezone(tz).time() != time:
        return [first]
    return sorted({first, _at(day, time, tz, fold=1)})


def local_day(now: dt.datetime, tz: ZoneInfo) -> dt.date:
    return now.astimezone(tz).date()


def next_local_midnight(now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    return _at(local_day(now, tz) + dt.timedelta(days=1), dt.time(), tz)


def next_local_time(now: dt.datetime, tz: ZoneInfo, hour: int, minute: int) -> dt.datetime:
    """The first instant at or after `now` whose local time is hour:minute."""
    today, time = local_day(now, tz), dt.time(hour, minute)
    days = (today + dt.timedelta(days=n) for n in range(3))
    return min(at for day in days for at in _instants(day, time, tz) if at >= now)


def quiet_until(now: dt.datetime, tz: ZoneInfo, quiet: QuietHours | None) -> dt.datetime | None:
    """When the quiet hours around `now` end, or None when `now` is not in them."""
    if quiet is None:
        return None
    start, end = _clock(quiet.start), _clock(quiet.end)
    clock = now.astimezone(tz).time()
    # A window that wraps midnight (21:00-09:00) holds the clock times after its start or before its end.
    inside = start <= clock < end if start < end else clock >= start or clock < end
    # It ends when the clock next shows its end (in a repeated hour, that may be the second time).
    return next_local_time(now, tz, end.hour, end.minute) if inside else None


def preferred_hour(values: list[str] | tuple[str, ...]) -> int | None:
    """The hour a member's `preferred_send_hour` tag values name, or None when they name none."""
    for value in values:
        if len(value) == 2 and value.isdigit() and int(value) <= 23:
            return int(value)
    return None


def hour_for(fallback: int, own: int | None) -> int:
    """The hour a `preferred` wait_until_hour waits for: the member's own (their tag), else the
    step's fallback hour."""
    return fallback if own is None else own
