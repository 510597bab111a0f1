"""The history corrector: rewrites the tag history of members whose facts arrived late.

A real-time refresh of facts that happened well before it (a back-dated order: recorded today,
paid last month) queues their members in its own transaction (correction_store). This loop, woken
after each refresh (and every few seconds for rows a crash left), takes them in batches and
re-evaluates, from the earliest such fact on, every real-time dimension that reads what changed:
at that instant, daily after it and at each change recorded since; the history from then on is
rewritten from those evaluations (history_store.rewrite_since). The belief it replaces stays
readable with `known_at`. The present is the refresh's: a correction never changes what a member
holds now. A batch is evaluated in a read-only transaction, then written in one short transaction
with its members locked as a refresh locks them (so it commits at once, and a concurrent refresh
or another replica's corrector waits); rows stay queued until handled, so a crash only delays a
correction, and redoing one changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable

import asyncpg

from runtime.db import Database
from runtime.logs import get_logger
from services.tagging import correction_store, history_store, member_tag_store
from services.tagging.evaluation import Tagger

log = get_logger("memberops.tagging.correction")

# Members corrected together (one statement per dimension for all of them).
BATCH_MEMBERS = 10
# The queue is looked at after every refresh, and at least this often.
CORRECT_SECONDS = 5.0


class HistoryCorrector:
    def __init__(self, db: Database, tagger: Tagger) -> None:
        self._db = db
        self._tagger = tagger
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A refresh has committed: it may have queued corrections."""
        self._wake.set()

    async def run(self, tenants: frozenset[str], clock: Callable[[], dt.datetime]) -> None:
        """Forever: corrects what is queued, a batch per tenant in turn (the service's background
        loop)."""
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
            # arrives as the event is set, and the service could then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CORRECT_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            busy = set(tenants)
            while busy:
                for tenant_id in sorted(busy):
                    try:
                        if await self.correct_once(tenant_id, clock()) < BATCH_MEMBERS:
                            busy.discard(tenant_id)
                    except (OSError, asyncpg.PostgresError) as error:  # left queued: retried later
                        log.warning("history correction failed", tenant=tenant_id, error=str(error))
                        busy.discard(tenant_id)

    async def correct_once(self, tenant_id: str, now: dt.datetime) -> int:
        """Corrects up to BATCH_MEMBERS queued members; returns how many were taken.

        The rules are evaluated in a read-only transaction (the expensive part; holding no
        transaction id, it delays no feed reader), then the history is rewritten from those
        evaluations in one short transaction with the members locked as a refresh locks them.
        A member whose queue row moved meanwhile (a later late fact, or another replica's
        corrector) is left for the next round."""
        async with self._db.transaction(tenant_id, readonly=True, plans="custom") as conn:
            pending = await correction_store.pending_corrections(conn, BATCH_MEMBERS)
            if not pending:
                return 0
            samples = await self._tagger.correction_samples(conn, tenant_id, pending, now)
        async with self._db.transaction(tenant_id, plans="custom") as conn:
            await member_tag_store.lock_members(conn, sorted({o.member_id for o in pending}))
            current = await correction_store.owed_of(conn, [o.member_id for o in pending])
            unmoved = [o for o in pending if o in current]
            members = {o.member_id for o in unmoved}
            for found in samples:
                await history_store.rewrite_since(conn, tenant_id, found.of(members), now)
            await correction_store.settle_corrections(conn, unmoved)
        return len(pending)
