"""SQL of completions and the task budget they reserve. Every function runs on a connection inside a
tenant transaction (row-level security scopes it; the tenant is passed only for inserts).

Lock order (extending the ledger's; the whole order is in services/tasks/README.md): a member's
`accounts` row first, then the member's completions and what the ledger writes, then a shard of the
task's budget allowance (taken last and briefly; services/tasks/allowance/). Transactions touching
several members lock their accounts sorted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from runtime.db import Connection
from services.tasks.allowance import allowance
from services.tasks.tasks import definition_store


async def next_completion_id(conn: Connection) -> int:
    """The id of a completion about to be written (its ledger entry, written first, names it)."""
    value = await conn.fetchval(
        "SELECT nextval(pg_get_serial_sequence('tasks.completions', 'completion_id'))"
    )
    return int(value)


async def task_version(conn: Connection, task_id: str) -> tuple[int, int] | None:
    """(state, current version) of the task."""
    row = await conn.fetchrow(
        "SELECT state, current_version FROM tasks.task_definitions WHERE task_id = $1", task_id
    )
    return None if row is None else (row["state"], row["current_version"])


async def release_budget(conn: Connection, task_id: str, points: int) -> None:
    """Gives back points a reversal took back (or a claimable completion never paid)."""
    await allowance.give_back(conn, definition_store.budget_owner(task_id), points)


@dataclass(frozen=True)
class CompletionRow:
    completion_id: int
    task_id: str
    member_id: str
    day: dt.date
    points: int
    state: int
    source: str
    entry_id: int | None
    reversal_entry_id: int | None
    claim_request_id: str | None
    create_time: dt.datetime


_COMPLETION_COLUMNS = """completion_id, task_id, member_id, day, points, state, source, entry_id,
    reversal_entry_id, claim_request_id, create_time"""


def _completion(row: asyncpg.Record) -> CompletionRow:
    return CompletionRow(**dict(row))


async def take_budget(conn: Connection, task_id: str, points: int) -> bool:
    """Takes `points` from the task's budget, False (nothing taken) when it cannot cover them. From
    here to commit a shard of the budget is locked, so callers do it last, and once per
    transaction (for the sum of what they pay: services/tasks/allowance/)."""
    return await allowance.take(conn, definition_store.budget_owner(task_id), points)


async def insert_at_version(
    conn: Connection,
    tenant_id: str,
    completion_id: int,
    task_id: str,
    version: int,
    member_id: str,
    day: dt.date,
    points: int,
    state: int,
    source: str,
    entry_id: int | None,
) -> CompletionRow | None:
    """Writes the completion (under the id `next_completion_id` drew, with the entry that paid it
    if any) after its points were taken from the budget, unless the task is no longer active at
    `version` (None: the caller's transaction must then roll back, which gives back the take).

    The version is checked after the take, by a statement of its own: an update or retirement holds
    every shard before it commits, so a take that waited for one sees what it committed."""
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.completions (tenant_id, completion_id, task_id, member_id, day, points, state,
                                           source, entry_id)
            OVERRIDING SYSTEM VALUE
            SELECT $1, $2, task_id, $5, $7, $6, $8, $9, $10 FROM tasks.task_definitions
            WHERE task_id = $3 AND state = 1 AND current_version = $4
            RETURNING {_COMPLETION_COLUMNS}""",
        tenant_id,
        completion_id,
        task_id,
        version,
        member_id,
        points,
        day,
        state,
        source,
        entry_id,
    )
    return None if row is None else _completion(row)


async def set_paid(
    conn: Connection, completion_id: int, entry_id: int, claim_request_id: str | None
) -> CompletionRow:
    row = await conn.fetchrow(
        f"""UPDATE tasks.completions SET state = 1, entry_id = $2, claim_request_id = $3
            WHERE completion_id = $1 RETURNING {_COMPLETION_COLUMNS}""",
        completion_id,
        entry_id,
        claim_request_id,
    )
    assert row is not None
    return _completion(row)


