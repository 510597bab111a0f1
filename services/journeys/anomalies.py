"""ListAnomalies: the days the KPI anomaly check flagged (workflows/anomalies/), newest first."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from google.protobuf import timestamp_pb2
from google.type import date_pb2
from memberops.journeys.v1 import journeys_service_pb2 as pb

from runtime import day_ranges, page_tokens, zones
from runtime.db import Database
from runtime.errors import InvalidArgument, Violations
from workflows.anomalies import store
from workflows.anomalies.payloads import DEFAULT_TIME_ZONE, KPIS

DEFAULT_PAGE = 100
MAX_PAGE = 1000
DEFAULT_DAYS = 30
_SCOPE = "anomalies"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def _after(token: str) -> tuple[dt.date, str] | None:
    keys = page_tokens.decode(token, _SCOPE, (str, str))
    if keys is None:
        return None
    day, kpi = keys
    assert isinstance(day, str) and isinstance(kpi, str)
    try:
        return dt.date.fromisoformat(day), kpi
    except ValueError:
        raise InvalidArgument.field("page_token", "is not a token this list returned") from None


def checked(request: pb.ListAnomaliesRequest, today: dt.date) -> tuple[dt.date, dt.date]:
    """The days asked: unset start and end mean the DEFAULT_DAYS days up to today; one of them
    unset means DEFAULT_DAYS days from or to the other."""
    v = Violations()
    first, last = (
        day_ranges.optional_day(request, "start_date", v),
        day_ranges.optional_day(request, "end_date", v),
    )
    if request.kpi and request.kpi not in KPIS:
        v.add("kpi", f"must be empty or one of {', '.join(KPIS)}")
    if first is not None and last is not None and last < first:
        v.add("end_date", "must not be before start_date")
    v.raise_if_any()
    span = dt.timedelta(days=DEFAULT_DAYS - 1)
    if first is None:
        last = last or today
        first = last - span
    elif last is None:
        last = min(first + span, day_ranges.LATEST)
    return first, last


def to_message(a: store.Anomaly) -> pb.Anomaly:
    detected = timestamp_pb2.Timestamp()
    detected.FromDatetime(a.detect_time)
    return pb.Anomaly(
        date=_date(a.day),
        kpi=a.kpi,
        value=a.value,
        baseline=a.baseline,
        robust_z=a.robust_z,
        direction=a.direction,
        history_days=a.history_days,
        detect_time=detected,
    )


async def answer(
    db: Database, tenant_id: str, request: pb.ListAnomaliesRequest, clock: Callable[[], dt.datetime]
) -> pb.ListAnomaliesResponse:
    today = zones.local_day(clock(), zones.zone(DEFAULT_TIME_ZONE, Violations(), "time_zone"))
    first, last = checked(request, today)
    size = page_tokens.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
    after = _after(request.page_token)
    async with db.transaction(tenant_id, readonly=True) as conn:
        found = await store.page(conn, first, last, request.kpi, after, size + 1)
    reply = pb.ListAnomaliesResponse(anomalies=[to_message(a) for a in found[:size]])
    if len(found) > size:
        reply.next_page_token = page_tokens.encode(
            _SCOPE, found[size - 1].day.isoformat(), found[size - 1].kpi
        )
    return reply
