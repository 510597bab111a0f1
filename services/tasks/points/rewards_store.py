"""SQL of the rewards catalog and redemptions. Every function runs on a connection inside a tenant
transaction; a redemption takes the reward's row after the member's account (the ledger's lock
order, see ledger_store.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class Reward:
    reward_id: str
    kind: int
    display_name: str
    price: int
    initial_stock: int | None
    stock: int | None
    win_odds_bp: int
    create_time: dt.datetime
    description: str
    coupon_template: str | None
    per_member_limit: int
    state: int
    version: int
    update_time: dt.datetime


@dataclass(frozen=True)
class Redemption:
    redemption_id: int
    request_id: str
    member_id: str
    reward_id: str
    points: int
    outcome: int
    entry_id: int
    create_time: dt.datetime
    coupon_code: str | None


@dataclass(frozen=True)
class NewReward:
    reward_id: str
    kind: int
    display_name: str
    price: int
    # 0: unlimited.
    initial_stock: int
    win_odds_bp: int
    description: str = ""
    # A coupon template id (coupon rewards only).
    coupon_template: str = ""
    # 0: no limit.
    per_member_limit: int = 0


@dataclass(frozen=True)
class Change:
    """What UpdateReward may change: the new content and the units to add."""

    display_name: str
    description: str
    price: int
    per_member_limit: int
    add_stock: int


ACTIVE, RETIRED = 1, 2
_REWARD_COLUMNS = (
    "reward_id, kind, display_name, price, initial_stock, stock, win_odds_bp, create_time, description, "
    "coupon_template, per_member_limit, state, version, update_time"
)
_REDEMPTION_COLUMNS = (
    "redemption_id, request_id, member_id, reward_id, points, outcome, entry_id, create_time, coupon_code"
)


async def insert_reward(conn: Connection, tenant_id: str, reward: NewReward) -> Reward | None:
    """The new reward, or None when the id is taken."""
    stock = reward.initial_stock or None
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.rewards (tenant_id, reward_id, kind, display_name, price, initial_stock, stock,
                                       win_odds_bp, description, coupon_template, per_member_limit)
            VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10) ON CONFLICT (tenant_id, reward_id) DO NOTHING
            RETURNING {_REWARD_COLUMNS}""",
        tenant_id,
        reward.reward_id,
        reward.kind,
        reward.display_name,
        reward.price,
        stock,
        reward.win_odds_bp,
        reward.description,
        reward.coupon_template or None,
        reward.per_member_limit,
    )
    return None if row is None else Reward(**dict(row))


async def reward(conn: Connection, tenant_id: str, reward_id: str, *, lock: bool = False) -> Reward | None:
    """The reward; with `lock`, its row locked for an update."""
    row = await conn.fetchrow(
        f"""SELECT {_REWARD_COLUMNS} FROM tasks.rewards WHERE tenant_id = $1 AND reward_id = $2
            {"FOR UPDATE" if lock else ""}""",
        tenant_id,
        reward_id,
    )
    return None if row is None else Reward(**dict(row))


async def rewards(
    conn: Connection, tenant_id: str, after: str, limit: int, *, show_retired: bool = False
) -> list[Reward]:
    rows = await conn.fetch(
        f"""SELECT {_REWARD_COLUMNS} FROM tasks.rewards WHERE tenant_id = $1 AND reward_id > $2
                AND (state = {ACTIVE} OR $4)
            ORDER BY reward_id LIMIT $3""",
        tenant_id,
        after,
        limit,
        show_retired,
    )
    return [Reward(**dict(r)) for r in rows]


async def take_unit(conn: Connection, tenant_id: str, reward_id: str, *, take: bool) -> bool:
    """Takes one unit (or, for a lost draw, only checks one is left) and locks the reward's row;
    False when none is left."""
    taken = await conn.fetchval(
        """UPDATE tasks.rewards SET stock = stock - $3::int
           WHERE tenant_id = $1 AND reward_id = $2 AND stock > 0 RETURNING true""",
        tenant_id,
        reward_id,
        1 if take else 0,
    )
    return bool(taken)


async def change_reward(conn: Connection, tenant_id: str, reward_id: str, change: Change) -> Reward:
    """Writes the new content as the next version (the row is locked by the caller); the stock grows
    by `add_stock` (never for an unlimited reward: the caller checked)."""
    row = await conn.fetchrow(
        f"""UPDATE tasks.rewards
            SET display_name = $3, description = $4, price = $5, per_member_limit = $6,
                stock = stock + $7, version = version + 1, update_time = now()
            WHERE tenant_id = $1 AND reward_id = $2 RETURNING {_REWARD_COLUMNS}""",
        tenant_id,
        reward_id,
        change.display_name,
        change.description,
        change.price,
        change.per_member_limit,
        change.add_stock,
    )
    assert row is not None
    return Reward(**dict(row))


async def retire_reward(conn: Connection, tenant_id: str, reward_id: str) -> Reward | None:
    """The reward, retired (unchanged when it already was); None when it does not exist."""
    row = await conn.fetchrow(
        f"""WITH retired AS (
                UPDATE tasks.rewards SET state = {RETIRED}, update_time = now()
                WHERE tenant_id = $1 AND reward_id = $2 AND state <> {RETIRED} RETURNING {_REWARD_COLUMNS})
            SELECT {_REWARD_COLUMNS} FROM retired
            UNION ALL
            SELECT {_REWARD_COLUMNS} FROM tasks.rewards
            WHERE tenant_id = $1 AND reward_id = $2 AND NOT EXISTS (SELECT FROM retired)""",
        tenant_id,
        reward_id,
    )
    return None if row is None else Reward(**dict(row))


async def count_redemption(conn: Connection, tenant_id: str, reward: Reward, member_id: str) -> bool:
    """Counts one more redemption of the reward by the member; False (nothing counted) when the
    member is at the reward's per-member limit. The conditional upsert is the guard: two
    concurrent redemptions by one member cannot both pass the last unit of the limit."""
    counted = await conn.fetchval(
        """INSERT INTO tasks.reward_member_redemptions AS c (tenant_id, reward_id, member_id, redeemed)
           VALUES ($1, $2, $3, 1)
           ON CONFLICT (tenant_id, reward_id, member_id)
           DO UPDATE SET redeemed = c.redeemed + 1 WHERE $4::int = 0 OR c.redeemed < $4::int
           RETURNING true""",
        tenant_id,
        reward.reward_id,
        member_id,
        reward.per_member_limit,
    )
    return bool(counted)


async def redemption_by_request(conn: Connection, tenant_id: str, request_id: str) -> Redemption | None:
    row = await conn.fetchrow(
        f"SELECT {_REDEMPTION_COLUMNS} FROM tasks.redemptions WHERE tenant_id = $1 AND request_id = $2",
        tenant_id,
        request_id,
    )
    return None if row is None else Redemption(**dict(row))


async def insert_redemption(
    conn: Connection,
    tenant_id: str,
    request_id: str,
    member_id: str,
    reward_id: str,
    points: int,
    outcome: int,
    entry_id: int,
    coupon_code: str | None = None,
) -> Redemption:
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.redemptions (tenant_id, request_id, member_id, reward_id, points, outcome,
                                           entry_id, coupon_code)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_REDEMPTION_COLUMNS}""",
        tenant_id,
        request_id,
        member_id,
        reward_id,
        points,
        outcome,
        entry_id,
        coupon_code,
    )
    assert row is not None
    return Redemption(**dict(row))
