"""SQL of what tasks learns from tagging's feed: the cursor, member facts, invites, counted
progress and the order lines purchase tasks counted. Runs inside tenant transactions.

Lock order (before task_store's): the feed cursor row (one follower per tenant at a time), then
`member_facts` rows (sorted; the lock an invite and the follower share on the invitee), then
invites, then the members' `accounts` (sorted), then progress and completions, then task rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.db import Connection
from services.tasks.progress import CountedLine, CountedOrder

TAGGING = "tagging"


# --- the cursor ----------------------------------------------------------------------------------


async def cursor(conn: Connection, source: str = TAGGING) -> str:
    stored = await conn.fetchval("SELECT cursor FROM tasks.feed_cursors WHERE source = $1", source)
    return str(stored or "")


async def lock_cursor(conn: Connection, tenant_id: str, source: str = TAGGING) -> str:
    """Creates the cursor row on first use, locks it until commit, and returns its value."""
    stored = await conn.fetchval(
        """INSERT INTO tasks.feed_cursors (tenant_id, source) VALUES ($1, $2)
           ON CONFLICT (tenant_id, source) DO UPDATE SET source = excluded.source
           RETURNING cursor""",
        tenant_id,
        source,
    )
    return str(stored)


async def lock_source(conn: Connection, tenant_id: str, source: str) -> None:
    """Serialises the readers of one source of one tenant until the transaction ends, with no
    transaction id taken: an id held while the reader calls a peer would keep every outbox feed
    in the database from settling for that long."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('memberops.tasks.cursor:' || $1 || ':' || $2, 0))",
        tenant_id,
        source,
    )


async def save_cursor(conn: Connection, value: str, source: str = TAGGING) -> None:
    await conn.execute(
        "UPDATE tasks.feed_cursors SET cursor = $2, update_time = now() WHERE source = $1", source, value
    )


# --- member facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberFacts:
    member_id: str
    register_time: dt.datetime | None
    first_order_time: dt.datetime | None


async def lock_member_facts(
    conn: Connection, tenant_id: str, member_ids: Sequence[str]
) -> dict[str, MemberFacts]:
    """Locks the members' facts rows in member-id order (creating empty ones, rewriting none:
    ON CONFLICT DO UPDATE locks the rows its WHERE leaves alone) and returns them."""
    ids = sorted(set(member_ids))
    if not ids:
        return {}
    await conn.execute(
        """INSERT INTO tasks.member_facts (tenant_id, member_id)
           SELECT $1, m FROM unnest($2::text[]) AS m ORDER BY m
           ON CONFLICT (tenant_id, member_id) DO UPDATE SET member_id = excluded.member_id WHERE false""",
        tenant_id,
        ids,
    )
    rows = await conn.fetch(
        """SELECT member_id, register_time, first_order_time FROM tasks.member_facts
           WHERE member_id = ANY($1::text[])""",
        ids,
    )
    return {r["member_id"]: MemberFacts(**dict(r)) for r in rows}


async def record_facts(
    conn: Connection, registered: dict[str, dt.datetime], first_orders: dict[str, dt.datetime]
) -> None:
    """Notes registrations and first orders (rows locked by lock_member_facts); a time already
    noted stays. One statement each, however many members the batch names."""
    for column, times in (("register_time", registered), ("first_order_time", first_orders)):
        if times:
            await conn.execute(
                f"""UPDATE tasks.member_facts f SET {column} = t.at
                    FROM unnest($1::text[], $2::timestamptz[]) AS t(member_id, at)
                    WHERE f.member_id = t.member_id AND f.{column} IS NULL""",
                list(times),
                list(times.values()),
            )


# --- invites -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InviteRow:
    task_id: str
    inviter_member_id: str
    invitee_member_id: str
    day: dt.date
    state: int
    inviter_completion_id: int | None
    invitee_completion_id: int | None
    request_id: str
    content_hash: str
    create_time: dt.datetime
    complete_time: dt.datetime | None


_INVITE_COLUMNS = """task_id, inviter_member_id, invitee_member_id, day, state, inviter_completion_id,
    invitee_completion_id, request_id, content_hash, create_time, complete_time"""


async def invite_by_request(conn: Connection, request_id: str) -> InviteRow | None:
    row = await conn.fetchrow(
        f"SELECT {_INVITE_COLUMNS} FROM tasks.invites WHERE request_id = $1", request_id
    )
    return None if row is None else InviteRow(**dict(row))


