"""SQL of task definitions, completions and the member calls. Every function runs on a connection
inside a tenant transaction (row-level security scopes it; the tenant is passed only for inserts).

Lock order (extending the ledger's, see store.py): a member's `accounts` row first, then the
member's completions, then the task's `task_definitions` row (the budget, taken last and briefly),
then what the ledger writes. Transactions touching several members lock their accounts sorted.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.common.db import Connection


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    kind: int
    state: int
    version: int
    body: dict[str, Any]
    content_hash: str
    budget_used: int
    create_time: dt.datetime
    update_time: dt.datetime


_TASK = """
SELECT d.task_id, d.kind, d.state, d.current_version AS version, v.body::text AS body, v.content_hash,
       d.budget_used, d.create_time, d.update_time
FROM tasks.task_definitions d
JOIN tasks.task_versions v ON v.tenant_id = d.tenant_id AND v.task_id = d.task_id
                          AND v.version = d.current_version"""


def _task(row: asyncpg.Record) -> TaskRow:
    return TaskRow(**{**dict(row), "body": json.loads(row["body"])})


async def insert_task(
    conn: Connection, tenant_id: str, task_id: str, kind: int, body: dict[str, Any], digest: str
) -> bool:
    """Creates the task at version 1; False when the id is taken."""
    created = await conn.fetchval(
        """WITH d AS (INSERT INTO tasks.task_definitions (tenant_id, task_id, kind, budget_points)
                      VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, task_id) DO NOTHING RETURNING task_id)
           INSERT INTO tasks.task_versions (tenant_id, task_id, version, body, content_hash)
           SELECT $1, task_id, 1, $5::jsonb, $6 FROM d RETURNING true""",
        tenant_id,
        task_id,
        kind,
        body["budget_points"],
        json.dumps(body),
        digest,
    )
    return bool(created)


async def task(conn: Connection, task_id: str) -> TaskRow | None:
    row = await conn.fetchrow(f"{_TASK} WHERE d.task_id = $1", task_id)
    return None if row is None else _task(row)


async def lock_task(conn: Connection, task_id: str) -> TaskRow | None:
    """Locks the task, then reads it as it stands. In one statement a lock that waited for a
    concurrent update would recheck the join against the version row it read before the wait,
    which is no longer the current one, and find no task at all."""
    if not await conn.fetchval(
        "SELECT true FROM tasks.task_definitions WHERE task_id = $1 FOR UPDATE", task_id
    ):
        return None
    return await task(conn, task_id)


async def tasks(conn: Connection, after: str, limit: int, state: int | None) -> list[TaskRow]:
    rows = await conn.fetch(
        f"""{_TASK} WHERE d.task_id > $1 AND ($3::smallint IS NULL OR d.state = $3)
            ORDER BY d.task_id LIMIT $2""",
        after,
        limit,
        state,
    )
    return [_task(r) for r in rows]


async def active_tasks(conn: Connection, kinds: Sequence[int]) -> list[TaskRow]:
    rows = await conn.fetch(
        f"{_TASK} WHERE d.state = 1 AND d.kind = ANY($1::smallint[]) ORDER BY d.task_id", kinds
    )
    return [_task(r) for r in rows]


async def add_version(
    conn: Connection, tenant_id: str, task_id: str, version: int, body: dict[str, Any], digest: str
) -> None:
    await conn.execute(
        """WITH v AS (INSERT INTO tasks.task_versions (tenant_id, task_id, version, body, content_hash)
                      VALUES ($1, $2, $3, $4::jsonb, $5))
           UPDATE tasks.task_definitions SET current_version = $3, budget_points = $6, update_time = now()
           WHERE task_id = $2""",
        tenant_id,
        task_id,
        version,
        json.dumps(body),
        digest,
        body["budget_points"],
    )


async def retire_task(conn: Connection, task_id: str) -> None:
    await conn.execute(
        "UPDATE tasks.task_definitions SET state = 2, update_time = now() WHERE task_id = $1 AND state = 1",
        task_id,
    )


# --- budget and completions ----------------------------------------------------------------------


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
    await conn.execute(
        "UPDATE tasks.task_definitions SET budget_used = budget_used - $2 WHERE task_id = $1", task_id, points
    )


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


async def insert_within_budget(
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
    """Adds `points` to what the task used and writes the completion (under the id
    `next_completion_id` drew, with the entry that paid it if any), unless that overspends the
    budget or the task is no longer active at `version` (None: `task_version` tells which). From
    here to commit the task's row is locked, so callers do it last."""
    row = await conn.fetchrow(
        f"""WITH reserved AS (
                UPDATE tasks.task_definitions SET budget_used = budget_used + $6
                WHERE task_id = $3 AND state = 1 AND current_version = $4
                  AND (budget_points = 0 OR budget_used + $6 <= budget_points)
                RETURNING task_id)
            INSERT INTO tasks.completions (tenant_id, completion_id, task_id, member_id, day, points, state,
                                           source, entry_id)
            OVERRIDING SYSTEM VALUE
            SELECT $1, $2, task_id, $5, $7, $6, $8, $9, $10 FROM reserved
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
    conn: Connection, task_id: str, member_id: str, n: int
) -> list[CompletionRow]:
    """The member's `n` newest completions not reversed, newest first, locked."""
    rows = await conn.fetch(
        f"""SELECT {_COMPLETION_COLUMNS} FROM tasks.completions
            WHERE task_id = $1 AND member_id = $2 AND state <> 3
            ORDER BY completion_id DESC LIMIT $3 FOR UPDATE""",
        task_id,
        member_id,
        n,
    )
    return [_completion(r) for r in rows]


@dataclass(frozen=True)
class Counts:
    """A member's completions of one task that were not reversed."""

    total: int
    today: int
    claimable: int


async def counts(conn: Connection, task_id: str, member_id: str, day: dt.date) -> Counts:
    row = await conn.fetchrow(
        """SELECT count(*) AS total, count(*) FILTER (WHERE day = $3) AS today,
                  count(*) FILTER (WHERE state = 2) AS claimable
           FROM tasks.completions WHERE task_id = $1 AND member_id = $2 AND state <> 3""",
        task_id,
        member_id,
        day,
    )
    assert row is not None
    return Counts(row["total"], row["today"], row["claimable"])


async def member_counts(conn: Connection, member_id: str, days: dict[str, dt.date]) -> dict[str, Counts]:
    """`counts` for many tasks at once: `days` maps each task id to its calendar day today."""
    rows = await conn.fetch(
        """SELECT c.task_id, count(*) AS total, count(*) FILTER (WHERE c.day = d.day) AS today,
                  count(*) FILTER (WHERE c.state = 2) AS claimable
           FROM tasks.completions c
           JOIN unnest($2::text[], $3::date[]) AS d(task_id, day) ON d.task_id = c.task_id
           WHERE c.member_id = $1 AND c.state <> 3
           GROUP BY c.task_id""",
        member_id,
        list(days),
        list(days.values()),
    )
    return {r["task_id"]: Counts(r["total"], r["today"], r["claimable"]) for r in rows}


# --- sign-ins ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignInRow:
    task_id: str
    member_id: str
    day: dt.date
    streak: int
    makeup: bool
    completion_id: int | None
    request_id: str
    content_hash: str
    create_time: dt.datetime


_SIGN_IN_COLUMNS = (
    "task_id, member_id, day, streak, makeup, completion_id, request_id, content_hash, create_time"
)


async def sign_ins_or_request(
    conn: Connection, request_id: str, task_id: str, member_id: str, first: dt.date, last: dt.date
) -> tuple[SignInRow | None, list[SignInRow]]:
    """In one read: the sign-in of `request_id` if any, and the member's sign-ins between the days."""
    rows = await conn.fetch(
        f"""SELECT {_SIGN_IN_COLUMNS}, true AS asked FROM tasks.sign_ins WHERE request_id = $1
            UNION ALL
            SELECT {_SIGN_IN_COLUMNS}, false FROM tasks.sign_ins
            WHERE task_id = $2 AND member_id = $3 AND day BETWEEN $4 AND $5""",
        request_id,
        task_id,
        member_id,
        first,
        last,
    )
    found = [(r["asked"], SignInRow(**{k: v for k, v in dict(r).items() if k != "asked"})) for r in rows]
    asked = next((row for is_asked, row in found if is_asked), None)
    return asked, [row for is_asked, row in found if not is_asked]


async def sign_ins_between(
    conn: Connection, task_id: str, member_id: str, first: dt.date, last: dt.date
) -> list[SignInRow]:
    rows = await conn.fetch(
        f"""SELECT {_SIGN_IN_COLUMNS} FROM tasks.sign_ins
            WHERE task_id = $1 AND member_id = $2 AND day BETWEEN $3 AND $4 ORDER BY day""",
        task_id,
        member_id,
        first,
        last,
    )
    return [SignInRow(**dict(r)) for r in rows]


async def sign_ins_from(conn: Connection, task_id: str, member_id: str, first: dt.date) -> list[SignInRow]:
    """The member's sign-ins from `first` on, by day (the run a make-up may extend)."""
    rows = await conn.fetch(
        f"""SELECT {_SIGN_IN_COLUMNS} FROM tasks.sign_ins
            WHERE task_id = $1 AND member_id = $2 AND day >= $3 ORDER BY day""",
        task_id,
        member_id,
        first,
    )
    return [SignInRow(**dict(r)) for r in rows]


async def insert_sign_in(
    conn: Connection,
    tenant_id: str,
    task_id: str,
    member_id: str,
    day: dt.date,
    streak: int,
    makeup: bool,
    request_id: str,
    digest: str,
    *,
    paid: bool,
) -> SignInRow:
    """The sign-in row; when `paid`, naming a completion id drawn for it here, which the caller
    then writes (the key is checked at commit, migration 0008)."""
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.sign_ins (tenant_id, task_id, member_id, day, streak, makeup, completion_id,
                                        request_id, content_hash)
            VALUES ($1, $2, $3, $4, $5, $6,
                    CASE WHEN $7 THEN nextval(pg_get_serial_sequence('tasks.completions', 'completion_id'))
                    END,
                    $8, $9)
            RETURNING {_SIGN_IN_COLUMNS}""",
        tenant_id,
        task_id,
        member_id,
        day,
        streak,
        makeup,
        paid,
        request_id,
        digest,
    )
    assert row is not None
    return SignInRow(**dict(row))


async def restreak(
    conn: Connection, task_id: str, member_id: str, days: Sequence[tuple[dt.date, int]]
) -> None:
    """Rewrites the streak lengths of the given days (the run after a make-up)."""
    await conn.execute(
        """UPDATE tasks.sign_ins s SET streak = d.streak
           FROM unnest($3::date[], $4::int[]) AS d(day, streak)
           WHERE s.task_id = $1 AND s.member_id = $2 AND s.day = d.day""",
        task_id,
        member_id,
        [day for day, _ in days],
        [streak for _, streak in days],
    )


@dataclass(frozen=True)
class StreakRow:
    task_id: str
    last_day: dt.date | None
    last_streak: int
    longest: int
    makeups: int


async def streaks(
    conn: Connection, member_id: str, months: dict[str, tuple[dt.date, dt.date]]
) -> dict[str, StreakRow]:
    """Per sign-in task: the member's last day signed up to the month's end, its streak, the longest
    streak and the make-ups used in the month; `months` maps task ids to (first day, last day)."""
    rows = await conn.fetch(
        """SELECT m.task_id, last.day AS last_day, coalesce(last.streak, 0) AS last_streak,
                  coalesce((SELECT max(streak) FROM tasks.sign_ins s
                            WHERE s.task_id = m.task_id AND s.member_id = $1), 0) AS longest,
                  (SELECT count(*) FROM tasks.sign_ins s
                   WHERE s.task_id = m.task_id AND s.member_id = $1 AND s.makeup
                     AND s.day BETWEEN m.first AND m.last) AS makeups
           FROM unnest($2::text[], $3::date[], $4::date[]) AS m(task_id, first, last)
           LEFT JOIN LATERAL (SELECT day, streak FROM tasks.sign_ins s
                              WHERE s.task_id = m.task_id AND s.member_id = $1 AND s.day <= m.last
                              ORDER BY day DESC LIMIT 1) last ON true""",
        member_id,
        list(months),
        [first for first, _ in months.values()],
        [last for _, last in months.values()],
    )
    return {r["task_id"]: StreakRow(**dict(r)) for r in rows}


# --- shares --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareRow:
    task_id: str
    member_id: str
    target: str
    completion_id: int
    request_id: str
    content_hash: str
    create_time: dt.datetime


_SHARE_COLUMNS = "task_id, member_id, target, completion_id, request_id, content_hash, create_time"


async def share_by_request(conn: Connection, request_id: str) -> ShareRow | None:
    row = await conn.fetchrow(f"SELECT {_SHARE_COLUMNS} FROM tasks.shares WHERE request_id = $1", request_id)
    return None if row is None else ShareRow(**dict(row))


async def share(conn: Connection, task_id: str, member_id: str, target: str) -> ShareRow | None:
    row = await conn.fetchrow(
        f"SELECT {_SHARE_COLUMNS} FROM tasks.shares WHERE task_id = $1 AND member_id = $2 AND target = $3",
        task_id,
        member_id,
        target,
    )
    return None if row is None else ShareRow(**dict(row))


async def insert_share(
    conn: Connection,
    tenant_id: str,
    task_id: str,
    member_id: str,
    target: str,
    completion_id: int,
    request_id: str,
    digest: str,
) -> ShareRow:
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.shares (tenant_id, task_id, member_id, target, completion_id, request_id,
                                      content_hash)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_SHARE_COLUMNS}""",
        tenant_id,
        task_id,
        member_id,
        target,
        completion_id,
        request_id,
        digest,
    )
    assert row is not None
    return ShareRow(**dict(row))


