"""Invites paying from a budget close to running out never deadlock with other takers.

Each test builds the interleaving that deadlocked when an invite took from its task's budget once
per side (or the follower's round once per invite): a take in flight holds one shard (`holder`),
an update-like transaction locking every shard in order waits for it (`locker`), and the invite's
transaction comes in while no unheld shard covers what it pays. Before, its first take held a
shard the locker would need next while its second waited for the locker: PostgreSQL aborted one.
Now it takes once (or holds every shard first), so it waits holding nothing of the budget, and
everyone commits. Each step waits for the previous one to be blocked where it should (pg_locks,
polled), never for a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from memberops.tagging.v1 import member_pb2, tagging_service_pb2
from memberops.tasks.v1 import tasks_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.allowance import allowance
from services.tasks.feed.follower import FeedFollower
from services.tasks.tasks.definition_store import budget_owner
from tests.conftest import INITECH, TENANT_INITECH, unique
from tests.tasks.feed_helpers import drain, followed, registered
from tests.tasks.task_helpers import create, member, task
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

_T = TypeVar("_T")
REGISTER = tasks_pb2.INVITE_TRIGGER_REGISTER
COMPLETED = tasks_pb2.INVITE_STATE_COMPLETED
# An invite pays 3 to the inviter and 2 to the invitee: 5 from the budget.
INVITER_POINTS, INVITEE_POINTS = 3, 2


async def _invite_task(stub: TasksStub, shards: dict[int, int]) -> str:
    """An invite task on registration whose budget is `shards` (shard: points; the others empty)."""
    definition = task(
        "invite",
        tasks_pb2.InviteSpec(trigger=REGISTER, invitee_points=INVITEE_POINTS),
        reward_points=INVITER_POINTS,
        budget_points=sum(shards.values()),
    )
    await create(stub, definition, metadata=INITECH)
    return definition.task_id


async def _shape(db: Database, task_id: str, shards: dict[int, int]) -> None:
    """Spreads the budget over the shards as given (the same total)."""
    points = [shards.get(i, 0) for i in range(max(shards) + 1)]
    async with db.transaction(TENANT_INITECH) as conn:
        await conn.execute(
            """UPDATE tasks.allowance_shards
               SET remaining = coalesce(($2::bigint[])[shard + 1], 0),
                   granted = coalesce(($2::bigint[])[shard + 1], 0)
               WHERE owner = $1""",
            budget_owner(task_id),
            points,
        )


async def _blocking(db: Database, pid: int) -> bool:
    """Whether some transaction waits for a lock the backend `pid` holds."""
    async with db.transaction(TENANT_INITECH) as conn:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
        )
    return bool(waiting)


async def _contended(db: Database, owner: str, work: Callable[[], Awaitable[_T]]) -> _T:
    """Runs `work` while a take in flight holds shard 1 of `owner` and a transaction locking every
    shard in order (as UpdateTask does) holds shard 0 and waits for it; once `work` waits for that
    locker, the take commits. Returns what `work` returned, after the locker committed too."""
    pids: asyncio.Queue[int] = asyncio.Queue()

    async def lock_all() -> None:
        async with db.transaction(TENANT_INITECH) as conn:
            await pids.put(await conn.fetchval("SELECT pg_backend_pid()"))
            await allowance.hold(conn, owner)

    async with db.transaction(TENANT_INITECH) as holder:
        await holder.execute(
            "SELECT 1 FROM tasks.allowance_shards WHERE owner = $1 AND shard = 1 FOR UPDATE", owner
        )
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        locking = asyncio.create_task(lock_all())
        await eventually(lambda: _blocking(db, holder_pid), "did the locker wait for the held shard")
        locker_pid = pids.get_nowait()

        async def run() -> _T:
            return await work()

        working = asyncio.create_task(run())

        async def work_waits() -> bool:
            if working.done():
                working.result()  # an error surfaces here
                raise AssertionError("the work finished without waiting for the locker")
            return await _blocking(db, locker_pid)

        await eventually(work_waits, "did the work wait for the locker")
    await locking
    return await working


async def _remaining(db: Database, task_id: str) -> int:
    async with db.transaction(TENANT_INITECH) as conn:
        usage = await allowance.usage(conn, budget_owner(task_id))
    assert usage is not None
    return usage.remaining


def _invite_request(task_id: str, inviter: str, invitee: str) -> tasks_service_pb2.RecordInviteRequest:
    return tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{task_id}", inviter_member_id=inviter, invitee_member_id=invitee, request_id=unique("i")
    )


async def test_an_invite_paying_both_sides_near_the_end_of_its_budget_waits_instead_of_deadlocking(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    """Only shard 2 covers the inviter's 3 and only the held shards cover the invitee's 2: taken
    one after the other, the invite held shard 2 while waiting for the locker, which then waited
    for shard 2. Taken at once (5, more than any shard), it waits holding nothing."""
    shards = {0: 2, 1: 2, 2: 3}
    task_id = await _invite_task(tasks_stub, shards)
    await _shape(db, task_id, shards)
    inviter, invitee = (
        await member(tagging_stub, metadata=INITECH),
        await member(tagging_stub, metadata=INITECH),
    )
    await followed(follower, lambda: registered(db, invitee))
    request = _invite_request(task_id, inviter, invitee)

    invite = await _contended(
        db, budget_owner(task_id), lambda: tasks_stub.RecordInvite(request, metadata=INITECH)
    )

    assert invite.state == COMPLETED
    assert (invite.inviter_completion.points, invite.invitee_completion.points) == (3, 2)
    assert await _remaining(db, task_id) == 2


async def test_a_feed_round_completing_two_invites_of_one_task_waits_instead_of_deadlocking(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    """Two invites of one task complete in one round: the first took 5 from shard 2 (the only one
    unheld that covers it), the second waited for the locker, which then waited for shard 2. The
    round now holds every shard of the budget before its first take."""
    shards = {0: 5, 1: 2, 2: 5}
    task_id = await _invite_task(tasks_stub, shards)
    await _shape(db, task_id, shards)
    inviter = await member(tagging_stub, metadata=INITECH)
    newcomers = [unique(), unique()]
    requests = [_invite_request(task_id, inviter, newcomer) for newcomer in newcomers]
    for request in requests:
        pending = await tasks_stub.RecordInvite(request, metadata=INITECH)
        assert pending.state == tasks_pb2.INVITE_STATE_PENDING
    await drain(follower)
    for newcomer in newcomers:  # both registrations in the next round
        upsert = tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=newcomer))
        await tagging_stub.UpsertMember(upsert, metadata=INITECH)

    await _contended(db, budget_owner(task_id), lambda: follower.follow_once(TENANT_INITECH))

    # A retry of a request answers its invite as it stands.
    invites = [await tasks_stub.RecordInvite(request, metadata=INITECH) for request in requests]
    assert [invite.state for invite in invites] == [COMPLETED, COMPLETED]
    assert await _remaining(db, task_id) == 2


async def test_an_update_waiting_for_a_budget_shard_lets_the_holder_write_rows_naming_the_task(
    tasks_stub: TasksStub, db: Database
) -> None:
    """A completion takes from the budget, then inserts its row, whose foreign key share-locks the
    task. An UpdateTask locking the task and then waiting for that shard must not block the
    insert: with FOR UPDATE on the task it did, and PostgreSQL aborted one of the two."""
    definition = task("invite", tasks_pb2.InviteSpec(trigger=REGISTER), reward_points=1, budget_points=100)
    await create(tasks_stub, definition, metadata=INITECH)
    owner = budget_owner(definition.task_id)
    changed = tasks_pb2.Task()
    changed.CopyFrom(definition)
    changed.budget_points = 200
    update = tasks_service_pb2.UpdateTaskRequest(task=changed, expected_version=1)

    async with db.transaction(TENANT_INITECH) as completing:
        assert await allowance.take(completing, owner, 1)
        completing_pid = await completing.fetchval("SELECT pg_backend_pid()")

        async def updated() -> tasks_pb2.Task:
            return await tasks_stub.UpdateTask(update, metadata=INITECH)

        updating = asyncio.create_task(updated())
        await eventually(lambda: _blocking(db, completing_pid), "did the update wait for the taken shard")
        # What the completion's insert checks of the task (its foreign key).
        await completing.execute(
            "SELECT 1 FROM tasks.task_definitions WHERE task_id = $1 FOR KEY SHARE", definition.task_id
        )
    assert (await updating).version == 2
    assert await _remaining(db, definition.task_id) == 199