async def set_reversed(conn: Connection, completion_id: int, reversal_entry_id: int | None) -> CompletionRow:
    row = await conn.fetchrow(
        f"""UPDATE tasks.completions SET state = 3, reversal_entry_id = $2
            WHERE completion_id = $1 RETURNING {_COMPLETION_COLUMNS}""",
        completion_id,
        reversal_entry_id,
    )
    assert row is not None
    return _completion(row)


async def completion(conn: Connection, completion_id: int) -> CompletionRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COMPLETION_COLUMNS} FROM tasks.completions WHERE completion_id = $1", completion_id
    )
    return None if row is None else _completion(row)


async def completion_by_claim(conn: Connection, claim_request_id: str) -> CompletionRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COMPLETION_COLUMNS} FROM tasks.completions WHERE claim_request_id = $1", claim_request_id
    )
    return None if row is None else _completion(row)


async def oldest_claimable(conn: Connection, task_id: str, member_id: str) -> CompletionRow | None:
    row = await conn.fetchrow(
        f"""SELECT {_COMPLETION_COLUMNS} FROM tasks.completions
            WHERE task_id = $1 AND member_id = $2 AND state = 2
            ORDER BY completion_id LIMIT 1 FOR UPDATE""",
        task_id,
        member_id,
    )
    return None if row is None else _completion(row)


async def latest_live_completions(
    conn: Connection, task_id: str, member_id: str, n: int, cycle: tuple[dt.date, dt.date]
) -> list[CompletionRow]:
    """The member's `n` newest completions not reversed of the cycle [start, end) (days), newest
    first, locked."""
    rows = await conn.fetch(
        f"""SELECT {_COMPLETION_COLUMNS} FROM tasks.completions
            WHERE task_id = $1 AND member_id = $2 AND state <> 3 AND day >= $4 AND day < $5
            ORDER BY completion_id DESC LIMIT $3 FOR UPDATE""",
        task_id,
        member_id,
        n,
        *cycle,
    )
    return [_completion(r) for r in rows]


@dataclass(frozen=True)
class Counts:
    """A member's completions of one task that were not reversed: in the cycle, on the day, and
    waiting to be claimed (any day)."""

    total: int
    today: int
    claimable: int


async def counts(
    conn: Connection, task_id: str, member_id: str, day: dt.date, cycle: tuple[dt.date, dt.date]
) -> Counts:
    """`total` counts the completions of the cycle [start, end) (days)."""
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE day >= $4 AND day < $5) AS total,
                  count(*) FILTER (WHERE day = $3) AS today,
                  count(*) FILTER (WHERE state = 2) AS claimable
           FROM tasks.completions WHERE task_id = $1 AND member_id = $2 AND state <> 3""",
        task_id,
        member_id,
        day,
        *cycle,
    )
    assert row is not None
    return Counts(row["total"], row["today"], row["claimable"])


async def member_counts(
    conn: Connection, member_id: str, days: dict[str, tuple[dt.date, tuple[dt.date, dt.date]]]
) -> dict[str, Counts]:
    """`counts` for many tasks at once: `days` maps each task id to its calendar day today and the
    cycle that day is in."""
    rows = await conn.fetch(
        """SELECT c.task_id, count(*) FILTER (WHERE c.day >= d.start AND c.day < d.until) AS total,
                  count(*) FILTER (WHERE c.day = d.day) AS today,
                  count(*) FILTER (WHERE c.state = 2) AS claimable
           FROM tasks.completions c
           JOIN unnest($2::text[], $3::date[], $4::date[], $5::date[]) AS d(task_id, day, start, until)
             ON d.task_id = c.task_id
           WHERE c.member_id = $1 AND c.state <> 3
           GROUP BY c.task_id""",
        member_id,
        list(days),
        [day for day, _ in days.values()],
        [cycle[0] for _, cycle in days.values()],
        [cycle[1] for _, cycle in days.values()],
    )
    return {r["task_id"]: Counts(r["total"], r["today"], r["claimable"]) for r in rows}
