"""SQL of task definitions and their versions. Every function runs on a connection inside a tenant
transaction (row-level security scopes it; the tenant is passed only for inserts).

A definition's row holds the task's budget (`budget_points`, 0: no limit); completions take it
from the task's allowance (`budget_owner`, services/tasks/allowance/), whose shards are the last
locks a transaction takes (see completion_store.py). What the task used is read from there.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from runtime.db import Connection


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    kind: int
    state: int
    version: int
    body: dict[str, Any]
    content_hash: str
    budget_used: int
    create_time: dt.datetime
    update_time: dt.datetime


_TASK = """
SELECT d.task_id, d.kind, d.state, d.current_version AS version, v.body::text AS body, v.content_hash,
       (SELECT coalesce(sum(a.granted - a.remaining), 0) FROM tasks.allowance_shards a
        WHERE a.owner = 'task:' || d.task_id)::bigint AS budget_used,
       d.create_time, d.update_time
FROM tasks.task_definitions d
JOIN tasks.task_versions v ON v.tenant_id = d.tenant_id AND v.task_id = d.task_id
                          AND v.version = d.current_version"""


def budget_owner(task_id: str) -> str:
    """The task's allowance (its budget; the total is UNLIMITED when the budget is 0)."""
    return f"task:{task_id}"


def _task(row: asyncpg.Record) -> TaskRow:
    return TaskRow(**{**dict(row), "body": json.loads(row["body"])})


async def insert_task(
    conn: Connection, tenant_id: str, task_id: str, kind: int, body: dict[str, Any], digest: str
) -> bool:
    """Creates the task at version 1; False when the id is taken."""
    created = await conn.fetchval(
        """WITH d AS (INSERT INTO tasks.task_definitions (tenant_id, task_id, kind, budget_points)
                      VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, task_id) DO NOTHING RETURNING task_id)
           INSERT INTO tasks.task_versions (tenant_id, task_id, version, body, content_hash)
           SELECT $1, task_id, 1, $5::jsonb, $6 FROM d RETURNING true""",
        tenant_id,
        task_id,
        kind,
        body["budget_points"],
        json.dumps(body),
        digest,
    )
    return bool(created)


async def task(conn: Connection, task_id: str) -> TaskRow | None:
    row = await conn.fetchrow(f"{_TASK} WHERE d.task_id = $1", task_id)
    return None if row is None else _task(row)


async def lock_task(conn: Connection, task_id: str) -> TaskRow | None:
    """Locks the task, then reads it as it stands. In one statement a lock that waited for a
    concurrent update would recheck the join against the version row it read before the wait,
    which is no longer the current one, and find no task at all.

    NO KEY UPDATE (updates never change the key): it still queues concurrent updates, but not the
    foreign-key checks of rows naming the task. A completion inserts its row after it took from
    the budget, and an update holding FOR UPDATE while it waits for that budget shard deadlocked
    with it."""
    if not await conn.fetchval(
        "SELECT true FROM tasks.task_definitions WHERE task_id = $1 FOR NO KEY UPDATE", task_id
    ):
        return None
    return await task(conn, task_id)


async def tasks(conn: Connection, after: str, limit: int, state: int | None) -> list[TaskRow]:
    rows = await conn.fetch(
        f"""{_TASK} WHERE d.task_id > $1 AND ($3::smallint IS NULL OR d.state = $3)
            ORDER BY d.task_id LIMIT $2""",
        after,
        limit,
        state,
    )
    return [_task(r) for r in rows]


async def active_tasks(conn: Connection, kinds: Sequence[int]) -> list[TaskRow]:
    rows = await conn.fetch(
        f"{_TASK} WHERE d.state = 1 AND d.kind = ANY($1::smallint[]) ORDER BY d.task_id", kinds
    )
    return [_task(r) for r in rows]


async def add_version(
    conn: Connection, tenant_id: str, task_id: str, version: int, body: dict[str, Any], digest: str
) -> None:
    await conn.execute(
        """WITH v AS (INSERT INTO tasks.task_versions (tenant_id, task_id, version, body, content_hash)
                      VALUES ($1, $2, $3, $4::jsonb, $5))
           UPDATE tasks.task_definitions SET current_version = $3, budget_points = $6, update_time = now()
           WHERE task_id = $2""",
        tenant_id,
        task_id,
        version,
        json.dumps(body),
        digest,
        body["budget_points"],
    )


async def retire_task(conn: Connection, task_id: str) -> None:
    await conn.execute(
        "UPDATE tasks.task_definitions SET state = 2, update_time = now() WHERE task_id = $1 AND state = 1",
        task_id,
    )
