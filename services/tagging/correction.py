"""The history corrector: rewrites the tag history of members whose facts arrived late.

A real-time refresh of facts that happened well before it (a back-dated order: recorded today,
paid last month) queues their members in its own transaction (correction_store). This loop takes
them in batches and re-evaluates, from the earliest such fact on, every real-time dimension that
reads what changed, at that instant, daily after it and at each change recorded since; the history
from then on is rewritten from those evaluations (history_store.rewrite_since). The belief it
replaces stays readable with `known_at`. The present is the refresh's: a correction never changes
what a member holds now. Rows stay queued until handled, so a crash only delays a correction, and
redoing one changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import asyncpg

from runtime.db import Database
from runtime.logs import get_logger
from services.tagging import correction_store
from services.tagging.evaluation import Tagger

log = get_logger("memberops.tagging.correction")

# Members corrected together (one statement per dimension for all of them), and how often the
# queue is looked at.
BATCH_MEMBERS = 50
CORRECT_SECONDS = 1.0


class HistoryCorrector:
    def __init__(self, db: Database, tagger: Tagger) -> None:
        self._db = db
        self._tagger = tagger

    async def run(self, tenants: frozenset[str], clock: Callable[[], dt.datetime]) -> None:
        """Forever: corrects what is queued (the service's background loop)."""
        while True:
            for tenant_id in sorted(tenants):
                try:
                    while await self.correct_once(tenant_id, clock()) == BATCH_MEMBERS:
                        pass
                except (OSError, asyncpg.PostgresError) as error:  # left queued: the next round retries
                    log.warning("history correction failed", tenant=tenant_id, error=str(error))
            await asyncio.sleep(CORRECT_SECONDS)

    async def correct_once(self, tenant_id: str, now: dt.datetime) -> int:
        """Corrects up to BATCH_MEMBERS queued members; returns how many."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            owed = await correction_store.pending_corrections(conn, BATCH_MEMBERS)
        if owed:
            await self._tagger.correct_history(tenant_id, owed, now)
            async with self._db.transaction(tenant_id) as conn:
                await correction_store.settle_corrections(conn, owed)
        return len(owed)
