"""Weekly and monthly task cycles: progress and the total limit start afresh in each cycle of the
task's zone, the day a completion counts on decides its cycle, a refund takes back in its order's
cycle, ListMemberTasks shows the current cycle, and kinds without cycles refuse one.

Purchases are imported orders of a task that rewards them (`reward_backfilled_orders`), which count
on their own paid days, so a test can place them in the weeks and months it needs."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import grpc
from memberops.tasks.v1 import tasks_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.feed.follower import FeedFollower
from tests.backfill_helpers import import_orders, paid_order
from tests.conftest import ACME, INITECH, TENANT_INITECH, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.conftest import Clock
from tests.tasks.feed_helpers import followed
from tests.tasks.task_helpers import DAY, create, member, member_tasks, share, share_task, sign_in_task, task
from tests.tasks.test_backfilled import _import_refund
from tests.tasks.test_feed_tasks import completions_of

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

SHANGHAI = ZoneInfo("Asia/Shanghai")
PAID, REVERSED = tasks_pb2.COMPLETION_STATE_PAID, tasks_pb2.COMPLETION_STATE_REVERSED
WEEKLY, MONTHLY = tasks_pb2.TASK_CYCLE_WEEKLY, tasks_pb2.TASK_CYCLE_MONTHLY


def _purchase_task(category: str, cycle: int) -> tasks_pb2.Task:
    """One order of `category` completes it, once per cycle of Shanghai's calendar, for 10 points."""
    spec = tasks_pb2.PurchaseSpec(
        measure=tasks_pb2.PURCHASE_MEASURE_ORDERS,
        target=1,
        categories=[category],
        reward_backfilled_orders=True,
    )
    now = dt.datetime.now(dt.UTC)
    return task(
        "purchase",
        spec,
        start=now - 120 * DAY,
        reward_points=10,
        limits=tasks_pb2.TaskLimits(total=1),
        cycle=cycle,
        time_zone="Asia/Shanghai",
    )


def _local(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI)


async def _measures(db: Database, task_id: str, member_id: str) -> dict[dt.date, int]:
    async with db.transaction(TENANT_INITECH) as conn:
        rows = await conn.fetch(
            "SELECT cycle_start, measure FROM tasks.progress WHERE task_id = $1 AND member_id = $2",
            task_id,
            member_id,
        )
    return {r["cycle_start"]: r["measure"] for r in rows}


async def test_a_weekly_purchase_task_completes_again_the_next_week_and_refunds_stay_in_their_week(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    category = unique("cat")
    definition = _purchase_task(category, WEEKLY)
    created = await create(tasks_stub, definition, metadata=INITECH)
    assert created.cycle == WEEKLY
    m = await member(tagging_stub, metadata=INITECH)
    today = dt.datetime.now(SHANGHAI).date()
    week_a = today - dt.timedelta(days=today.weekday() + 21)  # a Monday three weeks back
    week_b = week_a + 7 * DAY
    a1 = paid_order(m, 100, _local(week_a, 10), category)
    a2 = paid_order(m, 100, _local(week_a + 2 * DAY, 10), category)  # the week's limit is reached
    # 00:30 on Monday in Shanghai is still Sunday in UTC: it counts in Shanghai's new week.
    b1 = paid_order(m, 100, _local(week_b, 0, 30), category)
    assert b1.paid_time.ToDatetime().weekday() == 6
    await import_orders(tagging_stub, [a1, a2, b1], INITECH)
    await followed(follower, lambda: _has(db, definition.task_id, m, [(10, PAID), (10, PAID)]))
    assert await _measures(db, definition.task_id, m) == {week_a: 2, week_b: 1}

    # Week A's orders refunded whole: its completion goes back, week B's stays.
    await _import_refund(tagging_stub, a1.order_id)
    await _import_refund(tagging_stub, a2.order_id)
    await followed(follower, lambda: _has(db, definition.task_id, m, [(10, REVERSED), (10, PAID)]))
    assert await _measures(db, definition.task_id, m) == {week_a: 0, week_b: 1}


async def test_a_monthly_task_starts_again_on_the_first_in_its_zone(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    category = unique("cat")
    definition = _purchase_task(category, MONTHLY)
    await create(tasks_stub, definition, metadata=INITECH)
    m = await member(tagging_stub, metadata=INITECH)
    first = (dt.datetime.now(SHANGHAI).date().replace(day=1) - DAY).replace(day=1)  # last month's 1st
    orders = [
        paid_order(m, 100, _local(first - DAY, 23, 30), category),  # the month before, in Shanghai
        paid_order(m, 100, _local(first, 0, 30), category),  # the 1st (still the day before in UTC)
        paid_order(m, 100, _local(first, 2), category),  # the same month: its limit is used
    ]
    await import_orders(tagging_stub, orders, INITECH)
    await followed(follower, lambda: _has(db, definition.task_id, m, [(10, PAID), (10, PAID)]))
    before = (first - DAY).replace(day=1)
    assert await _measures(db, definition.task_id, m) == {before: 1, first: 2}


async def test_the_total_limit_of_a_weekly_share_task_is_per_week(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    clock.set(dt.datetime(2027, 3, 7, 15, tzinfo=dt.UTC))  # Sunday 23:00 in Shanghai
    definition = share_task(
        cycle=WEEKLY,
        limits=tasks_pb2.TaskLimits(total=2),
        time_zone="Asia/Shanghai",
        start=clock.now() - DAY,
        end=clock.now() + 30 * DAY,
    )
    await create(clocked_stub, definition)
    m = await member(tagging_stub)
    await share(clocked_stub, definition.task_id, m, "t1")
    await share(clocked_stub, definition.task_id, m, "t2")
    error = await failure(share(clocked_stub, definition.task_id, m, "t3"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cycle from 2027-03-01" in (error.details() or "")
    assert (await member_tasks(clocked_stub, m))[definition.task_id].completions == 2
    clock.advance(hours=1)  # Monday 00:00 in Shanghai, still Sunday in UTC: a new week
    assert (await member_tasks(clocked_stub, m))[definition.task_id].completions == 0
    await share(clocked_stub, definition.task_id, m, "t3")
    assert (await member_tasks(clocked_stub, m))[definition.task_id].completions == 1


async def test_kinds_without_cycles_refuse_one_and_a_cycle_never_changes(tasks_stub: TasksStub) -> None:
    for definition in (
        sign_in_task(cycle=WEEKLY),
        task("invite", tasks_pb2.InviteSpec(trigger=tasks_pb2.INVITE_TRIGGER_REGISTER), cycle=MONTHLY),
        task("visit", tasks_pb2.VisitSpec(page="home"), cycle=WEEKLY),
        task("profile", tasks_pb2.ProfileSpec(required_fields=[tasks_pb2.PROFILE_FIELD_CITY]), cycle=WEEKLY),
    ):
        await bad(create(tasks_stub, definition), "task.cycle", "does not repeat in cycles")
    await bad(create(tasks_stub, share_task(cycle=7)), "task.cycle", "TASK_CYCLE_WEEKLY")
    definition = share_task(cycle=WEEKLY)
    await create(tasks_stub, definition)
    definition.cycle = MONTHLY
    update = tasks_service_pb2.UpdateTaskRequest(task=definition)
    await bad(tasks_stub.UpdateTask(update, metadata=ACME), "task.cycle", "cannot change")


async def _has(db: Database, task_id: str, member_id: str, expected: list[tuple[int, int]]) -> bool:
    return await completions_of(db, task_id, member_id) == expected
