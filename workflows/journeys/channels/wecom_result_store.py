"""SQL of WeCom messages' results (journeys migration 0012): the message log rows of the `wecom`
channel still to read back, and what was read. Functions take a connection inside the caller's
tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection
from workflows.journeys.message_log import FINAL

_FINAL_SQL = ", ".join(f"'{status}'" for status in FINAL)


@dataclass(frozen=True)
class Unread:
    """A WeCom message whose result is not read yet (its message log key, status, provider id)."""

    journey_run: str
    member_id: str
    step_id: str
    status: str
    provider_id: str
    create_time: dt.datetime


async def unread(conn: Connection, asked_before: dt.datetime, limit: int) -> list[Unread]:
    """Up to `limit` of the tenant's settled WeCom messages without a result, oldest first, not
    asked since `asked_before`."""
    rows = await conn.fetch(
        f"""SELECT journey_run, member_id, step_id, status, provider_id, create_time
            FROM journeys.messages
            WHERE channel = 'wecom' AND wecom_result = '' AND status IN ({_FINAL_SQL})
              AND (wecom_checked IS NULL OR wecom_checked < $1)
            ORDER BY create_time LIMIT $2""",
        asked_before,
        limit,
    )
    return [Unread(**dict(row)) for row in rows]


async def record(
    conn: Connection, messages: Sequence[Unread], results: Sequence[str], now: dt.datetime
) -> None:
    """Stores each message's result ('' leaves it unread, asked at `now`)."""
    await conn.execute(
        """UPDATE journeys.messages m SET wecom_result = r.result, wecom_checked = $5
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                AS r(journey_run, member_id, step_id, result)
           WHERE m.journey_run = r.journey_run AND m.member_id = r.member_id AND m.step_id = r.step_id
             AND m.wecom_result = ''""",
        [m.journey_run for m in messages],
        [m.member_id for m in messages],
        [m.step_id for m in messages],
        list(results),
        now,
    )
