"""What members do, over gRPC: shares, claims, enrolment, eligibility, budgets, listing, abuse."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import grpc
import pytest
from google.type import date_pb2
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2

from runtime.db import Database
from tests.audience import helpers as audience
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.points_helpers import all_entries, balance
from tests.tasks.task_helpers import (
    DAY,
    claim,
    create,
    member,
    member_tasks,
    share,
    share_task,
    sign_in,
    sign_in_task,
    task,
)

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

MemberTaskState = tasks_pb2.MemberTaskState


async def written(db: Database, task_id: str) -> int:
    """Rows the task's member calls wrote: completions, sign-ins, shares, enrolments."""
    async with db.transaction(TENANT_ACME) as conn:
        count = await conn.fetchval(
            """SELECT (SELECT count(*) FROM tasks.completions WHERE task_id = $1)
                    + (SELECT count(*) FROM tasks.sign_ins WHERE task_id = $1)
                    + (SELECT count(*) FROM tasks.shares WHERE task_id = $1)
                    + (SELECT count(*) FROM tasks.enrolments WHERE task_id = $1)""",
            task_id,
        )
    assert isinstance(count, int)
    return count


async def test_each_distinct_target_earns_once_up_to_the_daily_cap(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    definition = share_task(reward_points=5, limits=tasks_pb2.TaskLimits(per_day=2))
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    first = await share(tasks_stub, definition.task_id, m, "sku-1")
    assert (first.completion.points, first.completion.source) == (5, "share sku-1")
    again = await failure(share(tasks_stub, definition.task_id, m, "sku-1"))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    await share(tasks_stub, definition.task_id, m, "sku-2")
    before = await written(db, definition.task_id)
    capped = await failure(share(tasks_stub, definition.task_id, m, "sku-3"))
    assert capped.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await written(db, definition.task_id) == before
    listed = (await member_tasks(tasks_stub, m))[definition.task_id]
    assert (listed.state, listed.completions_today, listed.progress, listed.target) == (
        MemberTaskState.MEMBER_TASK_STATE_DONE_TODAY,
        2,
        2,
        2,
    )
    assert (await balance(tasks_stub, m)).available == 10


async def test_concurrent_duplicate_shares_and_claims_happen_once(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    definition = share_task(reward_points=4, claim_required=True)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    request_id = unique("req")
    shared = await asyncio.gather(
        *(share(tasks_stub, definition.task_id, m, "page-1", request_id) for _ in range(16))
    )
    assert all(s == shared[0] for s in shared)
    claim_id = unique("req")
    claimed = await asyncio.gather(*(claim(tasks_stub, definition.task_id, m, claim_id) for _ in range(16)))
    assert all(c == claimed[0] for c in claimed)
    assert claimed[0].state == tasks_pb2.COMPLETION_STATE_PAID
    assert [e.delta for e in await all_entries(tasks_stub, m)] == [4]


async def test_concurrent_completions_never_overspend_the_budget(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    definition = share_task(reward_points=10, budget_points=95)
    await create(tasks_stub, definition)
    members = [await member(tagging_stub) for _ in range(8)]

    async def attempt(m: str, target: str) -> bool:
        try:
            await share(tasks_stub, definition.task_id, m, target)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            return False
        return True

    results = await asyncio.gather(*(attempt(m, f"t{i}") for m in members for i in range(5)))
    assert sum(results) == 9  # 9 times 10 fits in 95; the tenth would overspend
    async with db.transaction(TENANT_ACME) as conn:
        used = await conn.fetchval(
            "SELECT sum(granted - remaining) FROM tasks.allowance_shards WHERE owner = 'task:' || $1",
            definition.task_id,
        )
        paid = await conn.fetchval(
            "SELECT sum(delta) FROM tasks.ledger_entries WHERE reference = $1 AND reason = 1",
            definition.task_id,
        )
    assert used == paid == 90
    listed = (await member_tasks(tasks_stub, members[0]))[definition.task_id]
    assert listed.state in {MemberTaskState.MEMBER_TASK_STATE_BUDGET_EXHAUSTED}
    assert listed.task.budget_used == 90


async def test_an_eligibility_audience_decides_who_takes_part(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    made = await audience.create(audience_stub, audience.in_batch(batch))
    definition = share_task(eligibility_audience=f"audiences/{made.audience_id}")
    await create(tasks_stub, definition)
    inside = await audience.member(tagging_stub, batch)
    outside = await audience.member(tagging_stub, unique("batch"))
    await share(tasks_stub, definition.task_id, inside, "x")
    refused = await failure(share(tasks_stub, definition.task_id, outside, "x"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert made.audience_id in (refused.details() or "")
    unknown = await failure(share(tasks_stub, definition.task_id, unique(), "x"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert (await member_tasks(tasks_stub, outside))[definition.task_id].state == (
        MemberTaskState.MEMBER_TASK_STATE_NOT_ELIGIBLE
    )
    assert (await member_tasks(tasks_stub, inside))[
        definition.task_id
    ].state == MemberTaskState.MEMBER_TASK_STATE_OPEN
    assert await written(db, definition.task_id) == 2  # the one share and its completion


async def test_member_tasks_show_progress_and_state(tasks_stub: TasksStub, tagging_stub: TaggingStub) -> None:
    now = dt.datetime.now(dt.UTC)
    signing = sign_in_task(rewards=(1, 2, 3))
    claimed = share_task(claim_required=True)
    capped = share_task(limits=tasks_pb2.TaskLimits(total=1))
    later = share_task(start=now + 10 * DAY, end=now + 20 * DAY)
    enrolling = task(
        "purchase",
        tasks_pb2.PurchaseSpec(measure=tasks_pb2.PURCHASE_MEASURE_ORDERS, target=3, window_days=30),
    )
    for definition in (signing, claimed, capped, later, enrolling):
        await create(tasks_stub, definition)
    m = await member(tagging_stub)
    await sign_in(tasks_stub, signing.task_id, m)
    await share(tasks_stub, claimed.task_id, m, "a")
    await share(tasks_stub, capped.task_id, m, "a")
    listed = await member_tasks(tasks_stub, m)
    assert later.task_id not in listed  # not open yet
    sign = listed[signing.task_id]
    assert (sign.state, sign.progress, sign.target, sign.streak.current, sign.streak.next_points) == (
        MemberTaskState.MEMBER_TASK_STATE_DONE_TODAY,
        1,
        3,
        1,
        2,
    )
    assert (listed[claimed.task_id].state, listed[claimed.task_id].claimable) == (
        MemberTaskState.MEMBER_TASK_STATE_CLAIMABLE,
        1,
    )
    assert listed[capped.task_id].state == MemberTaskState.MEMBER_TASK_STATE_COMPLETED
    assert listed[enrolling.task_id].state == MemberTaskState.MEMBER_TASK_STATE_NOT_ENROLLED
    request = tasks_service_pb2.EnrolTaskRequest(task=f"tasks/{enrolling.task_id}", member_id=m)
    enrolments = await asyncio.gather(*(tasks_stub.EnrolTask(request, metadata=ACME) for _ in range(8)))
    enrolment = enrolments[0]
    assert all(e == enrolment for e in enrolments)  # concurrent enrolments are one
    assert enrolment.window_end_time.ToDatetime() - enrolment.enrol_time.ToDatetime() == 30 * DAY
    assert await tasks_stub.EnrolTask(request, metadata=ACME) == enrolment
    after = (await member_tasks(tasks_stub, m))[enrolling.task_id]
    assert (after.state, after.progress, after.target) == (MemberTaskState.MEMBER_TASK_STATE_OPEN, 0, 3)
    assert after.enrolment == enrolment


async def test_rewards_expire_as_the_task_says(tasks_stub: TasksStub, tagging_stub: TaggingStub) -> None:
    definition = share_task(expiry_policy=points_pb2.EXPIRY_POLICY_ROLLING_DAYS, expiry_days=7)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    await share(tasks_stub, definition.task_id, m, "a")
    [entry] = await all_entries(tasks_stub, m)
    assert entry.expire_time.ToDatetime() - entry.create_time.ToDatetime() > 6 * DAY
    assert (await balance(tasks_stub, m, within_days=8)).expiring == 10


async def test_abuse_and_bad_input_are_refused_and_write_nothing(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    now = dt.datetime.now(dt.UTC)
    sharing = share_task()
    ended = share_task(start=now - 10 * DAY, end=now - DAY)
    retired = sign_in_task()
    for definition in (sharing, ended, retired):
        await create(tasks_stub, definition)
    await tasks_stub.RetireTask(
        tasks_service_pb2.RetireTaskRequest(name=f"tasks/{retired.task_id}"), metadata=ACME
    )
    m = await member(tagging_stub)

    async def code(call: object) -> grpc.StatusCode:
        return (await failure(call)).code()  # type: ignore[arg-type]

    assert await code(share(tasks_stub, unique("task"), m, "x")) == grpc.StatusCode.NOT_FOUND
    assert await code(share(tasks_stub, sharing.task_id, unique(), "x")) == grpc.StatusCode.NOT_FOUND
    assert await code(share(tasks_stub, ended.task_id, m, "x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code(sign_in(tasks_stub, retired.task_id, m)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code(claim(tasks_stub, sharing.task_id, m)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code(claim(tasks_stub, unique("task"), m)) == grpc.StatusCode.NOT_FOUND
    await bad(sign_in(tasks_stub, sharing.task_id, m), "task", "not a sign_in task")
    await bad(share(tasks_stub, sharing.task_id, m, ""), "target", "required")
    await bad(share(tasks_stub, sharing.task_id, m, "x" * 129), "target", "at most")
    await bad(share(tasks_stub, sharing.task_id, "", "x"), "member_id", "required")
    await bad(share(tasks_stub, sharing.task_id, m, "x", request_id=""), "request_id", "required")
    request = tasks_service_pb2.RecordShareRequest(task="sharing", member_id=m, target="x", request_id="r")
    await bad(tasks_stub.RecordShare(request, metadata=ACME), "task", "tasks/")
    enrol = tasks_service_pb2.EnrolTaskRequest(task=f"tasks/{sharing.task_id}", member_id=m)
    await bad(tasks_stub.EnrolTask(enrol, metadata=ACME), "task", "not a purchase task")
    listing = tasks_service_pb2.ListMemberTasksRequest(member_id=unique())
    assert await code(tasks_stub.ListMemberTasks(listing, metadata=ACME)) == grpc.StatusCode.NOT_FOUND
    for definition in (sharing, ended, retired):
        assert await written(db, definition.task_id) == 0
    assert await all_entries(tasks_stub, m) == []


@pytest.mark.parametrize("day", ["2027-02-30", "0-0-0"])
async def test_a_make_up_day_must_be_a_date(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, day: str
) -> None:
    definition = sign_in_task(makeups=3)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    year, month, mday = (int(p) for p in day.split("-"))
    request = tasks_service_pb2.SignInRequest(
        task=f"tasks/{definition.task_id}",
        member_id=m,
        request_id=unique("req"),
        makeup_day=date_pb2.Date(year=year, month=month, day=mday),
    )
    await bad(tasks_stub.SignIn(request, metadata=ACME), "makeup_day", "calendar date")
