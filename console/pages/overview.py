"""The overview: the last weeks' KPIs as charts (orders and GMV, new and active members, the
repeat-purchase rate, points issued and redeemed, sends by channel and outcome) and the anomalies
the daily check flagged. Each chart's call may fail on its own; its place then says why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import altair as alt
import structlog
from aiohttp import web
from google.type import date_pb2
from memberops.journeys.v1 import journeys_service_pb2
from memberops.tagging.v1 import tagging_service_pb2
from memberops.tasks.v1 import tasks_service_pb2

from console import charts, i18n, render, session, tag_trends
from console.clients import Outcome, caller

log = structlog.get_logger("console")
DAYS = 28
ZONE = "Asia/Shanghai"
# Current members per value of these dimensions (tagging's built-in lifecycle and RFM tags).
SEGMENT_DIMENSIONS = {"lifecycle": "overview.lifecycle", "rfm_segment": "overview.rfm"}
# Their members per value week by week (GetTagStats as_of, from tag history), drawn under them.
TREND_WEEKS = 8
SEGMENT_TRENDS = {"lifecycle": "overview.lifecycle_trend", "rfm_segment": "overview.rfm_trend"}


def _date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def _rows(days: Any, series: dict[str, Callable[[Any], float]]) -> list[dict[str, Any]]:
    return [
        {"day": render.day(d.date), "series": label, "value": value(d)}
        for d in days
        for label, value in series.items()
    ]


# (label key, the call it comes from, its SVG or "" when there is nothing to draw or the call failed)
Panel = tuple[str, Outcome[Any], str]
# (label key, its chart or None when there is nothing to draw), planned from one call's answer
Planned = list[tuple[str, alt.TopLevelMixin | None]]


async def _panels(
    pending: Awaitable[Outcome[Any]], plan: Callable[[Outcome[Any]], Planned], answered: list[float]
) -> tuple[Outcome[Any], list[Panel]]:
    """One call's panels, their charts drawn as soon as it answers: drawing (in the drawing
    processes) overlaps the calls still running instead of waiting for the slowest of them."""
    outcome = await pending
    answered.append(time.perf_counter())
    planned = plan(outcome)
    if outcome.problem is not None:
        return outcome, [(key, outcome, "") for key, _ in planned[:1]]  # one message for its charts
    svgs = iter(await charts.render_all([chart for _, chart in planned if chart is not None]))
    return outcome, [(key, outcome, next(svgs) if chart is not None else "") for key, chart in planned]


def _shop(t: Callable[..., str], shop: Outcome[Any]) -> Planned:
    days = shop.value.days if shop.value is not None else []
    return [
        ("overview.orders", charts.lines(_rows(days, {t("kpi.orders"): lambda d: d.orders}), title="")),
        ("overview.gmv", charts.lines(_rows(days, {t("kpi.gmv"): lambda d: d.gmv_minor / 100}), title="")),
        (
            "overview.members",
            charts.lines(
                _rows(
                    days,
                    {
                        t("kpi.new_members"): lambda d: d.new_members,
                        t("kpi.active_members"): lambda d: d.active_members,
                    },
                ),
                title="",
            ),
        ),
        (
            "overview.repeat",
            charts.lines(
                _rows(
                    days, {t("kpi.repeat_rate"): lambda d: d.repeat_buyers / d.buyers if d.buyers else 0.0}
                ),
                title="",
                percent=True,
            ),
        ),
    ]


def _points(t: Callable[..., str], tasks: Outcome[Any]) -> Planned:
    points = tasks.value.days if tasks.value is not None else []
    series = {
        t("kpi.points_issued"): lambda d: d.points_issued,
        t("kpi.points_redeemed"): lambda d: d.points_redeemed,
    }
    return [("overview.points", charts.lines(_rows(points, series), title=""))]


def _sends(sends: Outcome[Any]) -> Planned:
    rows = [
        {"day": render.day(s.date), "series": f"{s.channel} · {s.outcome}", "value": s.messages}
        for s in (sends.value.sends if sends.value is not None else [])
    ]
    return [("overview.sends", charts.stacked_bars(rows, title="") if rows else None)]


def _segments(stats: Outcome[Any]) -> Planned:
    counted = {d.dimension: d for d in stats.value.dimensions} if stats.value is not None else {}
    planned: Planned = []
    for dimension, key in SEGMENT_DIMENSIONS.items():
        values = (
            [{"label": v.value, "value": v.member_count} for v in counted[dimension].values]
            if dimension in counted
            else []
        )
        planned.append((key, charts.bars(values, title="") if values else None))
    return planned


def _trends(trend: Outcome[Any]) -> Planned:
    planned: Planned = []
    for dimension, key in SEGMENT_TRENDS.items():
        trend_rows = tag_trends.rows(trend.value, dimension) if trend.value is not None else []
        planned.append((key, tag_trends.chart(trend_rows) if trend_rows else None))
    return planned


async def show(request: web.Request) -> web.Response:
    t = i18n.translator(session.language_of(request))
    today = dt.datetime.now(render.TIME_ZONE).date()
    start, end = _date(today - dt.timedelta(days=DAYS - 1)), _date(today)
    call = caller(request)
    started = time.perf_counter()
    answered: list[float] = []
    shop, points, sends, segments, trends, anomalies = await asyncio.gather(
        _panels(
            call.attempt(
                "tagging",
                "GetDailyKpis",
                tagging_service_pb2.GetDailyKpisRequest(start_date=start, end_date=end, time_zone=ZONE),
            ),
            lambda outcome: _shop(t, outcome),
            answered,
        ),
        _panels(
            call.attempt(
                "tasks",
                "GetDailyKpis",
                tasks_service_pb2.GetDailyKpisRequest(start_date=start, end_date=end, time_zone=ZONE),
            ),
            lambda outcome: _points(t, outcome),
            answered,
        ),
        _panels(
            call.attempt(
                "journeys",
                "GetDailySends",
                journeys_service_pb2.GetDailySendsRequest(start_date=start, end_date=end, time_zone=ZONE),
            ),
            _sends,
            answered,
        ),
        _panels(
            call.attempt(
                "tagging",
                "GetTagStats",
                tagging_service_pb2.GetTagStatsRequest(dimensions=list(SEGMENT_DIMENSIONS)),
            ),
            _segments,
            answered,
        ),
        _panels(tag_trends.weekly(call, list(SEGMENT_TRENDS), TREND_WEEKS, today), _trends, answered),
        call.attempt("journeys", "ListAnomalies", journeys_service_pb2.ListAnomaliesRequest(page_size=50)),
    )
    panels = [panel for _, group in (shop, points, sends, segments, trends) for panel in group]
    finished = time.perf_counter()
    log.info(
        "console_overview",
        calls_ms=round((max(answered) - started) * 1000, 1),
        charts=sum(1 for _, _, svg in panels if svg),
        # the drawing left once the last chart's call answered (the rest overlapped the calls)
        draw_ms=round((finished - max(answered)) * 1000, 1),
    )
    stats = segments[0]
    return render.page(
        request,
        "overview.html",
        days=DAYS,
        zone=ZONE,
        panels=panels,
        members_total=stats.value.member_count if stats.value is not None else None,
        anomalies=anomalies,
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/overview", show)
