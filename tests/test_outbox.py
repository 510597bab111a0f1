"""The feed contract's reads follow the numeric order of transaction ids, across digit counts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from runtime import app, outbox
from runtime.db import APP_ROLE, Database

RELATION = "outbox_test.feed"


@pytest.fixture
async def feed(db: Database, tagging: app.RunningService) -> AsyncIterator[str]:
    """A feed-shaped table with entries of transactions 98 to 101 (older than any running one),
    so their ids are two and three digits long: "99" sorts after "100" as text."""
    async with db.pool.acquire() as conn:
        await conn.execute(
            f"""CREATE SCHEMA IF NOT EXISTS outbox_test;
                DROP TABLE IF EXISTS {RELATION};
                CREATE TABLE {RELATION} (tenant_id text NOT NULL, txid xid8 NOT NULL, seq bigint NOT NULL,
                                         member_id text NOT NULL, PRIMARY KEY (tenant_id, txid, seq));
                GRANT USAGE ON SCHEMA outbox_test TO {APP_ROLE};
                GRANT SELECT ON {RELATION} TO {APP_ROLE};
                INSERT INTO {RELATION} VALUES ('acme', '98', 1, 'a'), ('acme', '99', 2, 'b'),
                                              ('acme', '100', 3, 'c'), ('acme', '101', 4, 'd')"""
        )
    yield RELATION
    async with db.pool.acquire() as conn:
        await conn.execute("DROP SCHEMA outbox_test CASCADE")


async def test_pages_and_the_last_cursor_follow_numeric_transaction_order(db: Database, feed: str) -> None:
    async with db.transaction("acme", readonly=True) as conn:
        first = await outbox.read_settled(conn, feed, "member_id", None, 2)
        after = outbox.parse_cursor(outbox.cursor_of(first[-1]))
        second = await outbox.read_settled(conn, feed, "member_id", after, 2)
        rest = await outbox.read_settled(conn, feed, "member_id", outbox.parse_cursor("101-4"), 2)
        last = await outbox.last_settled(conn, feed)
    assert [r["member_id"] for r in first] == ["a", "b"]
    assert [r["member_id"] for r in second] == ["c", "d"]
    assert rest == []
    assert last == "101-4"
