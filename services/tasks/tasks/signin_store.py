"""SQL of daily sign-ins and the streaks they make. Runs inside a tenant transaction, after the
member's account is locked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection


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
