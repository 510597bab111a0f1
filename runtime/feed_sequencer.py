"""Gives each committed transaction that wrote a service's feed its position (runtime/outbox.py).

Writers do nothing for it. Every SEQUENCE_SECONDS, for every configured tenant, a round finds the
transactions that committed since the previous round, through that round's snapshot
(`<schema>.feed_sequencer.seen`): those that began after it (txid at or past its xmax) and those it
saw running (its xip) whose status is now committed, among them only those with visible rows in the
feed (a rolled-back or still-running one has none). It numbers them from the schema's sequence in
txid order and stores its own snapshot for the next round, all in the statement's one snapshot.
Every tenant goes in one transaction (one round trip) under the schema's advisory lock, held to the
commit: one sequencer at a time, each committing before the next begins, makes positions visible in
increasing order. Replicas each run the loop and take turns. A transaction still running is only
probed by its txid each round, so it delays nobody but itself.
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


def tenant_round(schema: str, tenant: str) -> str:
    """One tenant's round: one statement, so what it numbers and the snapshot it stores agree. The
    transactions that began after the last round are found one txid at a time, each the first
    visible one after the previous, starting below the last round's xmax (an index probe each on a
    value the planner sees as a column, whatever it thinks of a range of xid8), so a round reads
    one row per new transaction, not every entry."""
    return f"""WITH RECURSIVE last AS (
            SELECT s.seen FROM {schema}.feed_sequencer s WHERE s.tenant_id = '{tenant}'),
        began(txid, found) AS (
            SELECT coalesce((SELECT (pg_snapshot_xmax(last.seen)::text::numeric - 1)::text::xid8
                             FROM last), '0'::xid8), false
          UNION ALL
            SELECT (SELECT f.txid FROM {schema}.feed f
                    WHERE f.tenant_id = '{tenant}' AND f.txid > b.txid
                    ORDER BY f.txid LIMIT 1), true
            FROM began b WHERE b.txid IS NOT NULL),
        committed AS (
            SELECT b.txid FROM began b WHERE b.found AND b.txid IS NOT NULL
          UNION
            SELECT x.txid FROM last, pg_snapshot_xip(last.seen) AS x(txid)
            WHERE pg_xact_status(x.txid) = 'committed'
              AND EXISTS (SELECT 1 FROM {schema}.feed f WHERE f.tenant_id = '{tenant}' AND f.txid = x.txid)),
        numbered AS (
            INSERT INTO {schema}.feed_positions (tenant_id, position, txid)
            SELECT '{tenant}', nextval('{schema}.feed_position'), n.txid
            FROM (SELECT c.txid FROM committed c ORDER BY c.txid OFFSET 0) n
            ON CONFLICT (tenant_id, txid) DO NOTHING
            RETURNING 1)
        INSERT INTO {schema}.feed_sequencer (tenant_id, seen) VALUES ('{tenant}', pg_current_snapshot())
        ON CONFLICT (tenant_id) DO UPDATE SET seen = excluded.seen"""


def round_sql(schema: str, tenants: frozenset[str]) -> str:
    """One round: every tenant's committed transactions numbered, in one transaction. Tenants are
    written into the text (checked against TENANT_ID), so it runs as one simple query. Within a
    round the sorted subquery (kept whole by OFFSET 0) feeds nextval in txid order, so
    transactions one after the other keep their order."""
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
            tenant_round(schema, tenant),
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
