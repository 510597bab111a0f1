"""Member-local time (workflows/journeys/local_time.py) against an oracle that only reads clocks.

The oracle asks "is this instant inside the window, by the member's wall clock?" and scans forward
in UTC; it never builds a local time and converts it, which is what the code under test does. The
windows have 15-minute bounds and the zones whole-hour offsets, so whether an instant is quiet can
only change at a UTC quarter hour: scanning quarter hours finds the window's end exactly. The
instants cluster around each DST change of 2026 (spring forward, fall back) in New York and Berlin,
and Shanghai (no DST) is checked the same way.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest

from workflows.journeys import local_time
from workflows.journeys.definition import QuietHours

UTC = dt.UTC
QUARTER = dt.timedelta(minutes=15)
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")
# The instants each zone's clock jumps in 2026 (UTC); Shanghai has none, so two ordinary days.
CHANGES = {
    NEW_YORK: (dt.datetime(2026, 3, 8, 7, tzinfo=UTC), dt.datetime(2026, 11, 1, 6, tzinfo=UTC)),
    BERLIN: (dt.datetime(2026, 3, 29, 1, tzinfo=UTC), dt.datetime(2026, 10, 25, 1, tzinfo=UTC)),
    SHANGHAI: (dt.datetime(2026, 3, 8, 7, tzinfo=UTC), dt.datetime(2026, 11, 1, 6, tzinfo=UTC)),
}
ZONES = list(CHANGES)
WINDOWS = [
    QuietHours("21:00", "09:00"),  # the usual night, wrapping midnight
    QuietHours("22:30", "07:15"),
    QuietHours("23:45", "00:15"),  # half an hour across midnight
    QuietHours("00:00", "06:00"),
    QuietHours("12:00", "14:00"),  # within one day
    QuietHours("09:00", "21:00"),  # the day, not the night
    QuietHours("01:30", "03:00"),  # across both DST changes' hours
    QuietHours("00:30", "01:30"),  # ends inside New York's repeated hour
    QuietHours("01:00", "01:45"),  # entirely inside New York's repeated hour
    QuietHours("02:15", "02:45"),  # entirely inside the hour a spring-forward skips
    QuietHours("20:00", "02:30"),  # ends inside the skipped hour
]


def clock(text: str) -> dt.time:
    hour, minute = text.split(":")
    return dt.time(int(hour), int(minute))


def quiet_at(instant: dt.datetime, tz: ZoneInfo, quiet: QuietHours) -> bool:
    """Whether the member's wall clock at `instant` shows a time inside the window."""
    shown = instant.astimezone(tz).time().replace(fold=0)
    start, end = clock(quiet.start), clock(quiet.end)
    return start <= shown < end if start < end else shown >= start or shown < end


def next_quarter(instant: dt.datetime) -> dt.datetime:
    """The first UTC quarter hour strictly after `instant`."""
    floor = instant.replace(minute=instant.minute // 15 * 15, second=0, microsecond=0)
    return floor + QUARTER


def window_over(now: dt.datetime, tz: ZoneInfo, quiet: QuietHours) -> dt.datetime:
    """The first instant after `now` (quiet) at which the member's clock is outside the window."""
    instant = next_quarter(now)
    while quiet_at(instant, tz, quiet):
        instant += QUARTER
    return instant


def exists(day: dt.date, time: dt.time, tz: ZoneInfo) -> bool:
    """Whether the wall clock shows `time` on `day` (not skipped by a spring-forward)."""
    mapped = dt.datetime.combine(day, time, tzinfo=tz).astimezone(UTC).astimezone(tz)
    return mapped.replace(tzinfo=None) == dt.datetime.combine(day, time)


def nows(tz: ZoneInfo) -> Iterator[dt.datetime]:
    """Instants every 20 minutes (at a random second of each) from 36 hours before to 36 hours
    after each of the zone's DST changes, and 150 random ones in 2026 (fixed seed)."""
    rng = random.Random(f"nows:{tz.key}")
    for change in CHANGES[tz]:
        for step in range(-108, 108):
            yield change + step * dt.timedelta(minutes=20) + dt.timedelta(seconds=rng.randrange(1200))
    for _ in range(150):
        yield dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=rng.randrange(365 * 86400))


