"""SQL of allowance shards (`tasks.allowance_shards`). Every function runs on a connection inside a
tenant transaction (row-level security scopes it; the tenant is passed only for inserts). A shard
taken stays locked until the transaction ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class Shard:
    shard: int
    remaining: int
    granted: int


async def insert_shards(
    conn: Connection, tenant_id: str, owner: str, remaining: Sequence[int], granted: Sequence[int]
) -> bool:
    """Writes shards 0..n-1; False (and nothing written) when the owner has shards already."""
    inserted = await conn.fetchval(
        """INSERT INTO tasks.allowance_shards (tenant_id, owner, shard, remaining, granted)
           SELECT $1, $2, s.ordinality - 1, s.remaining, s.granted
           FROM unnest($3::bigint[], $4::bigint[]) WITH ORDINALITY AS s(remaining, granted, ordinality)
           ON CONFLICT (tenant_id, owner, shard) DO NOTHING
           RETURNING true""",
        tenant_id,
        owner,
        list(remaining),
        list(granted),
    )
    return bool(inserted)


async def take(conn: Connection, owner: str, amount: int) -> bool:
    """`tasks.take_allowance` (migration 0014): `amount` taken, or (False) nothing."""
    return bool(await conn.fetchval("SELECT tasks.take_allowance($1, $2)", owner, amount))


async def lock_all(conn: Connection, owner: str) -> list[Shard]:
    """Every shard of the owner, locked in shard order (waiting for the transactions holding any),
    as they stand once locked."""
    rows = await conn.fetch(
        """SELECT shard, remaining, granted FROM tasks.allowance_shards
           WHERE owner = $1 ORDER BY shard FOR UPDATE""",
        owner,
    )
    return [Shard(r["shard"], r["remaining"], r["granted"]) for r in rows]


async def change(
    conn: Connection, owner: str, shards: Sequence[int], remaining: Sequence[int], granted: Sequence[int]
) -> int:
    """Adds `remaining[i]` and `granted[i]` (either may be negative) to shard `shards[i]`, unless
    that takes its remaining below zero; how many shards it changed."""
    changed = await conn.fetchval(
        """WITH c AS (
               UPDATE tasks.allowance_shards a
               SET remaining = a.remaining + d.remaining, granted = a.granted + d.granted
               FROM unnest($2::smallint[], $3::bigint[], $4::bigint[]) AS d(shard, remaining, granted)
               WHERE a.owner = $1 AND a.shard = d.shard AND a.remaining + d.remaining >= 0
               RETURNING 1)
           SELECT count(*) FROM c""",
        owner,
        list(shards),
        list(remaining),
        list(granted),
    )
    return int(changed)


async def give_back_to_one(conn: Connection, owner: str, amount: int) -> bool:
    """Adds `amount` to a shard no other transaction holds, picked at random; False when every
    shard is held (or the owner has none)."""
    given = await conn.fetchval(
        """WITH p AS MATERIALIZED (
               SELECT shard FROM tasks.allowance_shards WHERE owner = $1
               ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
           UPDATE tasks.allowance_shards a SET remaining = a.remaining + $2
           FROM p WHERE a.owner = $1 AND a.shard = p.shard
           RETURNING true""",
        owner,
        amount,
    )
    return bool(given)


async def give_back_waiting(conn: Connection, owner: str, amount: int) -> bool:
    """Adds `amount` to the owner's shard 0, waiting for it if it is held."""
    given = await conn.fetchval(
        """UPDATE tasks.allowance_shards SET remaining = remaining + $2
           WHERE owner = $1 AND shard = 0 RETURNING true""",
        owner,
        amount,
    )
    return bool(given)


@dataclass(frozen=True)
class Totals:
    granted: int
    remaining: int


async def totals(conn: Connection, owners: Sequence[str]) -> dict[str, Totals]:
    """Each owner's sums, without locking (what committed transactions left)."""
    rows = await conn.fetch(
        """SELECT owner, sum(granted)::bigint AS granted, sum(remaining)::bigint AS remaining
           FROM tasks.allowance_shards WHERE owner = ANY($1::text[]) GROUP BY owner""",
        list(owners),
    )
    return {r["owner"]: Totals(r["granted"], r["remaining"]) for r in rows}
