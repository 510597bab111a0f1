"""The order earning rule: points for live orders from tagging's feed, by the member's level, once
per order, taken back by refunds; its RPCs' checks. Initech's feed, driven round by round; the rule
is switched on for a test and off again after it (orders paid while it is off never earn)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tasks.v1 import levels_pb2, points_pb2, tasks_service_pb2

from runtime.db import Database
from runtime.tagging_feed import FeedEntry, FeedKind, OrderRecorded
from services.tasks.economy import order_earning
from services.tasks.feed.follower import FeedFollower
from tests.backfill_helpers import import_orders, paid_order
from tests.conftest import ACME, INITECH, TENANT_INITECH
from tests.grpc_helpers import bad, failure
from tests.tasks.feed_helpers import drain, order, refund
from tests.tasks.points_helpers import all_entries, earn
from tests.tasks.task_helpers import member

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

ORDER, ORDER_REVERSAL = points_pb2.REASON_ORDER, points_pb2.REASON_ORDER_REVERSAL
ROLLING = points_pb2.EXPIRY_POLICY_ROLLING_DAYS


def rule(**fields: object) -> points_pb2.OrderEarningRule:
    defaults: dict[str, object] = {"enabled": True, "minor_units_per_point": 100}
    return points_pb2.OrderEarningRule(**{**defaults, **fields})  # type: ignore[arg-type]


async def update(
    stub: TasksStub,
    message: points_pb2.OrderEarningRule,
    expected_version: int = 0,
    metadata: Any = INITECH,
) -> points_pb2.OrderEarningRule:
    request = tasks_service_pb2.UpdateOrderEarningRuleRequest(rule=message, expected_version=expected_version)
    return await stub.UpdateOrderEarningRule(request, metadata=metadata)


@pytest.fixture
async def rule_on(
    tasks_stub: TasksStub, follower: FeedFollower
) -> AsyncIterator[points_pb2.OrderEarningRule]:
    """The rule on in initech (one point per 100 minor units, 30 days' expiry) for the test, off
    after it; what the feed held before the test is applied first, so it earns nothing."""
    await drain(follower)
    yield await update(tasks_stub, rule(expiry_policy=ROLLING, expiry_days=30))
    await update(tasks_stub, rule(enabled=False))


async def order_entries(stub: TasksStub, member_id: str, order_id: str) -> list[tuple[int, int]]:
    """(reason, delta) of the member's entries for the order, oldest first."""
    entries = await all_entries(stub, member_id, metadata=INITECH)
    return [(e.reason, e.delta) for e in reversed(entries) if e.reference == order_id]


async def test_the_rule_is_off_until_enabled(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    # Acme never sets it: the default, off.
    default = await tasks_stub.GetOrderEarningRule(
        tasks_service_pb2.GetOrderEarningRuleRequest(), metadata=ACME
    )
    assert (default.enabled, default.version, default.minor_units_per_point) == (False, 0, 100)
    await drain(follower)
    current = await tasks_stub.GetOrderEarningRule(
        tasks_service_pb2.GetOrderEarningRuleRequest(), metadata=INITECH
    )
    assert not current.enabled
    m = await member(tagging_stub, metadata=INITECH)
    o = await order(tagging_stub, m, [("s", "c", "b", 1, 5000)])
    await drain(follower)
    assert await order_entries(tasks_stub, m, o) == []


async def test_live_orders_earn_by_level_once_and_refunds_take_it_back(
    tasks_stub: TasksStub,
    tagging_stub: TaggingStub,
    follower: FeedFollower,
    rule_on: points_pb2.OrderEarningRule,
) -> None:
    policy = await tasks_stub.GetLevelPolicy(tasks_service_pb2.GetLevelPolicyRequest(), metadata=INITECH)
    # The second tier doubles order points.
    doubled = levels_pb2.LevelPolicy()
    doubled.CopyFrom(policy)
    doubled.tiers[1].benefits.points_multiplier_percent = 200
    await tasks_stub.UpdateLevelPolicy(
        tasks_service_pb2.UpdateLevelPolicyRequest(policy=doubled), metadata=INITECH
    )
    try:
        base, raised = [await member(tagging_stub, metadata=INITECH) for _ in range(2)]
        # Growth to the second tier (tasks' points count as growth).
        await earn(tasks_stub, raised, policy.tiers[1].min_growth, metadata=INITECH)
        base_order = await order(tagging_stub, base, [("s", "c", "b", 1, 4_115), ("t", "c", "b", 1, 8_230)])
        raised_order = await order(tagging_stub, raised, [("s", "c", "b", 1, 12_345)])
        # Paid before the rule was switched on: history by its own time, earns nothing.
        before = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        late = await order(tagging_stub, base, [("s", "c", "b", 1, 9_900)], paid=before)
        # Imported history earns nothing either.
        imported = paid_order(base, 9_900, dt.datetime.now(dt.UTC))
        await import_orders(tagging_stub, [imported], INITECH)
        await drain(follower)
    finally:
        await tasks_stub.UpdateLevelPolicy(
            tasks_service_pb2.UpdateLevelPolicyRequest(policy=policy), metadata=INITECH
        )
    assert await order_entries(tasks_stub, base, base_order) == [(ORDER, 123)]
    assert await order_entries(tasks_stub, raised, raised_order) == [(ORDER, 246)]
    assert await order_entries(tasks_stub, base, late) == []
    assert await order_entries(tasks_stub, base, imported.order_id) == []
    earned = next(
        e for e in await all_entries(tasks_stub, base, metadata=INITECH) if e.reference == base_order
    )
    assert earned.expire_time.ToDatetime(dt.UTC) - earned.available_time.ToDatetime(dt.UTC) == dt.timedelta(
        days=30
    )

    # A partial refund takes back its share, the rest of the order the rest.
    await refund(tagging_stub, base_order, {"0": 1}, 4_115)
    await drain(follower)
    await refund(tagging_stub, base_order, {"1": 1}, 8_230)
    await drain(follower)
    assert await order_entries(tasks_stub, base, base_order) == [
        (ORDER, 123),
        (ORDER_REVERSAL, -41),
        (ORDER_REVERSAL, -82),
    ]


async def test_an_order_read_again_earns_once(
    tasks_stub: TasksStub,
    tagging_stub: TaggingStub,
    follower: FeedFollower,
    db: Database,
    rule_on: points_pb2.OrderEarningRule,
) -> None:
    m = await member(tagging_stub, metadata=INITECH)
    o = await order(tagging_stub, m, [("s", "c", "b", 2, 1_000)])
    # Rounds fired at once: one of them moves the cursor, the others find it moved.
    await asyncio.gather(*(follower.follow_once(TENANT_INITECH) for _ in range(8)))
    await drain(follower)
    assert await order_entries(tasks_stub, m, o) == [(ORDER, 20)]
    # The order's feed entry applied again, several times at once (a re-read after a lost commit).
    now = dt.datetime.now(dt.UTC)
    payload = OrderRecorded(o, 1, now, 2_000, "", "", ())
    entry = FeedEntry("c", FeedKind.ORDER_RECORDED, m, o, payload, now)

    async def apply() -> bool:
        async with db.transaction(TENANT_INITECH) as conn:
            current = await order_earning.enabled_rule(conn)
            return await order_earning.earn(conn, TENANT_INITECH, current, entry)

    assert all(await asyncio.gather(*(apply() for _ in range(8))))
    assert await order_entries(tasks_stub, m, o) == [(ORDER, 20)]


async def test_bad_rules_are_refused_and_a_stale_version_aborts(tasks_stub: TasksStub) -> None:
    acme_rule = tasks_service_pb2.GetOrderEarningRuleRequest()
    for field, message in (
        ("rule.minor_units_per_point", rule(minor_units_per_point=0)),
        ("rule.minor_units_per_point", rule(minor_units_per_point=1_000_001)),
        ("rule.return_window_days", rule(return_window_days=366)),
        ("rule.expiry_days", rule(expiry_policy=ROLLING)),
        ("rule.expiry_days", rule(expiry_days=3)),
        ("rule.expiry_policy", rule(expiry_policy=9)),
    ):
        await bad(update(tasks_stub, message, metadata=ACME), field)
    await bad(update(tasks_stub, rule(enabled=False), expected_version=-1, metadata=ACME), "expected_version")
    # Nothing was stored.
    assert (await tasks_stub.GetOrderEarningRule(acme_rule, metadata=ACME)).version == 0

    first = await update(tasks_stub, rule(enabled=False, minor_units_per_point=50), metadata=ACME)
    again = await update(
        tasks_stub, rule(enabled=False, minor_units_per_point=50), expected_version=99, metadata=ACME
    )
    assert again.version == first.version  # the same content changes nothing
    second = await update(tasks_stub, rule(enabled=False, return_window_days=7), first.version, metadata=ACME)
    assert second.version == first.version + 1
    stale = await failure(update(tasks_stub, rule(enabled=False), first.version, metadata=ACME))
    assert stale.code() == grpc.StatusCode.ABORTED
    got = await tasks_stub.GetOrderEarningRule(acme_rule, metadata=ACME)
    assert (got.version, got.return_window_days, got.enabled) == (second.version, 7, False)


async def test_an_order_refunded_in_the_same_batch_earns_and_gives_back(
    tasks_stub: TasksStub,
    tagging_stub: TaggingStub,
    follower: FeedFollower,
    rule_on: points_pb2.OrderEarningRule,
) -> None:
    m = await member(tagging_stub, metadata=INITECH)
    o = await order(tagging_stub, m, [("s", "c", "b", 1, 3_000)])
    await refund(tagging_stub, o, {}, 3_000)
    await drain(follower)
    assert await order_entries(tasks_stub, m, o) == [(ORDER, 30), (ORDER_REVERSAL, -30)]
