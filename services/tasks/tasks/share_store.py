"""SQL of shares: one row per member and distinct target shared. Runs inside a tenant transaction,
after the member's account is locked.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime.db import Connection


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
