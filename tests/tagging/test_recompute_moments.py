"""The moments a recompute keeps for a member (services/tagging/due_store.py) are when time alone
can first change their value: for a count read through thresholds, the order whose leaving makes
the count fall through one; for the categories bought, the latest line of the first category to
leave. Early costs an evaluation; late would leave a stale tag, so each is checked to the second."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from runtime.db import Database
from services.tagging import builtins, recompute_timing
from services.tagging.catalog import Catalog, TagValue
from services.tagging.domain import MemberInput, OrderInput, OrderLine, Profile, RefundInput
from services.tagging.due_store import SLACK
from services.tagging.evaluation import Tagger
from tests.conftest import unique
from tests.tagging.rule_builders import Fn, Op, agg, cond
from tests.tagging.scheduled_writers import writers

NOW = dt.datetime(2021, 3, 1, 9, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)


def _builtin(dimension: str) -> Any:
    return next(spec for spec in builtins.definitions() if spec.dimension == dimension)


def test_count_thresholds_keep_only_the_counts_they_fall_through() -> None:
    """Loyalty compares a year's order count with 12, 4, 2 and 1; purchase frequency compares 90
    days' orders per month (count * 30 / 90) with 2, 4 and 6 and the count with 1. Orders enter
    when paid; no other exit is a moment."""
    loyalty = recompute_timing.of(_builtin("loyalty"))
    assert loyalty.orders == frozenset({0})
    assert loyalty.order_counts == frozenset({(365, frozenset({1, 2, 3, 4, 5, 12, 13}))})
    frequency = recompute_timing.of(_builtin("purchase_frequency"))
    assert frequency.orders == frozenset({0})
    assert frequency.order_counts == frozenset({(90, frozenset({1, 2, 6, 7, 12, 13, 18, 19}))})
    bought = recompute_timing.of(_builtin("categories_bought"))
    assert (bought.orders, bought.category_exits) == (frozenset({0}), frozenset({365}))
    # A count only tested for being set changes when the last order leaves.
    is_set = cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 30), Op.OPERATOR_IS_SET)
    only_set = dataclasses.replace(_builtin("loyalty"), values=(TagValue("buyer", rule=is_set),))
    assert recompute_timing.of(only_set).order_counts == frozenset({(30, frozenset({1}))})
    # Another aggregate reading every exit of the same window leaves no count to keep.
    average = recompute_timing.of(_builtin("average_order_amount"))
    assert (average.orders, average.order_counts) == (frozenset({0, 365}), frozenset())


async def _stored(db: Database, tenant: str, dimension: str) -> dict[str, dt.datetime]:
    async with db.transaction(tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT member_id, due_at FROM tagging.recompute_due WHERE dimension = $1", dimension
        )
    return {row["member_id"]: row["due_at"] for row in rows}


async def test_kept_moments_are_the_first_that_can_change_the_value(db: Database) -> None:
    tenant = unique("rcmoment")
    tagger = Tagger(db)
    members, facts = writers(db, tagger)
    await Catalog(db).seed(tenant, builtins.definitions())
    paid: dict[str, list[dt.datetime]] = {}
    recorded = 0

    async def order(member_id: str, when: dt.datetime, category: str = "a", refunded: bool = False) -> None:
        nonlocal recorded
        recorded += 1
        order_id = f"o-{recorded}"
        line = OrderLine("1", sku="s", category=category, quantity=1, unit_price_minor=700)
        await facts.record_order(tenant, OrderInput(order_id, member_id, when, 700, (line,)), NOW)
        if refunded:
            await facts.record_refund(tenant, RefundInput(f"r-{order_id}", order_id, when, 700), NOW)
        else:
            paid.setdefault(member_id, []).append(when)

    for member_id in ("heavy", "regular", "light", "categories"):
        await members.upsert(tenant, MemberInput(member_id, Profile(register_time=NOW - 2 * YEAR)), NOW)
    start = NOW - dt.timedelta(days=300)
    for k in range(14):  # 14 counted: the count falls from 13 to 11 ("loyal" to "regular")
        await order("heavy", start + dt.timedelta(days=k))
    # A wholly refunded order among them is not counted: counted, it would be the one that matters.
    await order("heavy", start + dt.timedelta(days=1, hours=12), refunded=True)
    for k in range(8):  # 8: falls from 5 to 3 after the 4th oldest leaves
        await order("regular", start + dt.timedelta(days=3 * k, hours=k))
    for k in range(3):  # 3: from 3 to 2 with the oldest
        await order("light", start + dt.timedelta(days=10 * k))
    # Category a's latest line leaves before b's: the set of categories changes then.
    await order("categories", NOW - dt.timedelta(days=200), "a")
    await order("categories", NOW - dt.timedelta(days=150), "a")
    await order("categories", NOW - dt.timedelta(days=20), "b")
    await order("categories", NOW - dt.timedelta(days=100), "b")

    await tagger.recompute(tenant, ["loyalty", "categories_bought"], NOW)

    loyalty = await _stored(db, tenant, "loyalty")
    assert loyalty["heavy"] == paid["heavy"][1] + YEAR - SLACK  # the 2nd oldest: 13 -> 12 ... 11
    assert loyalty["regular"] == paid["regular"][3] + YEAR - SLACK
    assert loyalty["light"] == paid["light"][0] + YEAR - SLACK
    bought = await _stored(db, tenant, "categories_bought")
    assert bought["categories"] == NOW - dt.timedelta(days=150) + YEAR - SLACK
