"""The recency summaries' day bitmaps decide a summary test only where the window holds whole days:
random rows around the edges of random windows, each member's answer checked against the window
as PostgreSQL draws it: N calendar days back in the session's time zone (and, near a
daylight-saving change, an hour either way, where the two might settle a missing or doubled local
time differently)."""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo

from pyroaring import BitMap

from runtime.db import Database
from services.audience import fact_windows
from services.audience.fact_windows import EVENTS, PURCHASES, FactWindows, Window

HOUR = dt.timedelta(hours=1)
CART, VIEW = 2, 1


def _rows(rng: random.Random, now: dt.datetime, days: int) -> list[tuple[str, int, str, int, dt.datetime]]:
    """(source, kind, category, member, time): times near the window's start, near now, after now
    and anywhere in between, for 400 members with up to three rows each."""
    rows = []
    for member in range(1, 401):
        for _ in range(rng.randint(0, 3)):
            anchor = rng.choice(
                [now - dt.timedelta(days=days), now, now - dt.timedelta(days=rng.uniform(0, 2 * days))]
            )
            at = anchor + dt.timedelta(seconds=rng.uniform(-30 * 3600, 30 * 3600))
            source = rng.choice([EVENTS, PURCHASES])
            kind = rng.choice([CART, VIEW]) if source == EVENTS else 0
            rows.append((source, kind, rng.choice(["skincare", "shoes"]), member, at))
    return rows


def _matches(row: tuple[str, int, str, int, dt.datetime], window: Window) -> bool:
    source, kind, category, _, _ = row
    return (
        source == window.source
        and (not window.kinds or kind in window.kinds)
        and (not window.categories or category in window.categories)
    )


ZONES = ("Etc/UTC", "Asia/Shanghai", "America/New_York", "Europe/Madrid", "not a zone")
# Daylight-saving changes of 2026, in UTC: Madrid's an hour after a UTC midnight, so an hour either
# way moves the window's start across one.
CHANGES = (
    ("Europe/Madrid", dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC)),
    ("Europe/Madrid", dt.datetime(2026, 10, 25, 1, tzinfo=dt.UTC)),
    ("America/New_York", dt.datetime(2026, 3, 8, 7, tzinfo=dt.UTC)),
)


def _starts(now: dt.datetime, days: int, zone: str) -> list[dt.datetime]:
    """Where PostgreSQL may put the start of the window in `zone`."""
    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return [now - dt.timedelta(days=days) + shift for shift in (-HOUR, dt.timedelta(0), HOUR)]
    start = (now.astimezone(tz) - dt.timedelta(days=days)).astimezone(dt.UTC)
    near = any(
        (start + h * HOUR).astimezone(tz).utcoffset() != start.astimezone(tz).utcoffset() for h in (-3, 3)
    )
    return [start + shift for shift in (-HOUR, dt.timedelta(0), HOUR)] if near else [start]


def test_decided_members_are_right_whichever_hour_the_window_starts() -> None:
    rng = random.Random(25)
    for round_ in range(300):
        days = rng.choice([1, 14, 90])
        zone = rng.choice(ZONES)
        if round_ % 3 == 1:  # the start within hours of a daylight-saving change of its zone
            zone, change = rng.choice(CHANGES)
            now = change + dt.timedelta(days=days, hours=rng.uniform(-3, 3))
        elif round_ % 3 == 2:  # in summer, the start in winter, near a UTC midnight
            zone, days = "Europe/Madrid", 90
            now = dt.datetime(2026, 6, rng.randint(1, 25), tzinfo=dt.UTC) + dt.timedelta(
                hours=rng.uniform(-2, 2)
            )
        else:
            now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.uniform(0, 300 * 86400))
        rows = _rows(rng, now, days)
        windows = FactWindows()
        for source, kind, category, member, at in rows:
            windows.put(source, kind, category, member, at)
        window = Window(
            rng.choice([EVENTS, PURCHASES]),
            frozenset(rng.sample([CART, VIEW], rng.randint(0, 1))),
            frozenset(rng.sample(["skincare", "shoes"], rng.randint(0, 2))),
            rng.choice([days, None]),
        )
        inside, undecided = windows.split(window, now, zone)
        assert not inside & undecided
        for start in _starts(now, window.days, zone) if window.days else [None]:
            held = BitMap(
                member
                for row in rows
                if _matches(row, window)
                for _, _, _, member, at in [row]
                if at <= now and (start is None or at > start)
            )
            assert inside <= held
            assert held <= inside | undecided
        # Only the edges are left undecided: members with a matching row from today's start on, or
        # on the day of the window's start (in UTC, where nothing moves it), or within a day and
        # the margin of it.
        today = dt.datetime.fromtimestamp(fact_windows.day_of(now) * fact_windows.DAY, dt.UTC)
        edge = now - dt.timedelta(days=window.days) if window.days else None
        for member in undecided:
            times = [r[4] for r in rows if r[3] == member and _matches(r, window)]
            if edge is not None and zone == "Etc/UTC":
                near = [t for t in times if fact_windows.day_of(t) == fact_windows.day_of(edge)]
            else:
                near = [
                    t for t in times if edge is not None and abs(t - edge) < dt.timedelta(days=1, hours=2)
                ]
            assert near or any(t >= today for t in times), (member, times, zone)


def test_a_member_put_again_leaves_its_old_day() -> None:
    now = dt.datetime(2026, 6, 10, 12, tzinfo=dt.UTC)
    windows = FactWindows()
    windows.put(PURCHASES, 0, "shoes", 7, now - dt.timedelta(days=100))
    window = Window(PURCHASES, frozenset(), frozenset({"shoes"}), 90)
    assert windows.split(window, now) == (BitMap(), BitMap())
    windows.forget(BitMap([7]))
    windows.put(PURCHASES, 0, "shoes", 7, now - dt.timedelta(days=10))
    assert windows.split(window, now) == (BitMap([7]), BitMap())
    windows.forget(BitMap([7]))
    assert windows.split(window, now) == (BitMap(), BitMap())
    assert not list(windows.bitmaps())


async def test_the_start_is_where_postgresql_puts_it(db: Database) -> None:
    """`window_start` against PostgreSQL's own `now - N days` in each zone: exact where it claims
    to be, within its margin elsewhere (random moments, half of them hours from a change)."""
    rng = random.Random(7)
    async with db.transaction("fact-windows", readonly=True) as conn:
        for round_ in range(200):
            zone = rng.choice(ZONES[:-1])
            days = rng.choice([1, 14, 90, 365])
            if round_ % 2:
                _, change = rng.choice(CHANGES)
                now = change + dt.timedelta(days=days, hours=rng.uniform(-3, 3))
            else:
                now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                    seconds=rng.uniform(0, 365 * 86400)
                )
            await conn.execute(f"SET LOCAL TimeZone = '{zone}'")
            expected = await conn.fetchval("SELECT $1::timestamptz - make_interval(days => $2)", now, days)
            start, margin = fact_windows.window_start(now, days, zone)
            assert abs(start - expected.timestamp()) <= margin, (zone, now, days, expected, start, margin)
    assert fact_windows.window_start(now, 3, "not a zone")[1] == fact_windows.MARGIN
