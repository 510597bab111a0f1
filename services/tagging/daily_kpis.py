"""GetDailyKpis: orders, GMV, buyers, repeat buyers, new and active members and refunds per day in
a time zone (the console's overview and the KPI anomaly check). No gRPC, no SQL.

Facts count on their own day: an order on the day it was paid, whenever it was recorded (a
back-filled order counts on its paid day, not on the day it arrived).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime import zones
from runtime.db import Database
from runtime.errors import Violations
from services.tagging import kpi_store
from services.tagging.domain import EventKind

DEFAULT_ZONE = "Asia/Shanghai"
MAX_DAYS = 400
# The days a request may name: no shop kept member data before 2000 (as checks.EARLIEST), and the
# services take no request time after 2100.
FIRST_DAY = dt.date(2000, 1, 1)
LAST_DAY = dt.date(2100, 12, 31)
EVENT_KINDS = tuple(int(k) for k in EventKind if k is not EventKind.UNSPECIFIED)


@dataclass(frozen=True)
class DayKpis:
    date: dt.date
    orders: int
    gmv_minor: int
    buyers: int
    repeat_buyers: int
    new_members: int
    active_members: int
    refunds: int
    refund_minor: int


@dataclass(frozen=True)
class KpiRange:
    start: dt.date
    end: dt.date
    zone: dt.tzinfo


def checked_range(
    start: dt.date | None, end: dt.date | None, time_zone: str, violations: Violations
) -> KpiRange:
    """The range asked for; violations name `start_date`, `end_date` or `time_zone`. `start` or
    `end` is None when missing or not a date (the caller has said so already)."""
    zone = zones.zone(time_zone or DEFAULT_ZONE, violations, "time_zone")
    for field, day in (("start_date", start), ("end_date", end)):
        if day is not None and not FIRST_DAY <= day <= LAST_DAY:
            violations.add(field, f"must lie between {FIRST_DAY} and {LAST_DAY}")
    if start is not None and end is not None:
        if start > end:
            violations.add("end_date", "must not be before start_date")
        elif (end - start).days + 1 > MAX_DAYS:
            violations.add("end_date", f"must be at most {MAX_DAYS} days from start_date (both included)")
    violations.raise_if_any()
    assert start is not None and end is not None
    return KpiRange(start, end, zone)


class DailyKpis:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant_id: str, asked: KpiRange) -> list[DayKpis]:
        """One entry per day from start to end, days without activity included (zeros)."""
        days = [asked.start + dt.timedelta(days=i) for i in range((asked.end - asked.start).days + 1)]
        bounds = [zones.day_start(day, asked.zone) for day in [*days, days[-1] + dt.timedelta(days=1)]]
        async with self._db.transaction(tenant_id, readonly=True, snapshot=True, plans="custom") as conn:
            rows = await kpi_store.daily(conn, days, bounds[:-1], bounds[1:], EVENT_KINDS)
        return [DayKpis(**dict(row)) for row in rows]
