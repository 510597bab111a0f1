"""Which WeCom corp tag group and tags stand for the tenant's pushed dimensions and their values
(journeys.wecom_tags, migration 0010), as the sync created or adopted them. SQL only; functions take
a connection inside the caller's tenant transaction. The callbacks' pull reads it (a WeCom tag ->
its dimension and value) and forgets what staff deleted in WeCom; the sync writes it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection

# A group's own row has this value (and no tag id).
GROUP = ""


@dataclass(frozen=True)
class TagRow:
    dimension: str
    # GROUP for the dimension's group.
    value: str
    group_id: str
    tag_id: str
    # The name WeCom holds.
    name: str


async def tag_ids(conn: Connection, dimension: str) -> dict[str, str]:
    """value -> WeCom tag id of the dimension's values that have a tag."""
    rows = await conn.fetch(
        "SELECT value, tag_id FROM journeys.wecom_tags WHERE dimension = $1 AND value <> ''", dimension
    )
    return {row["value"]: row["tag_id"] for row in rows}


async def group_of(conn: Connection, group_id: str) -> str | None:
    """The dimension whose group `group_id` is, or None."""
    found: str | None = await conn.fetchval(
        "SELECT dimension FROM journeys.wecom_tags WHERE group_id = $1 AND value = '' LIMIT 1", group_id
    )
    return found


async def value_of(conn: Connection, tag_id: str) -> tuple[str, str] | None:
    """(dimension, value) the WeCom tag stands for, or None."""
    if not tag_id:
        return None
    row = await conn.fetchrow("SELECT dimension, value FROM journeys.wecom_tags WHERE tag_id = $1", tag_id)
    return None if row is None else (row["dimension"], row["value"])


async def rows(conn: Connection, dimensions: Sequence[str]) -> list[TagRow]:
    """The groups' and tags' rows of `dimensions`."""
    found = await conn.fetch(
        """SELECT dimension, value, group_id, tag_id, name FROM journeys.wecom_tags
           WHERE dimension = ANY($1::text[]) ORDER BY dimension, value""",
        list(dimensions),
    )
    return [TagRow(r["dimension"], r["value"], r["group_id"], r["tag_id"], r["name"]) for r in found]


async def save(conn: Connection, tenant_id: str, saved: Sequence[TagRow], now: dt.datetime) -> None:
    """Stores rows (a group or tag created or adopted, or renamed), replacing the (dimension, value)
    row there was; a tag id another value had (a WeCom tag adopted again) moves to this one."""
    for row in saved:
        if row.tag_id:
            await conn.execute(
                "DELETE FROM journeys.wecom_tags WHERE tag_id = $1 AND (dimension, value) <> ($2, $3)",
                row.tag_id,
                row.dimension,
                row.value,
            )
        await conn.execute(
            """INSERT INTO journeys.wecom_tags (tenant_id, dimension, value, group_id, tag_id, name,
                                                update_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (tenant_id, dimension, value) DO UPDATE SET
                   group_id = EXCLUDED.group_id, tag_id = EXCLUDED.tag_id, name = EXCLUDED.name,
                   update_time = EXCLUDED.update_time""",
            tenant_id,
            row.dimension,
            row.value,
            row.group_id,
            row.tag_id,
            row.name,
            now,
        )


async def forget_tags(conn: Connection, tag_ids: Sequence[str]) -> int:
    """Drops the rows of WeCom tags that no longer exist there (deleted by staff); the sync creates
    them again when a member needs them."""
    status = await conn.execute(
        "DELETE FROM journeys.wecom_tags WHERE tag_id = ANY($1::text[]) AND tag_id <> ''", list(tag_ids)
    )
    return int(status.split()[-1])


async def forget_groups(conn: Connection, group_ids: Sequence[str]) -> int:
    """Drops the rows of WeCom groups that no longer exist there, with their tags' rows."""
    status = await conn.execute(
        "DELETE FROM journeys.wecom_tags WHERE group_id = ANY($1::text[])", list(group_ids)
    )
    return int(status.split()[-1])


async def forget(conn: Connection, ids: Sequence[str]) -> int:
    """Drops the rows of the WeCom tags and groups among `ids` (a `change_external_tag` delete:
    either kind of id), so the sync creates them again when a member needs them."""
    status = await conn.execute(
        """DELETE FROM journeys.wecom_tags
           WHERE (tag_id = ANY($1::text[]) AND tag_id <> '') OR group_id = ANY($1::text[])""",
        list(ids),
    )
    return int(status.split()[-1])
