"""Write-off: the coupon codes an order used, from tagging's feed (the order is the shop's fact and
is never refused). No gRPC; the SQL is writeoff_store's.

Each code of an order is used when it names a coupon of the order's member, available, valid at
the order's paid time (facts at their own time: an order paid while the coupon was valid uses it
however late it arrives) and whose threshold the order's eligible amount reaches; otherwise the
code is a violation and the coupon stays as it was. Imported (backfilled) orders are written off
alike: using a coupon is state, not a reaction, and a coupon used in history is not usable again.
A refund that refunds its order in full restores the coupons the order used.

Two orders racing for one code: the use is a conditional update (available -> used), so one
takes the coupon and the other finds it used (ALREADY_USED), whichever transaction commits first.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from memberops.tasks.v1 import coupons_pb2

from runtime.db import Connection
from runtime.tagging_feed import FeedEntry, OrderLine, OrderRecorded, RefundRecorded
from services.tasks.coupons import writeoff_store
from services.tasks.coupons.writeoff_store import CouponTerms


class Reason(enum.IntEnum):
    """memberops.tasks.v1.CouponViolationReason."""

    UNKNOWN_CODE = coupons_pb2.COUPON_VIOLATION_REASON_UNKNOWN_CODE
    ALREADY_USED = coupons_pb2.COUPON_VIOLATION_REASON_ALREADY_USED
    NOT_VALID_AT_PAID_TIME = coupons_pb2.COUPON_VIOLATION_REASON_NOT_VALID_AT_PAID_TIME
    OTHER_MEMBER = coupons_pb2.COUPON_VIOLATION_REASON_OTHER_MEMBER
    BELOW_THRESHOLD = coupons_pb2.COUPON_VIOLATION_REASON_BELOW_THRESHOLD


@dataclass(frozen=True)
class UsedOrder:
    """An order as the write-off needs it (from its OrderRecorded feed entry)."""

    order_id: str
    member_id: str
    paid_time: dt.datetime
    amount_minor: int
    lines: tuple[OrderLine, ...]
    coupon_codes: tuple[str, ...]


@dataclass(frozen=True)
class WrittenOff:
    used: int = 0
    violations: int = 0


def eligible_amount(terms: CouponTerms, order: UsedOrder) -> int | None:
    """What of the order the coupon applies to: the lines matching its categories or skus
    (quantity x unit price) when it lists any, else the order's amount. None when it lists some
    and no line matches: nothing of the order is eligible, whatever the threshold."""
    if not terms.categories and not terms.skus:
        return order.amount_minor
    categories, skus = set(terms.categories), set(terms.skus)
    matching = [line for line in order.lines if line.category in categories or line.sku in skus]
    if not matching:
        return None
    return sum(line.quantity * line.unit_price_minor for line in matching)


def refusal(terms: CouponTerms | None, order: UsedOrder) -> Reason | None:
    """Why the order may not use the coupon (None: it may). A coupon this order already used is
    not refused (the entry applied again)."""
    if terms is None:
        return Reason.UNKNOWN_CODE
    if terms.member_id != order.member_id:
        return Reason.OTHER_MEMBER
    if terms.used:
        return None if terms.order_id == order.order_id else Reason.ALREADY_USED
    if not terms.valid_from <= order.paid_time < terms.valid_until:
        return Reason.NOT_VALID_AT_PAID_TIME
    eligible = eligible_amount(terms, order)
    if eligible is None or eligible < terms.threshold_minor:
        return Reason.BELOW_THRESHOLD
    return None


async def write_off(conn: Connection, tenant_id: str, order: UsedOrder) -> WrittenOff:
    """Uses the order's coupons and records the violations of its other codes, in the caller's
    transaction (the feed follower's, with its cursor)."""
    if not order.coupon_codes:
        return WrittenOff()
    codes = sorted(set(order.coupon_codes))  # one lock order for every order
    found = await writeoff_store.coupon_terms(conn, codes)
    used = 0
    refused: list[tuple[str, Reason]] = []
    for code in codes:
        terms = found.get(code)
        reason = refusal(terms, order)
        if reason is not None:
            refused.append((code, reason))
            continue
        assert terms is not None
        if terms.used:
            continue  # this order's already
        if await writeoff_store.use(conn, code, order.order_id, order.paid_time, order.amount_minor):
            used += 1
        else:
            # Another order took it since it was read (its transaction committed first).
            refused.append((code, Reason.ALREADY_USED))
    recorded = await writeoff_store.record_violations(
        conn, tenant_id, order.order_id, order.member_id, order.paid_time, refused
    )
    return WrittenOff(used, recorded)


async def restore(conn: Connection, order_id: str) -> int:
    """Makes the coupons the order used available again (its full refund); how many."""
    return await writeoff_store.restore(conn, order_id)


async def order_entry(conn: Connection, tenant_id: str, entry: FeedEntry) -> WrittenOff:
    """The feed follower's hook for an OrderRecorded entry (live or backfilled alike)."""
    order = entry.payload
    if not isinstance(order, OrderRecorded) or not order.coupon_codes:
        return WrittenOff()
    used = UsedOrder(
        order_id=entry.subject_id,
        member_id=entry.member_id,
        paid_time=order.paid_time or entry.create_time,
        amount_minor=order.amount_minor,
        lines=order.lines,
        coupon_codes=order.coupon_codes,
    )
    return await write_off(conn, tenant_id, used)


async def refund_entry(conn: Connection, entry: FeedEntry) -> int:
    """The feed follower's hook for a RefundRecorded entry: a full refund restores the order's
    coupons (a partial one keeps them used); how many were restored."""
    refund = entry.payload
    if not isinstance(refund, RefundRecorded) or refund.order_standing is None:
        return 0
    if not refund.order_standing.refunded_in_full:
        return 0
    return await restore(conn, refund.order_id)
