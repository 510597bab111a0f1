"""The points ledger over gRPC: earning, spending order, pending points, expiry, adjustments, paging."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import points_pb2, tasks_service_pb2

from tests.conftest import ACME, GLOBEX, unique
from tests.grpc_helpers import failure
from tests.tasks.conftest import Clock, Members
from tests.tasks.points_helpers import ORDER, ROLLING, all_entries, balance, earn, spend

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


async def test_earn_then_spend_draws_the_soonest_expiring_lot_first(
    tasks_stub: TasksStub, members: Members
) -> None:
    member = await members.new()
    never = await earn(tasks_stub, member, 100)
    late = await earn(tasks_stub, member, 50, policy=ROLLING, days=300)
    soon = await earn(tasks_stub, member, 30, policy=ROLLING, days=10)
    assert never.delta == 100 and not never.HasField("expire_time")
    assert soon.expire_time.ToDatetime() < late.expire_time.ToDatetime()

    spent = await spend(tasks_stub, member, 60)
    assert spent.delta == -60 and spent.reason == points_pb2.REASON_REDEMPTION

    # 30 from the 10-day lot, 30 from the 300-day lot: 20 of it and all 100 never-expiring remain.
    after = await balance(tasks_stub, member, within_days=30)
    assert (after.available, after.pending, after.expiring) == (120, 0, 0)
    assert after.next_expire_time.ToDatetime() == late.expire_time.ToDatetime()
    within_year = await balance(tasks_stub, member, within_days=365)
    assert within_year.expiring == 20


async def test_spending_more_than_available_fails_and_writes_nothing(
    tasks_stub: TasksStub, members: Members
) -> None:
    member = await members.new()
    await earn(tasks_stub, member, 10)
    error = await failure(spend(tasks_stub, member, 11))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "10 available" in (error.details() or "")
    assert [e.delta for e in await all_entries(tasks_stub, member)] == [10]


async def test_retry_returns_the_first_result_and_other_content_is_already_exists(
    tasks_stub: TasksStub,
    members: Members,
) -> None:
    member = await members.new()
    request_id = unique("req")
    first = await earn(tasks_stub, member, 40, request_id=request_id)
    again = await earn(tasks_stub, member, 40, request_id=request_id)
    assert again == first
    error = await failure(earn(tasks_stub, member, 41, request_id=request_id))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS

    spend_id = unique("req")
    spent = await spend(tasks_stub, member, 40, request_id=spend_id)
    # The balance is gone now, but the retry still answers with the first result.
    assert await spend(tasks_stub, member, 40, request_id=spend_id) == spent
    other_member = await failure(spend(tasks_stub, await members.new(), 40, request_id=spend_id))
    assert other_member.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await balance(tasks_stub, member)).available == 0


async def test_order_points_stay_pending_until_the_return_window_passes(
    clocked_stub: TasksStub,
    clock: Clock,
    members: Members,
) -> None:
    member = await members.new()
    entry = await earn(clocked_stub, member, 70, reason=ORDER, reference=unique("o"), window=7)
    assert entry.available_time.ToDatetime() > entry.create_time.ToDatetime()
    held = await balance(clocked_stub, member)
    assert (held.available, held.pending) == (0, 70)
    assert (await failure(spend(clocked_stub, member, 1))).code() == grpc.StatusCode.FAILED_PRECONDITION

    clock.advance(days=8)
    now = await balance(clocked_stub, member)
    assert (now.available, now.pending) == (70, 0)
    await spend(clocked_stub, member, 70)


async def test_expired_points_cannot_be_spent_and_expiry_entries_name_the_lot(
    clocked_stub: TasksStub,
    clock: Clock,
    members: Members,
) -> None:
    member = await members.new(GLOBEX)
    await earn(clocked_stub, member, 25, policy=ROLLING, days=3, metadata=GLOBEX)
    await earn(clocked_stub, member, 5, metadata=GLOBEX)
    clock.advance(days=4)
    assert (await balance(clocked_stub, member, metadata=GLOBEX)).available == 5
    run = await clocked_stub.ExpirePoints(tasks_service_pb2.ExpirePointsRequest(), metadata=GLOBEX)
    assert run.expired_lots >= 1 and run.expired_points >= 25
    entries = await all_entries(clocked_stub, member, metadata=GLOBEX)
    assert entries[0].reason == points_pb2.REASON_EXPIRY and entries[0].delta == -25
    assert entries[0].reference.startswith("lots/")


async def test_operator_adjustments_up_and_down_say_who_and_why(
    tasks_stub: TasksStub, members: Members
) -> None:
    member = await members.new()
    up = await tasks_stub.AdjustPoints(
        tasks_service_pb2.AdjustPointsRequest(
            member_id=member, delta=500, operator="ops@shop", note="goodwill", request_id=unique("req")
        ),
        metadata=ACME,
    )
    assert (up.reason, up.operator, up.note) == (points_pb2.REASON_OPERATOR, "ops@shop", "goodwill")
    down = tasks_service_pb2.AdjustPointsRequest(
        member_id=member, delta=-200, operator="ops@shop", note="double credit", request_id=unique("req")
    )
    assert (await tasks_stub.AdjustPoints(down, metadata=ACME)).delta == -200
    too_far = tasks_service_pb2.AdjustPointsRequest(
        member_id=member, delta=-301, operator="ops@shop", note="typo", request_id=unique("req")
    )
    assert (await failure(tasks_stub.AdjustPoints(too_far, metadata=ACME))).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (await balance(tasks_stub, member)).available == 300


async def test_entries_page_newest_first_and_tenants_never_meet(
    tasks_stub: TasksStub, members: Members
) -> None:
    member = await members.new()
    for amount in range(1, 16):
        await earn(tasks_stub, member, amount)
    entries = await all_entries(tasks_stub, member)
    assert [e.delta for e in entries] == list(range(15, 0, -1))
    assert all(e.reason == points_pb2.REASON_TASK for e in entries)
    assert await all_entries(tasks_stub, member, metadata=GLOBEX) == []
    assert (await balance(tasks_stub, member, metadata=GLOBEX)).available == 0
