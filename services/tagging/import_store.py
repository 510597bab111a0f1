"""SQL of the fact imports (ImportOrders, ImportRefunds, ImportEvents): one batch COPYed into
temporary tables, then a few set-based statements. Every function runs on a connection already
inside a tenant transaction.

Rows are inserted in key order and conflicts do nothing, so two imports of overlapping batches
wait for each other's keys instead of deadlocking, and the second finds the first's rows stored.
Every feed entry written here carries `backfilled: true`: imported facts are history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runtime.db import Connection
from services.tagging.domain import FeedKind


@dataclass(frozen=True)
class Stored:
    """What one batch's statement stored: how many facts, and the members they touched."""

    count: int
    member_ids: list[str]


async def _staging(conn: Connection, table: str, columns: str, records: Sequence[tuple[Any, ...]]) -> None:
    """A temporary table for this transaction, filled by one COPY."""
    await conn.execute(f"CREATE TEMP TABLE {table} ({columns}) ON COMMIT DROP")
    await conn.copy_records_to_table(table, records=records, columns=_names(columns))


def _names(columns: str) -> list[str]:
    return [c.split()[0] for c in columns.split(",")]


async def first_unknown_member(conn: Connection, table: str) -> tuple[int, list[str]] | None:
    """The index of the first row of staging `table` naming a member tagging does not know, and up
    to five such members; None when every member is known."""
    rows = await conn.fetch(
        f"""SELECT i.member_id, min(i.n) AS n FROM pg_temp.{table} i
            WHERE NOT EXISTS (SELECT 1 FROM tagging.members m WHERE m.member_id = i.member_id)
            GROUP BY i.member_id ORDER BY n LIMIT 5"""
    )
    if not rows:
        return None
    return rows[0]["n"], sorted(r["member_id"] for r in rows)


# The import refreshes its members itself, marking the changes backfilled; the service's sweeper,
# which refreshes rows left owed this long (a crashed import), would not mark them, so a new row is
# left to it only after this grace (a loaded machine's refresh of a batch may take seconds).
SWEEP_GRACE = "interval '5 minutes'"


def _queued(source: str, time: str) -> str:
    """CTE `queued`: the members of `source` owed a refresh of inputs $2, dated by their earliest
    fact (`time`), merged as refresh_store.queue_refresh merges (the earliest time is kept)."""
    return f"""queued AS (
    INSERT INTO tagging.refresh_queue AS q (tenant_id, member_id, inputs, fact_time, queued_at)
    SELECT $1, member_id, $2::int, min({time}), now() + {SWEEP_GRACE} FROM {source}
    GROUP BY member_id ORDER BY member_id
    ON CONFLICT (tenant_id, member_id)
    DO UPDATE SET inputs = q.inputs | excluded.inputs, seq = nextval('tagging.refresh_queue_seq'),
                  fact_time = least(q.fact_time, excluded.fact_time)
    RETURNING member_id
)"""


# Orders and their lines, each order's feed entry (numbered among the member's orders: those stored
# before this statement, then the batch's by paid time) and the members' owed refresh, dated by
# their earliest order of the batch. One statement, so nothing runs per order.
_INSERT_ORDERS = f"""
WITH inserted AS (
    INSERT INTO tagging.orders
        (tenant_id, order_id, member_id, paid_time, amount_minor, store, payment_method, content_hash,
         import_digest, coupon_codes)
    SELECT $1, order_id, member_id, paid_time, amount_minor, store, payment_method, content_hash,
           import_digest, coupon_codes
    FROM pg_temp.order_import ORDER BY order_id
    ON CONFLICT (tenant_id, order_id) DO NOTHING
    RETURNING order_id, member_id, paid_time, amount_minor, store, payment_method
),
lines AS (
    INSERT INTO tagging.order_lines
        (tenant_id, order_id, line_id, member_id, paid_time, sku, category, brand, quantity, unit_price_minor)
    SELECT $1, l.order_id, l.line_id, i.member_id, i.paid_time, l.sku, l.category, l.brand, l.quantity,
           l.unit_price_minor
    FROM pg_temp.line_import l JOIN inserted i USING (order_id)
    ORDER BY l.order_id, l.line_id
),
prior AS (
    -- Each member's orders counted from the (member, paid time) index: a join with every order
    -- of the tenant (the plan PostgreSQL picks for an IN list it guesses small) grows with history.
    SELECT m.member_id,
           (SELECT count(*) FROM tagging.orders o WHERE o.member_id = m.member_id) AS orders
    FROM (SELECT DISTINCT member_id FROM inserted) m
),
numbered AS (
    SELECT i.order_id, i.member_id, i.paid_time, s.payload,
           coalesce(p.orders, 0)
           + row_number() OVER (PARTITION BY i.member_id ORDER BY i.paid_time, i.order_id) AS number
    FROM inserted i JOIN pg_temp.order_import s ON s.order_id = i.order_id
    LEFT JOIN prior p ON p.member_id = i.member_id
),
-- The payload comes as JSON text up to its member order number (built beside the content hash,
-- see order_rows.payload_head): one parse, where building it here took a jsonb_build_object per
-- line, an aggregate per order and a join.
fed AS (
    INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
    SELECT $1, {int(FeedKind.ORDER_RECORDED)}, x.member_id, x.order_id, (x.payload || x.number || '}}')::jsonb
    FROM numbered x
    ORDER BY x.paid_time, x.order_id
),
{_queued("inserted", "paid_time")}
SELECT (SELECT count(*) FROM inserted) AS stored, ARRAY(SELECT member_id FROM queued) AS members
"""

