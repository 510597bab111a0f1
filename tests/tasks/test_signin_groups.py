"""Sign-ins of one task that arrive together go to the database as one statement
(`tasks.sign_in_batch`, decision 154): each member's outcome is the one `tasks.sign_in` gives alone,
the budget is taken once for the group, and a group refused whole writes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from memberops.tasks.v1 import tasks_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.tasks import signin_store
from tests.conftest import ACME, GLOBEX, TENANT_ACME, TENANT_GLOBEX, unique
from tests.tasks.points_helpers import all_entries, balance, earn
from tests.tasks.task_helpers import DAY, create, member, sign_in, sign_in_task, streak
from tests.tasks.test_levels import level, policy, set_policy
from tests.tasks.test_signin import terms, written

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

UTC = dt.UTC
DAY_ONE = dt.date(2026, 12, 7)


def asked(
    m: str, request_id: str, task_id: str, on: dt.date = DAY_ONE, **fields: object
) -> signin_store.DayRequest:
    now = dt.datetime.now(UTC)
    fields = {"rewards": (4, 6), **fields}
    return signin_store.DayRequest(terms(task_id, 1, **fields), m, on, request_id, f"h-{m}", now)


async def test_a_group_decides_each_member_as_a_sign_in_alone_would(
    tasks_stub: TasksStub, db: Database
) -> None:
    """Yesterday's streak, an earlier request id, a day already signed and a limit reached, all in
    one group, each answered as tasks.sign_in answers it alone; the budget pays the group once."""
    definition = sign_in_task(rewards=(4, 6), budget_points=1000)
    await create(tasks_stub, definition)
    t = definition.task_id
    fresh, returning, retried, signed, limited = (unique() for _ in range(5))
    yesterday = DAY_ONE - DAY
    for alone in (
        asked(returning, unique("r"), t, yesterday),
        asked(retried, "retried-1", t),
        asked(signed, unique("r"), t),
        asked(limited, unique("r"), t, yesterday),
    ):
        assert (await signin_store.sign_in_day(db.pool, TENANT_ACME, alone)).outcome == "paid"
    group = [
        asked(fresh, unique("r"), t),
        asked(returning, unique("r"), t),
        asked(retried, "retried-1", t),
        asked(signed, unique("r"), t),
    ]
    done = await signin_store.sign_in_days(db.pool, TENANT_ACME, group[0].terms, DAY_ONE, group)
    assert [(x.outcome, x.points) for x in done] == [
        ("paid", 4),
        ("paid", 6),
        ("asked", None),
        ("signed", None),
    ]
    first, second, again = done[0], done[1], done[2]
    assert first.sign_in is not None and first.completion is not None
    assert (first.sign_in.member_id, first.sign_in.streak, first.completion.points) == (fresh, 1, 4)
    assert first.completion.source == f"sign-in {DAY_ONE} day 1"
    assert second.sign_in is not None and second.completion is not None
    assert (second.sign_in.streak, second.completion.points) == (2, 6)
    assert again.sign_in is not None and again.sign_in.request_id == "retried-1"
    assert (done[3].sign_in, done[3].completion) == (None, None)
    # One total sign-in per cycle: the member who signed in yesterday is refused, a new one paid.
    cycle = (yesterday, DAY_ONE + DAY)
    newcomer = unique()
    limits = [asked(m, unique("r"), t, DAY_ONE, total=1, cycle=cycle) for m in (limited, newcomer)]
    capped = await signin_store.sign_in_days(db.pool, TENANT_ACME, limits[0].terms, DAY_ONE, limits)
    assert next((x.outcome, x.points, x.sign_in) for x in capped) == ("total_limit", None, None)
    assert (capped[1].outcome, capped[1].points) == ("paid", 4)
    assert await written(db, t, fresh) == (1, 1, 1, 4 * 4 + 4 + 6 + 4)
    assert await written(db, t, returning) == (2, 2, 2, 30)
    assert await written(db, t, limited) == (1, 1, 1, 30)
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        notes = await conn.fetch(
            """SELECT l.note, l.delta, o.amount FROM tasks.ledger_entries l
               JOIN tasks.lots o ON o.entry_id = l.entry_id AND o.tenant_id = l.tenant_id
               WHERE l.member_id = $1 AND l.reference = $2""",
            fresh,
            t,
        )
    assert [(r["note"], r["delta"], r["amount"]) for r in notes] == [
        (f"completion {first.completion.completion_id}: sign-in {DAY_ONE} day 1", 4, 4)
    ]


@pytest.mark.parametrize("refusal", ["budget", "version"])
async def test_a_group_refused_whole_writes_nothing(
    tasks_stub: TasksStub, db: Database, refusal: str
) -> None:
    """A budget that cannot pay the whole group, or a task changed since its terms were read, raises
    MS003: no sign-in, completion, earning or budget take of any member stays."""
    definition = sign_in_task(rewards=(4,), budget_points=10)
    await create(tasks_stub, definition)
    t = definition.task_id
    if refusal == "version":
        changed = tasks_pb2.Task()
        changed.CopyFrom(definition)
        changed.display_name = "changed"
        update = tasks_service_pb2.UpdateTaskRequest(task=changed, expected_version=1)
        await tasks_stub.UpdateTask(update, metadata=ACME)
    members = [unique() for _ in range(2 if refusal == "version" else 3)]
    group = [asked(m, unique("r"), t) for m in members]
    with pytest.raises(asyncpg.PostgresError) as raised:
        await signin_store.sign_in_days(db.pool, TENANT_ACME, group[0].terms, DAY_ONE, group)
    assert raised.value.sqlstate == signin_store.BATCH_REFUSED
    for m in members:
        assert await written(db, t, m) == (0, 0, 0, 0)


async def test_concurrent_sign_ins_of_many_members_each_pay_once(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    """Forty members sign in at once, each twice under one request id and once under another:
    every member is paid once, under whichever request came first (both calls of that id answer
    the same sign-in, the other id's calls are ALREADY_EXISTS), and the budget paid exactly what
    the members earned."""
    definition = sign_in_task(rewards=(3,), budget_points=10_000)
    await create(tasks_stub, definition)
    t = definition.task_id
    members = [await member(tagging_stub) for _ in range(40)]
    ids = {m: unique("req") for m in members}

    async def call(m: str, request_id: str | None) -> tasks_pb2.SignInRecord | grpc.StatusCode:
        try:
            return await sign_in(tasks_stub, t, m, request_id=request_id)
        except grpc.aio.AioRpcError as error:
            return error.code()

    calls: list[tuple[str, str | None]] = [(m, r) for m in members for r in (ids[m], ids[m], None)]
    answers = await asyncio.gather(*(call(m, r) for m, r in calls))
    by_member: dict[str, dict[str, list[tasks_pb2.SignInRecord | grpc.StatusCode]]] = {}
    for (m, r), answer in zip(calls, answers, strict=True):
        by_member.setdefault(m, {}).setdefault(r or "other", []).append(answer)
    for m, by_request in by_member.items():
        won = [r for r, got in by_request.items() if any(isinstance(a, tasks_pb2.SignInRecord) for a in got)]
        assert len(won) == 1, (m, by_request)
        records = by_request.pop(won[0])
        assert all(isinstance(a, tasks_pb2.SignInRecord) and a == records[0] for a in records), m
        assert {a for got in by_request.values() for a in got} == {grpc.StatusCode.ALREADY_EXISTS}
        first = records[0]
        assert isinstance(first, tasks_pb2.SignInRecord)
        assert (first.streak_day, first.completion.points) == (1, 3)
    for m in members[:5]:
        assert (await balance(tasks_stub, m)).available == 3
        assert [e.delta for e in await all_entries(tasks_stub, m)] == [3]
        assert (await streak(tasks_stub, t, m)).signed_today
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetchval("SELECT count(*) FROM tasks.sign_ins WHERE task_id = $1", t)
        used = await conn.fetchval(
            "SELECT sum(granted - remaining) FROM tasks.allowance_shards WHERE owner = 'task:' || $1", t
        )
    assert (rows, used) == (40, 120)


async def test_a_group_raises_the_level_of_only_the_members_whose_growth_reaches_a_tier(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    """The group pays first, then raises levels as add_earning does: a member whose growth now
    reaches the next tier is raised, one still below is not."""
    try:  # the tenant's policy as earlier tests left it (its codes are kept), else a new one
        current = await tasks_stub.GetLevelPolicy(tasks_service_pb2.GetLevelPolicyRequest(), metadata=GLOBEX)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        current = await set_policy(tasks_stub, policy())
    tiers = sorted(current.tiers, key=lambda t: t.min_growth)
    base, higher = tiers[0], next(t for t in tiers if t.min_growth > 0)
    assert higher.min_growth >= 2, current
    reward = higher.min_growth // 2
    definition = sign_in_task(rewards=(reward,))
    await create(tasks_stub, definition, metadata=GLOBEX)
    near, far = [await member(tagging_stub, metadata=GLOBEX) for _ in range(2)]
    await earn(tasks_stub, near, higher.min_growth - reward, metadata=GLOBEX)
    group = [asked(m, unique("r"), definition.task_id, rewards=(reward,)) for m in (near, far)]
    done = await signin_store.sign_in_days(db.pool, TENANT_GLOBEX, group[0].terms, DAY_ONE, group)
    assert [x.outcome for x in done] == ["paid", "paid"]
    assert (await level(tasks_stub, near)).level == higher.code
    assert (await level(tasks_stub, far)).level == base.code
