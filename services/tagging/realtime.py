"""Real-time tags: refreshed right after each fact commits, in batches shared by concurrent requests.

A fact's transaction queues its members (`refresh_store.queue_refresh`) and commits; the request then
waits for a refresh of those members that starts after its commit, so `GetMemberTags` shows the
new values as soon as the write returns. A few lanes run refreshes; each takes the members every
request has handed in meanwhile, so under load one statement per dimension serves many facts (on
20k members: 7 ms for one member's order dimensions, 15 ms for fifty members') where one refresh
per fact would saturate the database at a few dozen orders a second.

The queue row makes this durable: a refresh deletes only the rows it saw, so a fact that commits
during a refresh stays owed, and the sweeper re-runs rows left behind by a failed refresh or a
process that died between commit and refresh.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from runtime import metrics
from runtime.db import Database
from runtime.logs import get_logger
from services.tagging import refresh_store
from services.tagging.correction import HistoryCorrector
from services.tagging.evaluation import INPUT_BITS, NEW_MEMBER, Tagger
from services.tagging.rules import Input

log = get_logger("memberops.tagging.realtime")

# Refreshes running at once: each is one transaction on one connection, so two keep both cores of
# a small database busy while a third would only queue behind them.
LANES = 2
# A batch stops taking more requests at this many members (one request may bring more: an import).
BATCH_MEMBERS = 500
# A refresh that deadlocks with a concurrent writer (e.g. an import locking members in another
# order) is simply run again.
ATTEMPTS = 3
# The sweeper looks for queue rows older than this, every SWEEP_SECONDS.
SWEEP_AGE_SECONDS = 5.0
SWEEP_SECONDS = 1.0
SWEEP_MEMBERS = 1000


def input_bits(changed: Input | None) -> int:
    """Queue bits for a write of `changed` facts; None is a new member (every dimension)."""
    return NEW_MEMBER if changed is None else INPUT_BITS[changed]


@dataclass
class _Batch:
    tenant_id: str
    now: dt.datetime
    changes: dict[str, int] = field(default_factory=dict)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    opened: float = field(default_factory=time.perf_counter)


class RealTimeTags:
    def __init__(self, db: Database, tagger: Tagger) -> None:
        self._db = db
        self._tagger = tagger
        self._ready: deque[_Batch] = deque()
        # Per tenant, the batch still taking requests (it is also in `_ready`).
        self._open: dict[str, _Batch] = {}
        self._wake = asyncio.Event()
        self._corrector = HistoryCorrector(db, tagger)

    async def run(self, tenants: frozenset[str], clock: Callable[[], dt.datetime]) -> None:
        """The refresh lanes, the sweeper and the history corrector, until cancelled (the service's
        background loop)."""
        async with asyncio.TaskGroup() as group:
            for _ in range(LANES):
                group.create_task(self._lane())
            group.create_task(self._sweep(tenants, clock))
            # Late facts' history corrections, queued by the refreshes (correction.py).
            group.create_task(self._corrector.run(tenants, clock))

    async def refreshed(
        self, tenant_id: str, member_ids: Sequence[str], changed: Input | None, now: dt.datetime
    ) -> None:
        """Returns once these members' real-time tags reflect every fact committed before the call.

        Raises what the refresh raised; the facts stay committed and queued, so the sweeper
        refreshes them later.
        """
        if member_ids:
            await asyncio.shield(self._submit(tenant_id, {m: input_bits(changed) for m in member_ids}, now))

    def _submit(self, tenant_id: str, changes: dict[str, int], now: dt.datetime) -> asyncio.Future[None]:
        batch = self._open.get(tenant_id)
        if batch is None or len(batch.changes) >= BATCH_MEMBERS:
            batch = _Batch(tenant_id, now)
            self._open[tenant_id] = batch
            self._ready.append(batch)
        queued = len(batch.changes)
        for member_id, bits in changes.items():
            batch.changes[member_id] = batch.changes.get(member_id, 0) | bits
        metrics.REFRESH_QUEUED.labels(tenant_id).inc(len(batch.changes) - queued)
        batch.now = max(batch.now, now)
        self._wake.set()
        return batch.done

    async def _lane(self) -> None:
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._ready.popleft()
            if self._open.get(batch.tenant_id) is batch:
                del self._open[batch.tenant_id]
            metrics.REFRESH_QUEUED.labels(batch.tenant_id).dec(len(batch.changes))
            try:
                await self._run(batch)
            except Exception as error:  # handed to every waiting request; the lane carries on
                log.warning("real-time refresh failed", tenant=batch.tenant_id, members=len(batch.changes))
                batch.done.set_exception(error)
                batch.done.exception()  # retrieved here too, in case every waiter has gone
                metrics.refresh_done(batch.tenant_id, batch.opened, ok=False)
            else:
                batch.done.set_result(None)
                metrics.refresh_done(batch.tenant_id, batch.opened, ok=True)
                self._corrector.wake()

    async def _run(self, batch: _Batch) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._db.transaction(batch.tenant_id, plans="custom") as conn:
                    await self._tagger.refresh_owed(conn, batch.tenant_id, batch.changes, batch.now)
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == ATTEMPTS:
                    raise

    async def _sweep(self, tenants: frozenset[str], clock: Callable[[], dt.datetime]) -> None:
        """Forever: refreshes members owed a refresh for a while (a failed refresh, a dead process)."""
        while True:
            for tenant_id in sorted(tenants):
                try:
                    await self.sweep_once(tenant_id, clock(), SWEEP_AGE_SECONDS)
                except (OSError, asyncpg.PostgresError) as error:
                    log.warning("real-time sweep failed", tenant=tenant_id, error=str(error))
            await asyncio.sleep(SWEEP_SECONDS)

    async def sweep_once(self, tenant_id: str, now: dt.datetime, older_than: float) -> int:
        """Refreshes up to SWEEP_MEMBERS members owed a refresh for `older_than` seconds; returns how many."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            stale = await refresh_store.stale_refreshes(conn, older_than, SWEEP_MEMBERS)
        if stale:
            metrics.REFRESH_SWEPT.labels(tenant_id).inc(len(stale))
            # No bits of our own: the refresh runs what their queue rows owe.
            await asyncio.shield(self._submit(tenant_id, dict.fromkeys(stale, 0), now))
        return len(stale)
