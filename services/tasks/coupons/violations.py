"""ListCouponViolations: the codes orders used that the coupon rules refused, newest first,
optionally of one member and/or one order. No gRPC, no SQL.

A page token holds the last violation's id, bound to the filters it was made with (another
filter's token is INVALID_ARGUMENT)."""

from __future__ import annotations

from runtime import checks, page_tokens
from runtime.db import Database
from runtime.errors import Violations
from services.tasks.coupons import writeoff_store
from services.tasks.coupons.writeoff_store import ViolationRow

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _scope(member_id: str, order_id: str) -> str:
    return f"couponViolations/{member_id}/{order_id}"


class CouponViolations:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self, tenant_id: str, member_id: str, order_id: str, page_size: int, page_token: str
    ) -> tuple[list[ViolationRow], str]:
        """A page of violations and the next page's token ('' after the last)."""
        v = Violations()
        if member_id:
            checks.natural_id(member_id, v, "member_id")
        if order_id:
            checks.natural_id(order_id, v, "order_id")
        v.raise_if_any()
        size = page_tokens.page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        scope = _scope(member_id, order_id)
        before = page_tokens.decode_one(page_token, scope, int)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await writeoff_store.violations_page(conn, member_id, order_id, before, size + 1)
        if len(rows) > size:
            return rows[:size], page_tokens.encode(scope, rows[size - 1].violation_id)
        return rows, ""
