"""SQL of coupon templates and their versions. Every function runs on a connection inside a tenant
transaction (row-level security scopes it; the tenant is passed only for inserts).

An issue holds a key-share lock on its template's row (tasks.issue_coupon), so an update
or a retirement, which lock the row for update, waits for the issues in flight and the issues
after it see the new version. The stock is an allowance (services/tasks/allowance), not a column.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from runtime.db import Connection


@dataclass(frozen=True)
class TemplateRow:
    template_id: str
    discount_kind: int
    state: int
    version: int
    body: dict[str, Any]
    content_hash: str
    used: int
    create_time: dt.datetime
    update_time: dt.datetime


_TEMPLATE = """
SELECT t.template_id, t.discount_kind, t.state, t.current_version AS version, v.body::text AS body,
       v.content_hash,
       (SELECT count(*) FROM tasks.coupons c
        WHERE c.tenant_id = t.tenant_id AND c.template_id = t.template_id AND c.state = 2) AS used,
       t.create_time, t.update_time
FROM tasks.coupon_templates t
JOIN tasks.coupon_template_versions v ON v.tenant_id = t.tenant_id AND v.template_id = t.template_id
                                     AND v.version = t.current_version"""


def _template(row: asyncpg.Record) -> TemplateRow:
    return TemplateRow(**{**dict(row), "body": json.loads(row["body"])})


async def insert_template(
    conn: Connection, tenant_id: str, template_id: str, body: dict[str, Any], digest: str
) -> bool:
    """Creates the template at version 1; False when the id is taken."""
    created = await conn.fetchval(
        """WITH t AS (INSERT INTO tasks.coupon_templates (tenant_id, template_id, discount_kind)
                      VALUES ($1, $2, $3) ON CONFLICT (tenant_id, template_id) DO NOTHING
                      RETURNING template_id)
           INSERT INTO tasks.coupon_template_versions (tenant_id, template_id, version, body, content_hash)
           SELECT $1, template_id, 1, $4::jsonb, $5 FROM t RETURNING true""",
        tenant_id,
        template_id,
        body["discount"]["kind"],
        json.dumps(body),
        digest,
    )
    return bool(created)


async def template(conn: Connection, template_id: str) -> TemplateRow | None:
    row = await conn.fetchrow(f"{_TEMPLATE} WHERE t.template_id = $1", template_id)
    return None if row is None else _template(row)


async def lock_template(conn: Connection, template_id: str) -> TemplateRow | None:
    """Locks the template for update (waiting for the issues in flight), then reads it as it stands
    (one statement would recheck the join against the version row it read before a wait; see
    definition_store.lock_task)."""
    if not await conn.fetchval(
        "SELECT true FROM tasks.coupon_templates WHERE template_id = $1 FOR UPDATE", template_id
    ):
        return None
    return await template(conn, template_id)


async def templates(conn: Connection, after: str, limit: int, state: int | None) -> list[TemplateRow]:
    rows = await conn.fetch(
        f"""{_TEMPLATE} WHERE t.template_id > $1 AND ($3::smallint IS NULL OR t.state = $3)
            ORDER BY t.template_id LIMIT $2""",
        after,
        limit,
        state,
    )
    return [_template(r) for r in rows]


async def add_version(
    conn: Connection, tenant_id: str, template_id: str, version: int, body: dict[str, Any], digest: str
) -> None:
    """Stores the version and makes it current (the caller holds the template's lock)."""
    await conn.execute(
        """WITH v AS (INSERT INTO tasks.coupon_template_versions (tenant_id, template_id, version, body,
                                                                 content_hash)
                      VALUES ($1, $2, $3, $4::jsonb, $5))
           UPDATE tasks.coupon_templates SET current_version = $3, update_time = now()
           WHERE template_id = $2""",
        tenant_id,
        template_id,
        version,
        json.dumps(body),
        digest,
    )


async def retire_template(conn: Connection, template_id: str) -> None:
    """Retires the template once the issues in flight are done (the lock for update waits for
    their key-share locks), so no coupon is issued from it after the retirement commits."""
    await conn.execute(
        """UPDATE tasks.coupon_templates SET state = 2, update_time = now()
           WHERE template_id = (SELECT template_id FROM tasks.coupon_templates
                                WHERE template_id = $1 AND state = 1 FOR UPDATE)""",
        template_id,
    )
