"""SQL of erasures: the audit rows in tagging.member_erasures, and moving a member's tagging rows to
a pseudonym with its personal data cleared. Every function runs on a connection already inside a
tenant transaction."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence

import asyncpg

from runtime.db import Connection

_ERASURE_COLUMNS = "request_id, member_id, pseudonym, operator, reason, erase_time, finish_time"

# Tables whose `member_id` is not moved by the generic statement of `move_member`: the member row
# itself (replaced by the pseudonym's, below) and the erasures' own audit.
_NOT_MOVED = frozenset({"members", "member_erasures"})

# What a moved row loses besides its member id, per table: a search text may name the member
# ("zhang wei phone case"), and a feed payload repeats the member id (an event's, its query).
# `$2` is the pseudonym, `$3` the erased member id.
SCRUBBED = {
    "events": "query = ''",
    # An import's digest of the order's wire form, member id included; a re-sent order of the
    # erased member then goes the full way (its member is unknown).
    "orders": "import_digest = NULL",
    "feed": """payload = replace(
                   (CASE WHEN payload ? 'query' THEN jsonb_set(payload, '{query}', '""')
                         ELSE payload END)::text,
                   to_jsonb($3::text)::text, to_jsonb($2::text)::text)::jsonb""",
}

# Fields of the member row kept under the pseudonym: what the business counts by (registration,
# channel, level, the coarse city tier), none of which names or reaches the person.
_KEPT = "city_tier, register_time, register_channel, level, create_time"


async def lock_request(conn: Connection, request_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_ERASURE_COLUMNS} FROM tagging.member_erasures WHERE request_id = $1 FOR UPDATE",
        request_id,
    )


async def unfinished_pseudonym(conn: Connection, member_id: str) -> str | None:
    """The pseudonym of an erasure of this member still under way (another request's)."""
    value: str | None = await conn.fetchval(
        "SELECT pseudonym FROM tagging.member_erasures WHERE member_id = $1 LIMIT 1", member_id
    )
    return value


async def member_exists(conn: Connection, member_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM tagging.members WHERE member_id = $1", member_id))


async def insert_request(
    conn: Connection,
    tenant_id: str,
    request_id: str,
    member_id: str,
    pseudonym: str,
    operator: str,
    reason: str,
    erase_time: dt.datetime,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""INSERT INTO tagging.member_erasures
                (tenant_id, request_id, member_id, pseudonym, operator, reason, erase_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            RETURNING {_ERASURE_COLUMNS}""",
        tenant_id,
        request_id,
        member_id,
        pseudonym,
        operator,
        reason,
        erase_time,
    )
    assert row is not None
    return row


async def add_changes(conn: Connection, request_id: str, changed: Mapping[str, int]) -> None:
    """Adds `changed` (rows per "service.table") to the request's audit."""
    await conn.execute(
        """UPDATE tagging.member_erasures SET changed_rows = (
               SELECT coalesce(jsonb_object_agg(k, total), '{}'::jsonb)
               FROM (SELECT k, sum(v::bigint) AS total
                     FROM (SELECT key AS k, value AS v FROM jsonb_each_text(changed_rows)
                           UNION ALL SELECT key, value FROM jsonb_each_text($2::jsonb)) AS both_
                     GROUP BY k) AS summed)
           WHERE request_id = $1""",
        request_id,
        json.dumps(dict(changed)),
    )


async def finish(
    conn: Connection,
    request_id: str,
    member_id: str,
    pseudonym: str,
    changed: Mapping[str, int],
    finish_time: dt.datetime,
) -> None:
    """Adds the request's last `changed` rows and finishes every unfinished erasure of the member
    under this pseudonym: a request that joined another's finishes with it, so none keeps the
    member id because its caller never came back. The rows are locked in request id order first,
    so two requests of one member finishing at once never wait on each other in a cycle."""
    await conn.execute(
        """SELECT 1 FROM tagging.member_erasures WHERE request_id = $1 OR member_id = $2
           ORDER BY request_id FOR UPDATE""",
        request_id,
        member_id,
    )
    await add_changes(conn, request_id, changed)
    await conn.execute(
        """UPDATE tagging.member_erasures SET member_id = NULL, finish_time = $3
           WHERE member_id = $1 AND pseudonym = $2""",
        member_id,
        pseudonym,
        finish_time,
    )


async def member_tables(conn: Connection) -> list[str]:
    """Every table of the tagging schema with a `member_id` column, in name order (the order the
    rows are moved in, so two erasures never lock in opposite orders)."""
    rows = await conn.fetch(
        """SELECT quote_ident(c.relname) AS relname FROM pg_catalog.pg_attribute a
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'tagging' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             AND a.attname = 'member_id' AND NOT a.attisdropped
           ORDER BY c.relname"""
    )
    return [row["relname"] for row in rows]


async def move_member(
    conn: Connection,
    tenant_id: str,
    member_id: str,
    pseudonym: str,
    opted_out: Sequence[int],
    now: dt.datetime,
) -> tuple[dict[str, int], int]:
    """Moves every tagging row of the member (locked by the caller) to `pseudonym` and clears its
    personal data: the member row is replaced by one under the pseudonym holding only `_KEPT`, opted
    out of every channel; rows changed per "tagging.table", and the new row's revision.

    Tables are found, not listed, so a table a later migration adds with a `member_id` column is
    moved too; one that holds personal data beyond the id needs its entry in SCRUBBED."""
    revision: int = await conn.fetchval(
        f"""INSERT INTO tagging.members (tenant_id, member_id, {_KEPT}, opted_out_channels, revision,
                                         update_time)
            SELECT tenant_id, $2, {_KEPT}, $4::smallint[], revision + 1, $5
            FROM tagging.members WHERE tenant_id = $1 AND member_id = $3
            RETURNING revision""",
        tenant_id,
        pseudonym,
        member_id,
        list(opted_out),
        now,
    )
    changed = {"tagging.members": 1}
    for table in await member_tables(conn):
        if table in _NOT_MOVED:
            continue
        scrub = f", {SCRUBBED[table]}" if table in SCRUBBED else ""
        status = await conn.execute(
            f"""UPDATE tagging.{table} SET member_id = $2{scrub}
                WHERE tenant_id = $1 AND member_id = $3""",
            tenant_id,
            pseudonym,
            member_id,
        )
        count = int(status.rsplit(" ", 1)[1])
        if count:
            changed[f"tagging.{table}"] = count
    # The pseudonym keeps the member's number (drawn anew by its insert, while both rows existed):
    # audience's bitmaps then follow the row under its new id, and a count by what was kept
    # (registration channel, level) still counts it.
    await conn.execute(
        """WITH gone AS (DELETE FROM tagging.members WHERE tenant_id = $1 AND member_id = $2
                         RETURNING member_no)
           UPDATE tagging.members SET member_no = (SELECT member_no FROM gone)
           WHERE tenant_id = $1 AND member_id = $3""",
        tenant_id,
        member_id,
        pseudonym,
    )
    return changed, revision
