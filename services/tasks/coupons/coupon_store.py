"""SQL of coupons, the per-member holdings and the templates' stock. Every function runs on a
connection inside a tenant transaction.

An issue takes, in this order: a key-share lock on the template's row with the member's holding
(a conditional upsert against the per-member limit; one row per member and template, so members
do not wait for each other), the coupon's row, and last a unit of the template's stock from its
allowance (issuing.py).
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


_INSERT = """INSERT INTO tasks.coupons (tenant_id, code, template_id, template_version, member_id,
                 discount_kind, amount_minor, percent, max_discount_minor, threshold_minor, categories,
                 skus, valid_from, valid_until, source_campaign, source_arm, request_id, content_hash,
                 issue_time)"""
_VALUES = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19"


def _arguments(tenant_id: str, c: NewCoupon) -> tuple[object, ...]:
    return (
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


@dataclass(frozen=True)
class Held:
    """What `insert_held` did: `coupon` written, or (None) why not."""

    coupon: CouponRow | None
    # The member's holding was counted (False: `limit` reached, or `stale`).
    counted: bool
    # The template is retired, gone or at another version than the coupon's (read it again).
    stale: bool = False


async def insert_held(conn: Connection, tenant_id: str, c: NewCoupon, limit: int) -> Held:
    """In one statement: a key-share lock on the template if it is active at the coupon's version
    (an update or a retirement waits for this transaction), one more coupon counted in the member's
    holding if they hold fewer than `limit` (their holding stays locked), and the coupon. When the
    holding was counted but the code was taken, `coupon` is None and the caller inserts with
    another code (`insert_coupon`). Why nothing was counted is read only then, in a statement of
    its own, so it sees a change the first one waited for. A taken request id raises
    UniqueViolationError (nothing written)."""
    row = await conn.fetchrow(
        f"""WITH t AS (SELECT template_id FROM tasks.coupon_templates
                       WHERE template_id = $3 AND state = 1 AND current_version = $4 FOR KEY SHARE),
                 h AS (INSERT INTO tasks.coupon_holdings AS h (tenant_id, template_id, member_id, held)
                       SELECT $1, template_id, $5, 1 FROM t
                       ON CONFLICT (tenant_id, template_id, member_id) DO UPDATE SET held = h.held + 1
                       WHERE h.held < $20
                       RETURNING true),
                 c AS ({_INSERT} SELECT {_VALUES} FROM h
                       ON CONFLICT (tenant_id, code) DO NOTHING
                       RETURNING {_COLUMNS})
            SELECT EXISTS (SELECT FROM h) AS counted, c.* FROM (VALUES (1)) AS one LEFT JOIN c ON true""",
        *_arguments(tenant_id, c),
        limit,
    )
    assert row is not None
    if row["counted"]:
        coupon = (
            None
            if row["code"] is None
            else CouponRow(**{k: v for k, v in dict(row).items() if k != "counted"})
        )
        return Held(coupon, counted=True)
    current = await conn.fetchval(
        """SELECT true FROM tasks.coupon_templates
           WHERE template_id = $1 AND state = 1 AND current_version = $2 FOR KEY SHARE""",
        c.template_id,
        c.template_version,
    )
    return Held(None, counted=False, stale=not current)


async def insert_coupon(conn: Connection, tenant_id: str, c: NewCoupon) -> CouponRow | None:
    """The new coupon; None when its code is taken (the caller draws another). A taken request id
    raises UniqueViolationError."""
    row = await conn.fetchrow(
        f"{_INSERT} VALUES ({_VALUES}) ON CONFLICT (tenant_id, code) DO NOTHING RETURNING {_COLUMNS}",
        *_arguments(tenant_id, c),
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
