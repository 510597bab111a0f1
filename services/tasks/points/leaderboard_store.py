"""SQL of leaderboards: members ranked by what they earned (ledger_store.EARNED) in a period. Runs
inside a read-only tenant transaction.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from runtime.db import Connection
from services.tasks.points.ledger_store import EARNED, EARNED_REASONS


async def leaderboard(
    conn: Connection, start: dt.datetime, end: dt.datetime, top_n: int, member_id: str
) -> list[asyncpg.Record]:
    """Rows `member_id, points, rank` of the top `top_n` ranks (ties all included) and of
    `member_id` if it earned anything, by rank then member id."""
    return list(
        await conn.fetch(
            f"""WITH earned AS (
                    SELECT member_id, sum({EARNED}) AS points FROM tasks.ledger_entries
                    WHERE reason IN {EARNED_REASONS} AND create_time >= $1 AND create_time < $2
                    GROUP BY member_id HAVING sum({EARNED}) > 0),
                ranked AS (SELECT member_id, points, rank() OVER (ORDER BY points DESC) AS rank FROM earned)
                SELECT member_id, points, rank FROM ranked WHERE rank <= $3 OR member_id = $4
                ORDER BY rank, member_id""",
            start,
            end,
            top_n,
            member_id,
        )
    )
