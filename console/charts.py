"""Charts drawn on the server: an altair (Vega-Lite) spec rendered to SVG by vl-convert.

The page embeds the SVG as it is: the browser runs no script and fetches nothing, and vl-convert
renders in-process without any network (its Vega runtime ships inside the wheel). Rendering is
CPU work of 10-30 ms a chart that holds the GIL, so it is done in processes of its own (see
`DRAWERS`) while the event loop keeps serving. A drawn chart is kept by the hash of its spec (its
data and labels), so a page shown again over unchanged data draws nothing. An engine's first use
starts it (most of a second) and it speeds up over its first dozens of charts, so `warm_up` runs
at start-up.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import hashlib
import json
import multiprocessing
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import vl_convert as vlc

WIDTH = 460
HEIGHT = 160
Row = Mapping[str, Any]
# A label a week on time axes: the engine measures every tick label's text, and the label every
# other day it picked for 28 days made most of a line chart's drawing time (24 ms -> about 14 ms).
DAY_AXIS = alt.Axis(format="%m-%d", tickCount={"interval": "week", "step": 1})
# No truncation of axis and legend labels (dates, figures, tag values: all short): truncating
# measures each label's text once more, a quarter of a chart's drawing time.
CONFIG = {"axis": {"labelLimit": 0}, "legend": {"labelLimit": 0}}


# Drawn SVGs (10-30 kB each) by the hash of their spec, least recently used dropped first. Only
# the event loop's thread touches it.
CACHE_SIZE = 256
_drawn: OrderedDict[str, str] = OrderedDict()

# The processes that draw. The converter holds the GIL while it draws (a thread spinning beside it
# ran 30 times in 0.74 s instead of ~10,000), so drawing in a thread stopped the event loop: no
# call's answer was read meanwhile. In processes of their own the loop keeps serving and a page's
# charts are drawn while its other calls still run, split over two engines where there are two
# cores (the first overview on the demo data: about 280 ms in one, 255 ms in two, median of six
# on a busy machine). Each process warms its engine when it starts.
DRAWERS = 2
_pool: list[concurrent.futures.ProcessPoolExecutor] = []


def _drawers() -> concurrent.futures.ProcessPoolExecutor:
    if not _pool:
        _pool.append(
            concurrent.futures.ProcessPoolExecutor(
                max_workers=DRAWERS, mp_context=multiprocessing.get_context("spawn"), initializer=_warm
            )
        )
        # Registered after the pool's own exit hook (multiprocessing's, which joins the processes
        # without telling them to stop), so it runs before it: exit hooks run last first.
        atexit.register(_close)
    return _pool[0]


def _close() -> None:
    """Stops the drawing processes, so the process can exit."""
    for pool in _pool:
        pool.shutdown(wait=True, cancel_futures=True)
    _pool.clear()


def _draw(specs: Sequence[dict[str, Any]]) -> list[str]:
    """In a drawing process: the specs' SVGs."""
    return [str(vlc.vegalite_to_svg(spec, config=CONFIG)) for spec in specs]


def _ready() -> None:
    """In a drawing process: nothing, once it has started and warmed its engine."""


async def _draw_apart(specs: Sequence[dict[str, Any]]) -> list[str]:
    """The specs' SVGs, split over the drawing processes. A pool whose process died (killed for
    memory) is replaced, so the next page draws again."""
    loop = asyncio.get_running_loop()
    pool = _drawers()
    share = -(-len(specs) // DRAWERS)
    parts = [specs[i : i + share] for i in range(0, len(specs), share)]
    try:
        drawn = await asyncio.gather(*(loop.run_in_executor(pool, _draw, part) for part in parts))
    except concurrent.futures.process.BrokenProcessPool:
        if _pool and _pool[0] is pool:
            _pool.clear()
        raise
    return [svg for part in drawn for svg in part]


async def render_all(charts: Sequence[alt.TopLevelMixin]) -> list[str]:
    """The charts' SVGs in order: the ones drawn before from the same data and labels as they
    were, the others drawn in the drawing processes."""
    specs = [chart.to_dict(validate=False) for chart in charts]
    keys = [hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest() for spec in specs]
    missing = {key: spec for key, spec in zip(keys, specs, strict=True) if key not in _drawn}
    if missing:
        for key, svg in zip(missing, await _draw_apart(list(missing.values())), strict=True):
            _drawn[key] = svg
    svgs = []
    for key in keys:
        _drawn.move_to_end(key)
        svgs.append(_drawn[key])
    while len(_drawn) > CACHE_SIZE:
        _drawn.popitem(last=False)
    return svgs


async def render(chart: alt.TopLevelMixin) -> str:
    (svg,) = await render_all([chart])
    return svg


WARM_UP_ROUNDS = 4


async def warm_up() -> None:
    """Starts the drawing processes, each warming its engine (`_warm`), and waits until they are.
    The pool starts a process per task while none is idle, so one task each starts them all."""
    loop = asyncio.get_running_loop()
    pool = _drawers()
    await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(DRAWERS)))


def _warm() -> None:
    """In a drawing process, as it starts: charts of every kind the pages draw, at a page's size,
    Chinese labels and legends included, a few rounds over. An engine's first chart takes most of
    a second and it gets faster over its first dozens (a first overview of eight charts drew in
    330-420 ms after one tiny warm-up chart, a later one in 130-160 ms)."""
    drawn: list[alt.TopLevelMixin] = []
    for round_ in range(WARM_UP_ROUNDS):
        days = [f"2026-0{round_ + 1}-{day:02d}" for day in range(1, 29)]
        names = (f"会员{round_}", f"member {round_}")
        series = [{"day": day, "series": name, "value": i} for i, day in enumerate(days) for name in names]
        single = [row for row in series if row["series"] == names[1]]
        labels = [{"label": f"标签 {round_}-{i}", "value": i} for i in range(8)]
        weekly = [
            {"day": days[7 * (i % 4)], "series": f"分群 {round_}-{s}", "value": i + s}
            for i in range(8)
            for s in range(8)
        ]
        rates = [
            {"arm": f"{arm}{round_}", "rate": 0.5, "low": 0.4, "high": 0.6} for arm in ("treated", "对照")
        ]
        drawn += [
            lines(series, title=""),
            lines(single, title="", percent=True),
            # as console/tag_trends.py draws a dimension's weeks: eight values, a legend in rows
            lines(weekly, title="").encode(
                color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", columns=4))
            ),
            stacked_bars(series, title=""),
            bars(labels, title=""),
            rates_with_intervals(rates, title=f"转化率 {round_}"),
        ]
    _draw([chart.to_dict(validate=False) for chart in drawn])


def lines(rows: Sequence[Row], *, title: str, percent: bool = False) -> alt.Chart:
    """One line per `series` over `day` (rows: day, series, value); a legend only with several
    series. No point marks: they doubled the drawing time."""
    y = alt.Y("value:Q", title=None, axis=alt.Axis(format=".0%") if percent else alt.Axis())
    encoding: dict[str, Any] = {"x": alt.X("day:T", title=None, axis=DAY_AXIS), "y": y}
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
            x=alt.X("day:T", title=None, axis=DAY_AXIS),
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
