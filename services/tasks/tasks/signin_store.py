"""SQL of daily sign-ins and the streaks they make. Runs inside a tenant transaction, after the
member's account is locked; `sign_in_day` runs a whole day's sign-in as one statement of its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from runtime.db import Connection
from services.tasks.tasks.completion_store import CompletionRow


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


async def sign_in_by_request(conn: Connection, request_id: str) -> SignInRow | None:
    """The sign-in `request_id` wrote, if any."""
    row = await conn.fetchrow(
        f"SELECT {_SIGN_IN_COLUMNS} FROM tasks.sign_ins WHERE request_id = $1", request_id
    )
    return None if row is None else SignInRow(**dict(row))


@dataclass(frozen=True)
class DayTerms:
    """What of the task a day's sign-in needs, read from its definition."""

    task_id: str
    version: int
    rewards: Sequence[int]
    claim: bool
    per_day: int
    total: int
    cycle: tuple[dt.date, dt.date]
    expire_time: dt.datetime | None
    milestones: Sequence[tuple[int, str]]  # (streak days, badge id)
    task_badge: str | None


@dataclass(frozen=True)
class DayRequest:
    """A member's sign-in on the task's `day` under `request_id` (its content hash `digest`)."""

    terms: DayTerms
    member_id: str
    day: dt.date
    request_id: str
    digest: str
    now: dt.datetime


@dataclass(frozen=True)
class DaySignIn:
    """What `tasks.sign_in` did for a day's sign-in (migration 0019). `outcome`: 'asked' (the
    request id's earlier sign-in and its completion), 'paid' (the new sign-in and its completion),
    or, with nothing written, 'signed' (another request signed the day), 'daily_limit',
    'total_limit', 'budget' (the budget cannot pay `points`) or 'stale' (the task changed)."""

    outcome: str
    points: int | None
    sign_in: SignInRow | None
    completion: CompletionRow | None


_SIGNED_COLUMNS = ", ".join(
    [f"(r.s).{name} AS s_{name}" for name in _SIGN_IN_COLUMNS.split(", ")]
    + [f"(r.c).{name} AS c_{name}" for name in CompletionRow.__dataclass_fields__]
)


async def sign_in_day(pool: asyncpg.Pool, tenant_id: str, r: DayRequest) -> DaySignIn:
    """A day's sign-in in full (the account lock, the request id, the day, the limits, the streak,
    the sign-in, the earning, the budget take, the completion, the badges) in one round trip, as
    one autocommitted statement (`tasks.sign_in` enters the tenant itself). A request id another
    member's call took at the same moment raises asyncpg.UniqueViolationError (a second call finds
    it)."""
    row = await pool.fetchrow(
        f"""SELECT {_SIGNED_COLUMNS}, r.outcome, r.points
            FROM tasks.sign_in($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                               $18) r""",
        tenant_id,
        r.terms.task_id,
        r.terms.version,
        r.member_id,
        r.day,
        r.request_id,
        r.digest,
        list(r.terms.rewards),
        r.terms.claim,
        r.terms.per_day,
        r.terms.total,
        *r.terms.cycle,
        r.terms.expire_time,
        r.now,
        [days for days, _ in r.terms.milestones],
        [badge for _, badge in r.terms.milestones],
        r.terms.task_badge,
    )
    assert row is not None
    return _day_sign_in(row)


async def sign_in_days(
    pool: asyncpg.Pool, tenant_id: str, terms: DayTerms, day: dt.date, requests: Sequence[DayRequest]
) -> list[DaySignIn]:
    """Several members' sign-ins on one task and `day` (distinct members, distinct request ids,
    every request of these `terms` but for its own time and expiry) as one statement
    (`tasks.sign_in_batch`, migration 0023): one DaySignIn per request, in order. Raises
    asyncpg's error with SQLSTATE `BATCH_REFUSED` when the budget cannot pay them all or the task
    changed, having written nothing; the caller then signs them in one by one."""
    rows = await pool.fetch(
        f"""SELECT {_SIGNED_COLUMNS}, r.outcome, r.points
            FROM tasks.sign_in_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                                     $17, $18) r""",
        tenant_id,
        terms.task_id,
        terms.version,
        day,
        [r.member_id for r in requests],
        [r.request_id for r in requests],
        [r.digest for r in requests],
        [r.now for r in requests],
        [r.terms.expire_time for r in requests],
        list(terms.rewards),
        terms.claim,
        terms.per_day,
        terms.total,
        *terms.cycle,
        [days for days, _ in terms.milestones],
        [badge for _, badge in terms.milestones],
        terms.task_badge,
    )
    return [_day_sign_in(row) for row in rows]


# What tasks.sign_in_batch raises when the group as a whole is refused (budget or version).
BATCH_REFUSED = "MS003"


def _day_sign_in(row: asyncpg.Record) -> DaySignIn:
    sign_in = None
    if row["s_day"] is not None:
        sign_in = SignInRow(**{name: row[f"s_{name}"] for name in _SIGN_IN_COLUMNS.split(", ")})
    completion = None
    if row["c_completion_id"] is not None:
        completion = CompletionRow(**{name: row[f"c_{name}"] for name in CompletionRow.__dataclass_fields__})
    return DaySignIn(row["outcome"], row["points"], sign_in, completion)


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


async def insert_makeup(
    conn: Connection,
    tenant_id: str,
    task_id: str,
    member_id: str,
    day: dt.date,
    streak: int,
    request_id: str,
    digest: str,
) -> SignInRow:
    """A make-up's sign-in row (it pays nothing, so it names no completion). Today's sign-ins are
    written by `sign_in_today`."""
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.sign_ins (tenant_id, task_id, member_id, day, streak, makeup, request_id,
                                        content_hash)
            VALUES ($1, $2, $3, $4, $5, true, $6, $7)
            RETURNING {_SIGN_IN_COLUMNS}""",
        tenant_id,
        task_id,
        member_id,
        day,
        streak,
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
