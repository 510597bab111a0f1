"""Daily sign-in through gRPC: streaks across month and time-zone boundaries, resets, make-ups,
one sign-in per day even under concurrent duplicates.

Sign-ins run on the clocked server, whose clock each test sets to the calendar days it walks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import badges_pb2, points_pb2, tasks_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.tasks import signin_store
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.conftest import Clock
from tests.tasks.points_helpers import all_entries, balance
from tests.tasks.task_helpers import DAY, claim, create, member, sign_in, sign_in_task, streak

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


async def sign_in_task_from(stub: TasksStub, start: dt.datetime, **fields: object) -> str:
    definition = sign_in_task(start=start - DAY, end=start + 120 * DAY, **fields)  # type: ignore[arg-type]
    await create(stub, definition)
    return definition.task_id


async def test_a_streak_runs_across_a_month_and_a_year_boundary(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    clock.set(at("2026-12-30T09:00:00+00:00"))
    task_id = await sign_in_task_from(clocked_stub, clock.now(), rewards=(1, 2, 3, 4))
    m = await member(tagging_stub)
    streaks, points = [], []
    for _ in range(4):  # Dec 30, Dec 31, Jan 1, Jan 2
        record = await sign_in(clocked_stub, task_id, m)
        streaks.append(record.streak_day)
        points.append(record.completion.points)
        clock.advance(days=1)
    assert streaks == [1, 2, 3, 4]
    assert points == [1, 2, 3, 4]
    clock.advance(days=1)  # Jan 4: Jan 3 was missed
    record = await sign_in(clocked_stub, task_id, m)
    assert (record.streak_day, record.completion.points) == (1, 1)
    assert (record.day.year, record.day.month, record.day.day) == (2027, 1, 4)
    current = await streak(clocked_stub, task_id, m)
    assert (current.current, current.longest, current.signed_today, current.next_points) == (1, 4, True, 2)
    assert (await balance(clocked_stub, m)).available == 11


async def test_days_are_the_task_zones_calendar_days(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    # Asia/Shanghai is UTC+8: 15:30 UTC on Jan 31 is 23:30 there, 16:30 UTC is 00:30 on Feb 1.
    clock.set(at("2027-01-31T15:30:00+00:00"))
    task_id = await sign_in_task_from(
        clocked_stub, clock.now(), rewards=(10, 20, 30), time_zone="Asia/Shanghai"
    )
    m = await member(tagging_stub)
    first = await sign_in(clocked_stub, task_id, m)
    assert (first.day.month, first.day.day, first.streak_day) == (1, 31, 1)
    clock.advance(hours=1)  # the same UTC day, the next day (and month) in Shanghai
    second = await sign_in(clocked_stub, task_id, m)
    assert (second.day.month, second.day.day, second.streak_day, second.completion.points) == (2, 1, 2, 20)
    clock.advance(hours=22, minutes=59)  # 15:29 UTC on Feb 1: still Feb 1 in Shanghai
    again = await failure(sign_in(clocked_stub, task_id, m))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already signed in" in (again.details() or "")
    clock.advance(minutes=32)  # 16:01 UTC on Feb 1: Feb 2 in Shanghai, though still Feb 1 in UTC
    third = await sign_in(clocked_stub, task_id, m)
    assert (third.day.day, third.streak_day, third.completion.points) == (2, 3, 30)
    clock.advance(days=2)  # Feb 4 in Shanghai: Feb 3 missed
    assert (await sign_in(clocked_stub, task_id, m)).streak_day == 1


async def test_make_ups_fill_a_missed_day_of_this_month_within_the_allowance(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    clock.set(at("2027-03-01T08:00:00+00:00"))
    task_id = await sign_in_task_from(clocked_stub, clock.now(), rewards=(1, 2, 3, 4, 5, 6, 7), makeups=1)
    m = await member(tagging_stub)
    await sign_in(clocked_stub, task_id, m)  # Mar 1
    clock.advance(days=1)
    await sign_in(clocked_stub, task_id, m)  # Mar 2
    clock.advance(days=2)
    assert (await sign_in(clocked_stub, task_id, m)).streak_day == 1  # Mar 4, Mar 3 missed
    filled = await sign_in(clocked_stub, task_id, m, makeup=dt.date(2027, 3, 3))
    assert (filled.makeup, filled.streak_day, filled.HasField("completion")) == (True, 3, False)
    current = await streak(clocked_stub, task_id, m)
    assert (current.current, current.makeups_left, current.next_points) == (4, 0, 5)
    clock.advance(days=1)
    fifth = await sign_in(clocked_stub, task_id, m)  # Mar 5: the joined run goes on
    assert (fifth.streak_day, fifth.completion.points) == (5, 5)
    # The allowance is used; a day signed, today, a future day or last month cannot be made up.
    clock.advance(days=2)  # Mar 7, Mar 6 missed
    used = await failure(sign_in(clocked_stub, task_id, m, makeup=dt.date(2027, 3, 6)))
    assert used.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    signed = await failure(sign_in(clocked_stub, task_id, m, makeup=dt.date(2027, 3, 2)))
    assert signed.code() == grpc.StatusCode.ALREADY_EXISTS
    await bad(sign_in(clocked_stub, task_id, m, makeup=dt.date(2027, 3, 7)), "makeup_day", "before today")
    await bad(sign_in(clocked_stub, task_id, m, makeup=dt.date(2027, 2, 27)), "makeup_day", "current month")
    # Paid: days 1, 2, 1 and 5; the make-up itself earned nothing.
    assert [e.delta for e in await all_entries(clocked_stub, m)] == [5, 1, 2, 1]


async def test_a_task_without_make_ups_refuses_them(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    clock.set(at("2027-04-10T08:00:00+00:00"))
    task_id = await sign_in_task_from(clocked_stub, clock.now())
    m = await member(tagging_stub)
    error = await failure(sign_in(clocked_stub, task_id, m, makeup=dt.date(2027, 4, 9)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_concurrent_duplicate_sign_ins_sign_in_once(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    definition = sign_in_task(rewards=(7,), expiry_policy=points_pb2.EXPIRY_POLICY_END_OF_YEAR)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    request_id = unique("req")
    same = await asyncio.gather(
        *(sign_in(tasks_stub, definition.task_id, m, request_id=request_id) for _ in range(24))
    )
    assert len({r.completion.completion_id for r in same}) == 1
    assert all(r == same[0] for r in same)

    async def other_request() -> grpc.StatusCode:
        try:
            await sign_in(tasks_stub, definition.task_id, m)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(other_request() for _ in range(16)))
    assert set(codes) == {grpc.StatusCode.ALREADY_EXISTS}
    entries = await all_entries(tasks_stub, m)
    assert [(e.delta, e.reason, e.reference) for e in entries] == [
        (7, points_pb2.REASON_TASK, definition.task_id)
    ]
    assert f"completion {same[0].completion.completion_id}" in entries[0].note
    async with db.transaction(TENANT_ACME) as conn:
        rows = await conn.fetchval(
            "SELECT count(*) FROM tasks.sign_ins WHERE task_id = $1 AND member_id = $2", definition.task_id, m
        )
        used = await conn.fetchval(
            "SELECT sum(granted - remaining) FROM tasks.allowance_shards WHERE owner = 'task:' || $1",
            definition.task_id,
        )
    assert (rows, used) == (1, 7)
    # The same request id with other content (another member) is ALREADY_EXISTS.
    other = await member(tagging_stub)
    reused = await failure(sign_in(tasks_stub, definition.task_id, other, request_id=request_id))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_sign_ins_past_the_budget_are_refused_and_leave_nothing(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    """Twelve members sign in at once to a task whose budget pays five: five are paid, seven get
    RESOURCE_EXHAUSTED, and those seven have no sign-in, no completion and no points (the sign-in
    row is written before the budget is taken, and goes when that fails)."""
    definition = sign_in_task(rewards=(10,), budget_points=50)
    await create(tasks_stub, definition)
    members = [await member(tagging_stub) for _ in range(12)]

    async def code(m: str) -> grpc.StatusCode:
        try:
            await sign_in(tasks_stub, definition.task_id, m)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = dict(zip(members, await asyncio.gather(*(code(m) for m in members)), strict=True))
    paid = {m for m, c in codes.items() if c == grpc.StatusCode.OK}
    assert len(paid) == 5
    assert set(codes.values()) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    async with db.transaction(TENANT_ACME) as conn:
        signed = await conn.fetch(
            "SELECT member_id FROM tasks.sign_ins WHERE task_id = $1", definition.task_id
        )
        completed = await conn.fetch(
            "SELECT member_id FROM tasks.completions WHERE task_id = $1", definition.task_id
        )
    assert {r["member_id"] for r in signed} == {r["member_id"] for r in completed} == paid
    for m in members:
        assert (await balance(tasks_stub, m)).available == (10 if m in paid else 0)
        assert (await streak(tasks_stub, definition.task_id, m)).current == (1 if m in paid else 0)


async def test_a_claimed_sign_in_waits_for_its_claim(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    definition = sign_in_task(rewards=(3,), claim_required=True)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    record = await sign_in(tasks_stub, definition.task_id, m)
    assert record.completion.state == tasks_pb2.COMPLETION_STATE_CLAIMABLE
    assert (await balance(tasks_stub, m)).available == 0
    request_id = unique("req")
    claimed = await claim(tasks_stub, definition.task_id, m, request_id=request_id)
    assert (claimed.state, claimed.points, claimed.completion_id) == (
        tasks_pb2.COMPLETION_STATE_PAID,
        3,
        record.completion.completion_id,
    )
    assert await claim(tasks_stub, definition.task_id, m, request_id=request_id) == claimed
    twice = await failure(claim(tasks_stub, definition.task_id, m))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await balance(tasks_stub, m)).available == 3


def terms(task_id: str, version: int, **fields: object) -> signin_store.DayTerms:
    """What tasks.sign_in is given for a sign-in task paying 4 a day, no limits, no badges."""
    base: dict[str, object] = {
        "task_id": task_id,
        "version": version,
        "rewards": (4,),
        "claim": False,
        "per_day": 0,
        "total": 0,
        "cycle": (dt.date.min, dt.date.max),
        "expire_time": None,
        "milestones": (),
        "task_badge": None,
    }
    return signin_store.DayTerms(**{**base, **fields})  # type: ignore[arg-type]


async def written(db: Database, task_id: str, m: str) -> tuple[int, int, int, int]:
    """The member's sign-ins, completions and task earnings of the task, and the budget it used."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM tasks.sign_ins WHERE task_id = $1 AND member_id = $2) AS s,
                      (SELECT count(*) FROM tasks.completions WHERE task_id = $1 AND member_id = $2) AS c,
                      (SELECT count(*) FROM tasks.ledger_entries WHERE reference = $1 AND member_id = $2)
                        AS e,
                      (SELECT sum(granted - remaining) FROM tasks.allowance_shards
                       WHERE owner = 'task:' || $1) AS used""",
            task_id,
            m,
        )
    assert row is not None
    return row["s"], row["c"], row["e"], row["used"]


async def test_each_refusal_of_the_sign_in_function_writes_nothing(
    tasks_stub: TasksStub, db: Database
) -> None:
    """tasks.sign_in, a sign-in in one statement: one decided on a task version since changed
    ('stale'), one past the budget, a day signed twice and one past the total limit write nothing;
    a retried request answers its first result; a refused sign-in leaves the member's others be."""
    changing, budgeted = sign_in_task(rewards=(4,)), sign_in_task(rewards=(4,), budget_points=5)
    await create(tasks_stub, changing)
    await create(tasks_stub, budgeted)
    changed = tasks_pb2.Task()
    changed.CopyFrom(changing)
    changed.display_name = "changed"
    update = tasks_service_pb2.UpdateTaskRequest(task=changed, expected_version=1)
    await tasks_stub.UpdateTask(update, metadata=ACME)
    a, b, c, d = (unique() for _ in range(4))
    day, now = dt.date(2026, 12, 7), dt.datetime.now(UTC)

    def asked(
        m: str, request_id: str, task_id: str, version: int, on: dt.date = day, **fields: object
    ) -> signin_store.DayRequest:
        return signin_store.DayRequest(terms(task_id, version, **fields), m, on, request_id, "h", now)

    requests = [
        asked(a, unique("r"), changing.task_id, 1),  # decided on version 1, now 2
        asked(b, "b1", changing.task_id, 2),
        asked(b, "b1", changing.task_id, 2),  # a retry
        asked(b, "b2", changing.task_id, 2),  # the same day again
        asked(b, "b3", changing.task_id, 2, day + DAY, total=1),
        asked(c, "c1", budgeted.task_id, 1),
        asked(d, "d1", budgeted.task_id, 1),  # 4 + 4 > 5
        asked(b, "b4", changing.task_id, 2, day + DAY, rewards=(4, 6)),  # the streak's second day
    ]
    done = [await signin_store.sign_in_day(db.pool, TENANT_ACME, r) for r in requests]
    assert [(x.outcome, x.points) for x in done] == [
        ("stale", 4),
        ("paid", 4),
        ("asked", None),
        ("signed", None),
        ("total_limit", None),
        ("paid", 4),
        ("budget", 4),
        ("paid", 6),
    ]
    assert done[2].sign_in == done[1].sign_in and done[2].completion == done[1].completion
    for refused in (0, 3, 4, 6):
        assert (done[refused].sign_in, done[refused].completion) == (None, None)
    paid = [(x.sign_in, x.completion) for x in done if x.outcome == "paid"]
    assert [(s.streak, c.points, c.source) for s, c in paid if s is not None and c is not None] == [
        (1, 4, f"sign-in {day} day 1"),
        (1, 4, f"sign-in {day} day 1"),
        (2, 6, f"sign-in {day + DAY} day 2"),
    ]
    assert await written(db, changing.task_id, a) == (0, 0, 0, 10)
    assert await written(db, changing.task_id, b) == (2, 2, 2, 10)
    assert await written(db, budgeted.task_id, c) == (1, 1, 1, 4)
    assert await written(db, budgeted.task_id, d) == (0, 0, 0, 4)


async def test_a_sign_in_task_with_a_badge_awards_it_with_the_first_sign_in(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    badge_id = unique("badge")
    request = tasks_service_pb2.CreateBadgeRequest(
        badge=badges_pb2.Badge(badge_id=badge_id, display_name="早")
    )
    badge = (await tasks_stub.CreateBadge(request, metadata=ACME)).name
    definition = sign_in_task(badge=badge)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    await sign_in(tasks_stub, definition.task_id, m)
    answer = await tasks_stub.ListMemberBadges(
        tasks_service_pb2.ListMemberBadgesRequest(member_id=m), metadata=ACME
    )
    assert [(b.badge_id, b.source) for b in answer.badges] == [(badge_id, f"task {definition.task_id}")]
