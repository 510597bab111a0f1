"""The recency summaries (migration 0012) are kept by triggers in the facts' own transactions. After
any mix of events, orders and refunds, written concurrently, they must hold exactly what grouping
the raw facts gives, which is how the migration fills them."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import TYPE_CHECKING

from memberops.tagging.v1 import facts_pb2, tagging_service_pb2

from tests.conftest import ACME, TENANT_ACME
from tests.tagging.facts_helpers import (
    a_refund,
    an_event,
    an_order,
    new_member,
    record_order,
    record_refund,
    stamp,
)

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

    from runtime.db import Database

START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
CATEGORIES = ("skincare", "makeup", "")
KINDS = (facts_pb2.EVENT_KIND_VIEW, facts_pb2.EVENT_KIND_CART, facts_pb2.EVENT_KIND_FAVOURITE)

SUMMARY = {
    "event_recency": "SELECT member_id, kind, category, last_time FROM tagging.event_recency",
    "purchase_recency": "SELECT member_id, category, last_paid_time FROM tagging.purchase_recency",
}
FROM_FACTS = {
    "event_recency": """SELECT member_id, kind, category, max(occur_time) FROM tagging.events
                        GROUP BY member_id, kind, category""",
    "purchase_recency": """SELECT member_id, category, max(paid_time) FROM tagging.order_lines
                           WHERE quantity > refunded_quantity GROUP BY member_id, category""",
}


async def _rows(db: Database, sql: str, members: list[str]) -> set[tuple[object, ...]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(f"SELECT * FROM ({sql}) AS s WHERE member_id = ANY($1::text[])", members)
    return {tuple(row) for row in rows}


async def test_triggers_keep_the_summaries_equal_to_the_facts(
    tagging_stub: TaggingStub, db: Database
) -> None:
    rng = random.Random(7)
    members = [await new_member(tagging_stub) for _ in range(4)]

    def moment() -> dt.datetime:
        return START + dt.timedelta(hours=rng.randrange(24 * 90))

    def batch() -> list[facts_pb2.BehaviorEvent]:
        # Batches share members, so concurrent ones upsert the same summary rows.
        return [
            an_event(
                rng.choice(members), kind=rng.choice(KINDS), occur_time=stamp(moment()),
                category=rng.choice(CATEGORIES),
            )
            for _ in range(12)
        ]  # fmt: skip

    def order(member_id: str) -> facts_pb2.Order:
        lines = [
            facts_pb2.OrderLine(
                line_id=str(i),
                sku=f"s{i}",
                category=rng.choice(CATEGORIES),
                quantity=2,
                unit_price_minor=1_000,
            )
            for i in range(rng.randrange(1, 4))
        ]
        return an_order(member_id, paid_time=stamp(moment()), amount_minor=2_000 * len(lines), lines=lines)

    orders = [order(rng.choice(members)) for _ in range(16)]
    await asyncio.gather(
        *(
            tagging_stub.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=batch()), metadata=ACME)
            for _ in range(8)
        ),
        *(record_order(tagging_stub, o) for o in orders),
    )
    # Refunds, concurrent with more orders of the same members: some lines in part, some in full,
    # some orders wholly (which moves the member's last purchase of that category back, or away).
    refunds = []
    for o in orders[:10]:
        returned = [line for line in o.lines if rng.random() < 0.7] or [o.lines[0]]
        refunds.append(
            a_refund(
                o.order_id,
                refund_time=stamp(o.paid_time.ToDatetime(dt.UTC) + dt.timedelta(hours=1)),
                amount_minor=sum(line.unit_price_minor * 2 for line in returned),
                lines=[facts_pb2.RefundLine(line_id=line.line_id, quantity=2) for line in returned],
            )
        )
    await asyncio.gather(
        *(record_refund(tagging_stub, r) for r in refunds),
        *(record_order(tagging_stub, order(rng.choice(members))) for _ in range(6)),
    )
    for table, summary in SUMMARY.items():
        held = await _rows(db, summary, members)
        assert held == await _rows(db, FROM_FACTS[table], members), table
        assert held, table


async def test_a_wholly_returned_purchase_leaves_the_summary(tagging_stub: TaggingStub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    line = facts_pb2.OrderLine(line_id="1", sku="s", category="shoes", quantity=1, unit_price_minor=500)
    bought = await record_order(
        tagging_stub, an_order(member_id, paid_time=stamp(START), amount_minor=500, lines=[line])
    )
    assert await _rows(db, SUMMARY["purchase_recency"], [member_id]) == {(member_id, "shoes", START)}
    await record_refund(
        tagging_stub,
        a_refund(
            bought.order_id,
            refund_time=stamp(START + dt.timedelta(days=1)),
            amount_minor=500,
            lines=[facts_pb2.RefundLine(line_id="1", quantity=1)],
        ),
    )
    assert await _rows(db, SUMMARY["purchase_recency"], [member_id]) == set()


async def test_concurrent_orders_listing_categories_in_opposite_order_both_land(
    tagging_stub: TaggingStub, db: Database
) -> None:
    """Each order's lines reach the summary in one upsert, in key order; written line by line, two
    orders of one member naming the same categories in opposite order lock them in opposite order."""
    categories = ("a", "b", "c", "d", "e", "f")

    def order(member_id: str, listed: tuple[str, ...]) -> facts_pb2.Order:
        lines = [
            facts_pb2.OrderLine(line_id=str(i), sku=f"s{i}", category=c, quantity=1, unit_price_minor=100)
            for i, c in enumerate(listed)
        ]
        return an_order(member_id, amount_minor=100 * len(lines), lines=lines)

    members = [await new_member(tagging_stub) for _ in range(20)]
    await asyncio.gather(
        *(
            record_order(tagging_stub, order(member_id, listed))
            for member_id in members
            for listed in (categories, categories[::-1])
        )
    )
    held = await _rows(db, SUMMARY["purchase_recency"], members)
    assert held == await _rows(db, FROM_FACTS["purchase_recency"], members)
    assert {(member, category) for member, category, _ in held} == {
        (member, category) for member in members for category in categories
    }
