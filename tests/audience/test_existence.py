"""Counts compared with "at least one" or "none" compile to (NOT) EXISTS in audiences; every other
comparison to a per-member aggregate. Both must select exactly the members the rule language says,
returns and windows included."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest
from memberops.tagging.v1 import facts_pb2

from tests.audience.helpers import (
    CART,
    Fn,
    all_of,
    amount_sum,
    create,
    event,
    event_count,
    fact,
    in_batch,
    list_all,
    member,
    now,
    order,
    order_count,
)
from tests.conftest import unique
from tests.tagging.facts_helpers import a_refund, an_order, record_order, record_refund, stamp
from tests.tagging.rule_builders import Op, agg

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


@pytest.fixture(scope="module")
async def shoppers(tagging_stub: TaggingStub) -> tuple[str, dict[str, str]]:
    """A batch of members with the facts each case below tells apart."""
    batch = unique("batch")
    who = {
        name: await member(tagging_stub, batch)
        for name in ("returned", "kept", "browsed", "old", "half", "idle")
    }
    # Skincare bought and wholly returned; makeup kept.
    bought = an_order(
        who["returned"],
        paid_time=stamp(now() - dt.timedelta(days=5)),
        amount_minor=6_000,
        lines=[
            facts_pb2.OrderLine(
                line_id="1", sku="s", category="skincare", quantity=1, unit_price_minor=4_000
            ),
            facts_pb2.OrderLine(line_id="2", sku="k", category="makeup", quantity=1, unit_price_minor=2_000),
        ],
    )
    await record_order(tagging_stub, bought)
    refund = a_refund(
        bought.order_id,
        refund_time=stamp(now() - dt.timedelta(days=4)),
        amount_minor=4_000,
        lines=[facts_pb2.RefundLine(line_id="1", quantity=1)],
    )
    await record_refund(tagging_stub, refund)
    await order(tagging_stub, who["kept"], 10, [("skincare", 3_000)])
    await event(tagging_stub, who["browsed"], CART, 3, "skincare")
    await event(tagging_stub, who["old"], CART, 30, "skincare")
    await order(tagging_stub, who["old"], 100, [("skincare", 9_000)])
    # Two units of skincare, one returned: the order still counts.
    half = an_order(
        who["half"],
        paid_time=stamp(now() - dt.timedelta(days=20)),
        amount_minor=5_000,
        lines=[
            facts_pb2.OrderLine(line_id="1", sku="s", category="skincare", quantity=2, unit_price_minor=2_500)
        ],
    )
    await record_order(tagging_stub, half)
    await record_refund(
        tagging_stub,
        a_refund(
            half.order_id,
            refund_time=stamp(now() - dt.timedelta(days=19)),
            amount_minor=2_500,
            lines=[facts_pb2.RefundLine(line_id="1", quantity=1)],
        ),
    )
    return batch, who


SKINCARE_90 = order_count(90, categories=["skincare"])
SKINCARE_ITEMS = agg(Fn.AGGREGATE_FUNCTION_ITEM_COUNT, 0, categories=["skincare"])
CASES: list[tuple[str, Any, int, float, set[str]]] = [
    ("bought skincare >= 1", SKINCARE_90, Op.OPERATOR_GE, 1, {"kept", "half"}),
    ("bought skincare > 0", SKINCARE_90, Op.OPERATOR_GT, 0, {"kept", "half"}),
    ("bought skincare >= 0.5", SKINCARE_90, Op.OPERATOR_GE, 0.5, {"kept", "half"}),
    ("bought skincare < 1", SKINCARE_90, Op.OPERATOR_LT, 1, {"returned", "browsed", "old", "idle"}),
    ("bought skincare = 0", SKINCARE_90, Op.OPERATOR_EQ, 0, {"returned", "browsed", "old", "idle"}),
    ("bought skincare <= 0", SKINCARE_90, Op.OPERATOR_LE, 0, {"returned", "browsed", "old", "idle"}),
    ("bought skincare >= 2 (an aggregate)", SKINCARE_90, Op.OPERATOR_GE, 2, set()),
    ("any order ever != 0", order_count(), Op.OPERATOR_NE, 0, {"returned", "kept", "old", "half"}),
    ("skincare items >= 1", SKINCARE_ITEMS, Op.OPERATOR_GE, 1, {"kept", "old", "half"}),
    ("carted in 14 days >= 1", event_count(14, event_kinds=[CART]), Op.OPERATOR_GE, 1, {"browsed"}),
    ("carted in 14 days = 0", event_count(14, event_kinds=[CART]), Op.OPERATOR_EQ, 0,
     {"returned", "kept", "old", "half", "idle"}),
    ("net spend in 90 days >= 2500", amount_sum(90), Op.OPERATOR_GE, 2_500, {"kept", "half"}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "operand", "op", "number", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_each_comparison_selects_what_the_rule_language_says(
    tagging_stub: TaggingStub,
    audience_stub: AudienceStub,
    shoppers: tuple[str, dict[str, str]],
    label: str,
    operand: Any,
    op: int,
    number: float,
    expected: set[str],
) -> None:
    batch, who = shoppers
    audience = (await create(audience_stub, all_of(in_batch(batch), fact(operand, op, number)))).audience_id
    names = {member_id: name for name, member_id in who.items()}
    assert {names[m] for m in await list_all(audience_stub, audience)} == expected, label
