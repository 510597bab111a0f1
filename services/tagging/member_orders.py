"""ListMemberOrders: a member's orders with their refunds, newest paid first (the console's
timeline). No gRPC, no SQL.

A page token holds the last order's paid time (microseconds since the epoch) and id, bound to the
member; a member that is not there (never was, or erased: its orders are the pseudonym's now) is
NOT_FOUND on every page.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime import checks, page_tokens
from runtime.db import Database
from runtime.errors import InvalidArgument, NotFound, Violations
from services.tagging import member_order_store, member_store
from services.tagging.domain import Order, Refund

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class MemberOrder:
    order: Order
    # Oldest first.
    refunds: tuple[Refund, ...]


def _scope(member_id: str) -> str:
    return f"memberOrders/{member_id}"


def _after(token: str, member_id: str) -> tuple[dt.datetime, str] | None:
    keys = page_tokens.decode(token, _scope(member_id), (int, str))
    if keys is None:
        return None
    micros, order_id = keys
    assert isinstance(micros, int) and isinstance(order_id, str)
    try:
        paid_time = _EPOCH + micros * _MICROSECOND
    except OverflowError:
        paid_time = None
    if paid_time is None or not checks.NATURAL_ID.match(order_id):
        raise InvalidArgument.field("page_token", "is not a token this list returned")
    return paid_time, order_id


class MemberOrders:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self, tenant_id: str, member_id: str, page_size: int, page_token: str
    ) -> tuple[list[MemberOrder], str]:
        """A page of the member's orders and the next page's token ('' after the last)."""
        violations = Violations()
        checks.natural_id(member_id, violations, "member")
        violations.raise_if_any()
        size = page_tokens.page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _after(page_token, member_id)
        async with self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn:
            if await member_store.missing_members(conn, [member_id]):
                raise NotFound(f"members/{member_id} not found")
            orders = await member_order_store.orders_page(conn, member_id, after, size + 1)
            page = orders[:size]
            refunds = await member_order_store.refunds_of(conn, [o.order_id for o in page])
        by_order: dict[str, list[Refund]] = {o.order_id: [] for o in page}
        for refund in refunds:
            by_order[refund.order_id].append(refund)
        token = ""
        if len(orders) > size:
            last = page[-1]
            token = page_tokens.encode(
                _scope(member_id), (last.paid_time - _EPOCH) // _MICROSECOND, last.order_id
            )
        return [MemberOrder(o, tuple(by_order[o.order_id])) for o in page], token
