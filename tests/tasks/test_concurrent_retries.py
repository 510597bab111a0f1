"""Every retryable write of the tasks service, fired as concurrent duplicates: the effect happens
once and every copy gets the first result. (EarnPoints, SignIn, RecordShare, RecordInvite,
ClaimTaskReward, EnrolTask, CreateTask, UpdateTask, RetireTask and the level calls have theirs
beside their other tests.)"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import rewards_pb2, tasks_service_pb2

from tests.conftest import ACME, unique
from tests.grpc_helpers import failure
from tests.tasks.points_helpers import ORDER, all_entries, balance, earn, spend
from tests.tasks.test_rewards import create as create_reward
from tests.tasks.test_rewards import redeem

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

COPIES = 16


async def test_duplicate_spends_spend_once(tasks_stub: TasksStub, members: Members) -> None:
    member = await members.new()
    await earn(tasks_stub, member, 100)
    request_id = unique("req")
    spent = await asyncio.gather(*(spend(tasks_stub, member, 30, request_id) for _ in range(COPIES)))
    assert len({entry.entry_id for entry in spent}) == 1
    assert (await balance(tasks_stub, member)).available == 70
    assert sorted(e.delta for e in await all_entries(tasks_stub, member)) == [-30, 100]


async def test_duplicate_adjustments_adjust_once(tasks_stub: TasksStub, members: Members) -> None:
    member = await members.new()

    async def adjust(delta: int, request_id: str) -> int:
        request = tasks_service_pb2.AdjustPointsRequest(
            member_id=member, delta=delta, operator="ops-1", note="goodwill", request_id=request_id
        )
        return (await tasks_stub.AdjustPoints(request, metadata=ACME)).entry_id

    up, down = unique("req"), unique("req")
    assert len(set(await asyncio.gather(*(adjust(50, up) for _ in range(COPIES))))) == 1
    assert len(set(await asyncio.gather(*(adjust(-20, down) for _ in range(COPIES))))) == 1
    assert (await balance(tasks_stub, member)).available == 30
    assert sorted(e.delta for e in await all_entries(tasks_stub, member)) == [-20, 50]


async def test_duplicate_redemptions_take_one_unit_and_one_price(
    tasks_stub: TasksStub, members: Members
) -> None:
    prize = await create_reward(
        tasks_stub,
        reward_id=unique("rw"),
        kind=rewards_pb2.REWARD_KIND_PHYSICAL,
        price=100,
        initial_stock=2,
    )
    member = await members.new()
    await earn(tasks_stub, member, 1000)
    request_id = unique("req")
    copies = await asyncio.gather(
        *(redeem(tasks_stub, member, prize.reward_id, request_id) for _ in range(COPIES))
    )
    assert len({(r.redemption_id, r.entry_id) for r in copies}) == 1
    assert (await balance(tasks_stub, member)).available == 900
    # One unit went: the second of the two is still there, and then none.
    await redeem(tasks_stub, member, prize.reward_id)
    gone = await failure(redeem(tasks_stub, member, prize.reward_id))
    assert gone.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await balance(tasks_stub, member)).available == 800


async def test_duplicate_reversals_of_one_order_reverse_once(tasks_stub: TasksStub, members: Members) -> None:
    member, order = await members.new(), unique("o")
    await earn(tasks_stub, member, 100, reason=ORDER, reference=order)
    await earn(tasks_stub, member, 40)
    request = tasks_service_pb2.ReverseOrderPointsRequest(member_id=member, order_id=order)
    copies = await asyncio.gather(
        *(tasks_stub.ReverseOrderPoints(request, metadata=ACME) for _ in range(COPIES))
    )
    assert len({(entry.entry_id, entry.delta) for entry in copies}) == 1
    assert copies[0].delta == -100
    assert (await balance(tasks_stub, member)).available == 40
    assert sorted(e.delta for e in await all_entries(tasks_stub, member)) == [-100, 40, 100]


async def test_duplicate_reward_creations_make_one_reward(tasks_stub: TasksStub) -> None:
    fields = {"reward_id": unique("rw"), "kind": rewards_pb2.REWARD_KIND_VIRTUAL_ITEM, "price": 10}
    copies = await asyncio.gather(*(create_reward(tasks_stub, **fields) for _ in range(COPIES)))
    assert all(copy == copies[0] for copy in copies)
    listed = []
    token = ""
    while True:
        page = await tasks_stub.ListRewards(
            tasks_service_pb2.ListRewardsRequest(page_size=1000, page_token=token), metadata=ACME
        )
        listed += [r for r in page.rewards if r.reward_id == fields["reward_id"]]
        token = page.next_page_token
        if not token:
            break
    assert listed == [copies[0]]
