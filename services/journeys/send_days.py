"""GetDailySends: the message log by day of the zone asked, channel and outcome (the query is the
worker's, `workflows/journeys/daily_sends.py`, which the KPI anomaly check reads too)."""

from __future__ import annotations

from google.type import date_pb2
from memberops.journeys.v1 import journeys_service_pb2 as pb

from runtime import day_ranges
from runtime.db import Database
from workflows.journeys import daily_sends


async def answer(db: Database, tenant_id: str, request: pb.GetDailySendsRequest) -> pb.GetDailySendsResponse:
    """Only (day, channel, outcome) with messages, or InvalidArgument naming the field."""
    days = day_ranges.checked(request)
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await daily_sends.by_day(conn, days)
    return pb.GetDailySendsResponse(
        sends=[
            pb.DailySends(
                date=date_pb2.Date(year=r["day"].year, month=r["day"].month, day=r["day"].day),
                channel=r["channel"],
                outcome=r["outcome"],
                messages=r["messages"],
            )
            for r in rows
        ]
    )
