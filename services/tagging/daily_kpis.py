"""GetDailyKpis: orders, GMV, buyers, repeat buyers, new and active members and refunds per day in
a time zone (the console's overview and the KPI anomaly check). No gRPC, no SQL.

Facts count on their own day: an order on the day it was paid, whenever it was recorded (a
back-filled order counts on its paid day, not on the day it arrived).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime import zones
from runtime.day_ranges import DayRange
from runtime.db import Database
from services.tagging import kpi_store
from services.tagging.domain import EventKind

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


class DailyKpis:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant_id: str, asked: DayRange) -> list[DayKpis]:
        """One entry per day of the range, days without activity included (zeros)."""
        days = list(asked.days())
        bounds = [zones.day_start(day, asked.zone) for day in [*days, days[-1] + dt.timedelta(days=1)]]
        async with self._db.transaction(tenant_id, readonly=True, snapshot=True, plans="custom") as conn:
            rows = await kpi_store.daily(conn, days, bounds[:-1], bounds[1:], EVENT_KINDS)
        return [DayKpis(**dict(row)) for row in rows]
