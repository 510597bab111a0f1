"""SQL of coupons, the per-member holdings and the templates' stock. Every function runs on a
connection inside a tenant transaction.

An issue takes, in this order: the member's holding (a conditional upsert against the per-member
limit; one row per member and template, so members do not wait for each other), the coupon's row,
and last the template's stock (a conditional update of its hot row, held only until the commit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class NewCoupon:
    code: str
    template_id: str
    template_version: int
    member_id: str
    discount_kind: int
    amount_minor: int
    percent: int
    max_discount_minor: int
    threshold_minor: int
    categories: tuple[str, ...]
    skus: tuple[str, ...]
    valid_from: dt.datetime
    valid_until: dt.datetime
    source_campaign: str
    source_arm: str
    request_id: str
    content_hash: str
    issue_time: dt.datetime


@dataclass(frozen=True)
class CouponRow:
    coupon_id: int
    code: str
    template_id: str
    template_version: int
    member_id: str
    state: int
    discount_kind: int
    amount_minor: int
    percent: int
    max_discount_minor: int
    threshold_minor: int
    categories: list[str]
    skus: list[str]
    valid_from: dt.datetime
    valid_until: dt.datetime
    source_campaign: str
    source_arm: str
    order_id: str | None
    use_time: dt.datetime | None
    order_amount_minor: int | None
    request_id: str
    content_hash: str
    issue_time: dt.datetime


@dataclass(frozen=True)
class ArmRow:
    arm: str
    issued: int
    used: int
    order_amount_minor: int


_COLUMNS = (
    "coupon_id, code, template_id, template_version, member_id, state, discount_kind, amount_minor, "
    "percent, max_discount_minor, threshold_minor, categories, skus, valid_from, valid_until, "
    "source_campaign, source_arm, order_id, use_time, order_amount_minor, request_id, content_hash, "
    "issue_time"
)


async def take_holding(
    conn: Connection, tenant_id: str, template_id: str, member_id: str, limit: int
) -> bool:
    """Counts one more coupon of the template for the member and locks the member's holding;
    False (nothing written) when the member already holds `limit`."""
    taken = await conn.fetchval(
        """INSERT INTO tasks.coupon_holdings AS h (tenant_id, template_id, member_id, held)
           VALUES ($1, $2, $3, 1)
           ON CONFLICT (tenant_id, template_id, member_id) DO UPDATE SET held = h.held + 1
           WHERE h.held < $4
           RETURNING true""",
        tenant_id,
        template_id,
        member_id,
        limit,
    )
    return bool(taken)


async def take_stock(conn: Connection, template_id: str, version: int) -> bool | None:
    """Takes one coupon of the template's stock if it is active at `version` and has stock left.
    True: taken. False: no stock left. None: the template is retired, gone or at another version
    (the caller reads it again). Why nothing was taken is read only then, in a statement of its
    own, so it sees a concurrent change the update waited for."""
    if await conn.fetchval(
        """UPDATE tasks.coupon_templates SET issued = issued + 1
           WHERE template_id = $1 AND state = 1 AND current_version = $2
             AND (total_stock = 0 OR issued < total_stock)
           RETURNING true""",
        template_id,
        version,
    ):
        return True
    current = await conn.fetchval(
        """SELECT true FROM tasks.coupon_templates
           WHERE template_id = $1 AND state = 1 AND current_version = $2""",
        template_id,
        version,
    )
    return False if current else None


async def insert_coupon(conn: Connection, tenant_id: str, c: NewCoupon) -> CouponRow | None:
    """The new coupon; None when its code is taken (the caller draws another). A taken request id
    raises UniqueViolationError."""
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.coupons (tenant_id, code, template_id, template_version, member_id,
                discount_kind, amount_minor, percent, max_discount_minor, threshold_minor, categories,
                skus, valid_from, valid_until, source_campaign, source_arm, request_id, content_hash,
                issue_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
            ON CONFLICT (tenant_id, code) DO NOTHING
            RETURNING {_COLUMNS}""",
        tenant_id,
        c.code,
        c.template_id,
        c.template_version,
        c.member_id,
        c.discount_kind,
        c.amount_minor,
        c.percent,
        c.max_discount_minor,
        c.threshold_minor,
        list(c.categories),
        list(c.skus),
        c.valid_from,
        c.valid_until,
        c.source_campaign,
        c.source_arm,
        c.request_id,
        c.content_hash,
        c.issue_time,
    )
    return None if row is None else CouponRow(**dict(row))


async def by_request(conn: Connection, request_id: str) -> CouponRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM tasks.coupons WHERE request_id = $1", request_id)
    return None if row is None else CouponRow(**dict(row))


async def by_code(conn: Connection, code: str) -> CouponRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM tasks.coupons WHERE code = $1", code)
    return None if row is None else CouponRow(**dict(row))


async def member_coupons(
    conn: Connection,
    member_id: str,
    states: Sequence[int],
    now: dt.datetime,
    before: int | None,
    limit: int,
) -> list[CouponRow]:
    """The member's coupons newest first, before `before` (a coupon id), in the derived states
    asked (1 available, 2 used, 3 expired; empty: all)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM tasks.coupons
            WHERE member_id = $1 AND ($2::bigint IS NULL OR coupon_id < $2)
              AND (cardinality($3::smallint[]) = 0
                   OR CASE WHEN state = 2 THEN 2 WHEN valid_until <= $4 THEN 3 ELSE 1 END = ANY($3))
            ORDER BY coupon_id DESC LIMIT $5""",
        member_id,
        before,
        list(states),
        now,
        limit,
    )
    return [CouponRow(**dict(r)) for r in rows]


async def arm_stats(conn: Connection, campaign: str) -> list[ArmRow]:
    rows = await conn.fetch(
        """SELECT source_arm AS arm, count(*) AS issued, count(*) FILTER (WHERE state = 2) AS used,
                  coalesce(sum(order_amount_minor) FILTER (WHERE state = 2), 0)::bigint AS order_amount_minor
           FROM tasks.coupons WHERE source_campaign = $1
           GROUP BY source_arm ORDER BY source_arm""",
        campaign,
    )
    return [ArmRow(**dict(r)) for r in rows]
