"""Earnings of concurrent calls written together, against real PostgreSQL.

A batch forms while the one before it runs, so each test first holds a "plug" member's account
lock: the plug's earning runs alone and waits, the earnings under test queue behind it and run as
the next batch once the plug is let go. Entries written by one batch share a transaction, so they
share a create time: that is how a test knows its earnings really ran together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from runtime import app
from runtime.db import Connection, Database
from runtime.errors import AlreadyExists, FailedPrecondition
from services.tasks.peers import Peers
from services.tasks.points import ledger_store
from services.tasks.points.ledger import Earn, Expiry, ExpiryPolicy, Ledger, Reason
from services.tasks.points.ledger_store import Entry
from services.tasks.tasks.participation import Participation
from tests.conftest import INITECH, TENANT_INITECH, unique
from tests.tasks.conftest import Members
from tests.waiting import eventually

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
# Initech: the suite's tasks service follows no feed for it, so its follower never takes the
# account locks these tests hold and time (it locks the accounts of members whose facts arrive).
TENANT = TENANT_INITECH
NEVER = Expiry(ExpiryPolicy.NEVER)


@pytest.fixture
async def db(pg_dsn: str, tasks: app.RunningService) -> AsyncIterator[Database]:
    """Room for the lock holders, the watcher and two ledgers' batches at once."""
    database = await Database.connect(pg_dsn, min_size=1, max_size=8)
    yield database
    await database.close()


def earning(member_id: str, amount: int, request_id: str, *, order: str = "") -> Earn:
    reason, reference = (Reason.ORDER, order) if order else (Reason.TASK, "task-1")
    return Earn(member_id, amount, reason, reference, NEVER, 0, request_id)


@asynccontextmanager
async def locked(db: Database, member_id: str) -> AsyncIterator[int]:
    """Holds the member's account lock until the block ends; yields the holder's backend pid."""
    async with db.transaction(TENANT) as conn:
        await ledger_store.lock_accounts_creating(conn, TENANT, [member_id])
        yield await conn.fetchval("SELECT pg_backend_pid()")


async def wait_until_blocked(conn: Connection, *, by: int | None = None, not_by: int | None = None) -> None:
    """Until some backend waits on a lock held by backend `by` (or by any backend but `not_by`)."""

    async def blocked() -> bool:
        return bool(
            await conn.fetchval(
                """SELECT count(*) > 0 FROM pg_stat_activity a, LATERAL pg_blocking_pids(a.pid) AS b(pids)
                   WHERE cardinality(b.pids) > 0
                     AND ($1::int IS NULL OR $1 = ANY(b.pids))
                     AND ($2::int IS NULL OR NOT $2 = ANY(b.pids))""",
                by,
                not_by,
            )
        )

    await eventually(blocked, "did an earning come to wait on the lock", interval=0.02)


async def ledger_for(db: Database, peers: Peers, members: Members, ids: list[str]) -> Ledger:
    """A ledger of this process, which knows these members already (as one that ran a while does),
    so no earning waits on tagging before it queues."""
    await members.known(ids, INITECH)
    participation = Participation(peers)
    for member_id in ids:
        await participation.require_member(TENANT, member_id)
    return Ledger(db, participation)


async def entries_of(db: Database, *member_ids: str) -> list[Entry]:
    async with db.transaction(TENANT) as conn:
        rows = await conn.fetch(
            "SELECT entry_id FROM tasks.ledger_entries WHERE member_id = ANY($1::text[]) ORDER BY entry_id",
            list(member_ids),
        )
        return [e for r in rows if (e := await _entry(conn, r["entry_id"])) is not None]


async def _entry(conn: Connection, entry_id: int) -> Entry | None:
    row = await conn.fetchrow(
        """SELECT entry_id, member_id, delta, reason, reference, operator, note, request_id, content_hash,
                  shortfall, available_time, expire_time, create_time
           FROM tasks.ledger_entries WHERE entry_id = $1""",
        entry_id,
    )
    return None if row is None else Entry(**dict(row))