@pytest.mark.parametrize("tz", ZONES, ids=lambda tz: tz.key)
def test_quiet_until_is_when_the_members_clock_next_shows_the_windows_end(tz: ZoneInfo) -> None:
    """None exactly outside the window. Inside it: an instant after `now` at which the member's
    clock is outside the window (nothing is sent inside it), the first after `now` at which the
    clock shows the window's end, and, unless the clock is turned back meanwhile, the first at
    which it is outside the window at all (nothing waits longer than the window lasts). Where a
    spring-forward skips the end, the documented mapping of that local time (the offset before the
    jump), at most the skipped hour after the clock left the window."""
    checked = 0
    for quiet in WINDOWS:
        end = clock(quiet.end)
        for now in nows(tz):
            got = local_time.quiet_until(now, tz, quiet)
            if not quiet_at(now, tz, quiet):
                assert got is None, (now, quiet)
                continue
            assert got is not None and got > now, (now, quiet, got)
            assert not quiet_at(got, tz, quiet), (now, quiet, got)
            day = got.astimezone(tz).date()
            if exists(day, end, tz):
                assert got.astimezone(tz).time() == end, (now, quiet, got)
            else:
                assert got == dt.datetime.combine(day, end, tzinfo=tz).astimezone(UTC), (now, quiet)
                assert got - window_over(now, tz, quiet) <= dt.timedelta(hours=1)
            instant = next_quarter(now)
            while instant < got:
                assert instant.astimezone(tz).time().replace(fold=0) != end, (now, quiet, got)
                instant += QUARTER
            if now.astimezone(tz).utcoffset() == got.astimezone(tz).utcoffset() and exists(day, end, tz):
                assert got == window_over(now, tz, quiet), (now, quiet)
            checked += 1
    # The sample reaches inside the windows often, across every change.
    assert checked > 1000


@pytest.mark.parametrize("tz", ZONES, ids=lambda tz: tz.key)
def test_next_local_time_is_the_first_instant_at_or_after_now_showing_that_time(tz: ZoneInfo) -> None:
    """The oracle lists every instant of the days around `now` whose wall clock shows hour:minute
    (two in a repeated hour) and takes the first at or after `now`; on a day that skips the time,
    the documented mapping stands in for it."""
    rng = random.Random(f"times:{tz.key}")
    for now in nows(tz):
        hour, minute = rng.randrange(24), rng.choice((0, 15, 30, 45))
        target = dt.time(hour, minute)
        today = now.astimezone(tz).date()
        candidates = []
        for offset in range(-1, 3):
            day = today + dt.timedelta(days=offset)
            if not exists(day, target, tz):
                candidates.append(dt.datetime.combine(day, target, tzinfo=tz).astimezone(UTC))
                continue
            for fold in (0, 1):
                instant = dt.datetime.combine(day, target, tzinfo=tz).replace(fold=fold)
                if instant.astimezone(UTC).astimezone(tz).time() == target:
                    candidates.append(instant.astimezone(UTC))
        expected = min(c for c in candidates if c >= now)
        got = local_time.next_local_time(now, tz, hour, minute)
        assert got == expected, (now, target)
        assert got.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("tz", ZONES, ids=lambda tz: tz.key)
def test_next_local_midnight_is_the_first_instant_of_the_next_local_day(tz: ZoneInfo) -> None:
    """A daily cap resets when the member's day does: the result is on the next local day and the
    instant before it still on today, whatever the day's length (23, 24 or 25 hours)."""
    lengths = set()
    for now in nows(tz):
        got = local_time.next_local_midnight(now, tz)
        today = now.astimezone(tz).date()
        assert got > now
        assert got.astimezone(tz).date() == today + dt.timedelta(days=1)
        assert (got - dt.timedelta(microseconds=1)).astimezone(tz).date() == today
        lengths.add(local_time.next_local_midnight(got, tz) - got)
    hours = {24} if tz is SHANGHAI else {23, 24, 25}
    assert lengths == {dt.timedelta(hours=h) for h in hours}


