"""Leaderboards: members ranked by the points they earned in a week or a month.

Earned means tasks and orders, net of their reversals; spending, expiry and operator corrections
do not move anyone on a board. Ranks are competition ranks (1, 1, 3): equal points share a place.
Periods are calendar weeks (from Monday) or months in the asked time zone.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from runtime import zones
from runtime.db import Database
from runtime.errors import Violations
from services.tasks import time_span
from services.tasks.points import leaderboard_store, ledger

DEFAULT_TOP = 10
MAX_TOP = 100


class Period(enum.IntEnum):
    """The numbers of memberops.tasks.v1.LeaderboardPeriod."""

    WEEK = 1
    MONTH = 2


@dataclass(frozen=True)
class Place:
    member_id: str
    points: int
    rank: int


@dataclass(frozen=True)
class Board:
    start: dt.datetime
    end: dt.datetime
    top: list[Place]
    member: Place | None  # None when no member was asked; rank 0 when they earned nothing


def period_bounds(period: Period, at: dt.datetime, zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) of the calendar week or month holding `at`, in `zone`."""
    local = at.astimezone(zone).date()
    if period is Period.WEEK:
        first = local - dt.timedelta(days=local.weekday())
        after = first + dt.timedelta(days=7)
    else:
        first = local.replace(day=1)
        after = (first + dt.timedelta(days=32)).replace(day=1)
    return zones.day_start(first, zone), zones.day_start(after, zone)


class Leaderboards:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def board(
        self, tenant_id: str, period: int, at: dt.datetime, time_zone: str, top_n: int, member_id: str
    ) -> Board:
        v = Violations()
        if period not in set(Period):
            v.add("period", "must be LEADERBOARD_PERIOD_WEEK or LEADERBOARD_PERIOD_MONTH")
        if not 0 <= top_n <= MAX_TOP:
            v.add("top_n", f"must be between 1 and {MAX_TOP} (0 means {DEFAULT_TOP})")
        ledger.check_member_id(v, "member_id", member_id, required=False)
        time_span.within(at, v, "at")
        zone = zones.zone(time_zone, v, "time_zone")
        v.raise_if_any()
        start, end = period_bounds(Period(period), at, zone)
        size = top_n or DEFAULT_TOP
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await leaderboard_store.leaderboard(conn, start, end, size, member_id)
        places = [Place(row["member_id"], int(row["points"]), int(row["rank"])) for row in rows]
        own = None
        if member_id:
            own = next((p for p in places if p.member_id == member_id), Place(member_id, 0, 0))
        return Board(start, end, [p for p in places if p.rank <= size], own)
