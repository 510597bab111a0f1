"""SQL of invites and of the member facts that trigger them (registration and first order, as
tagging's feed told them; the follower keeps them). Runs inside tenant transactions.

Lock order (the start of the service's, see services/tasks/README.md): the invitee's
`member_facts` row first (sorted, for many; the lock an invite and the follower share), then
invites, then the members' `accounts` (sorted), then completions and task rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection

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


@dataclass(frozen=True)
class FirstOrder:
    """A member's first live order as the feed told it: when it arrived, its id and paid time
    (what a FIRST_ORDER invite's clawback checks a refund against)."""

    at: dt.datetime
    order_id: str
    paid_time: dt.datetime


async def record_facts(
    conn: Connection, registered: dict[str, dt.datetime], first_orders: dict[str, FirstOrder]
) -> None:
    """Notes registrations and first orders (rows locked by lock_member_facts); a time already
    noted stays. One statement each, however many members the batch names."""
    if registered:
        await conn.execute(
            """UPDATE tasks.member_facts f SET register_time = t.at
               FROM unnest($1::text[], $2::timestamptz[]) AS t(member_id, at)
               WHERE f.member_id = t.member_id AND f.register_time IS NULL""",
            list(registered),
            list(registered.values()),
        )
    if first_orders:
        await conn.execute(
            """UPDATE tasks.member_facts f
               SET first_order_time = t.at, first_order_id = t.order_id, first_order_paid_time = t.paid
               FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[])
                    AS t(member_id, at, order_id, paid)
               WHERE f.member_id = t.member_id AND f.first_order_time IS NULL""",
            list(first_orders),
            [o.at for o in first_orders.values()],
            [o.order_id for o in first_orders.values()],
            [o.paid_time for o in first_orders.values()],
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


# --- clawback ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Qualified:
    """An invite whose invitee's first live order is one the batch refunds (as read before the
    batch's entries are applied)."""

    invite: InviteRow
    order_id: str
    paid_time: dt.datetime


async def qualified_by(conn: Connection, orders: Sequence[tuple[str, str]]) -> list[Qualified]:
    """Pending or completed invites whose invitee's first order is among these (member, order)
    pairs, locked, by invitee (the lock order: invites before accounts). A pending one may be
    completed by its order in the same batch as the refund."""
    pairs = sorted(set(orders))
    if not pairs:
        return []
    rows = await conn.fetch(
        f"""SELECT {", ".join("i." + c.strip() for c in _INVITE_COLUMNS.split(","))},
                   f.first_order_id, f.first_order_paid_time
            FROM tasks.invites i
            JOIN tasks.member_facts f ON f.member_id = i.invitee_member_id
            JOIN unnest($1::text[], $2::text[]) AS o(member_id, order_id)
              ON o.member_id = f.member_id AND o.order_id = f.first_order_id
            WHERE i.state IN (1, 2)
            ORDER BY i.invitee_member_id FOR UPDATE OF i""",
        [m for m, _ in pairs],
        [o for _, o in pairs],
    )
    found = []
    for r in rows:
        values = dict(r)
        order_id, paid = values.pop("first_order_id"), values.pop("first_order_paid_time")
        found.append(Qualified(InviteRow(**values), order_id, paid))
    return found


async def set_state(conn: Connection, invitee: str, state: int) -> None:
    await conn.execute("UPDATE tasks.invites SET state = $2 WHERE invitee_member_id = $1", invitee, state)
