"""Bad input is INVALID_ARGUMENT naming the field, and writes nothing."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.tasks.v1 import rewards_pb2, tasks_service_pb2

from runtime.db import Database
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.points_helpers import NEVER, ORDER, ROLLING, TASK

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


async def written(db: Database, member: str) -> int:
    async with db.transaction(TENANT_ACME) as conn:
        count = await conn.fetchval(
            """SELECT (SELECT count(*) FROM tasks.accounts WHERE member_id = $1)
                    + (SELECT count(*) FROM tasks.ledger_entries WHERE member_id = $1)""",
            member,
        )
    assert isinstance(count, int)
    return count


def earn_request(member: str, **changes: object) -> tasks_service_pb2.EarnPointsRequest:
    fields: dict[str, object] = {
        "member_id": member,
        "amount": 10,
        "reason": TASK,
        "reference": "task-1",
        "expiry_policy": NEVER,
        "request_id": unique("req"),
    }
    fields.update(changes)
    return tasks_service_pb2.EarnPointsRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"amount": 0}, "amount", "positive"),
        ({"amount": -5}, "amount", "positive"),
        ({"amount": 10**12}, "amount", "at most"),
        ({"member_id": ""}, "member_id", "required"),
        ({"member_id": "x" * 65}, "member_id", "1-64 characters"),
        ({"request_id": ""}, "request_id", "required"),
        ({"reference": ""}, "reference", "required"),
        ({"reason": 0}, "reason", "REASON_TASK"),
        ({"reason": 99}, "reason", "REASON_TASK"),
        ({"expiry_policy": 0}, "expiry_policy", "must be"),
        ({"expiry_policy": 42}, "expiry_policy", "must be"),
        ({"expiry_policy": ROLLING, "expiry_days": 0}, "expiry_days", "1-3650"),
        ({"expiry_policy": NEVER, "expiry_days": 5}, "expiry_days", "only"),
        ({"return_window_days": 3}, "return_window_days", "only"),
        ({"reason": ORDER, "return_window_days": 400}, "return_window_days", "0-365"),
    ],
)
async def test_bad_earn(
    tasks_stub: TasksStub, db: Database, changes: dict[str, object], path: str, words: str
) -> None:
    member = changes.get("member_id", unique())
    assert isinstance(member, str)
    await bad(
        tasks_stub.EarnPoints(earn_request(member, **{**changes, "member_id": member}), metadata=ACME),
        path,
        words,
    )
    assert await written(db, member) == 0


async def test_bad_spend_adjust_and_reads(tasks_stub: TasksStub, db: Database) -> None:
    member = unique()
    spend = tasks_service_pb2.SpendPointsRequest(member_id=member, amount=-1, reference="r", request_id="q")
    await bad(tasks_stub.SpendPoints(spend, metadata=ACME), "amount", "positive")
    adjust = tasks_service_pb2.AdjustPointsRequest(
        member_id=member, delta=0, operator="", note="", request_id="q"
    )
    await bad(tasks_stub.AdjustPoints(adjust, metadata=ACME), "delta", "zero")
    await bad(tasks_stub.AdjustPoints(adjust, metadata=ACME), "operator", "required")
    await bad(tasks_stub.AdjustPoints(adjust, metadata=ACME), "note", "why")
    reverse = tasks_service_pb2.ReverseOrderPointsRequest(member_id=member, order_id="")
    await bad(tasks_stub.ReverseOrderPoints(reverse, metadata=ACME), "order_id", "required")
    listing = tasks_service_pb2.ListLedgerEntriesRequest(member_id=member, page_size=1001)
    await bad(tasks_stub.ListLedgerEntries(listing, metadata=ACME), "page_size", "1-1000")
    listing = tasks_service_pb2.ListLedgerEntriesRequest(member_id=member, page_token="garbage")
    await bad(tasks_stub.ListLedgerEntries(listing, metadata=ACME), "page_token", "token")
    await bad(tasks_stub.GetBalance(tasks_service_pb2.GetBalanceRequest(), metadata=ACME), "member_id")
    assert await written(db, member) == 0


async def test_absurd_amounts_are_refused(tasks_stub: TasksStub, db: Database) -> None:
    member = unique()
    spend = tasks_service_pb2.SpendPointsRequest(
        member_id=member, amount=10**8 + 1, reference="r", request_id="q"
    )
    await bad(tasks_stub.SpendPoints(spend, metadata=ACME), "amount", "at most")
    for delta in (10**8 + 1, -(10**8) - 1):
        adjust = tasks_service_pb2.AdjustPointsRequest(
            member_id=member, delta=delta, operator="ops", note="typo", request_id=unique("req")
        )
        await bad(tasks_stub.AdjustPoints(adjust, metadata=ACME), "delta", "at most")
    reward = rewards_pb2.Reward(reward_id=unique("rw"), kind=rewards_pb2.REWARD_KIND_COUPON, price=10**8 + 1)
    await bad(
        tasks_stub.CreateReward(tasks_service_pb2.CreateRewardRequest(reward=reward), metadata=ACME),
        "reward.price",
        "at most",
    )
    assert await written(db, member) == 0


async def test_ledger_writes_for_members_tagging_does_not_know_are_not_found(
    tasks_stub: TasksStub, db: Database
) -> None:
    stranger = unique()
    calls: list[Awaitable[object]] = [
        tasks_stub.EarnPoints(earn_request(stranger), metadata=ACME),
        tasks_stub.SpendPoints(
            tasks_service_pb2.SpendPointsRequest(member_id=stranger, amount=1, reference="r", request_id="q"),
            metadata=ACME,
        ),
        tasks_stub.AdjustPoints(
            tasks_service_pb2.AdjustPointsRequest(
                member_id=stranger, delta=5, operator="ops", note="goodwill", request_id=unique("req")
            ),
            metadata=ACME,
        ),
        tasks_stub.Redeem(
            tasks_service_pb2.RedeemRequest(member_id=stranger, reward_id="rw-1", request_id="q"),
            metadata=ACME,
        ),
    ]
    for call in calls:
        error = await failure(call)
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"members/{stranger} not found")
    assert await written(db, stranger) == 0
