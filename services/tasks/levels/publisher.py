"""Level changes reach tagging: each member's level is written to tagging's `profile.level`.

Tags (the built-in `level` dimension), audience conditions on the level and the journeys that
enrol from those read levels where they read every other member fact, in tagging, and learn of a
change from tagging's feed. The tasks feed is the outbox; this loop is its relay.

Per tenant, each round: take the relay's lock (so one replica writes at a time; an advisory lock,
so no transaction id is held open while tagging is called), read the settled entries after the
stored cursor, write the level each member they name holds now with `UpdateMember` (mask
`profile.level`, so nothing else of the member changes), then store the cursor. Writing a level is
idempotent, so a round repeated after a crash writes the same values again. A member tagging does
not know is skipped. When tagging is down, the round fails, its writes still queued are cancelled,
nothing is stored, and the next round tries the same entries again.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from runtime import outbox, rounds
from runtime.db import Database
from runtime.logs import get_logger
from services.tasks.feed import cursor_store
from services.tasks.levels import level_store, levels

log = get_logger("memberops.tasks.levels")

SOURCE = "levels"
BATCH = 500
# Writes to tagging in flight at once in a round.
PARALLEL = 8
POLL_SECONDS = 0.5


class LevelWriter(Protocol):
    async def set_level(self, tenant_id: str, member_id: str, level: str) -> bool:
        """Writes the member's level; False when tagging has no such member."""
        ...


class LevelPublisher:
    def __init__(self, db: Database, writer: LevelWriter, tenants: frozenset[str]) -> None:
        self._db = db
        self._writer = writer
        self._tenants = tenants

    async def run(self) -> None:
        """Publishes every tenant's level changes until cancelled (a failed round is retried)."""
        await rounds.every_tenant(
            self._tenants, self._more, POLL_SECONDS, log, "level publishing round failed"
        )

    async def _more(self, tenant_id: str) -> bool:
        """One round; True when it covered a whole batch, so more may be waiting."""
        return await self.publish_once(tenant_id) == BATCH

    async def publish_once(self, tenant_id: str) -> int:
        """Writes the levels of the members the next batch of the tenant's level changes names to
        tagging; returns how many entries it covered (0 when there were none)."""
        async with self._db.transaction(tenant_id) as conn:
            await cursor_store.lock_source(conn, tenant_id, SOURCE)
            cursor = await cursor_store.cursor(conn, SOURCE)
            entries, next_cursor = await levels.feed_page(
                conn, outbox.parse_cursor(cursor, "cursor"), BATCH, cursor
            )
            if not entries:
                return 0
            # The level each holds now, not the batch's last entry: feed order is commit-id order,
            # and a change that took its id first can commit after a later one.
            held = await level_store.held_codes(conn, sorted({entry.member_id for entry in entries}))
            gate = asyncio.Semaphore(PARALLEL)

            async def write(member_id: str, level: str) -> bool:
                async with gate:
                    return await self._writer.set_level(tenant_id, member_id, level)

            # A failed write cancels the rest, so none outlives the round that failed.
            async with asyncio.TaskGroup() as group:
                writes = [group.create_task(write(m, code)) for m, code in held.items()]
            await cursor_store.lock_cursor(conn, tenant_id, SOURCE)
            await cursor_store.save_cursor(conn, next_cursor, SOURCE)
        skipped = sum(not w.result() for w in writes)
        if skipped:
            log.info(
                "level changes of members tagging does not know were skipped",
                tenant=tenant_id,
                skipped=skipped,
            )
        return len(entries)
