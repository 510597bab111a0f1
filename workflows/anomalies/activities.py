"""The anomaly check's activities: the clock and the KPIs in, the flags out.

The KPIs come from the services that own them (tagging's and tasks' GetDailyKpis, as the tenant);
the send failure rate from the message log of the worker's own schema, read by the query that
GetDailySends answers from (`workflows/journeys/daily_sends.py`): the worker owns that schema,
a gRPC hop to the journeys service would read the same rows.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.type import date_pb2
from memberops.tagging.v1 import tagging_service_pb2
from memberops.tasks.v1 import tasks_service_pb2
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime import zones
from runtime.day_ranges import DayRange
from runtime.db import Database
from workflows import service_calls
from workflows.anomalies import stats, store
from workflows.anomalies.payloads import FETCH_SERIES, STORE_FINDINGS, Series, SeriesRequest, StoreRequest
from workflows.journeys import daily_sends

CALL_TIMEOUT_SECONDS = 60.0
# A range the services answer in one call (at most day_ranges.MAX_DAYS days, history included).
MAX_DAYS_CHECKED = 92


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def _day(message: date_pb2.Date) -> dt.date:
    return dt.date(message.year, message.month, message.day)


def failure_rates(rows: Any) -> dict[dt.date, float]:
    """(failed + unknown) / answered per day with answered sends."""
    answered: defaultdict[dt.date, int] = defaultdict(int)
    failed: defaultdict[dt.date, int] = defaultdict(int)
    for row in rows:
        if row["outcome"] in daily_sends.ANSWERED:
            answered[row["day"]] += row["messages"]
        if row["outcome"] in daily_sends.FAILED:
            failed[row["day"]] += row["messages"]
    return {day: failed[day] / n for day, n in answered.items() if n}


class AnomalyActivities:
    def __init__(
        self,
        db: Database,
        tagging: Any,
        tasks: Any,
        token_for_tenant: service_calls.TokenForTenant,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._db = db
        self._tagging = tagging
        self._tasks = tasks
        self._token_for_tenant = token_for_tenant
        self._clock = clock

    def all(self) -> list[object]:
        return [self.fetch_series, self.store_findings]

    @activity.defn(name=FETCH_SERIES)
    async def fetch_series(self, request: SeriesRequest) -> Series:
        """Every KPI's days from MAX_WEEKS weeks before the first checked day to the last (by
        default yesterday in the zone, by this activity's clock)."""
        zone = zones.find(request.time_zone)
        if zone is None:
            raise ApplicationError(f"unknown time zone {request.time_zone!r}", non_retryable=True)
        if not 1 <= request.days <= MAX_DAYS_CHECKED:
            raise ApplicationError(f"days must be 1-{MAX_DAYS_CHECKED}", non_retryable=True)
        last = (
            _iso_day(request.last_day)
            if request.last_day
            else zones.local_day(self._clock(), zone) - dt.timedelta(days=1)
        )
        first_checked = last - dt.timedelta(days=request.days - 1)
        days = DayRange(stats.history_start(first_checked), last, zone, request.time_zone)
        metadata = service_calls.metadata(self._token_for_tenant, request.tenant_id)
        start, end, zone_name = _date(days.first), _date(days.last), request.time_zone
        try:
            tagging = await self._tagging.GetDailyKpis(
                tagging_service_pb2.GetDailyKpisRequest(start_date=start, end_date=end, time_zone=zone_name),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            tasks = await self._tasks.GetDailyKpis(
                tasks_service_pb2.GetDailyKpisRequest(start_date=start, end_date=end, time_zone=zone_name),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise service_calls.permanent("GetDailyKpis", error) from error
        async with self._db.transaction(request.tenant_id, readonly=True) as conn:
            rates = failure_rates(await daily_sends.by_day(conn, days))
        found: dict[str, dict[dt.date, float]] = {
            "orders": {_day(d.date): d.orders for d in tagging.days},
            "gmv": {_day(d.date): d.gmv_minor for d in tagging.days},
            "new_members": {_day(d.date): d.new_members for d in tagging.days},
            "sign_ins": {_day(d.date): d.sign_ins for d in tasks.days},
            "send_failure_rate": rates,
        }
        return Series(
            days.first.isoformat(),
            first_checked.isoformat(),
            last.isoformat(),
            {kpi: _in_order(values, days) for kpi, values in found.items()},
        )

    @activity.defn(name=STORE_FINDINGS)
    async def store_findings(self, request: StoreRequest) -> int:
        """Writes the flags of the checked days (a retry or a re-run rewrites the same rows)."""
        now = self._clock()
        found = [
            store.Anomaly(
                f.kpi,
                dt.date.fromisoformat(f.day),
                f.value,
                f.baseline,
                f.robust_z,
                f.direction,
                f.history_days,
                now,
            )
            for f in request.findings
        ]
        async with self._db.transaction(request.tenant_id) as conn:
            return await store.replace_days(
                conn,
                request.tenant_id,
                dt.date.fromisoformat(request.first_checked),
                dt.date.fromisoformat(request.last_day),
                found,
            )


def _in_order(values: Mapping[dt.date, float], days: DayRange) -> list[float | None]:
    return [float(values[day]) if day in values else None for day in days.days()]


def _iso_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ApplicationError(
            f"last_day must be a date YYYY-MM-DD, got {text[:40]!r}", non_retryable=True
        ) from None
