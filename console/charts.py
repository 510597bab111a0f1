"""Charts drawn on the server: an altair (Vega-Lite) spec rendered to SVG by vl-convert.

The page embeds the SVG as it is: the browser runs no script and fetches nothing, and vl-convert
renders in-process without any network (its Vega runtime ships inside the wheel). Rendering is
CPU work of a few tens of milliseconds, done in a thread so the event loop keeps serving; the
converter's first use starts its engine (most of a second), so `warm_up` runs at start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import vl_convert as vlc

WIDTH = 520
HEIGHT = 160
Row = Mapping[str, Any]


def _svg(chart: alt.TopLevelMixin) -> str:
    spec = chart.to_dict()
    return str(vlc.vegalite_to_svg(spec))


async def render(chart: alt.TopLevelMixin) -> str:
    return await asyncio.to_thread(_svg, chart)


async def warm_up() -> None:
    await render(lines([{"day": "2026-01-01", "series": "-", "value": 0}], title=""))


def lines(rows: Sequence[Row], *, title: str, percent: bool = False) -> alt.Chart:
    """One line per `series` over `day` (rows: day, series, value)."""
    y = alt.Y("value:Q", title=None, axis=alt.Axis(format=".0%") if percent else alt.Axis())
    chart: alt.Chart = (
        alt.Chart({"values": list(rows)}, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("day:T", title=None, axis=alt.Axis(format="%m-%d")),
            y=y,
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
        )
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


def rates_with_intervals(rows: Sequence[Row], *, title: str) -> alt.LayerChart:
    """Each arm's rate as a point with its 95 % interval (rows: arm, rate, low, high)."""
    base = alt.Chart({"values": list(rows)}, title=title).encode(y=alt.Y("arm:N", title=None, sort=None))
    interval = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("low:Q", title=None, axis=alt.Axis(format=".1%")), x2="high:Q"
    )
    point = base.mark_point(filled=True, size=80).encode(x="rate:Q")
    layered: alt.LayerChart = (interval + point).properties(width=WIDTH, height=max(40, 28 * len(rows)))
    return layered
