"""The message log and the channel send windows (SQL only).

A row keyed by (tenant, journey run, member, step) is claimed, in status `sending`, in a committed
transaction *before* the provider is called. Whatever happens afterwards (a retry, a crashed
worker, a timed-out attempt) finds the row: `sent`, `failed` and `unknown` are final, `retry` says
the provider certainly did not take it, and `sending` found by a later attempt means the earlier
one died while the provider had the message in hand, so the outcome is unknown and it is never sent
again. Claims of one member are serialised by a transaction lock, so the daily cap cannot be passed
by two journeys sending at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.common.db import Connection

FINAL = ("sent", "failed", "unknown", "skipped")
# What counts against the daily cap: everything that may have reached the member.
COUNTED = ("sending", "sent", "unknown")
WINDOW = dt.timedelta(minutes=1)
# Windows older than this are deleted by the claims that pass by.
WINDOW_KEEP = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Key:
    tenant_id: str
    journey_run: str
    member_id: str
    step_id: str


@dataclass(frozen=True)
class Row:
    status: str
    channel: str
    detail: str


async def lock_member(conn: Connection, key: Key) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", f"send\x1f{key.tenant_id}\x1f{key.member_id}"
    )


async def find(conn: Connection, key: Key) -> Row | None:
    row = await conn.fetchrow(
        """SELECT status, channel, detail FROM journeys.messages
           WHERE tenant_id = $1 AND journey_run = $2 AND member_id = $3 AND step_id = $4""",
        key.tenant_id,
        key.journey_run,
        key.member_id,
        key.step_id,
    )
    return None if row is None else Row(row["status"], row["channel"], row["detail"])


async def sent_on(conn: Connection, tenant_id: str, member_id: str, day: dt.date) -> int:
    count: int = await conn.fetchval(
        """SELECT count(*) FROM journeys.messages
           WHERE tenant_id = $1 AND member_id = $2 AND local_day = $3 AND status = ANY($4::text[])""",
        tenant_id,
        member_id,
        day,
        list(COUNTED),
    )
    return count


def window_of(now: dt.datetime) -> dt.datetime:
    return now.replace(second=0, microsecond=0)


async def take_window_slot(
    conn: Connection, tenant_id: str, channel: str, now: dt.datetime, limit: int
) -> bool:
    """Counts one send in the channel's current one-minute window, unless it is full."""
    start = window_of(now)
    taken = await conn.fetchval(
        """INSERT INTO journeys.channel_windows AS w (tenant_id, channel, window_start, sent)
           VALUES ($1, $2, $3, 1)
           ON CONFLICT (tenant_id, channel, window_start) DO UPDATE SET sent = w.sent + 1
           WHERE w.sent < $4
           RETURNING sent""",
        tenant_id,
        channel,
        start,
        limit,
    )
    await conn.execute(
        "DELETE FROM journeys.channel_windows WHERE tenant_id = $1 AND channel = $2 AND window_start < $3",
        tenant_id,
        channel,
        start - WINDOW_KEEP,
    )
    return taken is not None


async def claim(
    conn: Connection, key: Key, journey_key: str, channel: str, day: dt.date, now: dt.datetime
) -> None:
    """Writes (or, after a certain non-delivery, re-takes) the row in status `sending`."""
    await conn.execute(
        """INSERT INTO journeys.messages AS m (tenant_id, journey_run, member_id, step_id, journey_key,
                                               channel, status, local_day, create_time, update_time)
           VALUES ($1, $2, $3, $4, $5, $6, 'sending', $7, $8, $8)
           ON CONFLICT (tenant_id, journey_run, member_id, step_id) DO UPDATE
           SET status = 'sending', channel = excluded.channel, local_day = excluded.local_day,
               attempts = m.attempts + 1, update_time = excluded.update_time
           WHERE m.status = 'retry'""",
        key.tenant_id,
        key.journey_run,
        key.member_id,
        key.step_id,
        journey_key,
        channel,
        day,
        now,
    )


async def record(
    conn: Connection,
    key: Key,
    status: str,
    now: dt.datetime,
    *,
    detail: str = "",
    provider_id: str = "",
    journey_key: str = "",
    day: dt.date | None = None,
) -> None:
    """Sets the row's outcome; creates the row for outcomes decided before any claim (skipped)."""
    await conn.execute(
        """INSERT INTO journeys.messages AS m (tenant_id, journey_run, member_id, step_id, journey_key,
                                               channel, status, detail, provider_id, local_day,
                                               create_time, update_time)
           VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8, $9, $10, $10)
           ON CONFLICT (tenant_id, journey_run, member_id, step_id) DO UPDATE
           SET status = excluded.status, detail = excluded.detail, provider_id = excluded.provider_id,
               update_time = excluded.update_time""",
        key.tenant_id,
        key.journey_run,
        key.member_id,
        key.step_id,
        journey_key,
        status,
        detail[:1000],
        provider_id,
        day or now.date(),
        now,
    )
