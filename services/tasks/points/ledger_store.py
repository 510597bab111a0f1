"""SQL of the points ledger: accounts, entries and lots. Every function runs on a connection inside a
tenant transaction.

Lock order: a write of a member first locks that member's `accounts` row (`lock_account`, or
`lock_accounts` sorted by member id for many), and only then reads or changes its lots, so writes of
one member serialise and two writers never wait on each other's lots in opposite orders.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from memberops.tasks.v1 import points_pb2

from runtime import metrics
from runtime.db import Connection


@dataclass(frozen=True)
class Entry:
    entry_id: int
    member_id: str
    delta: int
    reason: int
    reference: str
    operator: str
    note: str
    request_id: str
    content_hash: str
    shortfall: int
    available_time: dt.datetime | None
    expire_time: dt.datetime | None
    create_time: dt.datetime


Write = Callable[[], Awaitable[Entry]]


@dataclass(frozen=True)
class NewEntry:
    member_id: str
    delta: int
    reason: int
    reference: str = ""
    operator: str = ""
    note: str = ""
    request_id: str = ""
    content_hash: str = ""
    shortfall: int = 0
    available_time: dt.datetime | None = None
    expire_time: dt.datetime | None = None


@dataclass(frozen=True)
class OpenLot:
    lot_id: int
    remaining: int


@dataclass(frozen=True)
class BalanceRow:
    available: int
    pending: int
    expiring: int
    next_expire_time: dt.datetime | None


# The ledger_entries_total{kind} label of each reason number: "task", "order", "order_reversal"...
KINDS: dict[int, str] = {
    int(number): name.removeprefix("REASON_").lower() for name, number in points_pb2.Reason.items()
}


def _written(tenant_id: str, entries: Sequence[Entry | None]) -> None:
    """Counts the entries a statement returned (an earning answered from an earlier one with the
    same request id among them: `tasks.add_earning` returns both alike)."""
    for entry in entries:
        if entry is not None:
            metrics.ledger_entries(tenant_id, KINDS.get(entry.reason, "other"))


_ENTRY_COLUMNS = """entry_id, member_id, delta, reason, reference, operator, note, request_id, content_hash,
    shortfall, available_time, expire_time, create_time"""


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(**dict(row))


async def lock_account(conn: Connection, tenant_id: str, member_id: str) -> None:
    """Creates the member's account on first use and locks it until the transaction ends."""
    await conn.execute(
        """INSERT INTO tasks.accounts (tenant_id, member_id) VALUES ($1, $2)
           ON CONFLICT (tenant_id, member_id) DO UPDATE SET member_id = excluded.member_id""",
        tenant_id,
        member_id,
    )


async def lock_accounts_creating(conn: Connection, tenant_id: str, member_ids: Sequence[str]) -> None:
    """Creates the accounts missing and locks all of them in member-id order."""
    await conn.execute(
        """INSERT INTO tasks.accounts (tenant_id, member_id)
           SELECT $1, m FROM unnest($2::text[]) AS m ORDER BY m
           ON CONFLICT (tenant_id, member_id) DO UPDATE SET member_id = excluded.member_id""",
        tenant_id,
        sorted(set(member_ids)),
    )


async def lock_accounts(conn: Connection, tenant_id: str, member_ids: Sequence[str]) -> None:
    """Locks existing accounts in member-id order, the order every multi-member write uses."""
    await conn.execute(
        """SELECT 1 FROM tasks.accounts WHERE tenant_id = $1 AND member_id = ANY($2::text[])
           ORDER BY member_id FOR UPDATE""",
        tenant_id,
        list(member_ids),
    )


async def entry_by_request(conn: Connection, tenant_id: str, request_id: str) -> Entry | None:
    row = await conn.fetchrow(
        f"SELECT {_ENTRY_COLUMNS} FROM tasks.ledger_entries WHERE tenant_id = $1 AND request_id = $2"
        " AND request_id <> ''",
        tenant_id,
        request_id,
    )
    return None if row is None else _entry(row)


async def reversal(
    conn: Connection, tenant_id: str, member_id: str, order_id: str, note: str = ""
) -> Entry | None:
    """The order's reversal with this note: '' for the whole order's, 'refund <id>' for a refund's."""
    row = await conn.fetchrow(
        f"""SELECT {_ENTRY_COLUMNS} FROM tasks.ledger_entries
            WHERE tenant_id = $1 AND member_id = $2 AND reference = $3 AND reason = 6 AND note = $4""",
        tenant_id,
        member_id,
        order_id,
        note,
    )
    return None if row is None else _entry(row)


