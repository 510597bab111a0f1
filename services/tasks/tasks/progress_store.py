"""SQL of the progress of counted tasks: each member's measure, and the orders (with their lines)
each purchase task counted, so a refund takes back exactly what its order added. Runs inside
tenant transactions, after the members' accounts are locked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.db import Connection
from services.tasks.tasks.progress import CountedLine, CountedOrder

# --- measures ------------------------------------------------------------------------------------


async def measures(conn: Connection, member_id: str, cycles: Mapping[str, dt.date]) -> dict[str, int]:
    """The member's measure of each task (id to the first day of the cycle wanted)."""
    rows = await conn.fetch(
        """SELECT p.task_id, p.measure FROM tasks.progress p
           JOIN unnest($2::text[], $3::date[]) AS c(task_id, cycle_start)
             ON c.task_id = p.task_id AND c.cycle_start = p.cycle_start
           WHERE p.member_id = $1""",
        member_id,
        list(cycles),
        list(cycles.values()),
    )
    return {r["task_id"]: r["measure"] for r in rows}


async def add_measure(
    conn: Connection, tenant_id: str, task_id: str, member_id: str, cycle_start: dt.date, delta: int
) -> int:
    """Adds `delta` to the member's measure of the cycle (created at 0), locking the row; returns
    the new value."""
    value = await conn.fetchval(
        """INSERT INTO tasks.progress (tenant_id, task_id, member_id, cycle_start, measure)
           VALUES ($1, $2, $3, $5, greatest($4, 0))
           ON CONFLICT (tenant_id, task_id, member_id, cycle_start)
           DO UPDATE SET measure = greatest(tasks.progress.measure + $4, 0), update_time = now()
           RETURNING measure""",
        tenant_id,
        task_id,
        member_id,
        delta,
        cycle_start,
    )
    assert isinstance(value, int)
    return value


async def raise_measure(conn: Connection, tenant_id: str, task_id: str, member_id: str, value: int) -> int:
    """Raises the measure to at least `value` (visits, profiles: 1; never cycled), locking the row;
    returns it."""
    measure = await conn.fetchval(
        """INSERT INTO tasks.progress (tenant_id, task_id, member_id, measure) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, task_id, member_id, cycle_start)
           DO UPDATE SET measure = greatest(tasks.progress.measure, $4), update_time = now()
           RETURNING measure""",
        tenant_id,
        task_id,
        member_id,
        value,
    )
    assert isinstance(measure, int)
    return measure


# --- purchases -----------------------------------------------------------------------------------


async def insert_purchase(
    conn: Connection,
    tenant_id: str,
    task_id: str,
    member_id: str,
    order_id: str,
    paid_time: dt.datetime,
    amount_minor: int,
    lines: Sequence[CountedLine],
    cycle_start: dt.date,
) -> bool:
    """Records the order a purchase task counts in the cycle, with its matching lines; False if it
    was already."""
    created = await conn.fetchval(
        """WITH o AS (INSERT INTO tasks.purchase_orders (tenant_id, task_id, order_id, member_id, paid_time,
                                                         amount_minor, cycle_start)
                      VALUES ($1, $2, $3, $4, $5, $6, $10) ON CONFLICT DO NOTHING RETURNING order_id),
                l AS (INSERT INTO tasks.purchase_lines (tenant_id, task_id, order_id, line_id, quantity,
                                                        unit_price_minor)
                      SELECT $1, $2, o.order_id, x.line_id, x.quantity, x.price
                      FROM o, unnest($7::text[], $8::int[], $9::bigint[]) AS x(line_id, quantity, price))
           SELECT count(*) > 0 FROM o""",
        tenant_id,
        task_id,
        order_id,
        member_id,
        paid_time,
        amount_minor,
        [line.line_id for line in lines],
        [line.quantity for line in lines],
        [line.unit_price_minor for line in lines],
        cycle_start,
    )
    return bool(created)


@dataclass(frozen=True)
class Purchase:
    task_id: str
    member_id: str
    order_id: str
    paid_time: dt.datetime
    order: CountedOrder
    # The first day of the cycle the order counted in.
    cycle_start: dt.date


async def counted_orders(conn: Connection, order_ids: Sequence[str]) -> set[str]:
    """The orders among these that some purchase task counted."""
    rows = await conn.fetch(
        "SELECT DISTINCT order_id FROM tasks.purchase_orders WHERE order_id = ANY($1::text[])",
        list(order_ids),
    )
    return {r["order_id"] for r in rows}


async def purchases_of(conn: Connection, order_id: str) -> list[Purchase]:
    """Every task's count of the order, by task id. Only the follower writes these rows, and one
    follower of a tenant runs at a time (it holds the cursor's lock), so they need no lock."""
    orders = await conn.fetch(
        """SELECT task_id, member_id, paid_time, amount_minor, refunded_minor, cycle_start
           FROM tasks.purchase_orders
           WHERE order_id = $1 ORDER BY task_id""",
        order_id,
    )
    lines: dict[str, list[CountedLine]] = {}
    for r in await conn.fetch(
        """SELECT task_id, line_id, quantity, refunded, unit_price_minor FROM tasks.purchase_lines
           WHERE task_id = ANY($2::text[]) AND order_id = $1 ORDER BY task_id, line_id""",
        order_id,
        [o["task_id"] for o in orders],
    ):
        lines.setdefault(r["task_id"], []).append(
            CountedLine(r["line_id"], r["quantity"], r["refunded"], r["unit_price_minor"])
        )
    return [
        Purchase(
            o["task_id"],
            o["member_id"],
            order_id,
            o["paid_time"],
            CountedOrder(o["amount_minor"], o["refunded_minor"], tuple(lines.get(o["task_id"], ()))),
            o["cycle_start"],
        )
        for o in orders
    ]


async def save_refunded(conn: Connection, task_id: str, order_id: str, order: CountedOrder) -> None:
    await conn.execute(
        """WITH l AS (UPDATE tasks.purchase_lines p SET refunded = x.refunded
                      FROM unnest($3::text[], $4::int[]) AS x(line_id, refunded)
                      WHERE p.task_id = $1 AND p.order_id = $2 AND p.line_id = x.line_id)
           UPDATE tasks.purchase_orders SET refunded_minor = $5 WHERE task_id = $1 AND order_id = $2""",
        task_id,
        order_id,
        [line.line_id for line in order.lines],
        [line.refunded for line in order.lines],
        order.refunded_minor,
    )