async def test_a_batch_answers_each_earning_as_if_it_ran_alone(
    db: Database, peers: Peers, members: Members
) -> None:
    base = unique()
    a, b, c, d, plug = ids = [f"{base}-{name}" for name in ("a", "b", "c", "d", "plug")]
    ledger = await ledger_for(db, peers, members, ids)
    await ledger.earn(TENANT, earning(d, 30, f"{base}-order", order=f"{base}-o1"), NOW)
    await ledger.reverse_order(TENANT, d, f"{base}-o1")
    async with AsyncExitStack() as stack, db.pool.acquire() as watcher:
        holder = await stack.enter_async_context(locked(db, plug))
        plugged = asyncio.create_task(ledger.earn(TENANT, earning(plug, 1, f"{base}-p"), NOW))
        await wait_until_blocked(watcher, by=holder)
        calls = [
            ledger.earn(TENANT, earning(b, 20, f"{base}-rb"), NOW),
            ledger.earn(TENANT, earning(a, 10, f"{base}-ra"), NOW),
            ledger.earn(TENANT, earning(a, 10, f"{base}-ra"), NOW),  # a retry: the same answer
            ledger.earn(TENANT, earning(c, 5, f"{base}-ra"), NOW),  # another member's request id
            ledger.earn(TENANT, earning(d, 30, f"{base}-again", order=f"{base}-o1"), NOW),
        ]
        batch = [asyncio.create_task(call) for call in calls]
        await asyncio.sleep(0)  # every call queues behind the plug
    outcomes = await asyncio.gather(plugged, *batch, return_exceptions=True)
    _, for_b, for_a, for_a_again, for_c, for_d = outcomes
    assert isinstance(for_a, Entry) and isinstance(for_b, Entry)
    assert for_a_again == for_a
    assert isinstance(for_c, AlreadyExists) and "request_id" in str(for_c)
    assert isinstance(for_d, FailedPrecondition) and "reversed" in str(for_d)
    assert for_a.create_time == for_b.create_time, "the earnings did not run as one batch"
    # Written in member-id order, a before b, whatever order the calls came in.
    assert [(e.member_id, e.delta) for e in await entries_of(db, a, b, c)] == [(a, 10), (b, 20)]
    assert [e.delta for e in await entries_of(db, d)] == [30, -30]


async def test_a_batch_that_loses_a_request_id_race_is_written_again(
    db: Database, peers: Peers, members: Members
) -> None:
    """Two processes (two ledgers) take one request id for different members at once: the batch
    whose statement fails on it is written again, so only the loser of the race is refused and
    the earning beside it is written."""
    base = unique()
    a1, z, b1, b2, p1, p2 = ids = [f"{base}-{name}" for name in ("a1", "z", "b1", "b2", "p1", "p2")]
    first, second = await ledger_for(db, peers, members, ids), await ledger_for(db, peers, members, [])
    taken = f"{base}-taken"
    async with AsyncExitStack() as stack, db.pool.acquire() as watcher:
        plug_first = await stack.enter_async_context(locked(db, p1))
        plugs = [asyncio.create_task(first.earn(TENANT, earning(p1, 1, f"{base}-q1"), NOW))]
        await wait_until_blocked(watcher, by=plug_first)
        async with AsyncExitStack() as second_plug, AsyncExitStack() as last:
            plug_second = await second_plug.enter_async_context(locked(db, p2))
            plugs.append(asyncio.create_task(second.earn(TENANT, earning(p2, 1, f"{base}-q2"), NOW)))
            await wait_until_blocked(watcher, by=plug_second)
            z_holder = await last.enter_async_context(locked(db, z))
            wins = asyncio.create_task(first.earn(TENANT, earning(a1, 10, taken), NOW))
            after = asyncio.create_task(first.earn(TENANT, earning(z, 7, f"{base}-rz"), NOW))
            loses = asyncio.create_task(second.earn(TENANT, earning(b1, 20, taken), NOW))
            beside = asyncio.create_task(second.earn(TENANT, earning(b2, 5, f"{base}-rb2"), NOW))
            await asyncio.sleep(0)
            await stack.aclose()  # the first ledger's batch takes the request id, then waits on z
            await wait_until_blocked(watcher, by=z_holder)
            await second_plug.aclose()  # the second's batch waits on the first's request id
            await wait_until_blocked(watcher, not_by=z_holder)
        # z is let go: the first batch commits and the second's statement fails on the request id
        outcomes = await asyncio.gather(*plugs, wins, after, loses, beside, return_exceptions=True)
    *_, won, z_entry, lost, b2_entry = outcomes
    assert isinstance(won, Entry) and won.request_id == taken and won.member_id == a1
    assert isinstance(lost, AlreadyExists)
    assert isinstance(z_entry, Entry) and isinstance(b2_entry, Entry)
    written = [(e.member_id, e.delta) for e in await entries_of(db, a1, z, b1, b2)]
    assert written == [(a1, 10), (z, 7), (b2, 5)]


@pytest.mark.parametrize("size", [1, 2])
async def test_an_earning_for_a_new_member_creates_the_account(
    db: Database, peers: Peers, members: Members, size: int
) -> None:
    new = await members.many(size, INITECH)
    ledger = await ledger_for(db, peers, members, new)
    written = await asyncio.gather(*(ledger.earn(TENANT, earning(m, 3, unique("req")), NOW) for m in new))
    assert [e.member_id for e in written] == new
    async with db.transaction(TENANT) as conn:
        accounts = await conn.fetchval(
            "SELECT count(*) FROM tasks.accounts WHERE member_id = ANY($1::text[])", new
        )
    assert accounts == size