# --- enrolments ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentRow:
    task_id: str
    member_id: str
    enrol_time: dt.datetime
    window_end_time: dt.datetime


async def enrol(
    conn: Connection, tenant_id: str, task_id: str, member_id: str, at: dt.datetime, window_end: dt.datetime
) -> EnrolmentRow:
    """The member's enrolment: a new one at `at`, or the one they already had."""
    await conn.execute(
        """INSERT INTO tasks.enrolments (tenant_id, task_id, member_id, enrol_time, window_end_time)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, task_id, member_id) DO NOTHING""",
        tenant_id,
        task_id,
        member_id,
        at,
        window_end,
    )
    found = await enrolments(conn, member_id, [task_id])
    return found[task_id]


async def enrolments(conn: Connection, member_id: str, task_ids: Sequence[str]) -> dict[str, EnrolmentRow]:
    found = await enrolments_of(conn, [member_id], task_ids)
    return {task_id: row for (task_id, _), row in found.items()}


async def enrolments_of(
    conn: Connection, member_ids: Sequence[str], task_ids: Sequence[str]
) -> dict[tuple[str, str], EnrolmentRow]:
    """The enrolments of these members in these tasks, by (task id, member id)."""
    rows = await conn.fetch(
        """SELECT task_id, member_id, enrol_time, window_end_time FROM tasks.enrolments
           WHERE task_id = ANY($2::text[]) AND member_id = ANY($1::text[])""",
        list(member_ids),
        list(task_ids),
    )
    return {(r["task_id"], r["member_id"]): EnrolmentRow(**dict(r)) for r in rows}


# --- progress of counted tasks -------------------------------------------------------------------


async def measures(conn: Connection, member_id: str, task_ids: Sequence[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT task_id, measure FROM tasks.progress WHERE member_id = $1 AND task_id = ANY($2::text[])",
        member_id,
        list(task_ids),
    )
    return {r["task_id"]: r["measure"] for r in rows}
