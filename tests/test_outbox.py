"""The feed contract's reads (services/common/outbox.py) order entries by transaction id as a
number: a page must never end past an entry it did not return."""

from __future__ import annotations

from services.common import outbox
from services.common.db import Database
from tests.conftest import TENANT_ACME


async def test_pages_follow_the_transaction_ids_as_numbers_not_as_text(db: Database) -> None:
    async with db.transaction(TENANT_ACME) as conn:
        await conn.execute("CREATE TEMP TABLE feed_digits (txid xid8, seq bigint) ON COMMIT DROP")
        # Transaction 9 wrote before transaction 10; as text, '10' sorts first.
        await conn.execute("INSERT INTO feed_digits VALUES ('9', 1), ('10', 2), ('100', 3)")
        cursors: list[str] = []
        position = None
        while rows := await outbox.read_settled(conn, "feed_digits", "seq AS n", position, 1):
            cursors.append(outbox.cursor_of(rows[0]))
            position = outbox.parse_cursor(cursors[-1])
        assert cursors == ["9-1", "10-2", "100-3"]
        assert await outbox.last_settled(conn, "feed_digits") == "100-3"
