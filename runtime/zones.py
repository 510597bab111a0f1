"""IANA time zones named in requests: parsed once, with the violation naming the field."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from runtime.errors import Violations


def zone(name: str, v: Violations, path: str) -> dt.tzinfo:
    """The zone called `name` (UTC when empty); an unknown name adds a violation of `path`."""
    if not name:
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        v.add(path, f"unknown time zone {name!r}: use an IANA name such as Asia/Shanghai")
        return dt.UTC


def local_day(at: dt.datetime, tz: dt.tzinfo) -> dt.date:
    """The calendar day `at` falls on in `tz`."""
    return at.astimezone(tz).date()


def day_start(day: dt.date, tz: dt.tzinfo) -> dt.datetime:
    """The UTC instant a calendar day of `tz` begins (the first existing instant on DST days)."""
    return dt.datetime.combine(day, dt.time(), tz).astimezone(dt.UTC)
