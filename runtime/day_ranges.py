"""The day range of a daily read (GetDailyKpis, GetDailySends): checked alike in every service.

A request names its first and last day (inclusive) and the IANA zone they are counted in (empty:
Asia/Shanghai, the seeds' zone). Days lie between 2000 and 2099, so every day's start in any zone
is a time Python and PostgreSQL hold, and a range has at most MAX_DAYS days (a year and a bit,
bounded work per call).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runtime import zones
from runtime.errors import Violations

DEFAULT_ZONE = "Asia/Shanghai"
MAX_DAYS = 400
EARLIEST = dt.date(2000, 1, 1)
LATEST = dt.date(2099, 12, 31)


@dataclass(frozen=True)
class DayRange:
    first: dt.date
    last: dt.date
    zone: dt.tzinfo
    # The IANA name, for SQL's `AT TIME ZONE`.
    zone_name: str

    @property
    def start(self) -> dt.datetime:
        """The UTC instant the first day begins."""
        return zones.day_start(self.first, self.zone)

    @property
    def end(self) -> dt.datetime:
        """The UTC instant the day after the last begins (exclusive)."""
        return zones.day_start(self.last + dt.timedelta(days=1), self.zone)

    def days(self) -> Iterator[dt.date]:
        day = self.first
        while day <= self.last:
            yield day
            day += dt.timedelta(days=1)


def optional_day(request: Any, name: str, v: Violations) -> dt.date | None:
    """The google.type.Date field `name` of `request` (None when unset, or with a violation of
    `name` when it is no full date between EARLIEST and LATEST)."""
    if not request.HasField(name):
        return None
    value = getattr(request, name)
    try:
        day = dt.date(value.year, value.month, value.day)
    except ValueError:
        v.add(name, "must be a full calendar date (year, month and day)")
        return None
    if not EARLIEST <= day <= LATEST:
        v.add(name, f"must be between {EARLIEST} and {LATEST}")
        return None
    return day


def _day(request: Any, name: str, v: Violations) -> dt.date | None:
    if not request.HasField(name):
        v.add(name, "is required")
    return optional_day(request, name, v)


def checked(request: Any) -> DayRange:
    """The range of a request with `start_date`, `end_date` (google.type.Date) and `time_zone`, or
    InvalidArgument naming each bad field."""
    v = Violations()
    first, last = _day(request, "start_date", v), _day(request, "end_date", v)
    zone_name = request.time_zone or DEFAULT_ZONE
    zone = zones.zone(zone_name, v, "time_zone")
    if first is not None and last is not None:
        if last < first:
            v.add("end_date", "must not be before start_date")
        elif (last - first).days >= MAX_DAYS:
            v.add("end_date", f"must be at most {MAX_DAYS} days from start_date (both included)")
    v.raise_if_any()
    assert first is not None and last is not None
    return DayRange(first, last, zone, zone_name)
