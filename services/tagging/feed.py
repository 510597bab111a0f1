"""Reading the tagging feed: cursors, limits, and the rule that makes reading safe.

A cursor names the last entry read. Entries are returned in feed order, (position, seq), and only
once their transaction has its position, which is given after it commits and in increasing order
(runtime/outbox.py), so an entry can never appear behind a cursor a consumer already holds, and no
other transaction, however long it runs, holds an entry back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from runtime.db import Database
from runtime.errors import ResourceExhausted
from runtime.outbox import last_settled, page_size, parse_cursor, resolve
from services.tagging import feed_store
from services.tagging.domain import FeedEntry, FeedKind
from services.tagging.feed_head import FeedHeads

# How long a follower waits before asking again once it has caught up: the lag a follower adds.
POLL_INTERVAL_SECONDS = 0.2
# Followers one tenant may have open at once in a process. Each costs a task, the one message it
# holds for a client that does not read, and a poll every POLL_INTERVAL_SECONDS once caught up.
MAX_STREAMS_PER_TENANT = 100
# Entries a follower reads at a time, whatever batch size it asked for (responses carry 1 to
# batch_size entries): what a stream holds while its client does not read is one message of at
# most this many entries.
STREAM_READ_ROWS = 100
# Follower reads running at once in the process: followers share at most this many of the pool's
# connections, so however many there are, a GetMember never queues behind more than these.
STREAM_READERS = 2

Message = TypeVar("Message")


class Feed:
    def __init__(self, db: Database, max_streams_per_tenant: int = MAX_STREAMS_PER_TENANT) -> None:
        self._db = db
        self._max_streams = max_streams_per_tenant
        self._streams: dict[str, int] = {}
        self._readers = asyncio.Semaphore(STREAM_READERS)
        self._heads = FeedHeads(db, self._readers, POLL_INTERVAL_SECONDS)

    def open_streams(self, tenant_id: str) -> int:
        """How many followers of the tenant are open now."""
        return self._streams.get(tenant_id, 0)

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
            position = await resolve(conn, "tagging.feed", position)
            if not kinds:
                entries = await feed_store.read_feed(conn, position, limit)
                return entries, entries[-1].cursor if entries else after_cursor
            horizon = await last_settled(conn, "tagging.feed")
            if horizon is None:
                return [], after_cursor
            entries = await feed_store.read_feed(conn, position, limit, kinds, parse_cursor(horizon))
        if len(entries) == limit:
            return entries, entries[-1].cursor
        end = parse_cursor(horizon)
        assert end is not None
        return entries, horizon if position is None or end > position else after_cursor

    async def follow(
        self,
        tenant_id: str,
        after_cursor: str,
        batch_size: int,
        shape: Callable[[list[FeedEntry]], Message],
    ) -> AsyncGenerator[Message, None]:
        """Yields the entries after `after_cursor`, `shape`d into what the caller sends, in batches
        of 1 to `batch_size` (at most STREAM_READ_ROWS), without end.

        Reads back to back while batches come full, then waits for the feed to move past what it
        read (polled every POLL_INTERVAL_SECONDS, once for all the tenant's followers: feed_head).
        Each read is its own short transaction, taken in turn with the other followers'
        (STREAM_READERS): nothing is held open while waiting, so an idle follower costs no
        connection and delays no one. A batch is shaped and dropped before the yield, so a
        follower whose client does not read holds one shaped message and reads nothing more until
        it is taken. More than `max_streams_per_tenant` open followers of one tenant is
        ResourceExhausted. The caller ends it by closing or cancelling it.
        """
        position = parse_cursor(after_cursor)
        size = min(page_size(batch_size, "batch_size"), STREAM_READ_ROWS)
        with self._stream_slot(tenant_id):
            while True:
                async with self._readers, self._db.transaction(tenant_id, readonly=True) as conn:
                    position = await resolve(conn, "tagging.feed", position)
                    entries = await feed_store.read_feed(conn, position, size)
                caught_up = len(entries) < size
                if entries:
                    position = parse_cursor(entries[-1].cursor)
                    message = shape(entries)
                    del entries
                    yield message
                    del message
                if caught_up:
                    await self._heads.wait_past(tenant_id, position)

    @contextmanager
    def _stream_slot(self, tenant_id: str) -> Iterator[None]:
        """Counts an open follower of the tenant while it runs; refuses one past the cap."""
        if self.open_streams(tenant_id) >= self._max_streams:
            raise ResourceExhausted(
                f"{self._max_streams} feed streams of this tenant are open; close one, or page with ReadFeed"
            )
        self._streams[tenant_id] = self.open_streams(tenant_id) + 1
        try:
            yield
        finally:
            left = self._streams[tenant_id] - 1
            if left:
                self._streams[tenant_id] = left
            else:
                del self._streams[tenant_id]
