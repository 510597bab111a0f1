"""SQL of coupons, the per-member holdings and the templates' stock. Every function runs on a
connection inside a tenant transaction, except `issue`, which may also run on the pool.

An issue takes, in this order and in one round trip (`tasks.issue_coupon`, migration 0020): a
key-share lock on the template's row at the version it read, the member's holding (a conditional
upsert against the per-member limit; one row per member and template, so members do not wait for
each other), the coupon's row, and last a unit of the template's stock from its allowance.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from runtime.db import Connection


@dataclass(frozen=True)
class NewCoupon:
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


class Refusal(enum.Enum):
    """Why `issue` wrote nothing (the SQLSTATEs `tasks.issue_coupon` raises)."""

    # The template is retired, gone or at another version than the coupon's (read it again).
    STALE = "MC001"
    # The member holds the per-member limit already.
    LIMIT = "MC002"
    OUT_OF_STOCK = "MC003"
    # Every code offered was taken.
    CODES_TAKEN = "MC004"


_REFUSALS = {r.value: r for r in Refusal}
# tasks.issue_coupons wrote nothing: the group must be issued one by one.
GROUP_REFUSED = "MC005"


async def issue(
    on: asyncpg.Pool | Connection, tenant_id: str, c: NewCoupon, codes: Sequence[str], limit: int, stock: str
) -> CouponRow | Refusal:
    """The coupon `c.request_id` issued before (its content unchecked: the caller compares), else
    the coupon written under the first of `codes` not taken, with the member's holding counted and
    a unit of `stock` (an allowance owner) taken, in one round trip (`tasks.issue_coupon`, see
    services/tasks/migrations/README.md); or why nothing was written (no coupon of the request id
    existed then). Runs on the pool, as one autocommitted statement (the function enters the tenant
    itself), or inside a caller's tenant transaction, where a refusal aborts it (the caller holds a
    savepoint). A request id another transaction issues meanwhile raises UniqueViolationError."""
    try:
        row = await on.fetchrow(
            f"""SELECT {_COLUMNS} FROM tasks.issue_coupon($1, $2, $3, $4, $5, $6, $7::smallint, $8, $9,
                   $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)""",
            tenant_id,
            c.template_id,
            c.template_version,
            c.member_id,
            limit,
            list(codes),
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
            stock,
        )
    except asyncpg.PostgresError as error:
        refusal = _REFUSALS.get(getattr(error, "sqlstate", ""))
        if refusal is None:
            raise
        return refusal
    assert row is not None
    return CouponRow(**dict(row))


async def issue_group(
    pool: asyncpg.Pool,
    tenant_id: str,
    coupons: Sequence[NewCoupon],
    codes: Sequence[str],
    limit: int,
    stock: str,
) -> list[CouponRow] | None:
    """`coupons` (of one template and version, the i-th under `codes[i]`) written in one statement
    (`tasks.issue_coupons`, migration 0024), in their order; None when they cannot all be, having
    written nothing (a retry among them, the template changed, a member's limit, a code taken, the
    stock short). A request id met twice, or issued meanwhile, raises UniqueViolationError."""
    first = coupons[0]
    try:
        rows = await pool.fetch(
            f"""SELECT {_COLUMNS} FROM tasks.issue_coupons($1, $2, $3, $4, $5, $6::smallint, $7, $8, $9, $10,
                   $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)""",
            tenant_id,
            first.template_id,
            first.template_version,
            limit,
            stock,
            first.discount_kind,
            first.amount_minor,
            first.percent,
            first.max_discount_minor,
            list(first.categories),
            list(first.skus),
            [c.member_id for c in coupons],
            [c.request_id for c in coupons],
            [c.content_hash for c in coupons],
            list(codes),
            [c.threshold_minor for c in coupons],
            [c.valid_from for c in coupons],
            [c.valid_until for c in coupons],
            [c.source_campaign for c in coupons],
            [c.source_arm for c in coupons],
            [c.issue_time for c in coupons],
        )
    except asyncpg.PostgresError as error:
        if getattr(error, "sqlstate", "") == GROUP_REFUSED:
            return None
        raise
    by_request_id = {row["request_id"]: CouponRow(**dict(row)) for row in rows}
    return [by_request_id[c.request_id] for c in coupons]


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
