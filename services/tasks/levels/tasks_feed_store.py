"""SQL of the tasks feed (`tasks.feed`), the outbox of level changes: an entry is written in the
transaction that changes the level, and read once settled (runtime/outbox.py), by
ReadTasksFeed and by the level publisher's relay to tagging.
"""

from __future__ import annotations

import json
from typing import Any

from runtime import outbox
from runtime.db import Connection


async def append_change(conn: Connection, tenant_id: str, member_id: str, payload: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO tasks.feed (tenant_id, kind, member_id, payload) VALUES ($1, 1, $2, $3::jsonb)",
        tenant_id,
        member_id,
        json.dumps(payload),
    )


async def read_feed(conn: Connection, after: outbox.Position | None, limit: int) -> list[dict[str, Any]]:
    """Settled feed entries after `after`: cursor, member_id, payload (parsed), create_time."""
    rows = await outbox.read_settled(
        conn, "tasks.feed", "member_id, payload::text AS payload, create_time", after, limit
    )
    return [
        {
            "cursor": outbox.cursor_of(r),
            "member_id": r["member_id"],
            "payload": json.loads(r["payload"]),
            "create_time": r["create_time"],
        }
        for r in rows
    ]
