"""IANA time zones named in requests: parsed once, with the violation naming the field."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from runtime.errors import Violations

# IANA names are short (the longest, America/Argentina/ComodRivadavia, has 32 characters); a
# longer one is not looked up at all: as a file name it can make the lookup fail with OSError
# (ENAMETOOLONG) rather than ZoneInfoNotFoundError when the tzdata package is installed.
MAX_NAME = 64


def find(name: str) -> zoneinfo.ZoneInfo | None:
    """The IANA zone called `name`, or None when there is none: the one lookup every caller uses,
    so that no name a caller sends (empty, too long, a path, bytes the file system refuses) can
    raise anything but a violation."""
    if not name or len(name) > MAX_NAME:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def zone(name: str, v: Violations, path: str) -> dt.tzinfo:
    """The zone called `name` (UTC when empty); an unknown name adds a violation of `path`."""
    if not name:
        return dt.UTC
    found = find(name)
    if found is None:
        v.add(path, f"unknown time zone {name[:MAX_NAME]!r}: use an IANA name such as Asia/Shanghai")
        return dt.UTC
    return found


def local_day(at: dt.datetime, tz: dt.tzinfo) -> dt.date:
    """The calendar day `at` falls on in `tz`."""
    return at.astimezone(tz).date()


def day_start(day: dt.date, tz: dt.tzinfo) -> dt.datetime:
    """The UTC instant a calendar day of `tz` begins (the first existing instant on DST days)."""
    return dt.datetime.combine(day, dt.time(), tz).astimezone(dt.UTC)
