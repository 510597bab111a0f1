"""The feed contract's reads order entries by transaction id as a number, never as text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common import outbox
from services.common.db import Database
from tests.conftest import unique


@pytest.fixture
async def relation(db: Database) -> AsyncIterator[str]:
    """A scratch feed whose entries were written by transactions 9, 10 and 100 (long settled)."""
    schema = unique("outbox").replace("-", "_")
    async with db.pool.acquire() as conn:
        await conn.execute(
            f"""CREATE SCHEMA {schema};
                CREATE TABLE {schema}.feed (txid xid8 NOT NULL, seq bigint NOT NULL, member_id text NOT NULL,
                                            PRIMARY KEY (txid, seq));
                INSERT INTO {schema}.feed VALUES ('100', 3, 'c'), ('9', 1, 'a'), ('10', 2, 'b');"""
        )
    yield f"{schema}.feed"
    async with db.pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")


async def test_entries_come_in_numeric_transaction_order(db: Database, relation: str) -> None:
    async with db.pool.acquire() as conn:
        rows = await outbox.read_settled(conn, relation, "member_id", None, 10)
        first = await outbox.read_settled(conn, relation, "member_id", None, 1)
        after = await outbox.read_settled(conn, relation, "member_id", (9, 1), 1)
        newest = await outbox.last_settled(conn, relation)
    assert [r["member_id"] for r in rows] == ["a", "b", "c"]
    assert [outbox.cursor_of(r) for r in first] == ["9-1"]
    assert [outbox.cursor_of(r) for r in after] == ["10-2"]
    assert newest == "100-3"
