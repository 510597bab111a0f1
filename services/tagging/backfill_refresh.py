"""Refreshing the real-time tags of members whose facts were loaded as history, the changes marked
backfilled: what `ImportOrders`, `ImportRefunds`, `ImportEvents` and `ImportMembers` owe before they
answer (decisions 103, 121). Consumers read the mark and update what they hold without treating the
changes as news (no journey enrols, no task rewards)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Coroutine, Iterable
from typing import Any

import asyncpg

from runtime.db import Database
from services.tagging.evaluation import Tagger

# Members refreshed in one transaction: one statement per dimension for them all.
REFRESH_CHUNK = 10_000
# Chunks refreshed at once when a stream ends (each a transaction on its own connection, disjoint
# members): nothing else of the stream runs then, and two keep both cores of a small database busy.
REFRESH_LANES = 2
# A refresh that deadlocks with a concurrent writer is run again (as realtime.py's lanes do).
ATTEMPTS = 3


class BackfillRefresh:
    def __init__(self, db: Database, tagger: Tagger) -> None:
        self._db = db
        self._tagger = tagger

    async def refresh(self, tenant_id: str, changes: dict[str, int], now: dt.datetime, lanes: int) -> None:
        """Refreshes the members' real-time tags for the facts committed (`changes`: member -> the
        input bits it owes), one statement per dimension for up to REFRESH_CHUNK members, `lanes`
        chunks at once (disjoint members, each in its own transaction); the changes are dated by
        the facts (their queue rows' fact_time) and marked backfilled. Should it fail, the queue
        rows stay owed and the service's sweeper refreshes them later."""
        chunks = _chunks(sorted(changes), REFRESH_CHUNK, lanes)
        slots = asyncio.Semaphore(lanes)

        async def refresh(ids: list[str]) -> None:
            async with slots:
                for attempt in range(1, ATTEMPTS + 1):
                    try:
                        async with self._db.transaction(tenant_id, plans="custom") as conn:
                            await self._tagger.refresh_owed(
                                conn, tenant_id, {m: changes[m] for m in ids}, now, backfilled=True
                            )
                        return
                    except asyncpg.DeadlockDetectedError:
                        if attempt == ATTEMPTS:
                            raise

        await _all(refresh(ids) for ids in chunks)


def _chunks(ids: list[str], most: int, lanes: int) -> list[list[str]]:
    """`ids` in consecutive chunks of at most `most`, as many as `lanes` divides (so the lanes end
    together) and as even as can be."""
    if not ids:
        return []
    count = -(-len(ids) // most)
    count = min(len(ids), -(-count // lanes) * lanes)
    size = -(-len(ids) // count)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


async def _all(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Runs the coroutines together; the first failure is raised once every one has ended."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
