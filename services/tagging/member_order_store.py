"""SQL of a member's orders as a timeline: a page of orders newest paid first, and the lines and
refunds of a page's orders in three statements whatever the page's size. Every function runs on a
connection already inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from runtime.db import Connection
from services.tagging.domain import Order, OrderLine, Refund, RefundLine

_ORDER_COLUMNS = """order_id, member_id, paid_time, amount_minor, store, payment_method,
    refunded_amount_minor, record_time, coupon_codes"""
# Newest paid first, ties by order id; `after` the page's last order: older, or as old with a
# greater id.
_FIRST_PAGE = f"""SELECT {_ORDER_COLUMNS} FROM tagging.orders WHERE member_id = $1
    ORDER BY paid_time DESC, order_id LIMIT $2"""
_NEXT_PAGE = f"""SELECT {_ORDER_COLUMNS} FROM tagging.orders
    WHERE member_id = $1 AND paid_time <= $3 AND (paid_time < $3 OR order_id > $4)
    ORDER BY paid_time DESC, order_id LIMIT $2"""


async def orders_page(
    conn: Connection, member_id: str, after: tuple[dt.datetime, str] | None, limit: int
) -> list[Order]:
    """Up to `limit` of the member's orders after `after` (paid time, order id), with their lines."""
    if after is None:
        rows = await conn.fetch(_FIRST_PAGE, member_id, limit)
    else:
        rows = await conn.fetch(_NEXT_PAGE, member_id, limit, after[0], after[1])
    order_ids = [row["order_id"] for row in rows]
    lines: dict[str, list[OrderLine]] = {order_id: [] for order_id in order_ids}
    for line in await conn.fetch(
        """SELECT order_id, line_id, sku, category, brand, quantity, unit_price_minor
           FROM tagging.order_lines WHERE order_id = ANY($1::text[]) ORDER BY order_id, line_id""",
        order_ids,
    ):
        values = dict(line)
        lines[values.pop("order_id")].append(OrderLine(**values))
    orders = []
    for row in rows:
        values = {**dict(row), "coupon_codes": tuple(row["coupon_codes"] or ())}
        orders.append(Order(**values, lines=tuple(lines[row["order_id"]])))
    return orders


async def refunds_of(conn: Connection, order_ids: Sequence[str]) -> list[Refund]:
    """The refunds of these orders with their lines, oldest first (ties by refund id)."""
    rows = await conn.fetch(
        """SELECT refund_id, order_id, member_id, refund_time, amount_minor FROM tagging.refunds
           WHERE order_id = ANY($1::text[]) ORDER BY refund_time, refund_id""",
        list(order_ids),
    )
    refund_ids = [row["refund_id"] for row in rows]
    lines: dict[str, list[RefundLine]] = {refund_id: [] for refund_id in refund_ids}
    for line in await conn.fetch(
        """SELECT refund_id, line_id, quantity FROM tagging.refund_lines
           WHERE refund_id = ANY($1::text[]) ORDER BY refund_id, line_id""",
        refund_ids,
    ):
        lines[line["refund_id"]].append(RefundLine(line["line_id"], line["quantity"]))
    return [Refund(**dict(row), lines=tuple(lines[row["refund_id"]])) for row in rows]
