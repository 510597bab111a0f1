"""What the erasure tests share: a scan of a whole schema for a text (a member's id) in every
column of every table, whatever the table, so a table added later is scanned too."""

from __future__ import annotations

import uuid
from typing import Any

from runtime.db import Database


def pseudonym() -> str:
    """A fresh pseudonym, as tagging's EraseMember makes them."""
    return f"erased-{uuid.uuid4()}"


# Column types a member id could hide in (arrays and JSON documents as their text).
_SCANNED = ("text", "character varying", "jsonb", "json", "ARRAY")


async def rows_naming(db: Database, schema: str, needle: str) -> dict[str, int]:
    """`table.column` -> rows whose value contains `needle`, over every tenant (the tests' own pool
    logs in as the owner, so row-level security does not hide any)."""
    async with db.pool.acquire() as conn:
        columns = await conn.fetch(
            """SELECT c.table_name, c.column_name FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_schema, table_name)
               WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE' AND c.data_type = ANY($2::text[])
               ORDER BY 1, 2""",
            schema,
            list(_SCANNED),
        )
        assert columns, f"schema {schema} has no tables yet: its service has not migrated it"
        found: dict[str, int] = {}
        for column in columns:
            table, name = column["table_name"], column["column_name"]
            count = await conn.fetchval(
                f'SELECT count(*) FROM {schema}."{table}" WHERE strpos("{name}"::text, $1) > 0', needle
            )
            if count:
                found[f"{table}.{name}"] = count
        return found


async def member_tables(db: Database, schema: str) -> set[str]:
    """The schema's tables with a column of member ids (`member_id`, `inviter_member_id`, ...):
    each must be one an erasure moves, or a table added later would keep members' ids."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT DISTINCT c.table_name FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_schema, table_name)
               WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE'
                 AND right(c.column_name, 9) = 'member_id'""",
            schema,
        )
    return {row["table_name"] for row in rows}


async def value(db: Database, sql: str, *args: Any) -> Any:
    """One value read as the owner (every tenant)."""
    async with db.pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def row(db: Database, sql: str, *args: Any) -> tuple[Any, ...]:
    """One row read as the owner (every tenant)."""
    async with db.pool.acquire() as conn:
        found = await conn.fetchrow(sql, *args)
    assert found is not None
    return tuple(found.values())
