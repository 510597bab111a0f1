"""A dimension's distribution week by week, for trend charts (the Tags page and the overview).

Each weekly point is one `GetTagStats(as_of)` call (tagging reads the values members held then
from tag history); the calls run at the same time. Points fall at the end of a day in the
console's zone (the start of the next day), so a page drawn again the same day asks the same
moments and draws the same chart (charts are cached by their data); the last point is now.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

import altair as alt
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import tagging_service_pb2

from console import charts, render
from console.clients import Caller, Outcome

WEEK = dt.timedelta(weeks=1)


def moments(today: dt.date, weeks: int) -> list[tuple[str, dt.datetime | None]]:
    """(day label, as_of) of each weekly point, oldest first: the end of `today` minus k weeks
    for k = weeks-1 .. 1, then today itself as now (as_of None)."""
    end_of_today = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), render.TIME_ZONE)
    points: list[tuple[str, dt.datetime | None]] = [
        ((today - k * WEEK).isoformat(), end_of_today - k * WEEK) for k in range(weeks - 1, 0, -1)
    ]
    return [*points, (today.isoformat(), None)]


async def weekly(
    call: Caller, dimensions: Sequence[str], weeks: int, today: dt.date
) -> Outcome[list[tuple[str, tagging_service_pb2.GetTagStatsResponse]]]:
    """Each weekly point's day and counts, or the first problem one of the calls met."""

    def request(as_of: dt.datetime | None) -> tagging_service_pb2.GetTagStatsRequest:
        message = tagging_service_pb2.GetTagStatsRequest(dimensions=list(dimensions))
        if as_of is not None:
            stamp = Timestamp()
            stamp.FromDatetime(as_of)
            message.as_of.CopyFrom(stamp)
        return message

    points = moments(today, weeks)
    outcomes = await asyncio.gather(
        *(call.attempt("tagging", "GetTagStats", request(as_of)) for _, as_of in points)
    )
    for outcome in outcomes:
        if outcome.problem is not None:
            return Outcome(problem=outcome.problem)
    return Outcome(value=[(day, outcome.reply) for (day, _), outcome in zip(points, outcomes, strict=True)])


def rows(
    points: Sequence[tuple[str, tagging_service_pb2.GetTagStatsResponse]], dimension: str
) -> list[dict[str, Any]]:
    """Line-chart rows (day, series = value, members holding it) of one dimension."""
    return [
        {"day": day, "series": value.value, "value": value.member_count}
        for day, reply in points
        for counted in reply.dimensions
        if counted.dimension == dimension
        for value in counted.values
    ]


# Legend entries per row: RFM's eight segments in one row made the chart twice the page's width.
LEGEND_COLUMNS = 4


def chart(trend_rows: Sequence[dict[str, Any]]) -> alt.Chart:
    """The trend as charts.lines draws it, values in the order given (the definition's), the
    legend in rows of a few entries."""
    order = list(dict.fromkeys(row["series"] for row in trend_rows))
    legend = alt.Legend(orient="bottom", columns=LEGEND_COLUMNS)
    drawn: alt.Chart = charts.lines(trend_rows, title="").encode(
        color=alt.Color("series:N", title=None, sort=order, legend=legend)
    )
    return drawn
