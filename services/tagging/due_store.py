"""SQL of the members due in a recompute: those for whom time alone may have changed a dimension's
value since its previous recompute. Every function runs on a connection inside a tenant transaction.

A fact's own moments (its time plus one of the dimension's offsets, recompute_timing.Timing) need
no state: the members due are those with a fact whose moment passed between the previous recompute
and this one, a range of the facts' time index (`due_members`). Moments that depend on all of a
member's facts or on their profile (the latest order, the mean gap, registration, birthday, a count
falling through a threshold, a category's latest line) are stored per member in
tagging.recompute_due (migration 0025) by the recompute that evaluated them (`store_due`).

Both are early by SLACK rather than ever late: window ends are calendar days (`make_interval(days =>
N)`, which a daylight-saving change moves by an hour) while offsets are added as whole days of
seconds. A stored moment is SLACK early; a passed range reaches SLACK before the previous recompute
and SLACK after this one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from runtime.db import Connection
from services.tagging.models import COUNTED_ORDERS, KEPT_LINE, MAX_VALUE
from services.tagging.recompute_timing import Repurchase, Timing

SLACK = dt.timedelta(hours=2)
# The statement's parameters: the evaluation time, it less SLACK (the earliest moment that still
# counts), the members (NULL: all), the tenant, the dimension, and per offset the earliest fact time
# it still counts for (constants, so the planner folds them: per row only a comparison remains).
_NOW = "$1::timestamptz"
_EARLIEST = "$2::timestamptz"
_MEMBERS = "$3::text[]"
_BOUNDS = "$6::timestamptz[]"


def _only(column: str) -> str:
    return f" AND ({_MEMBERS} IS NULL OR {column} = ANY({_MEMBERS}))"


def _days(days: int) -> str:
    return f"make_interval(secs => {int(days)} * 86400.0)"


class _Bounds:
    """The offsets a statement compares fact times with, each its own parameter slot."""

    def __init__(self) -> None:
        self.offsets: list[int] = []

    def since(self, days: int) -> str:
        """The earliest fact time whose moment `time + days` still counts."""
        if days not in self.offsets:
            self.offsets.append(days)
        return f"({_BOUNDS})[{self.offsets.index(days) + 1}]"

    def values(self, now: dt.datetime) -> list[dt.datetime]:
        return [now - SLACK - dt.timedelta(days=d) for d in self.offsets]


def _counted(where: str) -> str:
    """The counted orders (models.COUNTED_ORDERS) at the evaluation time, `where` further
    restricting them (SQL starting with AND), of the members chosen."""
    return f"({COUNTED_ORDERS.format(now=_NOW)}{where}{_only('o.member_id')}) AS c"


def _latest_order_sql(offsets: frozenset[int], bounds: _Bounds) -> str:
    """Per member, the latest counted order (models.COUNTED_ORDERS) plus the first offset ahead. Only
    orders recent enough for some offset to lie ahead are read: an older latest one has none."""
    terms = ", ".join(
        f"CASE WHEN x.last_paid > {bounds.since(d)} THEN x.last_paid + {_days(d)} END"
        for d in sorted(offsets)
    )
    return f"""SELECT x.member_id, least({terms}) AS due
        FROM (SELECT c.member_id, max(c.paid_time) AS last_paid
              FROM {_counted(f" AND o.paid_time > {bounds.since(max(offsets))}")}
              GROUP BY c.member_id) AS x"""


def _registration_sql(offsets: frozenset[int]) -> str:
    terms = ", ".join(
        f"CASE WHEN m.register_time + {_days(d)} > {_EARLIEST} THEN m.register_time + {_days(d)} END"
        for d in sorted(offsets)
    )
    return (
        f"SELECT m.member_id, least({terms}) AS due FROM tagging.members m WHERE true{_only('m.member_id')}"
    )


# The day before the next birthday as the session's calendar has it (the age compares
# `now::date`); a day early covers 29 February. A birthday ahead of now (bad data) is due at once.
_BIRTHDAY = f"""SELECT m.member_id,
        CASE WHEN m.birthday > {_NOW}::date THEN {_NOW}
             ELSE (m.birthday + make_interval(
                 years => date_part('year', age({_NOW}::date, m.birthday))::int + 1, days => -1))::timestamptz
        END AS due
    FROM tagging.members m WHERE m.birthday IS NOT NULL{_only("m.member_id")}"""


def _repurchase_sql(r: Repurchase) -> str:
    """The repurchase model's flip: the last counted order plus the mean gap between the counted
    orders times the tolerance (models._repurchase_due), for members with enough of them."""
    window = (
        f" AND o.paid_time > {_NOW} - make_interval(days => {int(r.window_days)})" if r.window_days else ""
    )
    return f"""SELECT a.member_id,
            a.last_paid + make_interval(secs => a.gap * {int(r.tolerance_percent)} / 100.0) AS due
        FROM (SELECT c.member_id, max(c.paid_time) AS last_paid,
                     extract(epoch FROM max(c.paid_time) - min(c.paid_time)) / (count(*) - 1) AS gap
              FROM {_counted(window)}
              GROUP BY c.member_id HAVING count(*) >= {int(r.min_orders)}) AS a"""


def _order_counts_sql(days: int, counts: frozenset[int]) -> str:
    """Per member, when the window's count of counted orders (as rules/_compiler.py counts them)
    first falls from one of `counts`: the i-th oldest of n leaves with the count falling from
    n - i + 1. Orders sharing a time leave together, at that time."""
    listed = ", ".join(str(int(m)) for m in sorted(counts))
    return f"""SELECT x.member_id, min(x.paid_time) FILTER (WHERE x.n - x.i + 1 IN ({listed})) + {_days(days)}
            AS due
        FROM (SELECT c.member_id, c.paid_time,
                     row_number() OVER (PARTITION BY c.member_id ORDER BY c.paid_time) AS i,
                     count(*) OVER (PARTITION BY c.member_id) AS n
              FROM {_counted(f" AND o.paid_time > {_NOW} - make_interval(days => {int(days)})")}) AS x
        GROUP BY x.member_id"""


def _category_exits_sql(days: int) -> str:
    """Per member, when the first category bought leaves the window: its latest kept line's time
    plus the window (models._kept_lines reads the same lines)."""
    return f"""SELECT x.member_id, min(x.latest) + {_days(days)} AS due
        FROM (SELECT l.member_id, max(l.paid_time) AS latest FROM tagging.order_lines l
              WHERE l.paid_time <= {_NOW} AND l.paid_time > {_NOW} - make_interval(days => {int(days)})
                AND {KEPT_LINE}{_only("l.member_id")}
              GROUP BY l.member_id, left(l.category, {MAX_VALUE})) AS x
        GROUP BY x.member_id"""


def _due_sql(timing: Timing, bounds: _Bounds) -> str:
    """`(member_id, due_at)` of every member with a kept moment ahead (parameters as above); no
    rows when the dimension keeps none (Timing.kept)."""
    parts: list[str] = []
    if timing.latest_order:
        parts.append(_latest_order_sql(timing.latest_order, bounds))
    if timing.registration:
        parts.append(_registration_sql(timing.registration))
    if timing.birthday:
        parts.append(_BIRTHDAY)
    if timing.repurchase is not None:
        parts.append(_repurchase_sql(timing.repurchase))
    parts.extend(_order_counts_sql(days, counts) for days, counts in sorted(timing.order_counts))
    parts.extend(_category_exits_sql(days) for days in sorted(timing.category_exits))
    if not parts:
        never = f"{_EARLIEST} + ({_NOW} - {_EARLIEST})"
        return f"SELECT NULL::text AS member_id, {never} AS due_at WHERE {_MEMBERS} IS NULL AND false"
    union = "\n    UNION ALL ".join(f"({part})" for part in parts)
    return f"""SELECT c.member_id, min(c.due) - ({_NOW} - {_EARLIEST}) AS due_at FROM ({union}) AS c
    WHERE c.due > {_EARLIEST} GROUP BY c.member_id"""


async def store_due(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    timing: Timing,
    now: dt.datetime,
    member_ids: Sequence[str] | None = None,
) -> int:
    """Makes the dimension's stored moments of these members (None: every member) those of their
    facts now; returns how many rows changed. Only differences are written, so a recompute of
    everyone rewrites only the moments that moved. A dimension that keeps no moments holds none
    (rows an earlier release stored for fact offsets are dropped)."""
    if not timing.kept:
        return await forget(conn, dimension)
    bounds = _Bounds()
    fresh = _due_sql(timing, bounds)
    sql = f"""
