"""The pool hands out connections without state: what a transaction set ends with it, and a
connection given back inside a transaction (a cancelled call) is reset before reuse. (The `tagging`
fixture is there for its migrations, which create the app role.)"""

from __future__ import annotations

from services.common import app
from services.common.db import Database


async def tenant_and_role(db: Database) -> tuple[str, str]:
    """The tenant a fresh connection carries ('' for none) and its role."""
    async with db.pool.acquire() as conn:
        assert not conn.is_in_transaction()
        tenant = await conn.fetchval("SELECT current_setting('memberops.tenant_id', true)")
        return tenant or "", await conn.fetchval("SELECT current_user")


async def test_a_finished_transaction_leaves_nothing_behind(pg_dsn: str, tagging: app.RunningService) -> None:
    db = await Database.connect(pg_dsn, min_size=1, max_size=1)
    try:
        before = await tenant_and_role(db)
        assert before[0] == ""
        async with db.transaction("acme") as conn:
            assert await conn.fetchval("SELECT current_setting('memberops.tenant_id')") == "acme"
        assert await tenant_and_role(db) == before
    finally:
        await db.close()


async def test_a_connection_given_back_inside_a_transaction_is_reset(
    pg_dsn: str, tagging: app.RunningService
) -> None:
    db = await Database.connect(pg_dsn, min_size=1, max_size=1)
    try:
        before = await tenant_and_role(db)
        assert before[0] == ""
        conn = await db.pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute("SELECT set_config('memberops.tenant_id', 'acme', false)")
        await db.pool.release(conn)
        assert await tenant_and_role(db) == before
    finally:
        await db.close()
