"""Rewards and redemption over gRPC: atomic, idempotent, never overselling."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import rewards_pb2, tasks_service_pb2

from tests.conftest import ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.points_helpers import balance, earn

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

Kind = rewards_pb2.RewardKind


def reward_id() -> str:
    return unique("rw")


async def create(stub: TasksStub, **fields: object) -> rewards_pb2.Reward:
    reward = rewards_pb2.Reward(**fields)  # type: ignore[arg-type]
    return await stub.CreateReward(tasks_service_pb2.CreateRewardRequest(reward=reward), metadata=ACME)


async def redeem(
    stub: TasksStub, member: str, reward: str, request_id: str | None = None
) -> rewards_pb2.Redemption:
    request = tasks_service_pb2.RedeemRequest(
        member_id=member, reward_id=reward, request_id=request_id or unique("req")
    )
    return await stub.Redeem(request, metadata=ACME)


async def test_redeem_spends_points_takes_stock_and_a_retry_returns_the_first(
    tasks_stub: TasksStub, members: Members
) -> None:
    prize = await create(
        tasks_stub, reward_id=reward_id(), kind=Kind.REWARD_KIND_PHYSICAL, price=300, initial_stock=2
    )
    assert (prize.stock, prize.unlimited) == (2, False)
    assert (
        await create(
            tasks_stub, reward_id=prize.reward_id, kind=Kind.REWARD_KIND_PHYSICAL, price=300, initial_stock=2
        )
        == prize
    )
    other = await failure(
        create(
            tasks_stub, reward_id=prize.reward_id, kind=Kind.REWARD_KIND_PHYSICAL, price=1, initial_stock=2
        )
    )
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS

    member = await members.new()
    await earn(tasks_stub, member, 1000)
    request_id = unique("req")
    first = await redeem(tasks_stub, member, prize.reward_id, request_id)
    assert (first.points, first.outcome) == (300, rewards_pb2.REDEMPTION_OUTCOME_FULFILLED)
    assert await redeem(tasks_stub, member, prize.reward_id, request_id) == first
    assert (await balance(tasks_stub, member)).available == 700
    reused = await failure(redeem(tasks_stub, await members.new(), prize.reward_id, request_id))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS

    poor = await members.new()
    await earn(tasks_stub, poor, 299)
    short = await failure(redeem(tasks_stub, poor, prize.reward_id))
    assert short.code() == grpc.StatusCode.FAILED_PRECONDITION
    await redeem(tasks_stub, member, prize.reward_id)
    gone = await failure(redeem(tasks_stub, member, prize.reward_id))
    assert gone.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await balance(tasks_stub, member)).available == 400
    assert (await balance(tasks_stub, poor)).available == 299


async def test_1000_concurrent_redemptions_of_a_100_unit_prize(
    tasks_stub: TasksStub, members: Members
) -> None:
    prize = await create(
        tasks_stub, reward_id=reward_id(), kind=Kind.REWARD_KIND_PHYSICAL, price=50, initial_stock=100
    )
    buyers = await members.many(1000)
    await asyncio.gather(*(earn(tasks_stub, m, 80) for m in buyers))

    async def attempt(member: str) -> grpc.StatusCode:
        try:
            await redeem(tasks_stub, member, prize.reward_id)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = Counter(await asyncio.gather(*(attempt(m) for m in buyers)))
    assert codes[grpc.StatusCode.OK] == 100
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    balances = Counter([(await balance(tasks_stub, m)).available for m in buyers])
    assert balances == {30: 100, 80: 900}
    listed = await tasks_stub.ListRewards(tasks_service_pb2.ListRewardsRequest(page_size=1000), metadata=ACME)
    assert [r.stock for r in listed.rewards if r.reward_id == prize.reward_id] == [0]


async def test_lottery_records_the_draw_and_a_retry_returns_the_same_outcome(
    tasks_stub: TasksStub, members: Members
) -> None:
    lottery = await create(
        tasks_stub,
        reward_id=reward_id(),
        kind=Kind.REWARD_KIND_LOTTERY,
        price=10,
        initial_stock=3,
        win_odds_bp=5000,
    )
    member = await members.new()
    await earn(tasks_stub, member, 10_000)
    draws: list[rewards_pb2.Redemption] = []
    for i in range(40):
        try:
            draws.append(await redeem(tasks_stub, member, lottery.reward_id, f"draw-{lottery.reward_id}-{i}"))
        except grpc.aio.AioRpcError as error:
            # Every prize is gone: further draws are refused before any points are taken.
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    won = [d for d in draws if d.outcome == rewards_pb2.REDEMPTION_OUTCOME_FULFILLED]
    assert len(won) <= 3
    assert len(won) == 3 or len(draws) == 40  # refused draws only once every prize was won
    for draw in draws[:5]:
        assert await redeem(tasks_stub, member, lottery.reward_id, draw.request_id) == draw
    stock = (
        await tasks_stub.ListRewards(tasks_service_pb2.ListRewardsRequest(page_size=1000), metadata=ACME)
    ).rewards
    assert [r.stock for r in stock if r.reward_id == lottery.reward_id] == [3 - len(won)]
    paid = 10 * len(draws)
    assert (await balance(tasks_stub, member)).available == 10_000 - paid


async def test_bad_rewards(tasks_stub: TasksStub, members: Members) -> None:
    await bad(
        create(tasks_stub, reward_id="Bad Id", kind=Kind.REWARD_KIND_COUPON, price=1), "reward.reward_id"
    )
    await bad(
        create(tasks_stub, reward_id=reward_id(), kind=Kind.REWARD_KIND_COUPON, price=0), "reward.price"
    )
    await bad(create(tasks_stub, reward_id=reward_id(), price=5), "reward.kind")
    await bad(
        create(tasks_stub, reward_id=reward_id(), kind=Kind.REWARD_KIND_PHYSICAL, price=5),
        "reward.initial_stock",
    )
    await bad(
        create(tasks_stub, reward_id=reward_id(), kind=Kind.REWARD_KIND_LOTTERY, price=5, initial_stock=1),
        "reward.win_odds_bp",
    )
    missing = await failure(redeem(tasks_stub, await members.new(), reward_id()))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "reward " in (missing.details() or "")
    stranger = unique()
    unknown = await failure(redeem(tasks_stub, stranger, reward_id()))
    assert (unknown.code(), unknown.details()) == (grpc.StatusCode.NOT_FOUND, f"members/{stranger} not found")
    await bad(redeem(tasks_stub, "", "x"), "member_id")