WITH fresh AS ({fresh}),
stored AS (
    SELECT r.member_id, r.due_at FROM tagging.recompute_due r
    WHERE r.dimension = $5::text{_only("r.member_id")}
),
diff AS (
    SELECT coalesce(f.member_id, s.member_id) AS member_id, f.due_at
    FROM fresh f FULL JOIN stored s ON s.member_id = f.member_id
    WHERE f.due_at IS DISTINCT FROM s.due_at
),
removed AS (
    DELETE FROM tagging.recompute_due r
    WHERE r.dimension = $5::text
      AND r.member_id = ANY(ARRAY(SELECT x.member_id FROM diff x WHERE x.due_at IS NULL))
    RETURNING 1
),
written AS (
    INSERT INTO tagging.recompute_due AS r (tenant_id, dimension, member_id, due_at)
    SELECT $4::text, $5::text, x.member_id, x.due_at FROM diff x WHERE x.due_at IS NOT NULL
    ON CONFLICT (tenant_id, dimension, member_id) DO UPDATE SET due_at = excluded.due_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM removed) + (SELECT count(*) FROM written)
    + 0 * coalesce(cardinality({_BOUNDS}), 0)"""
    members = list(member_ids) if member_ids is not None else None
    args = [now, now - SLACK, members, tenant_id, dimension, bounds.values(now)]
    return int(await conn.fetchval(sql, *args))


async def due_members(
    conn: Connection, dimension: str, timing: Timing, since: dt.datetime, now: dt.datetime
) -> list[str]:
    """The members whose moment in the dimension came after its recompute at `since`, by `now`."""
    sql: list[str] = []
    args: list[object] = []

    def passed(table: str, column: str, offsets: frozenset[int], only: str = "") -> None:
        for days in sorted(offsets):
            at = dt.timedelta(days=days)
            args.extend([since - SLACK - at, now + SLACK - at])
            low, high = len(args) - 1, len(args)
            sql.append(
                f"SELECT x.member_id FROM {table} x WHERE x.{column} > ${low}::timestamptz"
                f" AND x.{column} <= ${high}::timestamptz{only}"
            )

    passed("tagging.orders", "paid_time", timing.orders)
    if timing.events:
        kinds = timing.event_kinds
        only = f" AND x.kind IN ({', '.join(str(int(k)) for k in sorted(kinds))})" if kinds else ""
        passed("tagging.events", "occur_time", timing.events, only)
    if timing.kept:
        args.extend([dimension, now])
        sql.append(
            f"SELECT r.member_id FROM tagging.recompute_due r"
            f" WHERE r.dimension = ${len(args) - 1}::text AND r.due_at <= ${len(args)}::timestamptz"
        )
    if not sql:
        return []
    rows = await conn.fetch("\nUNION ".join(sql), *args)
    return [row["member_id"] for row in rows]


async def forget(conn: Connection, dimension: str) -> int:
    """Drops the dimension's stored moments (a population model's, or one that keeps none);
    returns how many there were."""
    status = await conn.execute("DELETE FROM tagging.recompute_due WHERE dimension = $1", dimension)
    return int(status.split()[-1])


async def member_count(conn: Connection) -> int:
    """The tenant's members: what a share of members evaluated incrementally is measured against."""
    return int(await conn.fetchval("SELECT count(*) FROM tagging.members"))
