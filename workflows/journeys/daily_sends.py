"""The message log by day (SQL only): what GetDailySends answers and what the KPI anomaly check's
send failure rate is made of. A row counts on the day of the zone asked that it was written (its
`create_time`: when the send was claimed, or its skip decided), under its outcome as it is now."""

from __future__ import annotations

import asyncpg

from runtime.day_ranges import DayRange
from runtime.db import Connection

# Outcomes a provider answered: the denominator of the send failure rate (failed and unknown are
# its numerator; skipped never reached a provider, queued, sending and retry are under way).
ANSWERED = ("sent", "failed", "unknown")
FAILED = ("failed", "unknown")


async def by_day(conn: Connection, days: DayRange) -> list[asyncpg.Record]:
    """Rows `day, channel, outcome, messages` of the (day, channel, outcome) with messages, by day,
    channel, outcome (a skip decided before any channel has channel '')."""
    return list(
        await conn.fetch(
            """SELECT (create_time AT TIME ZONE $3::text)::date AS day, channel, status AS outcome,
                      count(*) AS messages
               FROM journeys.messages WHERE create_time >= $1 AND create_time < $2
               GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
            days.start,
            days.end,
            days.zone_name,
        )
    )
