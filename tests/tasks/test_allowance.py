"""Sharded allowances against the session's PostgreSQL: exact under concurrency, never refusing
while the total covers a take, never below zero, resized and restocked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from runtime import app
from runtime.db import Database
from services.tasks.allowance import allowance
from services.tasks.allowance.allowance import Usage
from tests.conftest import TENANT_ACME, unique
from tests.waiting import eventually

TENANT = TENANT_ACME


@pytest.fixture
async def db(pg_dsn: str, tasks: app.RunningService) -> AsyncIterator[Database]:
    """Twenty transactions at once, so takes really overlap (the tasks fixture migrated the schema)."""
    database = await Database.connect(pg_dsn, min_size=1, max_size=20)
    yield database
    await database.close()


async def new(db: Database, total: int, shards: int) -> str:
    owner = f"test:{unique('a')}"
    async with db.transaction(TENANT) as conn:
        assert await allowance.create(conn, TENANT, owner, total, shards=shards)
    return owner


async def take(db: Database, owner: str, amount: int) -> bool:
    async with db.transaction(TENANT) as conn:
        return await allowance.take(conn, owner, amount)


async def usage(db: Database, owner: str) -> Usage | None:
    async with db.transaction(TENANT) as conn:
        return await allowance.usage(conn, owner)


@pytest.mark.parametrize("shards", [1, 8, 32])
async def test_concurrent_takes_of_one_take_exactly_the_total(db: Database, shards: int) -> None:
    owner = await new(db, 100, shards)
    results = await asyncio.gather(*(take(db, owner, 1) for _ in range(300)))
    assert sum(results) == 100
    assert await usage(db, owner) == Usage(total=100, remaining=0)


async def test_mixed_takes_are_refused_only_when_what_is_left_falls_short(db: Database) -> None:
    """Takes of 1 to 9 from 8 shards of about 12: many larger than one shard holds, or than what a
    shard has left, so they merge shards. What succeeded adds up to what was used, and every take
    refused asked for more than was left in the end (what is left only falls, so at its refusal
    too)."""
    owner = await new(db, 100, 8)
    amounts = [1 + (i * 7) % 9 for i in range(60)]
    results = await asyncio.gather(*(take(db, owner, a) for a in amounts))
    left = await usage(db, owner)
    assert left is not None and left.total == 100
    assert sum(a for a, ok in zip(amounts, results, strict=True) if ok) == left.used
    refused = [a for a, ok in zip(amounts, results, strict=True) if not ok]
    assert refused and all(a > left.remaining for a in refused)
    async with db.transaction(TENANT) as conn:
        shards = await conn.fetch("SELECT remaining FROM tasks.allowance_shards WHERE owner = $1", owner)
    assert all(r["remaining"] >= 0 for r in shards)


async def test_a_take_larger_than_any_shard_draws_on_several(db: Database) -> None:
    owner = await new(db, 10, 4)  # 3, 3, 2, 2
    assert await take(db, owner, 9)
    assert await usage(db, owner) == Usage(total=10, remaining=1)
    assert not await take(db, owner, 2)
    assert await take(db, owner, 1)
    assert not await take(db, owner, 1)
    assert await take(db, owner, 0)


async def test_a_take_passes_a_held_shard_without_waiting(db: Database) -> None:
    owner = await new(db, 10, 2)  # 5, 5
    async with db.transaction(TENANT) as holder:
        assert await allowance.take(holder, owner, 5)  # holds one shard, uncommitted
        assert await take(db, owner, 5)  # the other one, at once
    assert await usage(db, owner) == Usage(total=10, remaining=0)


@pytest.mark.parametrize("holder_commits", [True, False])
async def test_a_take_that_needs_a_held_shard_waits_for_its_holder(
    db: Database, holder_commits: bool
) -> None:
    """6 of 5 + 5 while another transaction holds 5 of one shard: the take waits for it, then
    succeeds if it rolled back (10 left) and is refused if it committed (5 left)."""
    owner = await new(db, 10, 2)
    async with db.transaction(TENANT) as holder:
        assert await allowance.take(holder, owner, 5)
        waiting = asyncio.create_task(take(db, owner, 6))

        async def blocked() -> bool:
            # Outside the application role, which sees no other session's query.
            async with db.pool.acquire() as conn:
                return bool(
                    await conn.fetchval(
                        """SELECT count(*) FROM pg_stat_activity
                           WHERE wait_event_type = 'Lock' AND query LIKE '%take_allowance%'"""
                    )
                )

        await eventually(blocked, "saw the take wait for the held shard")
        assert not waiting.done()
        if not holder_commits:
            await holder.execute("ROLLBACK")
            await holder.execute("BEGIN")
    assert await waiting is (not holder_commits)
    expected = Usage(10, 5) if holder_commits else Usage(10, 4)
    assert await usage(db, owner) == expected


async def test_a_rolled_back_take_gives_back_what_it_took(db: Database) -> None:
    owner = await new(db, 10, 3)
    with pytest.raises(RuntimeError):
        async with db.transaction(TENANT) as conn:
            assert await allowance.take(conn, owner, 10)
            raise RuntimeError("the caller's later write failed")
    assert await usage(db, owner) == Usage(total=10, remaining=10)


async def test_give_back_restores_what_a_take_took(db: Database) -> None:
    owner = await new(db, 10, 4)
    assert await take(db, owner, 10)
    async with db.transaction(TENANT) as conn:
        await allowance.give_back(conn, owner, 4)
    assert await usage(db, owner) == Usage(total=10, remaining=4)
    assert await take(db, owner, 4)


async def test_increases_under_concurrent_takes_are_all_taken(db: Database) -> None:
    """Ten restocks of 10 while 200 takes of 1 run: the 10 at first plus every restock is taken, no
    more."""
    owner = await new(db, 10, 8)

    async def restock() -> None:
        async with db.transaction(TENANT) as conn:
            assert await allowance.add(conn, owner, 10) is not None

    results = await asyncio.gather(*(take(db, owner, 1) for _ in range(200)), *(restock() for _ in range(10)))
    taken = sum(1 for r in results if r is True)
    after = await usage(db, owner)
    assert after is not None and after.total == 110
    assert taken == after.used
    assert await take(db, owner, after.remaining) and not await take(db, owner, 1)


async def test_resize_keeps_what_was_used_and_never_goes_below_it(db: Database) -> None:
    owner = await new(db, 100, 8)
    assert await take(db, owner, 30)
    async with db.transaction(TENANT) as conn:
        assert await allowance.resize(conn, owner, 29) is None
        assert await allowance.resize(conn, owner, 40) == Usage(total=40, remaining=10)
    assert not await take(db, owner, 11)
    async with db.transaction(TENANT) as conn:
        assert await allowance.resize(conn, owner, 30) == Usage(total=30, remaining=0)
        assert await allowance.resize(conn, owner, 1000) == Usage(total=1000, remaining=970)
    assert await take(db, owner, 970)
    assert await usage(db, owner) == Usage(total=1000, remaining=0)


async def test_create_is_idempotent_and_a_missing_owner_has_nothing(db: Database) -> None:
    owner = await new(db, 10, 4)
    async with db.transaction(TENANT) as conn:
        assert not await allowance.create(conn, TENANT, owner, 99, shards=2)
        assert await allowance.usage(conn, owner) == Usage(10, 10)
        assert not await allowance.take(conn, "test:none", 1)
        assert await allowance.usage(conn, "test:none") is None
        assert await allowance.resize(conn, "test:none", 5) is None