@dataclass(frozen=True)
class OrderPoints:
    # What the order's earnings added, and what its reversals so far meant to take back of it
    # (taken, plus the shortfall of points already gone).
    earned: int
    claimed: int


async def order_points(conn: Connection, tenant_id: str, member_id: str, order_id: str) -> OrderPoints:
    row = await conn.fetchrow(
        """SELECT (SELECT coalesce(sum(amount), 0) FROM tasks.lots
                   WHERE tenant_id = $1 AND member_id = $2 AND order_id = $3)::bigint AS earned,
                  (SELECT coalesce(sum(shortfall - delta), 0) FROM tasks.ledger_entries
                   WHERE tenant_id = $1 AND member_id = $2 AND reference = $3 AND reason = 6)::bigint
                    AS claimed""",
        tenant_id,
        member_id,
        order_id,
    )
    assert row is not None
    return OrderPoints(row["earned"], row["claimed"])


async def orders_with_points(
    conn: Connection, tenant_id: str, orders: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of these (member, order) pairs earned points."""
    rows = await conn.fetch(
        """SELECT DISTINCT o.member_id, o.order_id
           FROM unnest($2::text[], $3::text[]) AS o (member_id, order_id)
           JOIN tasks.lots l ON l.tenant_id = $1 AND l.member_id = o.member_id AND l.order_id = o.order_id""",
        tenant_id,
        [member for member, _ in orders],
        [order for _, order in orders],
    )
    return {(r["member_id"], r["order_id"]) for r in rows}


_INSERT_ENTRY = f"""
INSERT INTO tasks.ledger_entries (tenant_id, member_id, delta, reason, reference, operator, note,
    request_id, content_hash, shortfall, available_time, expire_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING {_ENTRY_COLUMNS}"""


def _entry_args(tenant_id: str, e: NewEntry) -> tuple[object, ...]:
    return (
        tenant_id,
        e.member_id,
        e.delta,
        e.reason,
        e.reference,
        e.operator,
        e.note,
        e.request_id,
        e.content_hash,
        e.shortfall,
        e.available_time,
        e.expire_time,
    )


async def insert_entry(conn: Connection, tenant_id: str, entry: NewEntry) -> Entry:
    row = await conn.fetchrow(_INSERT_ENTRY, *_entry_args(tenant_id, entry))
    assert row is not None
    _written(tenant_id, [written := _entry(row)])
    return written


async def add_earning(
    on: asyncpg.Pool | Connection, tenant_id: str, entry: NewEntry, order_id: str | None
) -> Entry | None:
    """Locks the account and writes the earning and its lot in one round trip (`tasks.add_earning`,
    see services/tasks/migrations/README.md). Returns the entry written, or the first entry of the
    same request id; None when the earning is for an order already reversed. Runs on the pool, as
    one autocommitted statement (the function enters the tenant, role and setting, itself), or
    inside a caller's tenant transaction when the earning must commit with other writes (a task
    completion)."""
    row = await on.fetchrow(
        f"""SELECT {_ENTRY_COLUMNS}
            FROM tasks.add_earning($1, $2, $3, $4::smallint, $5, $6, $7, $8, $9, $10, $11, $12)""",
        tenant_id,
        entry.member_id,
        entry.delta,
        entry.reason,
        entry.reference,
        entry.operator,
        entry.note,
        entry.request_id,
        entry.content_hash,
        entry.available_time,
        entry.expire_time,
        order_id,
    )
    _written(tenant_id, [written := None if row is None else _entry(row)])
    return written


async def add_earnings(
    pool: asyncpg.Pool, tenant_id: str, earnings: Sequence[tuple[NewEntry, str | None]]
) -> list[Entry | None]:
    """`add_earning` for many earnings in one autocommitted statement, in the order given, which
    must be member-id order (the account locks are taken one by one, so two batches never wait on
    each other in opposite orders). One outcome per earning, as `add_earning` answers it. An error
    in any earning (a request id taken by a concurrent call of another member) fails them all."""
    rows = await pool.fetch(
        f"""SELECT i.n, e.*
            FROM unnest($2::text[], $3::bigint[], $4::smallint[], $5::text[], $6::text[], $7::text[],
                        $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::text[])
                 WITH ORDINALITY AS i(member_id, delta, reason, reference, operator, note, request_id,
                                      content_hash, available_time, expire_time, order_id, n)
            LEFT JOIN LATERAL (
                SELECT {_ENTRY_COLUMNS}
                FROM tasks.add_earning($1, i.member_id, i.delta, i.reason, i.reference, i.operator, i.note,
                                       i.request_id, i.content_hash, i.available_time, i.expire_time,
                                       i.order_id)
            ) AS e ON true
            ORDER BY i.n""",
        tenant_id,
        [e.member_id for e, _ in earnings],
        [e.delta for e, _ in earnings],
        [e.reason for e, _ in earnings],
        [e.reference for e, _ in earnings],
        [e.operator for e, _ in earnings],
        [e.note for e, _ in earnings],
        [e.request_id for e, _ in earnings],
        [e.content_hash for e, _ in earnings],
        [e.available_time for e, _ in earnings],
        [e.expire_time for e, _ in earnings],
        [order_id for _, order_id in earnings],
    )
    written = [None if row["entry_id"] is None else _entry_from(row) for row in rows]
    _written(tenant_id, written)
    return written


def _entry_from(row: asyncpg.Record) -> Entry:
    return Entry(**{name: row[name] for name in Entry.__dataclass_fields__})


async def spendable_lots(conn: Connection, tenant_id: str, member_id: str, now: dt.datetime) -> list[OpenLot]:
    """Available lots with points left, soonest expiry first (never-expiring last, oldest first)."""
    rows = await conn.fetch(
        """SELECT lot_id, remaining FROM tasks.lots
           WHERE tenant_id = $1 AND member_id = $2 AND remaining > 0 AND available_time <= $3
             AND (expire_time IS NULL OR expire_time > $3)
           ORDER BY expire_time NULLS LAST, lot_id""",
        tenant_id,
        member_id,
        now,
    )
    return [OpenLot(r["lot_id"], r["remaining"]) for r in rows]


async def insert_draw(
    conn: Connection, tenant_id: str, entry: NewEntry, taken: Sequence[tuple[int, int]]
) -> Entry:
    """The spending entry, the lots it drew from reduced, and one draw row per lot."""
    row = await conn.fetchrow(
        f"""WITH e AS ({_INSERT_ENTRY}),
            d AS (SELECT * FROM unnest($13::bigint[], $14::bigint[]) AS d(lot_id, amount)),
            u AS (UPDATE tasks.lots l SET remaining = l.remaining - d.amount FROM d
                  WHERE l.tenant_id = $1 AND l.lot_id = d.lot_id),
            w AS (INSERT INTO tasks.lot_draws (tenant_id, entry_id, lot_id, amount)
                  SELECT $1, e.entry_id, d.lot_id, d.amount FROM e, d)
            SELECT * FROM e""",
        *_entry_args(tenant_id, entry),
        [lot for lot, _ in taken],
        [amount for _, amount in taken],
    )
    assert row is not None
    _written(tenant_id, [written := _entry(row)])
    return written


async def _take_lots(conn: Connection, tenant_id: str, which: str, *args: object) -> tuple[int, int]:
    """Empties the lots `which` selects (a condition on $2…); returns (points they earned, points
    that were left)."""
    row = await conn.fetchrow(
        f"""WITH o AS (SELECT lot_id, amount, remaining FROM tasks.lots WHERE tenant_id = $1 AND {which}),
                 u AS (UPDATE tasks.lots l SET remaining = 0 FROM o
                       WHERE l.tenant_id = $1 AND l.lot_id = o.lot_id AND o.remaining > 0)
            SELECT coalesce(sum(amount), 0)::bigint AS earned, coalesce(sum(remaining), 0)::bigint AS left
            FROM o""",
        tenant_id,
        *args,
    )
    assert row is not None
    return row["earned"], row["left"]


async def take_order_lots(conn: Connection, tenant_id: str, member_id: str, order_id: str) -> tuple[int, int]:
    """Empties the order's lots; returns (points the order earned, points that were left)."""
    return await _take_lots(conn, tenant_id, "member_id = $2 AND order_id = $3", member_id, order_id)


async def take_from_order_lots(
    conn: Connection, tenant_id: str, member_id: str, order_id: str, points: int
) -> int:
    """Takes up to `points` from what is left of the order's lots, oldest lot first; returns how
    many it took."""
    taken = await conn.fetchval(
        """WITH o AS (SELECT lot_id, remaining,
                             sum(remaining) OVER (ORDER BY lot_id) - remaining AS before
                      FROM tasks.lots
                      WHERE tenant_id = $1 AND member_id = $2 AND order_id = $3 AND remaining > 0),
                t AS (SELECT lot_id, least(remaining, $4 - before) AS take FROM o WHERE before < $4),
                u AS (UPDATE tasks.lots l SET remaining = l.remaining - t.take FROM t
                      WHERE l.tenant_id = $1 AND l.lot_id = t.lot_id)
           SELECT coalesce(sum(take), 0)::bigint FROM t""",
        tenant_id,
        member_id,
        order_id,
        points,
    )
    return int(taken)


async def take_entry_lots(conn: Connection, tenant_id: str, entry_id: int) -> tuple[int, int]:
    """Empties the lot an earning made; returns (points it earned, points that were left)."""
    return await _take_lots(conn, tenant_id, "entry_id = $2", entry_id)


async def balance(
    conn: Connection, tenant_id: str, member_id: str, now: dt.datetime, horizon: dt.datetime
) -> BalanceRow:
    row = await conn.fetchrow(
        """SELECT
             coalesce(sum(remaining) FILTER (WHERE available_time <= $3), 0)::bigint AS available,
             coalesce(sum(remaining) FILTER (WHERE available_time > $3), 0)::bigint AS pending,
             coalesce(sum(remaining) FILTER (WHERE available_time <= $3 AND expire_time <= $4), 0)::bigint
               AS expiring,
             min(expire_time) FILTER (WHERE available_time <= $3) AS next_expire_time
           FROM tasks.lots
           WHERE tenant_id = $1 AND member_id = $2 AND remaining > 0
             AND (expire_time IS NULL OR expire_time > $3)""",
        tenant_id,
        member_id,
        now,
        horizon,
    )
    assert row is not None
    return BalanceRow(row["available"], row["pending"], row["expiring"], row["next_expire_time"])


async def entries(
    conn: Connection, tenant_id: str, member_id: str, before: int | None, limit: int
) -> list[Entry]:
    rows = await conn.fetch(
        f"""SELECT {_ENTRY_COLUMNS} FROM tasks.ledger_entries
            WHERE tenant_id = $1 AND member_id = $2 AND ($3::bigint IS NULL OR entry_id < $3)
            ORDER BY entry_id DESC LIMIT $4""",
        tenant_id,
        member_id,
        before,
        limit,
    )
    return [_entry(r) for r in rows]


async def members_with_expired_lots(
    conn: Connection, tenant_id: str, as_of: dt.datetime, limit: int
) -> list[str]:
    rows = await conn.fetch(
        """SELECT DISTINCT member_id FROM tasks.lots
           WHERE tenant_id = $1 AND remaining > 0 AND expire_time <= $2
           ORDER BY member_id LIMIT $3""",
        tenant_id,
        as_of,
        limit,
    )
    return [r["member_id"] for r in rows]


async def expire_lots(
    conn: Connection, tenant_id: str, member_ids: Sequence[str], as_of: dt.datetime
) -> list[int]:
    """Empties the members' lots due at `as_of` (accounts already locked), one expiry entry each
    naming its lot; returns the points expired per lot."""
    rows = await conn.fetch(
        """WITH o AS (SELECT lot_id, member_id, remaining FROM tasks.lots
                      WHERE tenant_id = $1 AND member_id = ANY($2::text[]) AND remaining > 0
                        AND expire_time <= $3),
                u AS (UPDATE tasks.lots l SET remaining = 0 FROM o
                      WHERE l.tenant_id = $1 AND l.lot_id = o.lot_id)
           INSERT INTO tasks.ledger_entries (tenant_id, member_id, delta, reason, reference)
           SELECT $1, member_id, -remaining, 5, 'lots/' || lot_id FROM o
           RETURNING -delta AS points""",
        tenant_id,
        list(member_ids),
        as_of,
    )
    metrics.ledger_entries(tenant_id, "expiry", len(rows))
    return [r["points"] for r in rows]


# --- what counts as earned (leaderboards, levels) -------------------------------------------------

# Reasons whose entries count as earned: tasks, orders, and the reversals of either (which take
# it back). Matches the partial index ledger_entries_earned.
EARNED_REASONS = "(1, 2, 6, 7)"
# What an earned entry counts for: a reversal takes back all it claims, the points already spent
# (its shortfall) too, so spending before a refund never keeps the order's growth or rank.
EARNED = "(delta - shortfall)"