async def invite_of(conn: Connection, invitee: str) -> InviteRow | None:
    row = await conn.fetchrow(
        f"SELECT {_INVITE_COLUMNS} FROM tasks.invites WHERE invitee_member_id = $1", invitee
    )
    return None if row is None else InviteRow(**dict(row))


async def pending_invites(conn: Connection, invitees: Sequence[str]) -> list[InviteRow]:
    """Pending invites of these invitees, locked, by invitee."""
    rows = await conn.fetch(
        f"""SELECT {_INVITE_COLUMNS} FROM tasks.invites
            WHERE invitee_member_id = ANY($1::text[]) AND state = 1
            ORDER BY invitee_member_id FOR UPDATE""",
        list(invitees),
    )
    return [InviteRow(**dict(r)) for r in rows]


async def invites_by(conn: Connection, task_id: str, inviter: str, day: dt.date) -> tuple[int, int]:
    """(invites the inviter recorded in the task in all, on `day`)."""
    return (await invite_counts(conn, inviter, {task_id: day})).get(task_id, (0, 0))


async def invite_counts(
    conn: Connection, inviter: str, days: dict[str, dt.date]
) -> dict[str, tuple[int, int]]:
    """`invites_by` for many tasks: `days` maps task ids to their calendar day today."""
    rows = await conn.fetch(
        """SELECT i.task_id, count(*) AS total, count(*) FILTER (WHERE i.day = d.day) AS today
           FROM tasks.invites i
           JOIN unnest($2::text[], $3::date[]) AS d(task_id, day) ON d.task_id = i.task_id
           WHERE i.inviter_member_id = $1 GROUP BY i.task_id""",
        inviter,
        list(days),
        list(days.values()),
    )
    return {r["task_id"]: (r["total"], r["today"]) for r in rows}


async def insert_invite(
    conn: Connection,
    tenant_id: str,
    task_id: str,
    inviter: str,
    invitee: str,
    day: dt.date,
    request_id: str,
    digest: str,
) -> InviteRow:
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.invites (tenant_id, task_id, inviter_member_id, invitee_member_id, day,
                                       request_id, content_hash)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_INVITE_COLUMNS}""",
        tenant_id,
        task_id,
        inviter,
        invitee,
        day,
        request_id,
        digest,
    )
    assert row is not None
    return InviteRow(**dict(row))


async def finish_invite(
    conn: Connection, invitee: str, state: int, inviter_completion: int | None, invitee_completion: int | None
) -> InviteRow:
    row = await conn.fetchrow(
        f"""UPDATE tasks.invites SET state = $2, inviter_completion_id = $3, invitee_completion_id = $4,
                                     complete_time = now()
            WHERE invitee_member_id = $1 RETURNING {_INVITE_COLUMNS}""",
        invitee,
        state,
        inviter_completion,
        invitee_completion,
    )
    assert row is not None
    return InviteRow(**dict(row))


# --- counted progress ----------------------------------------------------------------------------


async def add_measure(conn: Connection, tenant_id: str, task_id: str, member_id: str, delta: int) -> int:
    """Adds `delta` to the member's measure (created at 0), locking the row; returns the new value."""
    value = await conn.fetchval(
        """INSERT INTO tasks.progress (tenant_id, task_id, member_id, measure)
           VALUES ($1, $2, $3, greatest($4, 0))
           ON CONFLICT (tenant_id, task_id, member_id)
           DO UPDATE SET measure = greatest(tasks.progress.measure + $4, 0), update_time = now()
           RETURNING measure""",
        tenant_id,
        task_id,
        member_id,
        delta,
    )
    assert isinstance(value, int)
    return value


async def raise_measure(conn: Connection, tenant_id: str, task_id: str, member_id: str, value: int) -> int:
    """Raises the measure to at least `value` (visits, profiles: 1), locking the row; returns it."""
    measure = await conn.fetchval(
        """INSERT INTO tasks.progress (tenant_id, task_id, member_id, measure) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, task_id, member_id)
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
) -> bool:
    """Records the order a purchase task counts, with its matching lines; False if it was already."""
    created = await conn.fetchval(
        """WITH o AS (INSERT INTO tasks.purchase_orders (tenant_id, task_id, order_id, member_id, paid_time,
                                                         amount_minor)
                      VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING order_id),
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
    )
    return bool(created)


@dataclass(frozen=True)
class Purchase:
    task_id: str
    member_id: str
    order_id: str
    paid_time: dt.datetime
    order: CountedOrder


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
        """SELECT task_id, member_id, paid_time, amount_minor, refunded_minor FROM tasks.purchase_orders
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