def utc(month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "tz", "quiet", "expected"),
    [
        # New York springs forward on 2026-03-08: 22:00 EST to 09:00 EDT is ten hours, not eleven.
        (utc(3, 8, 3), NEW_YORK, QuietHours("21:00", "09:00"), utc(3, 8, 13)),
        # And falls back on 2026-11-01: 22:00 EDT to 09:00 EST is twelve hours.
        (utc(11, 1, 2), NEW_YORK, QuietHours("21:00", "09:00"), utc(11, 1, 14)),
        # Berlin falls back on 2026-10-25: 06:00 CET is 05:00 UTC (07:00 CEST the day before).
        (utc(10, 24, 21), BERLIN, QuietHours("22:00", "06:00"), utc(10, 25, 5)),
        (utc(10, 23, 21), BERLIN, QuietHours("22:00", "06:00"), utc(10, 24, 4)),
        # Shanghai never changes: 21:00-09:00 ends at 01:00 UTC every day of the year.
        (utc(3, 8, 14), SHANGHAI, QuietHours("21:00", "09:00"), utc(3, 9, 1)),
        (utc(11, 1, 0, 59), SHANGHAI, QuietHours("21:00", "09:00"), utc(11, 1, 1)),
        # 01:15 EST, the second time the clock shows it: the window ends at 01:30 EST, a quarter
        # of an hour ahead, not at 01:30 EDT, which has passed.
        (utc(11, 1, 6, 15), NEW_YORK, QuietHours("00:30", "01:30"), utc(11, 1, 6, 30)),
        (utc(11, 1, 6, 15), NEW_YORK, QuietHours("21:00", "01:30"), utc(11, 1, 6, 30)),
        # 01:15 EDT, the first time: 01:30 EDT.
        (utc(11, 1, 5, 15), NEW_YORK, QuietHours("00:30", "01:30"), utc(11, 1, 5, 30)),
        # Berlin's second 02:26 (CET): 02:45 CET, not 02:45 CEST an hour and a half earlier.
        (utc(10, 25, 1, 26), BERLIN, QuietHours("02:15", "02:45"), utc(10, 25, 1, 45)),
        # 01:45 EDT, in 01:30-03:00: the clock shows 01:00-01:30 again before 03:00 EST; the window
        # is one span from its start to its end, so the member waits until 03:00 EST.
        (utc(11, 1, 5, 45), NEW_YORK, QuietHours("01:30", "03:00"), utc(11, 1, 8)),
        # 01:45 EST, before 02:30 on the spring-forward day: 02:30 does not exist; the documented
        # mapping is 03:30 EDT (the clock leaves the window at 03:00 EDT).
        (utc(3, 8, 6, 45), NEW_YORK, QuietHours("20:00", "02:30"), utc(3, 8, 7, 30)),
    ],
)
def test_quiet_hours_across_dst_changes(
    now: dt.datetime, tz: ZoneInfo, quiet: QuietHours, expected: dt.datetime
) -> None:
    assert local_time.quiet_until(now, tz, quiet) == expected


def test_next_local_time_in_a_repeated_hour_is_the_next_time_the_clock_shows_it() -> None:
    # 01:10 EST on 2026-11-01, the second 01:10 of the day: 01:20 comes again in ten minutes.
    assert local_time.next_local_time(utc(11, 1, 6, 10), NEW_YORK, 1, 20) == utc(11, 1, 6, 20)
    # 01:10 EDT, the first: 01:20 EDT.
    assert local_time.next_local_time(utc(11, 1, 5, 10), NEW_YORK, 1, 20) == utc(11, 1, 5, 20)
    # 02:30 is skipped on 2026-03-08: the documented mapping, 03:30 EDT.
    assert local_time.next_local_time(utc(3, 8, 6), NEW_YORK, 2, 30) == utc(3, 8, 7, 30)


def test_no_quiet_hours_defer_nothing_and_an_unknown_zone_falls_back() -> None:
    for hour in range(24):
        assert local_time.quiet_until(utc(3, 8, hour), NEW_YORK, None) is None
    assert local_time.zone("Not/AZone", "Asia/Shanghai") == SHANGHAI
    assert local_time.zone("", "Europe/Berlin") == BERLIN
    assert local_time.zone("../etc/passwd", "Asia/Shanghai") == SHANGHAI
    assert local_time.zone("America/New_York", "Asia/Shanghai") == NEW_YORK
