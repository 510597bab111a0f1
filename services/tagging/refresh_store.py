"""SQL of tagging.refresh_queue: the members owed a real-time refresh, and of which inputs.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import asyncpg

from runtime.db import Connection


async def queue_refresh(
    conn: Connection,
    tenant_id: str,
    member_ids: Sequence[str],
    inputs: int,
    fact_time: dt.datetime | Mapping[str, dt.datetime] | None = None,
) -> None:
    """Owes these members a real-time refresh of `inputs` (bits) for facts that happened at
    `fact_time` (one time, or each member's); merged into a row already owed, which keeps the
    earliest time (the changes the refresh makes are dated by it). None: unknown, the refresh's own
    clock dates them.

    The earliest, because one refresh cannot tell which of its facts made a change: with the
    latest, a fresh event arriving beside a history load made the history's changes news (and
    enrolled members); with the earliest, a fresh fact that shares a refresh with a history one
    (both owed within the same instant) loses its news, never history gains any."""
    if not member_ids:
        return
    times = [fact_time.get(m) if isinstance(fact_time, Mapping) else fact_time for m in member_ids]
    await conn.execute(
        """INSERT INTO tagging.refresh_queue AS q (tenant_id, member_id, inputs, fact_time)
           SELECT $1, m.member_id, $3, m.fact_time
           FROM (SELECT u.member_id, min(u.fact_time) AS fact_time
                 FROM unnest($2::text[], $4::timestamptz[]) AS u(member_id, fact_time)
                 GROUP BY u.member_id) m
           ORDER BY m.member_id
           ON CONFLICT (tenant_id, member_id)
           DO UPDATE SET inputs = q.inputs | excluded.inputs, seq = nextval('tagging.refresh_queue_seq'),
                         fact_time = least(q.fact_time, excluded.fact_time)""",
        tenant_id,
        list(member_ids),
        inputs,
        times,
    )


async def owed_refreshes(conn: Connection, member_ids: Sequence[str]) -> list[asyncpg.Record]:
    """The queue rows of these members: `member_id, inputs, seq, fact_time`."""
    return list(
        await conn.fetch(
            """SELECT member_id, inputs, seq, fact_time FROM tagging.refresh_queue
               WHERE member_id = ANY($1::text[])""",
            list(member_ids),
        )
    )


async def settle_refreshes(conn: Connection, seen: Sequence[tuple[str, int]]) -> None:
    """Deletes the queue rows a refresh saw; a row a later fact bumped (a higher seq) stays owed."""
    await conn.execute(
        """DELETE FROM tagging.refresh_queue q
           USING unnest($1::text[], $2::bigint[]) AS s(member_id, seq)
           WHERE q.member_id = s.member_id AND q.seq <= s.seq""",
        [member_id for member_id, _ in seen],
        [seq for _, seq in seen],
    )


async def stale_refreshes(conn: Connection, older_than: float, limit: int) -> list[str]:
    """Members owed a refresh for longer than `older_than` seconds: their request's refresh failed
    or its process died."""
    rows = await conn.fetch(
        """SELECT member_id FROM tagging.refresh_queue
           WHERE queued_at < now() - make_interval(secs => $1) ORDER BY seq LIMIT $2""",
        older_than,
        limit,
    )
    return [row["member_id"] for row in rows]
