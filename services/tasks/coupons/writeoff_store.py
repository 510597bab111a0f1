"""SQL of the write-off: the coupons an order names, their use and restore (conditional updates of
`tasks.coupons`, 0013), and the violations (`tasks.coupon_violations`, 0015). Every function runs
on a connection inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection

# tasks.coupons.state (memberops.tasks.v1.CouponState): EXPIRED is never stored.
AVAILABLE = 1
USED = 2


@dataclass(frozen=True)
class CouponTerms:
    """What the write-off checks of one coupon, as it was when read."""

    code: str
    member_id: str
    used: bool
    order_id: str | None
    valid_from: dt.datetime
    valid_until: dt.datetime
    threshold_minor: int
    categories: tuple[str, ...]
    skus: tuple[str, ...]


@dataclass(frozen=True)
class ViolationRow:
    violation_id: int
    order_id: str
    member_id: str
    code: str
    reason: int
    paid_time: dt.datetime
    create_time: dt.datetime


async def coupon_terms(conn: Connection, codes: Sequence[str]) -> dict[str, CouponTerms]:
    """The coupons with these codes (of the transaction's tenant), by code."""
    rows = await conn.fetch(
        """SELECT code, member_id, state, order_id, valid_from, valid_until, threshold_minor,
                  categories, skus
           FROM tasks.coupons WHERE tenant_id = current_setting('memberops.tenant_id')
                AND code = ANY($1::text[])""",
        list(codes),
    )
    return {
        r["code"]: CouponTerms(
            code=r["code"],
            member_id=r["member_id"],
            used=r["state"] == USED,
            order_id=r["order_id"],
            valid_from=r["valid_from"],
            valid_until=r["valid_until"],
            threshold_minor=r["threshold_minor"],
            categories=tuple(r["categories"]),
            skus=tuple(r["skus"]),
        )
        for r in rows
    }


async def use(conn: Connection, code: str, order_id: str, paid_time: dt.datetime, amount_minor: int) -> bool:
    """Marks the coupon used on the order if it is still available; False when another order's
    transaction used it first (the update waits for that one and then finds it used)."""
    status: str = await conn.execute(
        f"""UPDATE tasks.coupons
            SET state = {USED}, order_id = $2, use_time = $3, order_amount_minor = $4
            WHERE tenant_id = current_setting('memberops.tenant_id') AND code = $1
                  AND state = {AVAILABLE}""",
        code,
        order_id,
        paid_time,
        amount_minor,
    )
    return status == "UPDATE 1"


async def restore(conn: Connection, order_id: str) -> int:
    """Makes the coupons used on the order available again; how many."""
    status: str = await conn.execute(
        f"""UPDATE tasks.coupons
            SET state = {AVAILABLE}, order_id = NULL, use_time = NULL, order_amount_minor = NULL
            WHERE tenant_id = current_setting('memberops.tenant_id') AND order_id = $1
                  AND state = {USED}""",
        order_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def record_violations(
    conn: Connection,
    tenant_id: str,
    order_id: str,
    member_id: str,
    paid_time: dt.datetime,
    refused: Sequence[tuple[str, int]],
) -> int:
    """Records each (code, reason) of the order once (an entry applied again adds nothing);
    how many are new."""
    if not refused:
        return 0
    status: str = await conn.execute(
        """INSERT INTO tasks.coupon_violations (tenant_id, order_id, member_id, code, reason, paid_time)
           SELECT $1, $2, $3, r.code, r.reason, $4
           FROM unnest($5::text[], $6::smallint[]) AS r(code, reason) ORDER BY r.code
           ON CONFLICT (tenant_id, order_id, code) DO NOTHING""",
        tenant_id,
        order_id,
        member_id,
        paid_time,
        [code for code, _ in refused],
        [int(reason) for _, reason in refused],
    )
    return int(status.rsplit(" ", 1)[-1])


_VIOLATION_COLUMNS = "violation_id, order_id, member_id, code, reason, paid_time, create_time"


async def violations_page(
    conn: Connection, member_id: str, order_id: str, before: int | None, limit: int
) -> list[ViolationRow]:
    """Up to `limit` violations newest first (by id), older than `before`, optionally of one
    member and/or one order ('' for any). The filters are fixed fragments chosen here, so each
    combination is its own statement with its own plan (the member's index, the order's key)."""
    where = ["tenant_id = current_setting('memberops.tenant_id')"]
    args: list[object] = []
    for column, value in (("member_id", member_id), ("order_id", order_id)):
        if value:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if before is not None:
        args.append(before)
        where.append(f"violation_id < ${len(args)}")
    args.append(limit)
    rows = await conn.fetch(
        f"""SELECT {_VIOLATION_COLUMNS} FROM tasks.coupon_violations WHERE {" AND ".join(where)}
            ORDER BY violation_id DESC LIMIT ${len(args)}""",
        *args,
    )
    return [ViolationRow(**dict(r)) for r in rows]