_ORDER_STAGING = """n int, order_id text, member_id text, paid_time timestamptz, amount_minor bigint,
    store text, payment_method text, content_hash text, import_digest text, coupon_codes text[],
    payload text"""
_LINE_STAGING = """order_id text, line_n int, line_id text, sku text, category text, brand text,
    quantity int, unit_price_minor bigint"""


async def stage_orders(
    conn: Connection, orders: Sequence[tuple[Any, ...]], lines: Sequence[tuple[Any, ...]]
) -> None:
    """COPYs a batch's orders (ORDER_COLUMNS) and lines (LINE_COLUMNS) into pg_temp tables."""
    await _staging(conn, "order_import", _ORDER_STAGING, orders)
    await _staging(conn, "line_import", _LINE_STAGING, lines)
    # Row counts and the join keys' statistics keep the insert's plan on hash joins (unanalysed,
    # the tables are guessed at 23k and 9k rows, and merge joins cost it 60 ms a 10k batch); the
    # other columns' statistics, never used, were half of ANALYZE's time. The batch's feed
    # payloads are sorted by paid time: in memory, not spilled to disk at 4 MB.
    await conn.execute(
        "ANALYZE pg_temp.order_import (order_id, member_id); ANALYZE pg_temp.line_import (order_id);"
        " SET LOCAL work_mem = '64MB'"
    )


async def import_digests(conn: Connection, order_ids: Sequence[str]) -> dict[str, str]:
    """order_id -> the wire digest it was imported with, of those stored by an import."""
    rows = await conn.fetch(
        """SELECT order_id, import_digest FROM tagging.orders
           WHERE order_id = ANY($1::text[]) AND import_digest IS NOT NULL""",
        order_ids,
    )
    return {r["order_id"]: r["import_digest"] for r in rows}


async def insert_orders(conn: Connection, tenant_id: str, inputs: int) -> Stored:
    """Stores the staged orders not stored before, with lines, feed entries and owed refreshes."""
    row = await conn.fetchrow(_INSERT_ORDERS, tenant_id, inputs)
    assert row is not None
    return Stored(int(row["stored"]), list(row["members"]))


async def first_changed_order(conn: Connection) -> int | None:
    """The index of the first staged order stored with other content (run after insert_orders, so
    an order a concurrent import stored meanwhile is compared too)."""
    value: int | None = await conn.fetchval(
        """SELECT min(i.n) FROM pg_temp.order_import i JOIN tagging.orders o USING (order_id)
           WHERE o.content_hash <> i.content_hash"""
    )
    return value


# --- refunds ---------------------------------------------------------------------------------


async def lock_orders(conn: Connection, order_ids: Sequence[str]) -> list[Any]:
    """Locks the orders (in id order, so concurrent imports never deadlock) and returns each with
    its lines: `order_id, member_id, paid_time, amount_minor, refunded_amount_minor, line_ids,
    quantities, refunded_quantities`."""
    return list(
        await conn.fetch(
            """WITH locked AS (
                   SELECT order_id, member_id, paid_time, amount_minor, refunded_amount_minor
                   FROM tagging.orders WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE
               )
               SELECT k.*, array_agg(l.line_id) AS line_ids, array_agg(l.quantity) AS quantities,
                      array_agg(l.refunded_quantity) AS refunded_quantities
               FROM locked k JOIN tagging.order_lines l USING (order_id)
               GROUP BY k.order_id, k.member_id, k.paid_time, k.amount_minor, k.refunded_amount_minor""",
            sorted(set(order_ids)),
        )
    )


async def refund_hashes(conn: Connection, refund_ids: Sequence[str]) -> dict[str, str]:
    """refund_id -> content_hash of those already stored."""
    rows = await conn.fetch(
        "SELECT refund_id, content_hash FROM tagging.refunds WHERE refund_id = ANY($1::text[])",
        list(refund_ids),
    )
    return {r["refund_id"]: r["content_hash"] for r in rows}


