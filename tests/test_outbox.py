"""The feed contract's reads follow the numeric order of positions, whatever the transaction ids, and
first-contract cursors (`<txid>-<seq>`) resolve to their transaction's position."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from runtime import app, outbox
from runtime.db import APP_ROLE, Database
from runtime.errors import InvalidArgument

RELATION = "outbox_test.feed"


@pytest.fixture
async def feed(db: Database, tagging: app.RunningService) -> AsyncIterator[str]:
    """A feed-shaped table and its positions: transactions 98 to 101 placed at 100, 9, 10 and 11
    (one committed last, one whose position is three digits long: "9" sorts after "10" as text),
    and two entries of transaction 99."""
    async with db.pool.acquire() as conn:
        await conn.execute(
            f"""CREATE SCHEMA IF NOT EXISTS outbox_test;
                DROP TABLE IF EXISTS {RELATION}, {RELATION}_positions;
                CREATE TABLE {RELATION} (tenant_id text NOT NULL, txid xid8 NOT NULL, seq bigint NOT NULL,
                                         member_id text NOT NULL, PRIMARY KEY (tenant_id, txid, seq));
                CREATE TABLE {RELATION}_positions (tenant_id text NOT NULL, position bigint NOT NULL,
                                                   txid xid8 NOT NULL, PRIMARY KEY (tenant_id, position));
                GRANT USAGE ON SCHEMA outbox_test TO {APP_ROLE};
                GRANT SELECT ON {RELATION}, {RELATION}_positions TO {APP_ROLE};
                INSERT INTO {RELATION} VALUES ('acme', '98', 1, 'a'), ('acme', '99', 2, 'b'),
                                              ('acme', '99', 5, 'b2'), ('acme', '100', 3, 'c'),
                                              ('acme', '101', 4, 'd');
                INSERT INTO {RELATION}_positions VALUES ('acme', 100, '98'), ('acme', 9, '99'),
                                                        ('acme', 10, '100'), ('acme', 11, '101')"""
        )
    yield RELATION
    async with db.pool.acquire() as conn:
        await conn.execute("DROP SCHEMA outbox_test CASCADE")


async def test_pages_and_the_last_cursor_follow_numeric_position_order(db: Database, feed: str) -> None:
    async with db.transaction("acme", readonly=True) as conn:
        first = await outbox.read_settled(conn, feed, "member_id", None, 2)
        after = outbox.parse_cursor(outbox.cursor_of(first[-1]))
        second = await outbox.read_settled(conn, feed, "member_id", after, 2)
        third = await outbox.read_settled(conn, feed, "member_id", outbox.parse_cursor("p11-4"), 2)
        rest = await outbox.read_settled(conn, feed, "member_id", outbox.parse_cursor("p100-1"), 2)
        last = await outbox.last_settled(conn, feed)
    assert [r["member_id"] for r in first] == ["b", "b2"]
    assert outbox.cursor_of(first[-1]) == "p9-5"
    assert [r["member_id"] for r in second] == ["c", "d"]
    assert [r["member_id"] for r in third] == ["a"]
    assert rest == []
    assert last == "p100-1"


async def test_a_filtered_read_goes_on_over_transactions_without_a_match_and_stops_at_upto(
    db: Database, feed: str
) -> None:
    async with db.transaction("acme", readonly=True) as conn:
        matched = await outbox.read_settled(
            conn, feed, "member_id", None, 5, "member_id = ANY($4::text[])", [["b2", "a"]]
        )
        bounded = await outbox.read_settled(conn, feed, "member_id", None, 5, upto=(9, 2))
    assert [r["member_id"] for r in matched] == ["b2", "a"]
    assert [r["member_id"] for r in bounded] == ["b"]


async def test_a_first_contract_cursor_reads_on_after_its_transaction(db: Database, feed: str) -> None:
    async with db.transaction("acme", readonly=True) as conn:
        after_99 = await outbox.read_settled(conn, feed, "member_id", outbox.parse_cursor("99-2"), 5)
        after_100 = await outbox.read_settled(conn, feed, "member_id", outbox.parse_cursor("100-3"), 5)
        with pytest.raises(InvalidArgument):
            await outbox.read_settled(conn, feed, "member_id", outbox.parse_cursor("97-1"), 5)
    assert [r["member_id"] for r in after_99] == ["b2", "c", "d", "a"]
    assert [r["member_id"] for r in after_100] == ["d", "a"]
