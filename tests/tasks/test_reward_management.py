"""Rewards managed: UpdateReward (versions, stock added, fixed fields), RetireReward, and the
per-member redemption limit, held under concurrent redemptions by one member."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import rewards_pb2, tasks_service_pb2

from tests.conftest import ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.points_helpers import balance, earn
from tests.tasks.reward_helpers import changed, create, listed, redeem, retire, update

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

Kind = rewards_pb2.RewardKind
ACTIVE, RETIRED = rewards_pb2.REWARD_STATE_ACTIVE, rewards_pb2.REWARD_STATE_RETIRED


async def test_update_replaces_each_field_adds_stock_and_versions_only_real_changes(
    tasks_stub: TasksStub, members: Members
) -> None:
    prize = await create(
        tasks_stub, kind=Kind.REWARD_KIND_PHYSICAL, price=300, initial_stock=1, display_name="Mug"
    )
    assert (prize.version, prize.state, prize.description, prize.per_member_limit) == (1, ACTIVE, "", 0)
    assert prize.update_time == prize.create_time

    member = await members.new()
    await earn(tasks_stub, member, 10_000)
    paid_before = await redeem(tasks_stub, member, prize.reward_id)

    steps: list[dict[str, object]] = [
        {"display_name": "Big mug"},
        {"description": "Holds 500 ml"},
        {"price": 450},
        {"per_member_limit": 3},
    ]
    current = prize
    for version, step in enumerate(steps, start=2):
        current = await update(tasks_stub, changed(current, **step))
        assert current.version == version
        for name, value in step.items():
            assert getattr(current, name) == value
    assert (current.display_name, current.description, current.price, current.per_member_limit) == (
        "Big mug",
        "Holds 500 ml",
        450,
        3,
    )
    assert current.update_time.ToDatetime() > prize.update_time.ToDatetime()

    # The same content again changes nothing: no new version, whatever version the caller saw.
    assert await update(tasks_stub, current) == current
    assert await update(tasks_stub, current, expected_version=1) == current

    restocked = await update(tasks_stub, current, add_stock=5, expected_version=current.version)
    assert (restocked.stock, restocked.initial_stock, restocked.version) == (5, 1, current.version + 1)
    # A retried add_stock sent with the version it saw adds nothing twice.
    stale = await failure(update(tasks_stub, current, add_stock=5, expected_version=current.version))
    assert stale.code() == grpc.StatusCode.ABORTED
    assert (await listed(tasks_stub))[prize.reward_id].stock == 5

    # The redemption made before keeps the price it paid; the next pays the new one.
    assert paid_before.points == 300
    assert (await redeem(tasks_stub, member, prize.reward_id)).points == 450
    assert (await balance(tasks_stub, member)).available == 10_000 - 300 - 450


async def test_update_refuses_fixed_fields_bad_input_and_unknown_rewards(tasks_stub: TasksStub) -> None:
    lottery = await create(
        tasks_stub, kind=Kind.REWARD_KIND_LOTTERY, price=10, initial_stock=2, win_odds_bp=100
    )
    coupon = await create(tasks_stub, kind=Kind.REWARD_KIND_COUPON, price=10)
    await bad(update(tasks_stub, changed(lottery, kind=Kind.REWARD_KIND_PHYSICAL)), "reward.kind")
    await bad(update(tasks_stub, changed(lottery, win_odds_bp=200)), "reward.win_odds_bp")
    await bad(update(tasks_stub, changed(lottery, initial_stock=9)), "reward.initial_stock", "add_stock")
    await bad(
        update(tasks_stub, changed(coupon, coupon_template="couponTemplates/other")), "reward.coupon_template"
    )
    await bad(update(tasks_stub, coupon, add_stock=1), "add_stock", "no stock limit")
    await bad(update(tasks_stub, lottery, add_stock=-1), "add_stock")
    await bad(update(tasks_stub, changed(lottery, price=0)), "reward.price")
    await bad(update(tasks_stub, changed(lottery, description="x" * 1025)), "reward.description")
    await bad(update(tasks_stub, changed(lottery, per_member_limit=1001)), "reward.per_member_limit")
    await bad(update(tasks_stub, changed(lottery, display_name="x" * 129)), "reward.display_name")
    await bad(update(tasks_stub, lottery, expected_version=-1), "expected_version")
    await bad(tasks_stub.UpdateReward(tasks_service_pb2.UpdateRewardRequest(), metadata=ACME), "reward")
    missing = await failure(update(tasks_stub, changed(lottery, reward_id=unique("rw"))))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    # Nothing refused above changed the reward.
    assert (await listed(tasks_stub))[lottery.reward_id] == lottery
    await bad(
        create(tasks_stub, kind=Kind.REWARD_KIND_PHYSICAL, price=1, initial_stock=1, per_member_limit=-1),
        "reward.per_member_limit",
    )
    await bad(
        create(
            tasks_stub,
            kind=Kind.REWARD_KIND_PHYSICAL,
            price=1,
            initial_stock=1,
            coupon_template="couponTemplates/t",
        ),
        "reward.coupon_template",
    )
    await bad(
        create(tasks_stub, kind=Kind.REWARD_KIND_COUPON, price=1, coupon_template="templates/t"),
        "reward.coupon_template",
    )


async def test_create_again_after_an_update_is_already_exists(tasks_stub: TasksStub) -> None:
    fields: dict[str, object] = {"reward_id": unique("rw"), "kind": Kind.REWARD_KIND_COUPON, "price": 5}
    first = await create(tasks_stub, **fields, description="Five off")
    assert await create(tasks_stub, **fields, description="Five off") == first
    other = await failure(create(tasks_stub, **fields, description="Six off"))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS
    await update(tasks_stub, changed(first, price=6))
    again = await failure(create(tasks_stub, **fields, description="Five off"))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_retired_rewards_are_hidden_and_refuse_redemptions_but_keep_theirs(
    tasks_stub: TasksStub, members: Members
) -> None:
    prize = await create(tasks_stub, kind=Kind.REWARD_KIND_PHYSICAL, price=100, initial_stock=5)
    member = await members.new()
    await earn(tasks_stub, member, 1000)
    request_id = unique("req")
    kept = await redeem(tasks_stub, member, prize.reward_id, request_id)

    retired = await retire(tasks_stub, prize.reward_id)
    assert (retired.state, retired.stock, retired.version) == (RETIRED, 4, prize.version)
    assert await retire(tasks_stub, prize.reward_id) == retired
    refused = await failure(redeem(tasks_stub, member, prize.reward_id))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await balance(tasks_stub, member)).available == 900
    # A retry of a redemption made before the reward was retired still answers it.
    assert await redeem(tasks_stub, member, prize.reward_id, request_id) == kept

    assert prize.reward_id not in await listed(tasks_stub)
    assert (await listed(tasks_stub, show_retired=True))[prize.reward_id] == retired
    changing = await failure(update(tasks_stub, changed(retired, price=1)))
    assert changing.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await update(tasks_stub, retired) == retired

    missing = await failure(retire(tasks_stub, unique("rw")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    await bad(retire(tasks_stub, "Not An Id"), "reward_id")


async def test_per_member_limit_holds_under_concurrent_redemptions_by_one_member(
    tasks_stub: TasksStub, members: Members
) -> None:
    prize = await create(tasks_stub, kind=Kind.REWARD_KIND_VIRTUAL_ITEM, price=10, per_member_limit=3)
    member, other = await members.new(), await members.new()
    await earn(tasks_stub, member, 1000)
    await earn(tasks_stub, other, 1000)

    async def attempt() -> grpc.StatusCode:
        try:
            await redeem(tasks_stub, member, prize.reward_id)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = Counter(await asyncio.gather(*(attempt() for _ in range(40))))
    assert codes == {grpc.StatusCode.OK: 3, grpc.StatusCode.RESOURCE_EXHAUSTED: 37}
    assert (await balance(tasks_stub, member)).available == 1000 - 3 * 10
    # The limit is each member's own.
    await redeem(tasks_stub, other, prize.reward_id)

    # Raising the limit allows one more; lowering it below what was redeemed allows none.
    raised = await update(tasks_stub, changed(prize, per_member_limit=4))
    await redeem(tasks_stub, member, prize.reward_id)
    over = await failure(redeem(tasks_stub, member, prize.reward_id))
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await update(tasks_stub, changed(raised, per_member_limit=1))
    lowered = await failure(redeem(tasks_stub, other, prize.reward_id))
    assert lowered.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await balance(tasks_stub, member)).available == 1000 - 4 * 10
    assert (await balance(tasks_stub, other)).available == 1000 - 10
