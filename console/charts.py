"""Charts drawn on the server: an altair (Vega-Lite) spec rendered to SVG by vl-convert.

The page embeds the SVG as it is: the browser runs no script and fetches nothing, and vl-convert
renders in-process without any network (its Vega runtime ships inside the wheel). Rendering is
CPU work of about 30 ms a chart, done in a thread of its own so the event loop keeps serving: one
thread for every chart, since the converter's engine is made per thread and parallel threads
contend (6 charts took 470 ms in parallel, 190 ms in turn). A drawn chart is kept by the hash of its spec
(its data and labels), so a page shown again over unchanged data draws nothing. The converter's
first use starts its engine (most of a second), so `warm_up` runs at start-up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import vl_convert as vlc

WIDTH = 460
HEIGHT = 160
Row = Mapping[str, Any]


# Drawn SVGs (10-30 kB each) by the hash of their spec, least recently used dropped first.
CACHE_SIZE = 256
_drawn: OrderedDict[str, str] = OrderedDict()
_drawn_lock = threading.Lock()  # pages draw in worker threads


def _svg(chart: alt.TopLevelMixin) -> str:
    spec = chart.to_dict(validate=False)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    with _drawn_lock:
        svg = _drawn.get(key)
        if svg is not None:
            _drawn.move_to_end(key)
            return svg
    svg = str(vlc.vegalite_to_svg(spec))
    with _drawn_lock:
        _drawn[key] = svg
        while len(_drawn) > CACHE_SIZE:
            _drawn.popitem(last=False)
    return svg


def _svgs(charts: Sequence[alt.TopLevelMixin]) -> list[str]:
    return [_svg(chart) for chart in charts]


# The one thread every chart is drawn in: the converter's engine is made once per thread (a chart
# drawn in a thread that had drawn none took 300 ms more), and charts drawn in parallel threads
# contend anyway.
_drawer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-charts")


async def render(chart: alt.TopLevelMixin) -> str:
    return await asyncio.get_running_loop().run_in_executor(_drawer, _svg, chart)


async def render_all(charts: Sequence[alt.TopLevelMixin]) -> list[str]:
    """The charts' SVGs in order, drawn in turn in the drawing thread."""
    return await asyncio.get_running_loop().run_in_executor(_drawer, _svgs, charts)


WARM_UP_ROUNDS = 4
_warmed: list[bool] = []  # the engine is the process's: warmed once (tests start many consoles)


async def warm_up() -> None:
    """Draws charts of each kind at a page's size, Chinese labels included, a few rounds over:
    the converter's engine gets faster over its first dozens of charts (a first overview of eight
    charts drew in 330-420 ms after one tiny warm-up chart, a later one in 130-160 ms)."""
    if _warmed:
        return
    drawn: list[alt.TopLevelMixin] = []
    for round_ in range(WARM_UP_ROUNDS):
        days = [f"2026-0{round_ + 1}-{day:02d}" for day in range(1, 29)]
        names = (f"会员{round_}", f"member {round_}")
        series = [{"day": day, "series": name, "value": i} for i, day in enumerate(days) for name in names]
        single = [row for row in series if row["series"] == names[1]]
        labels = [{"label": f"标签 {round_}-{i}", "value": i} for i in range(8)]
        rates = [
            {"arm": f"{arm}{round_}", "rate": 0.5, "low": 0.4, "high": 0.6} for arm in ("treated", "对照")
        ]
        drawn += [
            lines(series, title=""),
            lines(single, title="", percent=True),
            stacked_bars(series, title=""),
            bars(labels, title=""),
            rates_with_intervals(rates, title=f"转化率 {round_}"),
        ]
    await render_all(drawn)
    with _drawn_lock:
        _drawn.clear()  # none of them is a real page's
    _warmed.append(True)


def lines(rows: Sequence[Row], *, title: str, percent: bool = False) -> alt.Chart:
    """One line per `series` over `day` (rows: day, series, value); a legend only with several
    series. No point marks: they doubled the drawing time."""
    y = alt.Y("value:Q", title=None, axis=alt.Axis(format=".0%") if percent else alt.Axis())
    encoding: dict[str, Any] = {"x": alt.X("day:T", title=None, axis=alt.Axis(format="%m-%d")), "y": y}
    if len({row["series"] for row in rows}) > 1:
        encoding["color"] = alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom"))
    chart: alt.Chart = (
        alt.Chart({"values": list(rows)}, title=title)
        .mark_line()
        .encode(**encoding)
        .properties(width=WIDTH, height=HEIGHT)
    )
    return chart


def stacked_bars(rows: Sequence[Row], *, title: str) -> alt.Chart:
    """Bars per `day` stacked by `series` (rows: day, series, value)."""
    chart: alt.Chart = (
        alt.Chart({"values": list(rows)}, title=title)
        .mark_bar()
        .encode(
            x=alt.X("day:T", title=None, axis=alt.Axis(format="%m-%d")),
            y=alt.Y("value:Q", title=None, stack="zero"),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
        )
        .properties(width=WIDTH, height=HEIGHT)
    )
    return chart


def bars(rows: Sequence[Row], *, title: str) -> alt.Chart:
    """Horizontal bars, one per `label` in the order given (rows: label, value)."""
    chart: alt.Chart = (
        alt.Chart({"values": list(rows)}, title=title)
        .mark_bar()
        .encode(y=alt.Y("label:N", title=None, sort=None), x=alt.X("value:Q", title=None))
        .properties(width=WIDTH - 80, height=max(40, 22 * len(rows)))
    )
    return chart


def rates_with_intervals(rows: Sequence[Row], *, title: str) -> alt.LayerChart:
    """Each arm's rate as a point with its 95 % interval (rows: arm, rate, low, high)."""
    base = alt.Chart({"values": list(rows)}, title=title).encode(y=alt.Y("arm:N", title=None, sort=None))
    interval = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("low:Q", title=None, axis=alt.Axis(format=".1%")), x2="high:Q"
    )
    point = base.mark_point(filled=True, size=80).encode(x="rate:Q")
    layered: alt.LayerChart = (interval + point).properties(width=WIDTH, height=max(40, 28 * len(rows)))
    return layered
