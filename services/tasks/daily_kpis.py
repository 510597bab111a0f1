"""GetDailyKpis of the tasks service: per day of a zone, sign-ins (and the members signing in) and
points credited and redeemed, every day of the range present (zeros included), so a chart or
the KPI anomaly check never mistakes a missing day for a gap in the data."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime.day_ranges import DayRange
from runtime.db import Database
from services.tasks import daily_kpi_store


@dataclass(frozen=True)
class DailyKpis:
    day: dt.date
    sign_ins: int = 0
    sign_in_members: int = 0
    points_issued: int = 0
    points_redeemed: int = 0


class DailyKpiReader:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def days(self, tenant_id: str, days: DayRange) -> list[DailyKpis]:
        async with self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn:
            signed = daily_kpi_store.by_day(await daily_kpi_store.sign_ins(conn, days))
            points = daily_kpi_store.by_day(await daily_kpi_store.points(conn, days))
        answer = []
        for day in days.days():
            s, p = signed.get(day), points.get(day)
            answer.append(
                DailyKpis(
                    day,
                    sign_ins=s["sign_ins"] if s else 0,
                    sign_in_members=s["members"] if s else 0,
                    points_issued=p["issued"] if p else 0,
                    points_redeemed=p["redeemed"] if p else 0,
                )
            )
        return answer
