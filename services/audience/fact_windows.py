"""Tagging's recency summaries (tagging migration 0012) as bitmaps of member numbers, per UTC day,
so "carted skincare in the last 14 days" or "bought none in 90" is a union of a few bitmaps in
memory instead of a read of every such member out of PostgreSQL (issue 25).

A summary holds, per member, the time of their latest fact of each (event kind, category), and of
each category bought (a line not wholly returned). Here each summary is a `Series`: the members
holding a row of it, and a bitmap per UTC day of the row's time. A summary test is the window
(now - N days, now] over the series it names; `split` answers it in three parts:

- *inside*: members with a row on a day wholly inside the window: the test holds for them;
- *undecided*: members with a row on the day of the window's start, today, or later (a fact dated
  after the evaluation time hides the ones before it: the statement then asks the raw facts). The
  compiled statement tests these members alone. PostgreSQL subtracts the N days in the session's
  time zone (`zone`), a calendar day being 23 or 25 hours across a daylight-saving change, so the
  start is computed in that zone too; within hours of a change (where the two might settle a local
  time that does not exist, or exists twice, differently), or in a zone Python does not know, the
  start is taken `MARGIN` either way, leaving up to a day more undecided;
- everyone else: no row in the window, so the test fails for them.

Pure: the index (`bitmaps.py`) loads the series and re-reads a member's rows when the feed says its
facts changed (`forget` then `put`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pyroaring import BitMap

DAY = 86_400
MARGIN_HOURS = 2
MARGIN = MARGIN_HOURS * 3600

EVENTS = "event"
PURCHASES = "purchase"


@dataclass(frozen=True)
class Window:
    """A summary test: facts of `source` (EVENTS or PURCHASES) of one of `kinds` (events only;
    empty: any) in one of `categories` (empty: any), in the `days` before the evaluation time
    (None: any time up to it)."""

    source: str
    kinds: frozenset[int]
    categories: frozenset[str]
    days: int | None


class Series:
    """One summary's members by the UTC day of their row's time."""

    __slots__ = ("days", "held")

    def __init__(self) -> None:
        self.held = BitMap()
        self.days: dict[int, BitMap] = {}

    def add(self, day: int, numbers: Iterable[int]) -> None:
        found = self.days.get(day)
        if found is None:
            self.days[day] = found = BitMap()
        found.update(numbers)
        self.held.update(numbers)

    def forget(self, numbers: BitMap) -> None:
        """Drops `numbers` from every day (a set operation per day that holds one of them)."""
        gone = self.held & numbers
        if not gone:
            return
        self.held -= gone
        for day in [d for d, held in self.days.items() if held.intersect(gone)]:
            left = self.days[day]
            left -= gone
            if not left:
                del self.days[day]


# (source, event kind or 0 for purchases, category)
Key = tuple[str, int, str]


class FactWindows:
    """Every series of one tenant."""

    def __init__(self) -> None:
        self._series: dict[Key, Series] = {}

    def load(self, source: str, kind: int, category: str, day: int, numbers: Sequence[int]) -> None:
        self._series_of((source, kind, category)).add(day, numbers)

    def put(self, source: str, kind: int, category: str, number: int, at: dt.datetime) -> None:
        """The member's row of that summary holds `at` (call `forget` for the member first)."""
        self._series_of((source, kind, category)).add(day_of(at), (number,))

    def forget(self, numbers: BitMap) -> None:
        """Drops these members from every series, before their rows are put again."""
        for key in list(self._series):
            series = self._series[key]
            series.forget(numbers)
            if not series.held:
                del self._series[key]

    def split(self, window: Window, now: dt.datetime, zone: str = "") -> tuple[BitMap, BitMap]:
        """(inside, undecided) as the module says, the window drawn in the time zone `zone` (a
        PostgreSQL session's TimeZone); undecided holds no member of inside."""
        today = day_of(now)
        start, margin = window_start(now, window.days, zone) if window.days else (None, 0)
        # Days wholly inside: after the window's start (plus the margin), before today.
        first_in = int((start + margin) // DAY) + 1 if start is not None else None
        # Days wholly before the window's start (less the margin).
        last_out = int((start - margin) // DAY) - 1 if start is not None else None
        inside: list[BitMap] = []
        undecided: list[BitMap] = []
        for series in self._matching(window):
            for day, held in series.days.items():
                if last_out is not None and day <= last_out:
                    continue
                if day < today and (first_in is None or day >= first_in):
                    inside.append(held)
                else:
                    undecided.append(held)
        sure = BitMap.union(BitMap(), *inside)
        return sure, BitMap.union(BitMap(), *undecided) - sure

    def optimize(self) -> None:
        for series in self._series.values():
            series.held.run_optimize()
            for held in series.days.values():
                held.run_optimize()

    def bitmaps(self) -> Iterator[BitMap]:
        """Every bitmap held (for the index's memory figure)."""
        for series in self._series.values():
            yield from itertools.chain((series.held,), series.days.values())

    def days(self) -> Iterator[tuple[Key, int, BitMap]]:
        """(series, day, members) of every day held."""
        for key, series in self._series.items():
            for day, held in series.days.items():
                yield key, day, held

    def _matching(self, window: Window) -> Iterator[Series]:
        for (source, kind, category), series in self._series.items():
            if source != window.source:
                continue
            if window.kinds and kind not in window.kinds:
                continue
            if window.categories and category not in window.categories:
                continue
            yield series

    def _series_of(self, key: Key) -> Series:
        found = self._series.get(key)
        if found is None:
            self._series[key] = found = Series()
        return found


def window_start(now: dt.datetime, days: int, zone: str) -> tuple[float, int]:
    """(the start of the `days` before `now` as PostgreSQL computes `now - N days` in the session
    zone `zone`, in epoch seconds; how far it may be off): exact unless a daylight-saving change is
    within hours of it or the zone is unknown here."""
    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        return now.timestamp() - days * DAY, MARGIN
    # Aware arithmetic in Python moves the wall clock, as PostgreSQL does with calendar days.
    start = now.astimezone(tz) - dt.timedelta(days=days)
    offsets = {(start + dt.timedelta(hours=h)).utcoffset() for h in (-MARGIN_HOURS, 0, MARGIN_HOURS)}
    return start.timestamp(), 0 if len(offsets) == 1 else MARGIN


def day_of(at: dt.datetime) -> int:
    """The UTC day number of `at` (days since 1970-01-01), as the loading statement computes it."""
    return int(at.timestamp() // DAY)
