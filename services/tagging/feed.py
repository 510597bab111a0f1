"""Reading the tagging feed: cursors, limits, and the rule that makes reading safe.

A cursor is `<txid>-<seq>` of the last entry read. Entries are returned in (txid, seq) order and
only once their transaction is older than every transaction still running, so an entry can never
appear behind a cursor a consumer already holds.
"""

from __future__ import annotations

import re

from services.common.db import Database
from services.common.errors import InvalidArgument
from services.tagging import store
from services.tagging.model import FeedEntry

CURSOR = re.compile(r"^([0-9]{1,20})-([0-9]{1,19})$")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def parse_cursor(cursor: str, field: str = "after_cursor") -> tuple[int, int] | None:
    if not cursor:
        return None
    match = CURSOR.match(cursor)
    if not match:
        raise InvalidArgument.field(field, "is not a cursor this feed returned")
    return int(match[1]), int(match[2])


class Feed:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def read(self, tenant_id: str, after_cursor: str, limit: int) -> tuple[list[FeedEntry], str]:
        """Returns the entries after `after_cursor` and the cursor to continue from."""
        position = parse_cursor(after_cursor)
        if limit == 0:
            limit = DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument.field(
                "limit", f"must be between 1 and {MAX_LIMIT} (0 means {DEFAULT_LIMIT})"
            )
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            entries = await store.read_feed(conn, position, limit)
        return entries, entries[-1].cursor if entries else after_cursor
