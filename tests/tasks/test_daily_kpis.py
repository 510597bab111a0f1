"""GetDailyKpis of the tasks service: sign-ins and the members signing in by their day, points
credited and redeemed by the day of the zone asked, every day of the range present.

Counted in a tenant of its own (Hooli), whose whole days the test knows. Sign-ins run on the
clocked server (their day is the clock's); ledger entries are dated by the database, so points
are checked as a total over the days around now, wherever the zone's midnight falls.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from google.type import date_pb2
from memberops.tasks.v1 import tasks_service_pb2

from tests.conftest import HOOLI
from tests.grpc_helpers import bad
from tests.tasks.conftest import Clock
from tests.tasks.points_helpers import earn, spend
from tests.tasks.task_helpers import DAY, create, member, sign_in, sign_in_task

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

# Days of their own, before anything else signs in in this tenant.
FIRST = dt.datetime(2025, 3, 10, 4, tzinfo=dt.UTC)


def date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def kpis(first: dt.date, last: dt.date, zone: str = "") -> tasks_service_pb2.GetDailyKpisRequest:
    return tasks_service_pb2.GetDailyKpisRequest(start_date=date(first), end_date=date(last), time_zone=zone)


async def test_sign_ins_count_on_their_day_and_every_day_is_present(
    clocked_stub: TasksStub, tasks_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    clock.set(FIRST)
    tasks = []
    for _ in range(2):
        definition = sign_in_task(start=FIRST - DAY, end=FIRST + 30 * DAY, time_zone="Asia/Shanghai")
        await create(clocked_stub, definition, metadata=HOOLI)
        tasks.append(definition.task_id)
    a, b = [await member(tagging_stub, metadata=HOOLI) for _ in range(2)]
    for task_id, member_id in ((tasks[0], a), (tasks[0], b), (tasks[1], a)):
        await sign_in(clocked_stub, task_id, member_id, metadata=HOOLI)
    clock.advance(days=1)
    await sign_in(clocked_stub, tasks[0], b, metadata=HOOLI)

    first = FIRST.date()
    reply = await tasks_stub.GetDailyKpis(
        kpis(first - dt.timedelta(days=1), first + dt.timedelta(days=2)), metadata=HOOLI
    )

    days = [(d.date.day, d.sign_ins, d.sign_in_members) for d in reply.days]
    assert days == [(9, 0, 0), (10, 3, 2), (11, 1, 1), (12, 0, 0)]


async def test_points_issued_are_credits_and_redeemed_are_spending(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    m = await member(tagging_stub, metadata=HOOLI)
    today = dt.datetime.now(dt.UTC).date()
    around = kpis(today - dt.timedelta(days=2), today + dt.timedelta(days=2), "Europe/Berlin")
    before = await tasks_stub.GetDailyKpis(around, metadata=HOOLI)

    await earn(tasks_stub, m, 100, metadata=HOOLI)
    await earn(tasks_stub, m, 40, metadata=HOOLI)
    credit = tasks_service_pb2.AdjustPointsRequest(
        member_id=m, delta=5, operator="ops", note="goodwill", request_id=f"{m}-credit"
    )
    debit = tasks_service_pb2.AdjustPointsRequest(
        member_id=m, delta=-3, operator="ops", note="correction", request_id=f"{m}-debit"
    )
    await tasks_stub.AdjustPoints(credit, metadata=HOOLI)
    await tasks_stub.AdjustPoints(debit, metadata=HOOLI)
    await spend(tasks_stub, m, 20, metadata=HOOLI)
    await spend(tasks_stub, m, 7, metadata=HOOLI)
    after = await tasks_stub.GetDailyKpis(around, metadata=HOOLI)

    assert len(after.days) == 5
    assert [d.date for d in after.days] == [d.date for d in before.days]
    issued = sum(d.points_issued for d in after.days) - sum(d.points_issued for d in before.days)
    redeemed = sum(d.points_redeemed for d in after.days) - sum(d.points_redeemed for d in before.days)
    assert (issued, redeemed) == (145, 27)


async def test_a_bad_range_names_its_field(tasks_stub: TasksStub) -> None:
    day = dt.date(2026, 1, 1)
    call = tasks_stub.GetDailyKpis
    await bad(call(tasks_service_pb2.GetDailyKpisRequest(end_date=date(day)), metadata=HOOLI), "start_date")
    await bad(call(kpis(day, day - dt.timedelta(days=1)), metadata=HOOLI), "end_date", "before")
    await bad(call(kpis(day, day + dt.timedelta(days=400)), metadata=HOOLI), "end_date", "400")
    await bad(call(kpis(day, day, "Mars/Olympus"), metadata=HOOLI), "time_zone")
    month_13 = tasks_service_pb2.GetDailyKpisRequest(
        start_date=date_pb2.Date(year=2026, month=13, day=1), end_date=date(day)
    )
    await bad(call(month_13, metadata=HOOLI), "start_date", "calendar date")
    ancient = kpis(dt.date(1, 1, 1), dt.date(1, 1, 2))
    await bad(call(ancient, metadata=HOOLI), "start_date", "between")
    full_year = await call(kpis(day, day + dt.timedelta(days=399)), metadata=HOOLI)
    assert len(full_year.days) == 400
