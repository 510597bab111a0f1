"""Tenant transactions: opened in one round trip, ended by COMMIT or ROLLBACK, and the pool hands
out connections without state: what a transaction set ends with it, and a connection given back
inside a transaction (a cancelled call) is reset before reuse. (The `tagging` fixture is there for
its migrations, which create the app role and the members table.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from runtime import app
from runtime.db import Database, savepoint
from tests.conftest import unique

INSERT = "INSERT INTO tagging.members (tenant_id, member_id) VALUES ('acme', $1)"


@pytest.fixture
async def one_connection(pg_dsn: str, tagging: app.RunningService) -> AsyncIterator[Database]:
    """A pool of a single connection, so every test sees what the one before left on it."""
    db = await Database.connect(pg_dsn, min_size=1, max_size=1)
    yield db
    await db.close()


async def tenant_and_role(db: Database) -> tuple[str, str]:
    """The tenant a fresh connection carries ('' for none) and its role."""
    async with db.pool.acquire() as conn:
        assert not conn.is_in_transaction()
        tenant = await conn.fetchval("SELECT current_setting('memberops.tenant_id', true)")
        return tenant or "", await conn.fetchval("SELECT current_user")


async def test_a_finished_transaction_leaves_nothing_behind(one_connection: Database) -> None:
    before = await tenant_and_role(one_connection)
    assert before[0] == ""
    async with one_connection.transaction("acme") as conn:
        assert await conn.fetchval("SELECT current_setting('memberops.tenant_id')") == "acme"
        assert await conn.fetchval("SELECT current_user") == "memberops_app"
    assert await tenant_and_role(one_connection) == before


async def test_a_connection_given_back_inside_a_transaction_is_reset(one_connection: Database) -> None:
    before = await tenant_and_role(one_connection)
    assert before[0] == ""
    conn = await one_connection.pool.acquire()
    await conn.execute("BEGIN")
    await conn.execute("SELECT set_config('memberops.tenant_id', 'acme', false)")
    await one_connection.pool.release(conn)
    assert await tenant_and_role(one_connection) == before


async def test_a_transaction_that_raises_is_rolled_back_and_leaves_nothing_behind(
    one_connection: Database,
) -> None:
    member_id = unique()
    before = await tenant_and_role(one_connection)
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with one_connection.transaction("acme") as conn:
            await conn.execute(INSERT, member_id)
            raise RuntimeError("changed my mind")
    with pytest.raises(asyncpg.UniqueViolationError):  # a failed statement rolls back too
        async with one_connection.transaction("acme") as conn:
            await conn.execute(INSERT, member_id)
            await conn.execute(INSERT, member_id)
    assert await tenant_and_role(one_connection) == before
    async with one_connection.transaction("acme", readonly=True) as conn:
        found = await conn.fetchval("SELECT count(*) FROM tagging.members WHERE member_id = $1", member_id)
    assert found == 0


async def test_read_only_and_the_plan_mode_hold_for_the_transaction_only(one_connection: Database) -> None:
    async with one_connection.transaction("acme", readonly=True, plans="custom") as conn:
        assert await conn.fetchval("SHOW transaction_read_only") == "on"
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute(INSERT, unique())
    async with one_connection.transaction("acme", plans="generic") as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    async with one_connection.transaction("acme") as conn:
        assert await conn.fetchval("SHOW transaction_read_only") == "off"
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


async def test_a_tenant_id_outside_the_pattern_never_reaches_the_server(db: Database) -> None:
    for bad in ["acme'; DROP TABLE tagging.members; --", "Acme", "a" * 64, "acme\x00", "acme\n"]:
        with pytest.raises(ValueError, match="not a tenant id"):
            async with db.transaction(bad):
                pass


async def test_a_savepoint_undoes_its_block_and_the_transaction_goes_on(one_connection: Database) -> None:
    kept, undone, inner = unique(), unique(), unique()
    async with one_connection.transaction("acme") as conn:
        await conn.execute(INSERT, kept)
        with pytest.raises(asyncpg.UniqueViolationError):
            async with savepoint(conn):
                await conn.execute(INSERT, undone)
                await conn.execute(INSERT, kept)  # fails: the block's first insert goes too
        async with savepoint(conn):
            with pytest.raises(RuntimeError):
                async with savepoint(conn):  # nested: only the inner block is undone
                    await conn.execute(INSERT, inner)
                    raise RuntimeError("inner")
    async with one_connection.transaction("acme", readonly=True) as conn:
        found = await conn.fetch(
            "SELECT member_id FROM tagging.members WHERE member_id = ANY($1::text[])", [kept, undone, inner]
        )
    assert [r["member_id"] for r in found] == [kept]


async def test_a_reading_connection_stays_its_tenants_and_only_reads(one_connection: Database) -> None:
    member_id = unique()
    async with one_connection.transaction("acme") as conn:
        await conn.execute(INSERT, member_id)
    seen = "SELECT count(*) FROM tagging.members WHERE member_id = $1"
    for _ in range(2):  # the second call gets the same connection, still bound after the error
        async with one_connection.reading("acme") as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT current_setting('memberops.tenant_id')") == "acme"
            assert await conn.fetchval("SELECT current_user") == "memberops_app"
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert await conn.fetchval(seen, member_id) == 1
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute(INSERT, unique())
    async with one_connection.reading("globex") as conn:  # another tenant, another connection
        assert await conn.fetchval(seen, member_id) == 0
    # The transactions' pool is untouched by either.
    assert await tenant_and_role(one_connection) == ("", "postgres")
    for bad in ["acme'; --", "Acme"]:
        with pytest.raises(ValueError, match="not a tenant id"):
            async with one_connection.reading(bad):
                pass
