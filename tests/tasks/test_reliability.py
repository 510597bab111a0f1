"""The ledger under concurrency and failure, through gRPC against real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import points_pb2, tasks_service_pb2

from runtime.db import Database
from tests.conftest import ACME, INITECH, TENANT_ACME, unique
from tests.grpc_helpers import failure
from tests.tasks.conftest import Clock, Members
from tests.tasks.points_helpers import ORDER, ROLLING, all_entries, balance, earn, spend

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


async def test_64_concurrent_earns_with_one_request_id_write_one_entry(
    tasks_stub: TasksStub,
    db: Database,
    members: Members,
) -> None:
    member = await members.new()
    request_id = unique("req")
    results = await asyncio.gather(*(earn(tasks_stub, member, 10, request_id=request_id) for _ in range(64)))
    assert len({r.entry_id for r in results}) == 1
    assert [e.delta for e in await all_entries(tasks_stub, member)] == [10]
    async with db.transaction(TENANT_ACME) as conn:
        lots = await conn.fetchval("SELECT count(*) FROM tasks.lots WHERE member_id = $1", member)
    assert lots == 1
    assert (await balance(tasks_stub, member)).available == 10


async def test_concurrent_spends_never_overdraw(tasks_stub: TasksStub, members: Members) -> None:
    member = await members.new()
    await earn(tasks_stub, member, 500, policy=ROLLING, days=30)
    await earn(tasks_stub, member, 500)
    amounts = [30, 70, 110, 45] * 12  # 2,940 asked of 1,000

    async def attempt(amount: int) -> int:
        try:
            return -(await spend(tasks_stub, member, amount)).delta
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            return 0

    spent = await asyncio.gather(*(attempt(a) for a in amounts))
    left = (await balance(tasks_stub, member)).available
    assert left >= 0
    assert sum(spent) + left == 1000
    # Whatever is left is less than the smallest refused amount, or nothing was refused.
    refused = [a for a, s in zip(amounts, spent, strict=True) if s == 0]
    assert not refused or left < min(refused)
    assert sum(e.delta for e in await all_entries(tasks_stub, member)) == left


async def test_reversal_after_partial_spending_takes_back_what_remains(
    tasks_stub: TasksStub, members: Members
) -> None:
    member = await members.new()
    order = unique("o")
    await earn(tasks_stub, member, 300, reason=ORDER, reference=order, policy=ROLLING, days=5)
    await earn(tasks_stub, member, 100)
    await spend(tasks_stub, member, 250)  # soonest expiry first: 250 of the order's 300

    reverse = tasks_service_pb2.ReverseOrderPointsRequest(member_id=member, order_id=order)
    reversal = await tasks_stub.ReverseOrderPoints(reverse, metadata=ACME)
    assert (reversal.delta, reversal.shortfall) == (-50, 250)
    assert reversal.reason == points_pb2.REASON_ORDER_REVERSAL and reversal.reference == order
    assert await tasks_stub.ReverseOrderPoints(reverse, metadata=ACME) == reversal

    after = await balance(tasks_stub, member)
    assert (after.available, after.pending) == (100, 0)
    entries = await all_entries(tasks_stub, member)
    assert sum(e.delta for e in entries) == after.available + after.pending
    late = await failure(earn(tasks_stub, member, 10, reason=ORDER, reference=order))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_concurrent_reversals_and_spends_keep_the_ledger_consistent(
    tasks_stub: TasksStub, members: Members
) -> None:
    member = await members.new()
    orders = [unique("o") for _ in range(8)]
    for order in orders:
        await earn(tasks_stub, member, 100, reason=ORDER, reference=order, window=0)

    async def spend_some() -> None:
        try:
            await spend(tasks_stub, member, 70)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    async def reverse(order: str) -> None:
        request = tasks_service_pb2.ReverseOrderPointsRequest(member_id=member, order_id=order)
        await tasks_stub.ReverseOrderPoints(request, metadata=ACME)

    await asyncio.gather(*(spend_some() for _ in range(8)), *(reverse(o) for o in orders[:4]))
    after = await balance(tasks_stub, member)
    entries = await all_entries(tasks_stub, member)
    assert after.available >= 0
    assert sum(e.delta for e in entries) == after.available
    reversals = [e for e in entries if e.reason == points_pb2.REASON_ORDER_REVERSAL]
    assert len(reversals) == 4
    assert all(-e.delta + e.shortfall == 100 for e in reversals)


async def test_pending_order_points_are_reversed_in_full(tasks_stub: TasksStub, members: Members) -> None:
    member = await members.new()
    order = unique("o")
    await earn(tasks_stub, member, 80, reason=ORDER, reference=order, window=14)
    reverse = tasks_service_pb2.ReverseOrderPointsRequest(member_id=member, order_id=order)
    reversal = await tasks_stub.ReverseOrderPoints(reverse, metadata=ACME)
    assert (reversal.delta, reversal.shortfall) == (-80, 0)
    after = await balance(tasks_stub, member)
    assert (after.available, after.pending) == (0, 0)


async def test_expiry_run_twice_expires_once(clocked_stub: TasksStub, clock: Clock, members: Members) -> None:
    # A tenant of its own: a run expires every due lot of the tenant.
    known = [await members.new(INITECH) for _ in range(3)]
    for member in known:
        await earn(clocked_stub, member, 40, policy=ROLLING, days=1, metadata=INITECH)
        await earn(clocked_stub, member, 9, metadata=INITECH)
    clock.advance(days=2)
    request = tasks_service_pb2.ExpirePointsRequest()
    first, second = await asyncio.gather(
        clocked_stub.ExpirePoints(request, metadata=INITECH),
        clocked_stub.ExpirePoints(request, metadata=INITECH),
    )
    third = await clocked_stub.ExpirePoints(request, metadata=INITECH)
    assert first.expired_points + second.expired_points >= 120
    assert third.expired_points == 0 and third.expired_lots == 0
    for member in known:
        entries = await all_entries(clocked_stub, member, metadata=INITECH)
        assert [e.delta for e in entries if e.reason == points_pb2.REASON_EXPIRY] == [-40]
        assert (
            sum(e.delta for e in entries) == (await balance(clocked_stub, member, metadata=INITECH)).available
        )
