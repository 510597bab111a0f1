"""Allowances: an amount many transactions take from at once (a task's budget, a coupon template's
stock), split over shard rows so concurrent takers rarely wait on one row lock.

An owner ('task:<id>', 'coupon:<id>') has `shards` rows, each with what it can still give
(`remaining`, never below zero: a CHECK and conditional updates) and what the total put into it
(`granted`). The owner's total is sum(granted), what it used is sum(granted) - sum(remaining).

A take is exact: it succeeds if and only if the owner's remaining covers it. First it takes from
one shard that has enough and that no other transaction holds (SKIP LOCKED, picked at random: no
wait); when there is none (every such shard held, or the amount larger than any shard holds) it
locks every shard in shard order, waiting for their holders to finish, and takes from as many as
it needs, or refuses when their sum is short. Both run in one SQL function (`tasks.take_allowance`,
one round trip), the first in a block rolled back when it takes nothing, so a failed first attempt
holds no shard while the second waits. A shard taken stays locked until commit, so a
rolled-back transaction gives back what it took. Changing the total (`resize`, `add`) also locks
every shard, so it waits for the takes in flight and the takes after it see the new total.

Deadlocks: a transaction that takes only once from an owner holds none of its shards while it
waits, so it can never close a cycle. One that touches an owner twice (a take, or a give-back,
then a take) may hold a shard while its second touch waits for every shard in order, and close
a cycle with any other transaction locking them in order (PostgreSQL then aborts one). So: take
once, for the sum; a transaction that cannot (the feed follower's round) first `Holding.hold`s
every shard of each owner it touches, in order, and then never waits on that owner again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection
from services.tasks.allowance import allowance_store

DEFAULT_SHARDS = 32
MAX_SHARDS = 1000
# A total that is never used up (a task without a budget still counts what it paid).
UNLIMITED = 10**18


@dataclass(frozen=True)
class Usage:
    total: int
    remaining: int

    @property
    def used(self) -> int:
        return self.total - self.remaining


def split(amount: int, shards: int) -> list[int]:
    """`amount` over `shards` parts differing by at most one, the larger first."""
    base, extra = divmod(amount, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


async def create(
    conn: Connection, tenant_id: str, owner: str, total: int, *, shards: int = DEFAULT_SHARDS
) -> bool:
    """Creates the owner's allowance of `total` in the caller's transaction; False (nothing changed)
    when it exists already, so a retried create is harmless."""
    if not 0 <= total <= UNLIMITED or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"allowance {owner}: total {total} over {shards} shards")
    parts = split(total, shards)
    return await allowance_store.insert_shards(conn, tenant_id, owner, parts, parts)


async def take(conn: Connection, owner: str, amount: int) -> bool:
    """Takes `amount` if the owner's remaining covers it (True), else takes nothing (False). What
    it took stays locked, and returns if the transaction rolls back. A missing owner has nothing."""
    if amount < 0:
        raise ValueError(f"allowance {owner}: cannot take {amount}")
    return await allowance_store.take(conn, owner, amount)


async def give_back(conn: Connection, owner: str, amount: int) -> None:
    """Returns `amount` a take took (a reversal, a cancelled coupon) to the owner's remaining. The
    caller gives back no more than it took."""
    if amount < 0:
        raise ValueError(f"allowance {owner}: cannot give back {amount}")
    if amount == 0 or await allowance_store.give_back_to_one(conn, owner, amount):
        return
    await allowance_store.give_back_waiting(conn, owner, amount)


async def add(conn: Connection, owner: str, amount: int) -> Usage | None:
    """Raises the owner's total (and remaining) by `amount` (a restock); None when it has no shards."""
    if amount < 0:
        raise ValueError(f"allowance {owner}: cannot add {amount}")
    shards = await allowance_store.lock_all(conn, owner)
    if not shards:
        return None
    usage = _usage(shards)
    if usage.total + amount > UNLIMITED:
        raise ValueError(f"allowance {owner}: a total above {UNLIMITED}")
    parts = split(amount, len(shards))
    await allowance_store.change(conn, owner, [s.shard for s in shards], parts, parts)
    return Usage(usage.total + amount, usage.remaining + amount)


async def resize(conn: Connection, owner: str, total: int) -> Usage | None:
    """Sets the owner's total to `total`, keeping what it used. Returns the usage after, or (nothing
    changed) None when the owner has no shards or `total` is below what it used (`usage` says
    how much)."""
    if not 0 <= total <= UNLIMITED:
        raise ValueError(f"allowance {owner}: total {total}")
    shards = await allowance_store.lock_all(conn, owner)
    if not shards:
        return None
    usage = _usage(shards)
    delta = total - usage.total
    if delta >= 0:
        parts = split(delta, len(shards))
        await allowance_store.change(conn, owner, [s.shard for s in shards], parts, parts)
        return Usage(total, usage.remaining + delta)
    if usage.remaining < -delta:
        return None
    ids, deltas = _drawn(shards, -delta)
    changed = await allowance_store.change(conn, owner, ids, deltas, deltas)
    assert changed == len(ids), (owner, changed, ids)
    return Usage(total, usage.remaining + delta)


async def hold(conn: Connection, owner: str) -> Usage | None:
    """Locks every shard until the transaction ends (waiting for the takes in flight), changing
    nothing: a change the caller commits then comes before every take that follows it."""
    shards = await allowance_store.lock_all(conn, owner)
    return _usage(shards) if shards else None


class Holding:
    """The owners one transaction holds whole (`hold`), for a transaction that takes from or gives
    back to an owner more than once: holding first, in shard order, it never waits while holding
    part of the owner. Hold outside any savepoint the transaction may roll back: rolling back a
    savepoint releases the row locks taken in it."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    async def hold(self, conn: Connection, owner: str) -> None:
        """Locks every shard of `owner` unless this transaction holds them already."""
        if owner not in self._held:
            await hold(conn, owner)
            self._held.add(owner)


async def usage(conn: Connection, owner: str) -> Usage | None:
    """The owner's total and remaining as committed (None: no such allowance)."""
    return (await usages(conn, [owner])).get(owner)


async def usages(conn: Connection, owners: Sequence[str]) -> dict[str, Usage]:
    """`usage` of many owners in one read; owners without shards are left out."""
    found = await allowance_store.totals(conn, owners)
    return {owner: Usage(t.granted, t.remaining) for owner, t in found.items()}


def _usage(shards: Sequence[allowance_store.Shard]) -> Usage:
    return Usage(sum(s.granted for s in shards), sum(s.remaining for s in shards))


def _drawn(shards: Sequence[allowance_store.Shard], amount: int) -> tuple[list[int], list[int]]:
    """Which shards give `amount` (the fullest first) and how much each: negative deltas."""
    ids, deltas = [], []
    left = amount
    for s in sorted(shards, key=lambda s: -s.remaining):
        if left == 0:
            break
        part = min(s.remaining, left)
        ids.append(s.shard)
        deltas.append(-part)
        left -= part
    return ids, deltas
