"""SQL of the cursors of the feeds tasks reads: tagging's (the follower) and its own (the level
publisher's relay). Runs inside tenant transactions; a cursor row is the first lock its reader
takes.
"""

from __future__ import annotations

from runtime.db import Connection

TAGGING = "tagging"


async def cursor(conn: Connection, source: str = TAGGING) -> str:
    stored = await conn.fetchval("SELECT cursor FROM tasks.feed_cursors WHERE source = $1", source)
    return str(stored or "")


async def lock_cursor(conn: Connection, tenant_id: str, source: str = TAGGING) -> str:
    """Creates the cursor row on first use, locks it until commit, and returns its value."""
    stored = await conn.fetchval(
        """INSERT INTO tasks.feed_cursors (tenant_id, source) VALUES ($1, $2)
           ON CONFLICT (tenant_id, source) DO UPDATE SET source = excluded.source
           RETURNING cursor""",
        tenant_id,
        source,
    )
    return str(stored)


async def lock_source(conn: Connection, tenant_id: str, source: str) -> None:
    """Serialises the readers of one source of one tenant until the transaction ends, with no
    transaction id taken: an id held while the reader calls a peer would keep every outbox feed
    in the database from settling for that long."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('memberops.tasks.cursor:' || $1 || ':' || $2, 0))",
        tenant_id,
        source,
    )


async def save_cursor(conn: Connection, value: str, source: str = TAGGING) -> None:
    await conn.execute(
        "UPDATE tasks.feed_cursors SET cursor = $2, update_time = now() WHERE source = $1", source, value
    )
