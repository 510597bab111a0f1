"""Breakdowns of an audience: who its members are by a tag dimension, when they order (local weekday
and hour) and how their buying moves week by week — the seed's questions ("which segment stopped
buying at weekends", "whose orders fell after the redesign").

Membership is evaluated now, with the audience's current version, in the same statement as the
figures, so sizes and figures always agree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime import zones
from runtime.db import Database
from runtime.errors import InvalidArgument, Violations
from services.audience import definitions, store
from services.audience.evaluation import Evaluator, Target

MAX_WEEKS = 520
MAX_WINDOW_DAYS = 3650


@dataclass(frozen=True)
class ByTag:
    dimension: str


@dataclass(frozen=True)
class ByOrderTime:
    time_zone: str = ""  # empty: UTC
    window_days: int = 0  # 0: all history


@dataclass(frozen=True)
class Weekly:
    start: dt.date | None
    end: dt.date | None
    time_zone: str = ""
    dimension: str = ""
    value: str = ""


Breakdown = ByTag | ByOrderTime | Weekly


@dataclass(frozen=True)
class TagCounts:
    values: list[tuple[str, int]]  # most members first, then by value
    without_value: int


@dataclass(frozen=True, order=True)
class OrderTimeCell:
    weekday: int  # ISO: 1 Monday … 7 Sunday
    hour: int
    orders: int
    members: int


@dataclass(frozen=True, order=True)
class WeekFigures:
    week_start: dt.date
    buyers: int
    orders: int
    gmv_minor: int


@dataclass(frozen=True)
class Result:
    member_count: int
    version: int
    tags: TagCounts | None = None
    order_times: list[OrderTimeCell] | None = None
    weeks: list[WeekFigures] | None = None


class Breakdowns:
    def __init__(self, db: Database, evaluator: Evaluator) -> None:
        self._db = db
        self._evaluator = evaluator

    async def breakdown(
        self, tenant_id: str, target: Target, by: Breakdown | None, now: dt.datetime
    ) -> Result:
        """`target`: a saved audience's id, or an unsaved rule (version 0)."""
        if by is None:
            raise InvalidArgument.field("by", "is required: one of tag, order_time, weekly")
        validate(by)
        async with self._evaluator.read_transaction(tenant_id) as conn:
            dimension = by.dimension if isinstance(by, ByTag | Weekly) else ""
            if dimension:
                known = await store.tag_dimensions(conn, [dimension])
                if dimension not in known or known[dimension]["state"] != definitions.ACTIVE:
                    path = "tag.dimension" if isinstance(by, ByTag) else "weekly.dimension"
                    raise InvalidArgument.field(path, f"unknown or retired tag dimension {dimension!r}")
            loaded = await self._evaluator.load_evaluated(conn, tenant_id, target, now)
            members_sql, args = loaded.compiled.members_sql(), loaded.compiled.args(now)
            if isinstance(by, ByTag):
                rows = await store.tag_breakdown(conn, members_sql, args, by.dimension)
                size = next(int(r["n"]) for r in rows if r["part"] == 0)
                without = next(int(r["n"]) for r in rows if r["part"] == 1)
                values = sorted(((r["value"], int(r["n"])) for r in rows if r["part"] == 2), key=_most_first)
                return Result(size, loaded.version, tags=TagCounts(values, without))
            if isinstance(by, ByOrderTime):
                size, cells = await store.order_time_breakdown(
                    conn, members_sql, args, by.time_zone or "UTC", by.window_days
                )
                times = sorted(
                    OrderTimeCell(r["weekday"], r["hour"], int(r["orders"]), int(r["members"])) for r in cells
                )
                return Result(size, loaded.version, order_times=times)
            assert by.start is not None and by.end is not None, "validate() requires both"
            tag = (by.dimension, by.value) if by.dimension else None
            size, rows = await store.weekly_breakdown(
                conn, members_sql, args, monday_of(by.start), monday_of(by.end), by.time_zone or "UTC", tag
            )
            weeks = sorted(
                WeekFigures(r["week"], int(r["buyers"]), int(r["orders"]), int(r["gmv"])) for r in rows
            )
            return Result(size, loaded.version, weeks=weeks)


def _most_first(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def monday_of(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def validate(by: Breakdown) -> None:
    v = Violations()
    if isinstance(by, ByTag):
        if not by.dimension:
            v.add("tag.dimension", "is required")
    elif isinstance(by, ByOrderTime):
        _check_zone(by.time_zone, v, "order_time.time_zone")
        if not 0 <= by.window_days <= MAX_WINDOW_DAYS:
            v.add("order_time.window_days", f"must be between 1 and {MAX_WINDOW_DAYS} (0 means all history)")
    else:
        _check_zone(by.time_zone, v, "weekly.time_zone")
        if by.start is None:
            v.add("weekly.start_date", "is required (a full date)")
        if by.end is None:
            v.add("weekly.end_date", "is required (a full date)")
        if by.start is not None and by.end is not None:
            if by.end < by.start:
                v.add("weekly.end_date", "must not be before start_date")
            elif (monday_of(by.end) - monday_of(by.start)).days // 7 + 1 > MAX_WEEKS:
                v.add("weekly.end_date", f"the range may span at most {MAX_WEEKS} weeks")
        if bool(by.dimension) != bool(by.value):
            v.add("weekly.value" if by.dimension else "weekly.dimension", "dimension and value go together")
    v.raise_if_any()


def _check_zone(name: str, v: Violations, path: str) -> None:
    if not name:
        return
    if zones.find(name) is None:
        v.add(path, f"unknown time zone {name[: zones.MAX_NAME]!r}")
