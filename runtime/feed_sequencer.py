"""Gives each committed transaction that wrote a service's feed its position (runtime/outbox.py).

A writing transaction registers itself in `<schema>.feed_pending` (a statement-level trigger); the
row becomes visible when the transaction commits, and never when it rolls back. Every
SEQUENCE_SECONDS this loop moves what it finds there to `<schema>.feed_positions`, numbered from the
schema's sequence, for every configured tenant in one transaction (one round trip) under the
schema's advisory lock, held to the commit. One sequencer at a time, each committing before the next
begins, makes positions visible in increasing order; replicas each run the loop and take turns. A
transaction still running is simply not there yet, so it delays nobody but itself.
"""

from __future__ import annotations

import asyncio
import contextlib

from runtime.config import TENANT_ID
from runtime.db import APP_ROLE, TENANT_SETTING, Database
from runtime.logs import get_logger

log = get_logger("memberops.feed_sequencer")

# How long a committed entry may wait for its position: the latency the sequencer adds to a feed.
SEQUENCE_SECONDS = 0.05
# After a failed round (the database unreachable), the wait before the next.
RETRY_SECONDS = 1.0


def round_sql(schema: str, tenants: frozenset[str]) -> str:
    """One round: every tenant's committed transactions numbered, in one transaction. Tenants are
    written into the text (checked against TENANT_ID), so it runs as one simple query."""
    lock = f"hashtextextended('memberops.feed_sequencer.{schema}', 0)"
    statements = [
        "BEGIN",
        f"SELECT set_config('role', '{APP_ROLE}', true)",
        f"SELECT pg_advisory_xact_lock({lock})",
    ]
    for tenant in sorted(tenants):
        if not TENANT_ID.match(tenant):
            raise ValueError(f"bad tenant id {tenant!r}")
        statements += [
            f"SELECT set_config('{TENANT_SETTING}', '{tenant}', true)",
            # In txid order within a round (the sorted subquery, kept whole by OFFSET 0, feeds
            # nextval row by row), so transactions one after the other keep their order; one that
            # wrote no row (an INSERT … SELECT of nothing) gets no position.
            f"""WITH taken AS (DELETE FROM {schema}.feed_pending RETURNING txid)
                INSERT INTO {schema}.feed_positions (tenant_id, position, txid)
                SELECT '{tenant}', nextval('{schema}.feed_position'), t.txid
                FROM (SELECT w.txid FROM taken w
                      WHERE EXISTS (SELECT 1 FROM {schema}.feed f
                                    WHERE f.tenant_id = '{tenant}' AND f.txid = w.txid)
                      ORDER BY w.txid OFFSET 0) t""",
        ]
    statements.append("COMMIT")
    return ";\n".join(statements)


class FeedSequencer:
    def __init__(
        self, db: Database, schema: str, tenants: frozenset[str], interval: float = SEQUENCE_SECONDS
    ) -> None:
        self._db = db
        self._sql = round_sql(schema, tenants) if tenants else ""
        self._interval = interval
        self._schema = schema

    async def sequence(self) -> None:
        """One round: positions for every transaction committed by now."""
        if not self._sql:
            return
        async with self._db.pool.acquire() as conn:
            try:
                await conn.execute(self._sql)
            except BaseException:
                # Failed half-way: nothing of it stays (a connection that cannot take the ROLLBACK
                # is reset by the pool).
                if not conn.is_closed() and conn.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise

    async def run(self) -> None:
        """Rounds until cancelled; a failed round is logged and tried again."""
        while True:
            try:
                await self.sequence()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feed sequencing failed", schema=self._schema)
                await asyncio.sleep(RETRY_SECONDS)
            await asyncio.sleep(self._interval)
