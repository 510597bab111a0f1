"""Existence tests over events and order lines are answered from tagging's recency summaries (the
last time per member, kind and category), and a count starts from the narrowest recent window.
Both must select exactly what the raw facts say: after refunds move a member's last purchase back,
for facts dated after the evaluation time, and for every way the tests combine."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest
from memberops.audience.v1 import audience_pb2
from memberops.tagging.v1 import facts_pb2

from services.audience import compiler, store
from tests.audience.helpers import (
    CART,
    FAVOURITE,
    Match,
    Rule,
    all_of,
    any_of,
    check,
    count,
    create,
    event,
    event_count,
    fact,
    in_batch,
    list_all,
    member,
    not_,
    now,
    order,
    order_count,
)
from tests.conftest import TENANT_ACME, unique
from tests.tagging.facts_helpers import a_refund, an_order, record_order, record_refund, stamp
from tests.tagging.rule_builders import Op

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

    from runtime.db import Database

# Four minutes ahead, in days: within the clock skew tagging accepts, and still ahead while the test runs.
AHEAD = 4 / 1440
NAMES = ("carted", "carted_and_bought", "returned_lately", "future_too", "only_future", "favourited", "idle")


@pytest.fixture(scope="module")
async def browsers(tagging_stub: TaggingStub) -> tuple[str, dict[str, str]]:
    batch = unique("recency")
    who = {name: await member(tagging_stub, batch) for name in NAMES}
    await event(tagging_stub, who["carted"], CART, 3, "skincare")
    await event(tagging_stub, who["carted_and_bought"], CART, 2, "skincare")
    await order(tagging_stub, who["carted_and_bought"], 1, [("skincare", 3_000)])
    # Carted lately; bought skincare 120 days ago and 10 days ago, the recent order wholly
    # returned: the last kept purchase is the old one, outside 90 days.
    await event(tagging_stub, who["returned_lately"], CART, 1, "skincare")
    await order(tagging_stub, who["returned_lately"], 120, [("skincare", 2_000)])
    recent = an_order(
        who["returned_lately"],
        paid_time=stamp(now() - dt.timedelta(days=10)),
        amount_minor=4_000,
        lines=[
            facts_pb2.OrderLine(line_id="1", sku="s", category="skincare", quantity=2, unit_price_minor=2_000)
        ],
    )
    await record_order(tagging_stub, recent)
    for part in range(2):  # returned in two parts: the second takes the last unit
        await record_refund(
            tagging_stub,
            a_refund(
                recent.order_id,
                refund_time=stamp(now() - dt.timedelta(days=9 - part)),
                amount_minor=2_000,
                lines=[facts_pb2.RefundLine(line_id="1", quantity=1)],
            ),
        )
    # A cart in the window and one dated after now (tagging takes a few minutes of clock skew),
    # which a summary's last time would hide the first one behind.
    await event(tagging_stub, who["future_too"], CART, 4, "skincare")
    await event(tagging_stub, who["future_too"], CART, -AHEAD, "skincare")
    await order(tagging_stub, who["future_too"], -AHEAD, [("skincare", 1_000)])
    await order(tagging_stub, who["future_too"], 30, [("skincare", 1_000)])
    await event(tagging_stub, who["only_future"], CART, -AHEAD, "skincare")
    await order(tagging_stub, who["only_future"], -AHEAD, [("skincare", 1_000)])
    await event(tagging_stub, who["favourited"], FAVOURITE, 5, "skincare")
    await event(tagging_stub, who["favourited"], CART, 5, "shoes")
    return batch, who


CARTED_14 = fact(event_count(14, event_kinds=[CART], categories=["skincare"]), Op.OPERATOR_GE, 1)
CARTED_OR_FAVOURITED_14 = fact(
    event_count(14, event_kinds=[CART, FAVOURITE], categories=["skincare"]), Op.OPERATOR_GE, 1
)
BOUGHT_90 = fact(order_count(90, categories=["skincare"]), Op.OPERATOR_GE, 1)
NONE_BOUGHT_90 = fact(order_count(90, categories=["skincare"]), Op.OPERATOR_EQ, 0)
ANY_EVENT_7 = fact(event_count(7), Op.OPERATOR_GE, 1)

CARTERS = {"carted", "carted_and_bought", "returned_lately", "future_too"}
CASES: list[tuple[str, Rule, set[str]]] = [
    ("carted skincare in 14 days", CARTED_14, CARTERS),
    ("carted none in 14 days", fact(event_count(14, event_kinds=[CART], categories=["skincare"]),
                                    Op.OPERATOR_EQ, 0), {"only_future", "favourited", "idle"}),
    ("bought skincare in 90 days", BOUGHT_90, {"carted_and_bought", "future_too"}),
    ("bought none in 90 days", NONE_BOUGHT_90,
     {"carted", "returned_lately", "only_future", "favourited", "idle"}),
    ("carted, bought none", all_of(CARTED_14, NONE_BOUGHT_90), {"carted", "returned_lately"}),
    ("carted, not bought", all_of(CARTED_14, not_(BOUGHT_90)), {"carted", "returned_lately"}),
    ("carted or favourited, bought none", all_of(CARTED_OR_FAVOURITED_14, NONE_BOUGHT_90),
     {"carted", "returned_lately", "favourited"}),
    ("carted and any event in 7 days", all_of(CARTED_14, ANY_EVENT_7), CARTERS),
    ("any event in 7 days, not carted", all_of(ANY_EVENT_7, not_(CARTED_14)), {"favourited"}),
    ("carted, or bought", all_of(any_of(CARTED_14, BOUGHT_90)), CARTERS),
    ("not (not carted)", not_(not_(CARTED_14)), CARTERS),
]  # fmt: skip


@pytest.mark.parametrize(("label", "rule", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_summaries_select_what_the_raw_facts_say(
    audience_stub: AudienceStub,
    browsers: tuple[str, dict[str, str]],
    label: str,
    rule: Rule,
    expected: set[str],
) -> None:
    batch, who = browsers
    audience = (await create(audience_stub, all_of(in_batch(batch), rule))).audience_id
    names = {member_id: name for name, member_id in who.items()}
    # The count starts from the driving window; the list pages, the checks probe one member each.
    assert {names[m] for m in await list_all(audience_stub, audience, page_size=2)} == expected, label
    assert await count(audience_stub, audience) == len(expected), label
    checked = {name for name, member_id in who.items() if await check(audience_stub, audience, member_id)}
    assert checked == expected, label


@pytest.mark.parametrize(("label", "rule", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_every_start_selects_the_same_members(
    db: Database, browsers: tuple[str, dict[str, str]], label: str, rule: Rule, expected: set[str]
) -> None:
    """The service starts from whichever set the planner estimates smallest; each choice must give
    the same members: the planner's own order and every summary test the selection can be driven from."""
    batch, who = browsers
    whole = all_of(in_batch(batch), rule)
    starts = compiler.starts(whole, {})
    drivers = {start.driver for start in starts}
    names = {member_id: name for name, member_id in who.items()}
    # Every start, estimated to choose among them, holds every member of the audience (but those
    # with facts dated ahead, which a summary start's estimate leaves out as normally none).
    for start in starts:
        async with db.transaction(TENANT_ACME, readonly=True) as conn:
            assert await store.estimated_rows(conn, start.sql, start.args(now())) >= 1
            started = {row["member_id"] for row in await conn.fetch(start.sql, *start.args(now()))}
        assert {who[name] for name in expected - {"future_too"}} <= started, (label, start.sql)
    for driver in drivers | {None}:
        compiled = compiler.compile_audience(whole, {}, driver=driver)
        async with db.transaction(TENANT_ACME, readonly=True) as conn:
            rows = await conn.fetch(compiled.members_sql(), *compiled.args(now()))
        assert {names[row["member_id"]] for row in rows} == expected, (label, driver)


def test_starts_name_the_summary_tests_and_tags_a_count_could_begin_with() -> None:
    tagged = Rule(
        tag=audience_pb2.TagCondition(dimension="lifecycle", match=Match.TAG_MATCH_ANY_OF, values=["active"])
    )
    starts = compiler.starts(all_of(tagged, CARTED_14, NONE_BOUGHT_90, not_(tagged)), {})
    # The cart window, the tag, and the member row's own tests (none here: every member).
    assert sorted(start.driver is None for start in starts) == [False, True, True]
    # Nothing to choose without a summary test to drive from, or when the only one is negative.
    assert compiler.starts(all_of(tagged, NONE_BOUGHT_90), {}) == ()
    # Filtered statements (CheckMembership) probe their members; nothing drives them.
    with pytest.raises(AssertionError):
        compiler.compile_audience(CARTED_14, {}, filtered=True, driver=0)
