"""Reading the tagging feed: cursors, limits, and the rule that makes reading safe.

A cursor is `<txid>-<seq>` of the last entry read. Entries are returned in (txid, seq) order and
only once their transaction is older than every transaction still running, so an entry can never
appear behind a cursor a consumer already holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from services.common.db import Database
from services.common.outbox import last_settled, page_size, parse_cursor
from services.tagging import store
from services.tagging.model import FeedEntry, FeedKind

# How long a follower waits before asking again once it has caught up: the lag a follower adds.
POLL_INTERVAL_SECONDS = 0.2


class Feed:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def read(
        self,
        tenant_id: str,
        after_cursor: str,
        limit: int,
        kinds: Sequence[FeedKind] = (),
        *,
        skip_to_end: bool = False,
    ) -> tuple[list[FeedEntry], str]:
        """Returns the entries after `after_cursor` and the cursor to continue from; with
        `skip_to_end`, no entries and the newest settled entry's cursor.

        With `kinds`, the read stops at the newest entry settled when it began: every entry up to
        there is settled, so when fewer than `limit` match, the rest up to there are of other kinds
        and the cursor can move past them."""
        position = parse_cursor(after_cursor)
        limit = page_size(limit, "limit")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            if skip_to_end:
                return [], await last_settled(conn, "tagging.feed") or ""
            if not kinds:
                entries = await store.read_feed(conn, position, limit)
                return entries, entries[-1].cursor if entries else after_cursor
            horizon = await last_settled(conn, "tagging.feed")
            if horizon is None:
                return [], after_cursor
            entries = await store.read_feed(conn, position, limit, kinds, parse_cursor(horizon))
        if len(entries) == limit:
            return entries, entries[-1].cursor
        end = parse_cursor(horizon)
        assert end is not None
        return entries, horizon if position is None or end > position else after_cursor

    async def follow(
        self, tenant_id: str, after_cursor: str, batch_size: int
    ) -> AsyncIterator[list[FeedEntry]]:
        """Yields the entries after `after_cursor` in batches of 1 to `batch_size`, without end.

        Reads back to back while batches come full, then polls every POLL_INTERVAL_SECONDS. Each
        read is its own short transaction: nothing is held open while waiting, so an idle follower
        costs no connection and delays no one. The caller ends it by closing or cancelling it.
        """
        position = parse_cursor(after_cursor)
        size = page_size(batch_size, "batch_size")
        while True:
            async with self._db.transaction(tenant_id, readonly=True) as conn:
                entries = await store.read_feed(conn, position, size)
            if entries:
                position = parse_cursor(entries[-1].cursor)
                yield entries
            if len(entries) < size:
                await asyncio.sleep(POLL_INTERVAL_SECONDS)
