"""SQL of levels: the policy and its tiers, members' levels, growth sums (the tasks feed of level
changes is tasks_feed_store.py).

Lock order: `member_levels` rows only (sorted by member id). The ledger's earning function locks
the member's account first and then their `member_levels` row; the evaluation never takes an
account, so the two never wait on each other in opposite orders.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from runtime.db import Connection
from services.tasks.points.ledger_store import EARNED, EARNED_REASONS


async def ensure_policy(conn: Connection, tenant_id: str, content: dict[str, Any], digest: str) -> None:
    """Stores a policy (`Policy.content()`, with its tiers) unless the tenant has one."""
    tiers = content["tiers"]
    await conn.execute(
        """WITH p AS (INSERT INTO tasks.level_policies (tenant_id, window_days, period_months, grace_days,
                                                        time_zone, content_hash)
                      VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id)
           INSERT INTO tasks.level_tiers (tenant_id, rank, code, display_name, min_growth,
                                          points_multiplier_percent, monthly_coupon_template,
                                          birthday_coupon_template)
           SELECT p.tenant_id, t.rank - 1, t.code, t.display_name, t.min_growth, t.multiplier, t.monthly,
                  t.birthday
           FROM p, unnest($7::text[], $8::text[], $9::bigint[], $10::integer[], $11::text[], $12::text[])
                   WITH ORDINALITY
                   AS t(code, display_name, min_growth, multiplier, monthly, birthday, rank)""",
        tenant_id,
        content["window_days"],
        content["period_months"],
        content["grace_days"],
        content["time_zone"],
        digest,
        [t["code"] for t in tiers],
        [t["display_name"] for t in tiers],
        [t["min_growth"] for t in tiers],
        *_benefit_columns(tiers),
    )


def _benefit_columns(tiers: Sequence[dict[str, Any]]) -> tuple[list[int], list[str], list[str]]:
    """Each tier's benefits as three column arrays (a tier's content omits benefits it lacks)."""
    benefits = [t.get("benefits", {}) for t in tiers]
    return (
        [b.get("points_multiplier_percent", 0) for b in benefits],
        [b.get("monthly_coupon_template", "") for b in benefits],
        [b.get("birthday_coupon_template", "") for b in benefits],
    )


async def policy(
    conn: Connection, *, lock: bool = False
) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    """The stored policy row (version, window_days, period_months, grace_days, time_zone,
    update_time) and its tiers by rank (code, display_name, min_growth and the benefit columns)."""
    row = await conn.fetchrow(
        "SELECT version, window_days, period_months, grace_days, time_zone, update_time"
        " FROM tasks.level_policies" + (" FOR UPDATE" if lock else "")
    )
    if row is None:
        return None
    tiers = await conn.fetch(
        """SELECT code, display_name, min_growth, points_multiplier_percent, monthly_coupon_template,
                  birthday_coupon_template
           FROM tasks.level_tiers ORDER BY rank"""
    )
    return row, list(tiers)


async def replace_policy(
    conn: Connection, tenant_id: str, content: dict[str, Any], version: int, digest: str
) -> None:
    tiers = content["tiers"]
    await conn.execute("DELETE FROM tasks.level_tiers")
    await conn.execute(
        """UPDATE tasks.level_policies
           SET version = $1, window_days = $2, period_months = $3, grace_days = $4, time_zone = $5,
               content_hash = $6, update_time = now()""",
        version,
        content["window_days"],
        content["period_months"],
        content["grace_days"],
        content["time_zone"],
        digest,
    )
    await conn.execute(
        """INSERT INTO tasks.level_tiers (tenant_id, rank, code, display_name, min_growth,
                                         points_multiplier_percent, monthly_coupon_template,
                                         birthday_coupon_template)
           SELECT $1, t.rank - 1, t.code, t.display_name, t.min_growth, t.multiplier, t.monthly, t.birthday
           FROM unnest($2::text[], $3::text[], $4::bigint[], $5::integer[], $6::text[], $7::text[])
                WITH ORDINALITY AS t(code, display_name, min_growth, multiplier, monthly, birthday, rank)""",
        tenant_id,
        [t["code"] for t in tiers],
        [t["display_name"] for t in tiers],
        [t["min_growth"] for t in tiers],
        *_benefit_columns(tiers),
    )


async def held(conn: Connection, member_id: str) -> tuple[str, dt.datetime] | None:
    row = await conn.fetchrow("SELECT code, since FROM tasks.member_levels WHERE member_id = $1", member_id)
    return None if row is None else (row["code"], row["since"])


async def held_codes(conn: Connection, member_ids: Sequence[str]) -> dict[str, str]:
    """The level code each of these members holds now (members never raised have none)."""
    rows = await conn.fetch(
        "SELECT member_id, code FROM tasks.member_levels WHERE member_id = ANY($1::text[])", list(member_ids)
    )
    return {r["member_id"]: r["code"] for r in rows}


async def growths(
    conn: Connection, member_ids: Sequence[str], windows: Sequence[tuple[dt.datetime, dt.datetime]]
) -> dict[str, tuple[int, ...]]:
    """Per member, the growth in each window (start, end]: earned entries (tasks, orders, net of
    their reversals) created in it."""
    sums = ", ".join(
        f"coalesce(sum({EARNED}) FILTER (WHERE create_time > ${2 * i + 2}"
        f" AND create_time <= ${2 * i + 3}), 0)::bigint AS g{i}"
        for i in range(len(windows))
    )
    bounds = [moment for window in windows for moment in window]
    rows = await conn.fetch(
        f"""SELECT member_id, {sums} FROM tasks.ledger_entries
            WHERE member_id = ANY($1::text[]) AND reason IN {EARNED_REASONS}
              AND create_time > ${len(bounds) + 2}
            GROUP BY member_id""",
        list(member_ids),
        *bounds,
        min(start for start, _ in windows),
    )
    return {r["member_id"]: tuple(r[f"g{i}"] for i in range(len(windows))) for r in rows}


async def review_due(
    conn: Connection, boundary: dt.datetime, start: dt.datetime, as_of: dt.datetime, after: str, limit: int
) -> list[str]:
    """Members above the base level not yet reviewed for `boundary`, by member id."""
    rows = await conn.fetch(
        """SELECT l.member_id FROM tasks.member_levels l
           JOIN tasks.level_tiers t ON t.tenant_id = l.tenant_id AND t.code = l.code AND t.rank > 0
           WHERE (l.reviewed_through IS NULL OR l.reviewed_through < $1) AND l.member_id > $2
           ORDER BY l.member_id LIMIT $3""",
        boundary,
        after,
        limit,
    )
    return [r["member_id"] for r in rows]


async def upgrade_due(
    conn: Connection, boundary: dt.datetime, start: dt.datetime, as_of: dt.datetime, after: str, limit: int
) -> list[str]:
    """Members whose growth in (start, as_of] reaches a tier above the one they hold, by member id."""
    rows = await conn.fetch(
        f"""WITH growth AS (
                SELECT member_id, sum({EARNED}) AS g FROM tasks.ledger_entries
                WHERE reason IN {EARNED_REASONS} AND create_time > $1 AND create_time <= $2 AND member_id > $3
                GROUP BY member_id)
            SELECT g.member_id FROM growth g
            LEFT JOIN tasks.member_levels l ON l.member_id = g.member_id
            LEFT JOIN tasks.level_tiers held ON held.code = l.code
            WHERE (SELECT max(rank) FROM tasks.level_tiers WHERE min_growth <= g.g) > coalesce(held.rank, 0)
            ORDER BY g.member_id LIMIT $4""",
        start,
        as_of,
        after,
        limit,
    )
    return [r["member_id"] for r in rows]


async def lock_levels(
    conn: Connection, member_ids: Sequence[str]
) -> dict[str, tuple[str, dt.datetime, dt.datetime | None]]:
    """Locks the members' level rows in member-id order: code, since, reviewed through."""
    rows = await conn.fetch(
        """SELECT member_id, code, since, reviewed_through FROM tasks.member_levels
           WHERE member_id = ANY($1::text[]) ORDER BY member_id FOR UPDATE""",
        list(member_ids),
    )
    return {r["member_id"]: (r["code"], r["since"], r["reviewed_through"]) for r in rows}


async def set_level(
    conn: Connection, tenant_id: str, member_id: str, code: str, since: dt.datetime, reviewed: dt.datetime
) -> None:
    await conn.execute(
        """INSERT INTO tasks.member_levels (tenant_id, member_id, code, since, reviewed_through)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, member_id) DO UPDATE SET code = excluded.code, since = excluded.since""",
        tenant_id,
        member_id,
        code,
        since,
        reviewed,
    )


async def mark_reviewed(conn: Connection, member_ids: Sequence[str], boundary: dt.datetime) -> None:
    await conn.execute(
        """UPDATE tasks.member_levels SET reviewed_through = $2
           WHERE member_id = ANY($1::text[]) AND (reviewed_through IS NULL OR reviewed_through < $2)""",
        list(member_ids),
        boundary,
    )