_REFUND_STAGING = """refund_id text, order_id text, member_id text, refund_time timestamptz,
    amount_minor bigint, content_hash text, payload jsonb"""
_REFUND_LINE_STAGING = "refund_id text, order_id text, line_id text, quantity int"

_INSERT_REFUNDS = f"""
WITH inserted AS (
    INSERT INTO tagging.refunds (tenant_id, refund_id, order_id, member_id, refund_time, amount_minor,
                                 content_hash)
    SELECT $1, refund_id, order_id, member_id, refund_time, amount_minor, content_hash
    FROM pg_temp.refund_import ORDER BY refund_id
    RETURNING refund_id
),
lines AS (
    INSERT INTO tagging.refund_lines (tenant_id, refund_id, line_id, quantity)
    SELECT $1, refund_id, line_id, quantity FROM pg_temp.refund_line_import ORDER BY refund_id, line_id
),
fed AS (
    INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
    SELECT $1, {int(FeedKind.REFUND_RECORDED)}, member_id, refund_id, payload
    FROM pg_temp.refund_import ORDER BY refund_time, refund_id
),
{_queued("pg_temp.refund_import", "refund_time")}
SELECT count(*) FROM inserted
"""
# Each order's lines and amount, less what the batch's refunds took (the orders are locked).
_TAKE_OFF_ORDERS = """
WITH taken AS (
    SELECT order_id, line_id, sum(quantity) AS quantity FROM pg_temp.refund_line_import
    GROUP BY order_id, line_id
),
lines AS (
    UPDATE tagging.order_lines l SET refunded_quantity = l.refunded_quantity + t.quantity
    FROM taken t WHERE l.order_id = t.order_id AND l.line_id = t.line_id
)
UPDATE tagging.orders o SET refunded_amount_minor = o.refunded_amount_minor + r.amount
FROM (SELECT order_id, sum(amount_minor) AS amount FROM pg_temp.refund_import GROUP BY order_id) r
WHERE o.order_id = r.order_id
"""


async def insert_refunds(
    conn: Connection,
    tenant_id: str,
    refunds: Sequence[tuple[Any, ...]],
    lines: Sequence[tuple[Any, ...]],
    inputs: int,
) -> int:
    """Stores planned refunds (refund_id, order_id, member_id, refund_time, amount_minor,
    content_hash, payload JSON) and their lines (refund_id, order_id, line_id, quantity), takes
    them off their orders and owes their members a refresh; returns how many were stored."""
    await _staging(conn, "refund_import", _REFUND_STAGING, refunds)
    await _staging(conn, "refund_line_import", _REFUND_LINE_STAGING, lines)
    stored: int = await conn.fetchval(_INSERT_REFUNDS, tenant_id, inputs)
    # Its own statement: the order_lines trigger of purchase recency must see the refunds' lines.
    await conn.execute(_TAKE_OFF_ORDERS)
    return stored


# --- events ----------------------------------------------------------------------------------

_EVENT_STAGING = """n int, event_id text, member_id text, kind smallint, occur_time timestamptz,
    sku text, category text, brand text, query text, channel text"""

_INSERT_EVENTS = f"""
WITH inserted AS (
    INSERT INTO tagging.events
        (tenant_id, event_id, member_id, kind, occur_time, sku, category, brand, query, channel)
    SELECT $1, event_id, member_id, kind, occur_time, sku, category, brand, query, channel
    FROM pg_temp.event_import ORDER BY event_id
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING *
),
fed AS (
    INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
    SELECT $1, {int(FeedKind.EVENT_RECORDED)}, member_id, event_id,
           jsonb_build_object('event_id', event_id, 'member_id', member_id, 'kind', kind,
                              'occur_time', occur_time, 'sku', sku, 'category', category,
                              'brand', brand, 'query', query, 'channel', channel, 'backfilled', true)
    FROM inserted ORDER BY occur_time, event_id
),
{_queued("inserted", "occur_time")}
SELECT (SELECT count(*) FROM inserted) AS stored, ARRAY(SELECT member_id FROM queued) AS members
"""


async def stage_events(conn: Connection, events: Sequence[tuple[Any, ...]]) -> None:
    """COPYs a batch's events (EVENT_COLUMNS), one per event id, into a pg_temp table."""
    await _staging(conn, "event_import", _EVENT_STAGING, events)


async def insert_events(conn: Connection, tenant_id: str, inputs: int) -> Stored:
    """Stores the staged events not stored before, with feed entries and owed refreshes."""
    row = await conn.fetchrow(_INSERT_EVENTS, tenant_id, inputs)
    assert row is not None
    return Stored(int(row["stored"]), list(row["members"]))
