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


@dataclass(frozen=True)
class NewReward:
    reward_id: str
    kind: int
    display_name: str
    price: int
    # 0: unlimited.
    initial_stock: int
    win_odds_bp: int


_REWARD_COLUMNS = "reward_id, kind, display_name, price, initial_stock, stock, win_odds_bp, create_time"
_REDEMPTION_COLUMNS = (
    "redemption_id, request_id, member_id, reward_id, points, outcome, entry_id, create_time"
)


async def insert_reward(conn: Connection, tenant_id: str, reward: NewReward) -> Reward | None:
    """The new reward, or None when the id is taken."""
    stock = reward.initial_stock or None
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.rewards (tenant_id, reward_id, kind, display_name, price, initial_stock, stock,
                                       win_odds_bp)
            VALUES ($1, $2, $3, $4, $5, $6, $6, $7) ON CONFLICT (tenant_id, reward_id) DO NOTHING
            RETURNING {_REWARD_COLUMNS}""",
        tenant_id,
        reward.reward_id,
        reward.kind,
        reward.display_name,
        reward.price,
        stock,
        reward.win_odds_bp,
    )
    return None if row is None else Reward(**dict(row))


async def reward(conn: Connection, tenant_id: str, reward_id: str) -> Reward | None:
    row = await conn.fetchrow(
        f"SELECT {_REWARD_COLUMNS} FROM tasks.rewards WHERE tenant_id = $1 AND reward_id = $2",
        tenant_id,
        reward_id,
    )
    return None if row is None else Reward(**dict(row))


async def rewards(conn: Connection, tenant_id: str, after: str, limit: int) -> list[Reward]:
    rows = await conn.fetch(
        f"""SELECT {_REWARD_COLUMNS} FROM tasks.rewards WHERE tenant_id = $1 AND reward_id > $2
            ORDER BY reward_id LIMIT $3""",
        tenant_id,
        after,
        limit,
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
) -> Redemption:
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.redemptions (tenant_id, request_id, member_id, reward_id, points, outcome,
                                           entry_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_REDEMPTION_COLUMNS}""",
        tenant_id,
        request_id,
        member_id,
        reward_id,
        points,
        outcome,
        entry_id,
    )
    assert row is not None
    return Redemption(**dict(row))
