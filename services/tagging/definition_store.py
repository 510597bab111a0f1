"""SQL of the tag catalog: tag_definitions and their versions.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from runtime.db import Connection

_DEFINITION = """
SELECT d.dimension, v.version, d.state, v.body::text AS body, v.content_hash, d.create_time,
       d.update_time
FROM tagging.tag_definitions d
JOIN tagging.tag_definition_versions v ON v.dimension = d.dimension"""


def _definition_row(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "body": json.loads(row["body"])}


async def insert_definition(
    conn: Connection, tenant_id: str, dimension: str, body: dict[str, Any], digest: str
) -> bool:
    """Creates the dimension at version 1; False when it exists already."""
    created = await conn.fetchval(
        """INSERT INTO tagging.tag_definitions (tenant_id, dimension, current_version)
           VALUES ($1, $2, 1) ON CONFLICT (tenant_id, dimension) DO NOTHING RETURNING true""",
        tenant_id,
        dimension,
    )
    if created:
        await _insert_version(conn, tenant_id, dimension, 1, body, digest)
    return bool(created)


async def _insert_version(
    conn: Connection, tenant_id: str, dimension: str, version: int, body: dict[str, Any], digest: str
) -> None:
    await conn.execute(
        """INSERT INTO tagging.tag_definition_versions (tenant_id, dimension, version, body, content_hash)
           VALUES ($1, $2, $3, $4::jsonb, $5)""",
        tenant_id,
        dimension,
        version,
        json.dumps(body, separators=(",", ":")),
        digest,
    )


async def add_definition_version(
    conn: Connection, tenant_id: str, dimension: str, version: int, body: dict[str, Any], digest: str
) -> None:
    await _insert_version(conn, tenant_id, dimension, version, body, digest)
    await conn.execute(
        "UPDATE tagging.tag_definitions SET current_version = $2, update_time = now() WHERE dimension = $1",
        dimension,
        version,
    )


async def get_definition(
    conn: Connection, dimension: str, version: int | None
) -> tuple[dict[str, Any], str] | None:
    """The definition at `version` (the current one when None) and its content hash."""
    row = await conn.fetchrow(
        f"{_DEFINITION} AND v.version = COALESCE($2, d.current_version) WHERE d.dimension = $1",
        dimension,
        version,
    )
    return None if row is None else (_definition_row(row), row["content_hash"])


async def lock_definition(conn: Connection, dimension: str) -> tuple[dict[str, Any], str] | None:
    """Locks the definition, then reads its current version: locked in the same statement as the
    join, a lock that waited for a concurrent update would recheck the join against the old version
    row and find nothing."""
    if not await conn.fetchval(
        "SELECT true FROM tagging.tag_definitions WHERE dimension = $1 FOR UPDATE", dimension
    ):
        return None
    return await get_definition(conn, dimension, None)


async def list_definitions(
    conn: Connection, after_dimension: str, limit: int, include_retired: bool
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""{_DEFINITION} AND v.version = d.current_version
            WHERE d.dimension > $1 AND ($3 OR d.state = 1)
            ORDER BY d.dimension LIMIT $2""",
        after_dimension,
        limit,
        include_retired,
    )
    return [_definition_row(row) for row in rows]


async def retire_definition(conn: Connection, dimension: str) -> bool:
    status = await conn.execute(
        """UPDATE tagging.tag_definitions SET state = 2,
               update_time = CASE WHEN state = 2 THEN update_time ELSE now() END
           WHERE dimension = $1""",
        dimension,
    )
    return status != "UPDATE 0"


async def active_definition_versions(conn: Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch("SELECT dimension, current_version FROM tagging.tag_definitions WHERE state = 1")
    )
