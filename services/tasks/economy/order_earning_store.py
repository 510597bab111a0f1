"""SQL of the order earning rule: its versions, and the level multiplier an order earns at.
Runs inside tenant transactions."""

from __future__ import annotations

import datetime as dt

import asyncpg

from runtime.db import Connection

_COLUMNS = """version, enabled, minor_units_per_point, expiry_policy, expiry_days, return_window_days,
    enabled_since, content_hash, update_time"""


async def current(conn: Connection, *, lock: bool = False) -> asyncpg.Record | None:
    """The current (highest) version of the tenant's rule, None when it was never set."""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM tasks.order_earning_rules ORDER BY version DESC LIMIT 1"
        + (" FOR UPDATE" if lock else "")
    )


async def insert(
    conn: Connection,
    tenant_id: str,
    version: int,
    enabled: bool,
    minor_units_per_point: int,
    expiry_policy: int,
    expiry_days: int,
    return_window_days: int,
    enabled_since: dt.datetime | None,
    digest: str,
) -> asyncpg.Record:
    """Stores a new version; a concurrent writer of the same version makes it a unique violation."""
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.order_earning_rules (tenant_id, version, enabled, minor_units_per_point,
                expiry_policy, expiry_days, return_window_days, enabled_since, content_hash)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}""",
        tenant_id,
        version,
        enabled,
        minor_units_per_point,
        expiry_policy,
        expiry_days,
        return_window_days,
        enabled_since,
        digest,
    )
    assert row is not None
    return row


async def multiplier_percent(conn: Connection, member_id: str) -> int:
    """The points multiplier of the level the member holds now (the base level without a row):
    the tier's percentage, 0 when it sets none."""
    found = await conn.fetchval(
        """SELECT t.points_multiplier_percent FROM tasks.level_tiers t
           WHERE t.code = coalesce((SELECT code FROM tasks.member_levels WHERE member_id = $1),
                                   (SELECT code FROM tasks.level_tiers WHERE rank = 0))""",
        member_id,
    )
    return int(found or 0)
