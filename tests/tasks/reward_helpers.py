"""Reward calls of the tasks service the reward tests share (create, update, retire, redeem, list)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memberops.tasks.v1 import rewards_pb2, tasks_service_pb2

from tests.conftest import ACME, unique

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


async def create(stub: TasksStub, **fields: object) -> rewards_pb2.Reward:
    fields.setdefault("reward_id", unique("rw"))
    reward = rewards_pb2.Reward(**fields)  # type: ignore[arg-type]
    return await stub.CreateReward(tasks_service_pb2.CreateRewardRequest(reward=reward), metadata=ACME)


async def update(
    stub: TasksStub, reward: rewards_pb2.Reward, *, add_stock: int = 0, expected_version: int = 0
) -> rewards_pb2.Reward:
    request = tasks_service_pb2.UpdateRewardRequest(
        reward=reward, add_stock=add_stock, expected_version=expected_version
    )
    return await stub.UpdateReward(request, metadata=ACME)


async def retire(stub: TasksStub, reward_id: str) -> rewards_pb2.Reward:
    return await stub.RetireReward(tasks_service_pb2.RetireRewardRequest(reward_id=reward_id), metadata=ACME)


async def redeem(stub: TasksStub, member: str, reward: str, request_id: str = "") -> rewards_pb2.Redemption:
    request = tasks_service_pb2.RedeemRequest(
        member_id=member, reward_id=reward, request_id=request_id or unique("req")
    )
    return await stub.Redeem(request, metadata=ACME)


async def listed(stub: TasksStub, show_retired: bool = False) -> dict[str, rewards_pb2.Reward]:
    request = tasks_service_pb2.ListRewardsRequest(page_size=1000, show_retired=show_retired)
    found: dict[str, rewards_pb2.Reward] = {}
    while True:
        page = await stub.ListRewards(request, metadata=ACME)
        found.update((r.reward_id, r) for r in page.rewards)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


def changed(reward: rewards_pb2.Reward, **fields: object) -> rewards_pb2.Reward:
    copy = rewards_pb2.Reward()
    copy.CopyFrom(reward)
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy
