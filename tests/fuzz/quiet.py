"""Whether the services' background consumers have done everything owed in the fuzz tenant.

The fuzzer blames a failed call for any row that changed around it, so before it compares it waits
until no background consumer can still write there. Watching the rows for a quiet moment is not
enough: the dynamic-audience maintainer polls every 0.5 s, and a round landing after a shorter quiet
moment was blamed on a call (RecordOrder "wrote" audience.followers). Instead each consumer is shown,
in one snapshot, to have nothing left to do; it only ever acts on what is owed, so none writes until
a call gives it work. The writers in the tenant (tests/conftest.py wires the services):

- tagging's real-time refresh lanes and sweeper work off `refresh_queue`, its history corrector off
  `history_corrections`; each row is deleted in the transaction that does its work;
- audience's maintainer follows tagging's feed from its cursor in `audience.followers`, stored with
  the changes those entries caused; it evaluates whole each audience created, changed, deleted or
  referring to a changed one, and each dynamic one every FULL_EVERY: time alone makes that one due,
  so an evaluation falling due within HORIZON is waited for too;
- each service's feed sequencer gives the transactions committed to its feed their positions
  (`feed_positions`) and notes its round's snapshot (`feed_sequencer`);
- tasks' feed follower and level relay and the journeys dispatcher do not run in the tenant:
  their cursors there must not exist (a consumer this module does not know could not be waited for).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import asyncpg

from runtime import outbox
from runtime.db import Connection, Database
from services.audience import dynamic
from services.audience import store as audience_store
from tests.conftest import TENANT_FUZZ
from tests.waiting import eventually

# A whole evaluation due this soon could land while a call is checked: longer than the one call
# and two contents readings between the wait and the comparison (the call's deadline is 10 s).
HORIZON = dt.timedelta(seconds=30)
# Cursor tables of consumers not running in the fuzz tenant.
_STRAYS = ("tasks.feed_cursors", "journeys.dispatch_cursors")


async def _queued(conn: Connection) -> list[str]:
    lagging = []
    for table in ("tagging.refresh_queue", "tagging.history_corrections"):
        count = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", TENANT_FUZZ)
        if count:
            lagging.append(f"{table}: {count} rows owed")
    return lagging


async def _unsequenced(conn: Connection) -> list[str]:
    """Committed transactions of each feed still waiting for their positions (the services'
    sequencers give them one, runtime/feed_sequencer.py; the maintainer then follows tagging's)."""
    lagging = []
    for schema in ("tagging", "audience", "tasks"):
        count = await conn.fetchval(
            f"""SELECT count(DISTINCT f.txid) FROM {schema}.feed f
                WHERE f.tenant_id = $1 AND NOT EXISTS (
                    SELECT 1 FROM {schema}.feed_positions p
                    WHERE p.tenant_id = f.tenant_id AND p.txid = f.txid)""",
            TENANT_FUZZ,
        )
        if count:
            lagging.append(f"{schema}.feed: {count} committed transactions wait for their positions")
    return lagging


async def _follower(conn: Connection) -> list[str]:
    """The maintainer's cursor against the newest entry of the feed it follows."""
    head = await conn.fetchrow(
        """SELECT p.position, l.seq FROM tagging_read.feed_positions p
           CROSS JOIN LATERAL (SELECT f.seq FROM tagging_read.feed f
                               WHERE f.tenant_id = p.tenant_id AND f.txid = p.txid
                               ORDER BY f.seq DESC LIMIT 1) l
           WHERE p.tenant_id = $1 ORDER BY p.position DESC LIMIT 1""",
        TENANT_FUZZ,
    )
    newest = None if head is None else outbox.parse_cursor(outbox.cursor_of(head))
    cursor = outbox.parse_cursor(await audience_store.tagging_cursor(conn, TENANT_FUZZ))
    return [] if cursor == newest else [f"audience.followers at {cursor}, tagging's feed at {newest}"]


def due(audience: asyncpg.Record | Mapping[str, Any], now: dt.datetime) -> bool:
    """Whether the maintainer evaluates or clears this row of `dynamic_audiences` in a round now or
    within HORIZON (as its `maintain` decides)."""
    if not audience["dynamic"] or audience["deleted"]:
        return True  # listed only while it still has a membership to clear
    return (
        audience["membership_time"] is None
        or audience["membership_version"] != audience["current_version"]
        or bool(audience["references_changed"])
        or audience["membership_time"] < now - dynamic.FULL_EVERY + HORIZON
    )


async def _audiences(conn: Connection, now: dt.datetime) -> list[str]:
    rows = await audience_store.dynamic_audiences(conn)
    return [f"audience {row['audience_id']} not evaluated" for row in rows if due(row, now)]


async def _strays(conn: Connection) -> None:
    for table in _STRAYS:
        if await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", TENANT_FUZZ):
            raise AssertionError(f"{table} has a cursor in the fuzz tenant: wait for that consumer too")


async def lagging(db: Database) -> list[str]:
    """What some background consumer still owes the fuzz tenant; empty when nothing."""
    async with db.transaction(TENANT_FUZZ, readonly=True, snapshot=True) as conn:
        await _strays(conn)
        now = dt.datetime.now(dt.UTC)
        return [
            *await _queued(conn),
            *await _unsequenced(conn),
            *await _follower(conn),
            *await _audiences(conn, now),
        ]


async def wait(db: Database) -> None:
    """Returns once no background consumer owes the fuzz tenant anything; fails, naming what is
    still owed, if that never happens (a consumer stuck is a finding, not a reason to pass)."""
    seen: list[str] = []

    async def caught_up() -> bool:
        seen[:] = await lagging(db)
        return not seen

    try:
        await eventually(caught_up, "caught up with the fuzz tenant's background work")
    except AssertionError as error:
        raise AssertionError(f"{error}; still owed: {seen}") from None
