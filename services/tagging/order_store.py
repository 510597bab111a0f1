"""SQL of orders and refunds with their lines, and the digests that make their retries idempotent.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import asyncpg

from runtime.db import Connection
from runtime.errors import AlreadyExists, NotFound
from services.tagging.domain import Order, OrderInput, OrderLine, OrderState, Refund, RefundLine


async def insert_order(conn: Connection, tenant_id: str, order: OrderInput, digest: str) -> int | None:
    """Inserts the order and its lines; returns its number among the member's orders (1 for the
    first one recorded), or None when an order with that id exists already.

    The count is of the orders the statement's snapshot sees (RETURNING does not see the row it
    inserts): two first orders of one member committing concurrently may both be number 1."""
    try:
        number: int | None = await conn.fetchval(
            """INSERT INTO tagging.orders
                   (tenant_id, order_id, member_id, paid_time, amount_minor, store, payment_method,
                    content_hash, coupon_codes)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (tenant_id, order_id) DO NOTHING
               RETURNING (SELECT count(*) + 1 FROM tagging.orders o
                          WHERE o.tenant_id = $1 AND o.member_id = $3)""",
            tenant_id,
            order.order_id,
            order.member_id,
            order.paid_time,
            order.amount_minor,
            order.store,
            order.payment_method,
            digest,
            list(order.coupon_codes) or None,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(
            f"order.member_id: members/{order.member_id} not found; upsert the member first"
        ) from None
    if number is None:
        return None
    # One statement, so the purchase-recency trigger fires once and upserts the member's categories
    # in key order: line by line, two orders listing categories in opposite order would deadlock.
    await conn.execute(
        """INSERT INTO tagging.order_lines
               (tenant_id, order_id, line_id, member_id, paid_time, sku, category, brand, quantity,
                unit_price_minor)
           SELECT $1, $2, l.line_id, $3, $4, l.sku, l.category, l.brand, l.quantity, l.unit_price_minor
           FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::int[], $10::bigint[])
                AS l(line_id, sku, category, brand, quantity, unit_price_minor)""",
        tenant_id,
        order.order_id,
        order.member_id,
        order.paid_time,
        [line.line_id for line in order.lines],
        [line.sku for line in order.lines],
        [line.category for line in order.lines],
        [line.brand for line in order.lines],
        [line.quantity for line in order.lines],
        [line.unit_price_minor for line in order.lines],
    )
    return number


async def order_hash(conn: Connection, order_id: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT content_hash FROM tagging.orders WHERE order_id = $1", order_id
    )
    return value


async def get_order(conn: Connection, order_id: str) -> Order | None:
    row = await conn.fetchrow(
        """SELECT order_id, member_id, paid_time, amount_minor, store, payment_method,
                  refunded_amount_minor, record_time, coupon_codes
           FROM tagging.orders WHERE order_id = $1""",
        order_id,
    )
    if row is None:
        return None
    lines = await conn.fetch(
        """SELECT line_id, sku, category, brand, quantity, unit_price_minor
           FROM tagging.order_lines WHERE order_id = $1 ORDER BY line_id""",
        order_id,
    )
    return Order(
        order_id=row["order_id"],
        member_id=row["member_id"],
        paid_time=row["paid_time"],
        amount_minor=row["amount_minor"],
        lines=tuple(OrderLine(**dict(line)) for line in lines),
        store=row["store"],
        payment_method=row["payment_method"],
        refunded_amount_minor=row["refunded_amount_minor"],
        record_time=row["record_time"],
        coupon_codes=tuple(row["coupon_codes"] or ()),
    )


async def lock_order_state(conn: Connection, order_id: str) -> OrderState | None:
    row = await conn.fetchrow(
        """SELECT order_id, member_id, paid_time, amount_minor, refunded_amount_minor
           FROM tagging.orders WHERE order_id = $1 FOR UPDATE""",
        order_id,
    )
    if row is None:
        return None
    lines = await conn.fetch(
        "SELECT line_id, quantity, refunded_quantity FROM tagging.order_lines WHERE order_id = $1", order_id
    )
    return OrderState(
        order_id=row["order_id"],
        member_id=row["member_id"],
        paid_time=row["paid_time"],
        amount_minor=row["amount_minor"],
        refunded_amount_minor=row["refunded_amount_minor"],
        bought={line["line_id"]: line["quantity"] for line in lines},
        refunded={line["line_id"]: line["refunded_quantity"] for line in lines},
    )


async def refund_hash(conn: Connection, refund_id: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT content_hash FROM tagging.refunds WHERE refund_id = $1", refund_id
    )
    return value


async def insert_refund(conn: Connection, tenant_id: str, refund: Refund, digest: str) -> None:
    """Records the refund and takes its lines and amount off the order."""
    try:
        await conn.execute(
            """INSERT INTO tagging.refunds
                   (tenant_id, refund_id, order_id, member_id, refund_time, amount_minor, content_hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            tenant_id,
            refund.refund_id,
            refund.order_id,
            refund.member_id,
            refund.refund_time,
            refund.amount_minor,
            digest,
        )
    except asyncpg.UniqueViolationError:
        # The same refund id arrived at the same moment for another order.
        raise AlreadyExists(
            f"refunds/{refund.refund_id} was recorded before with different content"
        ) from None
    lines = [(tenant_id, refund.refund_id, line.line_id, line.quantity) for line in refund.lines]
    await conn.executemany(
        "INSERT INTO tagging.refund_lines (tenant_id, refund_id, line_id, quantity) VALUES ($1, $2, $3, $4)",
        lines,
    )
    await conn.execute(
        """UPDATE tagging.order_lines AS l SET refunded_quantity = l.refunded_quantity + r.quantity
           FROM unnest($2::text[], $3::int[]) AS r(line_id, quantity)
           WHERE l.order_id = $1 AND l.line_id = r.line_id""",
        refund.order_id,
        [line.line_id for line in refund.lines],
        [line.quantity for line in refund.lines],
    )
    await conn.execute(
        "UPDATE tagging.orders SET refunded_amount_minor = refunded_amount_minor + $2 WHERE order_id = $1",
        refund.order_id,
        refund.amount_minor,
    )


async def get_refund(conn: Connection, refund_id: str) -> Refund | None:
    row = await conn.fetchrow(
        """SELECT refund_id, order_id, member_id, refund_time, amount_minor
           FROM tagging.refunds WHERE refund_id = $1""",
        refund_id,
    )
    if row is None:
        return None
    lines = await conn.fetch(
        "SELECT line_id, quantity FROM tagging.refund_lines WHERE refund_id = $1 ORDER BY line_id", refund_id
    )
    return Refund(**dict(row), lines=tuple(RefundLine(**dict(line)) for line in lines))
