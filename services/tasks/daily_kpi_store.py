"""SQL of GetDailyKpis: sign-ins and the ledger's credits and redemptions per day of a zone. Runs
inside a read-only tenant transaction; each part reads through an index by day or time
(migration 0012 and ledger_entries_earned)."""

from __future__ import annotations

import datetime as dt

import asyncpg

from runtime.day_ranges import DayRange
from runtime.db import Connection


async def sign_ins(conn: Connection, days: DayRange) -> list[asyncpg.Record]:
    """Rows `day, sign_ins, members` of the days with sign-ins (every sign-in task; a make-up
    counts on the day it fills). A sign-in's day is its task's calendar day, as recorded."""
    return list(
        await conn.fetch(
            """SELECT day, count(*) AS sign_ins, count(DISTINCT member_id) AS members
               FROM tasks.sign_ins WHERE day BETWEEN $1 AND $2 GROUP BY day""",
            days.first,
            days.last,
        )
    )


async def points(conn: Connection, days: DayRange) -> list[asyncpg.Record]:
    """Rows `day, issued, redeemed` of the days with ledger entries that credit or redeem: issued
    sums every positive entry (tasks, orders, operators' credits), redeemed the redemptions net of
    any positive redemption entry. Each part reads its own partial index."""
    return list(
        await conn.fetch(
            """WITH e AS (
                   SELECT create_time, delta, reason FROM tasks.ledger_entries
                   WHERE reason IN (1, 2, 6, 7) AND create_time >= $1 AND create_time < $2 AND delta > 0
                   UNION ALL
                   SELECT create_time, delta, reason FROM tasks.ledger_entries
                   WHERE reason IN (3, 4) AND create_time >= $1 AND create_time < $2)
               SELECT (create_time AT TIME ZONE $3::text)::date AS day,
                      coalesce(sum(delta) FILTER (WHERE delta > 0), 0)::bigint AS issued,
                      coalesce(-sum(delta) FILTER (WHERE reason = 4), 0)::bigint AS redeemed
               FROM e GROUP BY 1""",
            days.start,
            days.end,
            days.zone_name,
        )
    )


def by_day(rows: list[asyncpg.Record]) -> dict[dt.date, asyncpg.Record]:
    return {row["day"]: row for row in rows}
